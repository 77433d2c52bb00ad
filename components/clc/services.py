"""Eucalyptus's service API on the CLC: DescribeServices and ModifyService (admin only).

Eucalyptus 3.x answered ``euca-describe-services`` and ``euca-modify-service -s STATE NAME``
from its Empyrean endpoint; here they are two more EC2 Query actions on the CLC. The CLC
knows every member of every pair from its config (``services``: type, partition, name,
URI and the member's own internal URL) and asks each member its state over the internal
channel (``GET /internal/service`` with the CLC's role token), or to change it
(``POST /internal/service/{transition}``). The member decides (components/common/ha/switchover.py):
a refusal there is a 400 here with its reason, and changes nothing.

ENABLE on the DISABLED member of a pair whose other member is ENABLED is a planned
switchover: it is asked of the ENABLED member as DISABLE, as Eucalyptus's manual failover was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from components.common.ha import TRANSITION_FOR_STATE, TRANSITIONS
from components.common.service import INTERNAL_TOKEN_HEADER

from .ec2 import EC2Error

# Eucalyptus's component types, by this testbed's component names.
SERVICE_TYPES = {"clc": "eucalyptus", "walrus": "walrus", "cc": "cluster", "sc": "storage"}
ASK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Member:
    """One service (a member of a pair) as DescribeServices names it."""

    type: str
    partition: str
    name: str
    uri: str
    internal: str  # where the CLC reaches the member itself
    pair: str

    @property
    def full_name(self) -> str:
        return f"arn:euca:eucalyptus:{self.partition}:{self.type}:{self.name}/"


def transition_name(value: str) -> str:
    """ModifyService's State: a transition, or the state it leads to; InvalidParameterValue else."""
    name = TRANSITION_FOR_STATE.get(value.upper(), value.upper())
    if name not in TRANSITIONS:
        raise EC2Error("InvalidParameterValue", f"State {value!r} is not a transition: one of "
                       f"{', '.join(TRANSITIONS)} (or the states {', '.join(TRANSITION_FOR_STATE)})")
    return name


class ServiceDirectory:
    def __init__(self, config: dict):
        self.members = [Member(**m) for m in config.get("services") or []]
        self.token = config.get("internal_token", "")
        self.http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: self.token},
                                              timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S))
        return self.http

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise EC2Error("InvalidParameterValue", f"no service named {name!r}; known: "
                       f"{', '.join(m.name for m in self.members)}")

    async def state(self, m: Member) -> dict:
        """What the member says of itself; NOTREADY with the reason when it does not answer
        (Eucalyptus's view of a service it cannot reach)."""
        try:
            async with self._session().get(f"{m.internal}/internal/service") as r:
                if r.status == 200:
                    return await r.json(content_type=None)
                detail = f"answered {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            detail = f"does not answer: {exc or type(exc).__name__}"
        return {"name": m.name, "state": "NOTREADY", "epoch": 0, "detail": detail}

    async def describe(self, names: list[str]) -> list[dict]:
        wanted = [self.member(n) for n in names] if names else self.members
        states = await asyncio.gather(*(self.state(m) for m in wanted))
        return [{"serviceId": {"type": m.type, "partition": m.partition, "name": m.name, "fullName": m.full_name,
                               "uri": m.uri},
                 "localState": s["state"], "localEpoch": s.get("epoch", 0),
                 "details": [{"severity": "WARN", "message": s["detail"]}] if s.get("detail") else None}
                for m, s in zip(wanted, states)]

    async def modify(self, name: str, state: str) -> dict:
        """Ask for a transition; returns the member's answer (the transition has started)."""
        target, transition = self.member(name), transition_name(state)
        if transition == "ENABLE":
            peer = next((m for m in self.members if m.pair == target.pair and m is not target), None)
            if peer is not None and (await self.state(target))["state"] == "DISABLED" \
                    and (await self.state(peer))["state"] == "ENABLED":
                target, transition = peer, "DISABLE"  # a manual failover: the ENABLED member hands over
        try:
            async with self._session().post(f"{target.internal}/internal/service/{transition}") as r:
                answer = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise EC2Error("ServiceUnavailable", f"{target.name} does not answer: {exc or type(exc).__name__}",
                           503) from None
        if r.status != 200:
            raise EC2Error(answer.get("error", "IncorrectState"), f"{target.name}: {answer.get('message', answer)}",
                           400)
        return answer
