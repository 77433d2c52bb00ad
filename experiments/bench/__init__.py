"""Benchmarks, each one an ``eucalab bench`` subcommand."""
