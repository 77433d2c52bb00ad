"""The testbed: a deployment's network, processes, run records, and the machine it runs on."""
