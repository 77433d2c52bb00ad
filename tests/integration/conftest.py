"""One default deployment shared by every integration test that does not break it.

Tests that break the network (faults, teardown checks, other specs) build their
own deployment; everything else uses the session-scoped ``deployment`` fixture,
which has every existing component running.
"""

from __future__ import annotations

import pytest

from experiments import preflight
from experiments.deployment import Deployment
from topologies.spec import DeploymentSpec


@pytest.fixture(scope="session", autouse=True)
def _network_ready():
    problem = preflight.ovs_problem()
    if problem:
        pytest.fail(f"Open vSwitch is not usable: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    """The default deployment with all existing services, shared by the session."""
    run_dir = tmp_path_factory.mktemp("default-run")
    with Deployment(DeploymentSpec(name="test-default"), run_dir=run_dir) as dep:
        dep.start_services()
        yield dep


@pytest.fixture(scope="session")
def plan(deployment):
    return deployment.plan


class InHost:
    """A client whose every call runs inside an emulated host's network namespace.

    Sockets are opened lazily by boto3, so entering the namespace only around
    client creation would let later calls leave from the root namespace. This
    wrapper enters it around every call.
    """

    def __init__(self, dep, host: str, client):
        self._dep, self._host, self._client = dep, host, client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._dep.in_host(self._host):
                return attr(*args, **kwargs)

        return call


def aws_client(dep, service: str, host: str = "user", access_key=None, secret_key=None):
    import boto3
    from botocore.config import Config

    endpoint = dep.plan.endpoints()["clc" if service == "ec2" else "walrus"]
    client = boto3.client(service, endpoint_url=endpoint, region_name="eucalyptus",
                          aws_access_key_id=access_key or dep.credentials.access_key,
                          aws_secret_access_key=secret_key or dep.credentials.secret_key,
                          config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"},
                                        connect_timeout=5, read_timeout=30))
    return InHost(dep, host, client)


@pytest.fixture(scope="session")
def ec2(deployment):
    return aws_client(deployment, "ec2")


@pytest.fixture(scope="session")
def s3(deployment):
    return aws_client(deployment, "s3")
