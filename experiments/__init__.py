"""eucalab's driver: the testbed, failover experiments, analysis, benchmarks, the CLI.

The public entry point is ``from experiments import Deployment`` (experiments.testbed.deployment),
imported on first use so that ``import experiments`` stays cheap.
"""


def __getattr__(name: str):
    if name == "Deployment":
        from .testbed.deployment import Deployment

        return Deployment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
