"""Failover experiments: definitions, trials, faults, the user's prober, the false-failover soak."""
