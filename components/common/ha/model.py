"""What the parts of an HA agent share: the protocol's constants, what a member knows of its
peer and arbitrators, a planned switchover in progress, and ``Part``, the base of each manager."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..states import ServiceState

ENABLED, DISABLED, NOTREADY = ServiceState.ENABLED, ServiceState.DISABLED, ServiceState.NOTREADY
STOPPED = ServiceState.STOPPED
# When gratuitous ARPs go out after a takeover: at once, and again past the 1 s ARP locktime.
GARP_SCHEDULE_S = (0.0, 1.1, 2.2)
# Eucalyptus's service transitions (ModifyService), and the state names it took for them.
TRANSITIONS = ("START", "STOP", "ENABLE", "DISABLE", "RESTART")
TRANSITION_FOR_STATE = {"ENABLED": "ENABLE", "DISABLED": "DISABLE", "STOPPED": "STOP"}
# Defaults of config ha.handover_drain_s and ha.handover_timeout_s: after a planned switchover
# the old member forwards what still reaches it for this long, past the new holder's last
# gratuitous ARP: a neighbour whose entry for a VIP changed less than a second ago (Linux's
# locktime: two switchovers in a row) ignores the first one and learns from a repeat. A
# switchover that has not completed within the timeout is undone.
HANDOVER_DRAIN_S = GARP_SCHEDULE_S[-1] + 0.1
# A member hands the pair over no sooner than this after it took it (past the ARP locktime).
HANDOVER_AFTER_PROMOTE_S = GARP_SCHEDULE_S[1]
HANDOVER_TIMEOUT_S = 2.0
# Epochs reserved on disk ahead of use, so a takeover writes nothing (docs/ha.md, "Election
# and epochs"): a rename waited up to 310 ms for the filesystem journal on a busy host.
# The reservation is extended in the background when fewer than EPOCH_LOW_WATER remain.
EPOCH_RESERVE = 16
EPOCH_LOW_WATER = 4
# Peer states in which it serves nobody: the DISABLED member may take over at once.
NOT_SERVING = ("NOTREADY", "BROKEN", "STOPPED")
STATES = frozenset(s.value for s in ServiceState)
# An epoch grows by one per takeover: 2^31 outlasts any pair, and a number past it is forged
# or corrupt (an epoch near 2^63 would overflow every later SQLite write of it, plus one).
MAX_EPOCH = 2**31 - 1
MAX_COUNTER = 2**62  # heartbeat sequence numbers and replicated-state positions
TAG_BYTES = hashlib.sha256().digest_size
# Rejected heartbeats are counted always, reported as an event at most this often (a flood of
# forged packets must not become a flood of log lines).
REJECT_REPORT_S = 1.0


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)



@dataclass
class Arbitrator:
    name: str
    target: str
    fail_after: int = 2
    misses: int = 0
    stopped: bool = False  # administratively stopped (maintenance): counts as failed
    ok: bool = True  # until proven otherwise, so a starting member is not blocked

    @property
    def failed(self) -> bool:
        return self.stopped or not self.ok


@dataclass
class Peer:
    """What this member knows of its peer, from the newest heartbeat heard."""

    member: str | None = None
    heard: float | None = None  # local clock when the newest heartbeat arrived (any path)
    state: str | None = None
    epoch: int = 0
    last_seq: int = 0  # the peer's replicated-state position
    priority: int = 0
    arb_ok: bool = True
    fenced: bool = False
    ready: bool = True  # it could take the pair at once (a CC: staged at the SDN controller)
    arb_confirm: tuple = (0, False)  # (our heartbeat seq it answered, did any of its arbitrators answer)
    sent: float = 0.0  # the peer's own clock when it sent that heartbeat (for events only)
    boot: int | None = None  # the peer process's incarnation
    seq: int = 0  # newest heartbeat sequence number heard from that incarnation
    acked: int = 0  # our newest heartbeat (this incarnation) the peer says it heard
    paths: dict = field(default_factory=dict)  # address -> local clock when last heard on it
    handover: bool = False  # it is DISABLED on purpose and offers the pair (a planned switchover)


class TransitionError(Exception):
    """An operator's transition this member refuses (nothing was changed)."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message
        super().__init__(message)


@dataclass
class Handover:
    """A planned switchover in progress on the member that gives the pair away."""

    epoch: int
    started: float
    then: str | None = None  # "STOP": stopped once handed over (maintenance)
    phase: str = "waiting"  # waiting (serving as before) -> holding (new requests wait) -> offered -> forwarding
    taken: asyncio.Event = field(default_factory=asyncio.Event)  # the peer is ENABLED above epoch
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # held requests may go on
    successor: str | None = None  # where held requests go; None: aborted, serve here


class Part:
    """One concern of an ``HAAgent`` (heartbeats, arbitration, decisions, VIPs, ...), built once
    by the agent. Its methods are written against the agent's names: a name listed in ``SHARED``
    is the agent's state or another part's method, read and written on the agent; every other
    name is the part's own (its methods and the state it alone keeps)."""

    SHARED: frozenset[str] = frozenset()

    def __init__(self, agent):
        object.__setattr__(self, "agent", agent)

    def __getattr__(self, name: str):
        if name in type(self).SHARED:
            return getattr(self.agent, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (nor lists it in SHARED)")

    def __setattr__(self, name: str, value) -> None:
        if name in type(self).SHARED:
            setattr(self.agent, name, value)
        else:
            object.__setattr__(self, name, value)


class Delegate:
    """A facade's attribute that is one of its parts': ``may_serve = Delegate("ticker")`` makes
    ``agent.may_serve`` the ticker part's ``may_serve`` (a method or an attribute, read only)."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)


async def _idle(timeout: float) -> bool:
    """Nothing in flight (a member whose component tracks no requests)."""
    return True


def _read_int(path: Path) -> int | None:
    """The number a small state file holds; None when there is no file."""
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False

