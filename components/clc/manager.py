"""What every manager of the CLC holds: the service it works for, and its shared parts.

The CLC's service (service.py) is a facade: it answers HTTP, authenticates a request and
hands its action to the manager of that concern (accounts, images, security groups,
instances, elastic IPs, volumes, the metadata service, the sync with the CCs). A manager
reads the service's state store, cluster client, events and settings through it, and
writes only through the service's ``_apply`` (each op logged and replicated the same way).
"""

from __future__ import annotations


class Manager:
    """One concern of the CLC; its ``act_<Action>`` methods answer EC2 actions."""

    def __init__(self, clc):
        self.clc = clc

    @property
    def store(self):
        return self.clc.store

    @property
    def cluster(self):
        return self.clc.cluster

    @property
    def events(self):
        return self.clc.events

    @property
    def config(self) -> dict:
        return self.clc.config

    def _apply(self, op: dict) -> int:
        return self.clc._apply(op)

    def _require(self, feature: str, what: str) -> None:
        self.clc.require_feature(feature, what)
