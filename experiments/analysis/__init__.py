"""Pure analysis of a run's raw data (no root): outage measures, statistics, reports."""
