"""Clients that act from an emulated host: boto3 clients for the cloud's endpoints, and
a block in which the calling thread's sockets belong to a host's network namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING

from topologies.network import namespace

if TYPE_CHECKING:
    from .deployment import Deployment


class InHost:
    """A client whose every call runs inside an emulated host's network namespace."""

    def __init__(self, dep: "Deployment", host: str, client):
        self._dep, self._host, self._client = dep, host, client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._dep.in_host(self._host):
                return attr(*args, **kwargs)

        return call


class Clients:
    """The deployment's users: clients made with its admin credentials, from one of its hosts."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep

    def aws_client(self, service: str, host: str = "user", access_key: str | None = None,
                   secret_key: str | None = None, **config):
        """A boto3 client ("ec2" or "s3") for the cloud's endpoints, acting from ``host``.

        Every call of the returned client runs inside the host's network namespace
        (boto3 opens sockets lazily, on any call), so no request can leave from the
        root namespace. Client retries are off: callers see every failure.
        """
        import boto3
        from botocore.config import Config

        dep = self.dep
        endpoint = dep.plan.endpoints()["clc" if service == "ec2" else "walrus"]
        options = dict(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}, connect_timeout=5,
                       read_timeout=30)
        options.update(config)
        client = boto3.client(service, endpoint_url=endpoint, region_name="eucalyptus",
                              aws_access_key_id=access_key or dep.credentials.access_key,
                              aws_secret_access_key=secret_key or dep.credentials.secret_key,
                              config=Config(**options))
        return InHost(dep, host, client)

    def in_host(self, name: str):
        """``with dep.in_host('user'):`` sockets opened in the block belong to that host.

        The calling thread enters the host's network namespace for the block, so a
        test or probe can use boto3 or a socket as the host would, in-process.
        """
        return namespace(self.dep.net[name].pid)
