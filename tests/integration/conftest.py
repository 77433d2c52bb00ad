"""One default deployment shared by every integration test that does not break it.

Tests that break the network (faults, teardown checks, other specs) build their
own deployment; everything else uses the session-scoped ``deployment`` fixture,
which has every existing component running.

Every test here fails when, during it, a process of any of its runs logged a Python
traceback or an ``api.internal_error`` event (tests/support/runlogs.py).
"""

from __future__ import annotations

import pytest

from experiments.testbed import preflight
from experiments.testbed.deployment import Deployment
from tests.support.runlogs import RunLogs
from topologies.spec import DeploymentSpec, HeartbeatSpec


@pytest.fixture(scope="session", autouse=True)
def _network_ready():
    problem = preflight.ovs_problem()
    if problem:
        pytest.fail(f"Open vSwitch is not usable: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def _run_logs(tmp_path_factory) -> RunLogs:
    return RunLogs(tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def _no_component_failed(_run_logs):
    """Faucet's teardown rule: a traceback or an internal error logged meanwhile fails the test."""
    yield
    problems = _run_logs.problems()
    if problems:
        pytest.fail("a component failed during this test:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    """The default deployment with all existing services, shared by the session."""
    run_dir = tmp_path_factory.mktemp("default-run")
    # Failure detection loose enough that a loaded CI machine causes no failover here:
    # these tests are about the cloud working, test_ha.py about failing over.
    spec = DeploymentSpec(name="test-default", heartbeat=HeartbeatSpec(interval_ms=100, misses=5))
    with Deployment(spec, run_dir=run_dir) as dep:
        dep.start_services()
        yield dep


@pytest.fixture(scope="session")
def plan(deployment):
    return deployment.plan


def aws_client(dep, service: str, host: str = "user", access_key=None, secret_key=None):
    return dep.aws_client(service, host, access_key=access_key, secret_key=secret_key)


@pytest.fixture(scope="session")
def ec2(deployment):
    return aws_client(deployment, "ec2")


@pytest.fixture(scope="session")
def s3(deployment):
    return aws_client(deployment, "s3")
