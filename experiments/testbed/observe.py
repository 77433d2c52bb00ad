"""HA observation: each member's service state and whether it hears its peer, read from its
own event log (no network needed), and waiting for a pair to elect its ENABLED member."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import DeploymentError
from .timescale import scaled

if TYPE_CHECKING:
    from .deployment import Deployment


class HAObserver:
    """What the HA pairs of a deployment are doing, from their members' events."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep

    def member(self, host: str) -> tuple[str | None, bool]:
        """(state, hears its peer) from one read of the member's own event log; state
        "DEAD" when its process is gone."""
        proc = self.dep.process(host)
        if not proc.alive():
            return "DEAD", False
        state, hears = None, False
        for e in proc.events():
            kind = e["event"]
            if kind == "state.change":
                state = e["to"]
            elif kind == "service.start":
                state, hears = e.get("state"), False
            elif kind == "ha.peer_dead":
                hears = False
            elif kind == "ha.peer_alive":
                hears = True
        return state, hears

    def redundant(self, pair) -> bool:
        """Full redundancy of an HA pair: one member ENABLED, the other DISABLED, each hearing
        the other. A restarted member is DISABLED at once but may not take over before it has
        heard its peer (it may hold newer state), so DISABLED alone is not yet a standby."""
        views = [self.member(m) for m in pair.members]
        return sorted(state or "" for state, _ in views) == ["DISABLED", "ENABLED"] and all(h for _, h in views)

    def wait_for_primaries(self, kind: str, timeout: float = 30.0) -> None:
        """Wait until every HA pair of ``kind`` has elected its ENABLED member and put up its VIPs."""
        dep = self.dep
        pairs = [p for p in dep.plan.pairs if p.kind == kind and p.secondary is not None]
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        for pair in pairs:
            while True:
                running = [m for m in pair.members if any(h == m for h, _ in dep.processes)]
                promoted = [m for m in running if any(
                    e["event"] == "ha.promote" for e in dep.process(m).events())]
                if any(self.member(m)[0] == "ENABLED" for m in promoted):
                    break
                if time.monotonic() > deadline:
                    raise DeploymentError(f"{pair.name}: no member became ENABLED within {timeout:.0f} s")
                time.sleep(0.02)
