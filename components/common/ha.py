"""High availability for a primary/secondary pair: heartbeats, arbitrators, election, takeover.

Every HA component (CLC, Walrus, CC, SC) runs one ``HAAgent`` in its own event loop.
The design and its guarantees are in docs/ha.md; in short:

* Heartbeats every ``interval`` over two paths (the pair's heartbeat link and the
  cloud network). The peer is dead when nothing arrived on any path for
  ``misses x interval`` (the window). Cutting one path never causes a failover.
  Each heartbeat is sealed with the pair's key (HMAC-SHA256 over all of it) and taken
  only from the peer's planned addresses, and only when newer than the last one heard
  (boot, seq): a forged, garbled or replayed one changes nothing (docs/security.md).
* Arbitrators ping external entities (the border gateway, the external site) with
  ICMP. Some failing: advisory. All failing on the ENABLED member: it goes NOTREADY
  (fail-stop), drops its VIPs and says so at once on the heartbeat link; the peer
  takes over unless its own arbitrators all fail too.
* One ENABLED member. Promotion takes epoch = highest seen + 1 (persisted first);
  a member hearing a higher epoch while ENABLED steps down at once. Elections
  order members by (epoch, replicated state, configured priority): the member with
  the newest data wins, and a member that lacks acknowledged writes never promotes.
* A lease: the ENABLED member serves only while its last heartbeat went out less
  than a window ago, so its peer cannot have declared it dead yet. A member whose
  own loop ran late by more than the window (SIGSTOP, starvation) is fenced: it
  refuses every request until its peer has answered a heartbeat sent after the
  freeze, then steps down if the peer took over.
* A planned switchover (``transition("DISABLE")`` on the ENABLED member, Eucalyptus's
  ModifyService) loses no request: new requests are held, those in flight finish, the
  member turns DISABLED with a heartbeat that offers the pair; the caught-up peer takes
  it at once (a new epoch, the VIPs); the held requests, and any that still reach the
  old member while caches learn where the VIPs went, are forwarded to the new primary;
  only then does the old member let its VIPs go. STOPPED (maintenance) serves nothing,
  keeps heartbeating and never takes over: no failover towards a member stopped on purpose.
* Takeover adds the VIPs and sends gratuitous ARP (EUCA-2281 forgot this), or, for a
  VIP with takeover sdn, tells the SDN controller (with the epoch) to steer the VIP's
  fixed virtual MAC here: nobody's ARP cache has to change.

Everything that touches time, the network or the host is injectable (``clock``,
``transport``, ``run`` for `ip addr`, ``garp``, ``redirect``, ``offload``), so tests/unit/test_ha_*.py drive two agents
through the fault table without root or real time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from . import ha_net
from .files import write_atomic
from .ha_config import HAConfig, VIP
from .states import ServiceState
from .supervise import supervise

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


def seal(secret: bytes, body: bytes) -> bytes:
    """A heartbeat on the wire: HMAC-SHA256 of the whole body under the pair's secret, then the body."""
    return hmac.new(secret, body, hashlib.sha256).digest() + body


def unseal(secret: bytes, data: bytes) -> bytes | None:
    """The body of a heartbeat sealed with ``secret``; None when the tag does not match
    (compared in constant time: the answer takes as long whatever bytes match)."""
    tag, body = data[:TAG_BYTES], data[TAG_BYTES:]
    if len(tag) < TAG_BYTES or not hmac.compare_digest(tag, hmac.new(secret, body, hashlib.sha256).digest()):
        return None
    return body


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


class HAAgent:
    """The HA half of a component: decides when it is ENABLED, and fences it when it must not serve.

    ``service`` needs ``events`` (an EventLog), ``state`` (a ServiceState) and
    ``set_state(state, reason)``. The component sets ``last_seq`` (its replicated-state
    position), ``on_promote(epoch)`` and ``on_demote(reason)`` before ``start()``.
    """

    def __init__(self, service, config: dict, *, clock: Callable[[], float] | None = None,
                 transport=None, run: Callable[..., Awaitable[int]] | None = None,
                 garp: Callable[[str, str], None] | None = None,
                 redirect: Callable[[int], Awaitable[tuple[int, dict]]] | None = None,
                 offload: Callable[..., Awaitable] | None = None):
        self.cfg = HAConfig.from_config(config)
        self.svc = service
        self.events = service.events
        self.clock = clock or _mono
        self.pair, self.host, self.priority = self.cfg.pair, self.cfg.host, self.cfg.priority
        self.interval, self.misses, self.window = self.cfg.interval, self.cfg.misses, self.cfg.window
        self.port = self.cfg.port
        self.peer_addresses = self.cfg.peer_addresses
        self.vips: list[VIP] = self.cfg.vips
        self.garp_vips = [v for v in self.vips if v.takeover == "garp"]
        self.sdn_vips = [v for v in self.vips if v.takeover == "sdn"]
        self.superseded: int | None = None  # a newer epoch of this pair the SDN controller holds
        self.arbitrators = [Arbitrator(a.name, a.target, self.cfg.arbitrator_fail_after)
                            for a in self.cfg.arbitrators]
        self.arb_period, self.arb_timeout = self.cfg.arbitrator_period_s, self.cfg.arbitrator_timeout_s
        self.data = Path(self.cfg.data_dir)
        self.epoch_file = self.data / "ha-epoch"  # the newest epoch this member used (or 1)
        self.epoch = min(_read_int(self.epoch_file) or 1, MAX_EPOCH)
        # Every epoch this member (in any incarnation) used is <= the reservation on disk:
        # its next promotion starts above it, so a restart never reuses an epoch even when
        # ha-epoch, written after the promotion, missed the newest one.
        self.reserve_file = self.data / "ha-epoch-reserved"
        self.floor = max(self.epoch, min(_read_int(self.reserve_file) or 1, MAX_EPOCH))
        self.reserved = self.floor  # what may be used without writing first
        self._reserve_lock = asyncio.Lock()
        # A member that has been primary before holds state its peer may have moved past
        # (the peer took over and acknowledged writes while this one was down): after a
        # restart it never claims the pair without hearing the peer first (EUCA-8110).
        # Only a member with no history (never primary, never heard its peer) may start the
        # pair alone.
        self.joined_file = self.data / "ha-joined"
        self.rejoining = self.epoch_file.exists() or self.joined_file.exists()
        self._refusal: tuple | None = None  # the last ha.cannot_promote, logged once per change
        self.secret = self.cfg.secret
        self.boot = self._new_boot()
        # The peer's newest incarnation heard, kept across restarts: a heartbeat of an older
        # one (captured and replayed) is refused even by a member that just restarted.
        self.peer_boot_file = self.data / "ha-peer-boot"
        self.peer_boot_floor = _read_int(self.peer_boot_file)
        self.rejected: dict[str, int] = {}  # heartbeats refused, by reason (status, ha.heartbeat_rejected)
        self._rejected_since_report: dict[str, int] = {}
        self._last_rejected_from: str | None = None
        self._last_reject_report = float("-inf")
        self.peer = Peer()
        self.seq = 0
        now = self.clock()
        self.last_tick = now
        self.last_sent: float | None = None  # the lease: when a heartbeat last left this member
        self.fenced_since: float | None = None
        self.fence_seq = 0  # first heartbeat sent after the freeze: the peer must acknowledge it
        self.hold_until = now + self.window + self.interval  # listen before claiming anything
        self.paused_until = 0.0  # after this process missed a tick: the peer counts as heard until then
        self.peer_dead_reported = False
        self.last_seq: Callable[[], int] = lambda: 0
        self.on_promote: Callable[[int], Awaitable[None]] | None = None
        self.on_demote: Callable[[str], Awaitable[None]] | None = None
        self._transport = transport
        self._endpoints: list[asyncio.DatagramTransport] = []
        self._run_cmd = run  # tests record `ip addr` commands; by default rtnetlink does it
        self._garp_sender = ha_net.GarpSender()
        self._garp = garp or self._garp_sender.send
        self._offload = offload or asyncio.to_thread  # blocking file work, off the loop (tests: inline)
        self._redirect_call = redirect or (lambda epoch: ha_net.redirect_vip(
            self.cfg.control_socket, self.pair, epoch, self.host))
        self._tasks: list[asyncio.Task] = []
        self._running: set[asyncio.Task] = set()
        self._pinger: ha_net.Pinger | None = None
        self._busy = False
        self._again = False
        self._deadline: asyncio.TimerHandle | None = None
        self._last_reannounce = float("-inf")
        self._failed_arbitrators: list[str] = []
        self.arb_failed_seq: int | None = None  # our heartbeat that first said all arbitrators failed
        self.confirm_wanted: int | None = None  # the peer's heartbeat asking for a fresh arbitrator round
        self.arb_confirm: tuple = (0, False)
        self._arb_wake: asyncio.Event | None = None
        self._held_enabled = False
        # Stepped down since it last served: its state may hold writes nobody acknowledged,
        # to be dropped once a newer ENABLED peer is there to catch up from (may_discard_state).
        self.discard_pending = False
        self.handover: Handover | None = None
        self._diversion: object | None = None  # the newest diversion of the peer's connections
        self.promoted_at = float("-inf")  # when this member last took the pair
        self.handover_drain_s = float(config.get("ha", {}).get("handover_drain_s", HANDOVER_DRAIN_S))
        self.handover_timeout_s = float(config.get("ha", {}).get("handover_timeout_s", HANDOVER_TIMEOUT_S))
        # The component's requests in flight: a handover waits for them to finish (set by Service).
        self.wait_idle: Callable[[float], Awaitable[bool]] = _idle
        self.wait_forwarded: Callable[[float], Awaitable[bool]] = _idle

    def _new_boot(self) -> int:
        """This incarnation's number, above every earlier one's (``ha-boot`` keeps the last):
        the peer refuses heartbeats of an older incarnation, so recorded ones cannot be
        replayed after a restart. The wall clock in microseconds, or the last one plus one."""
        path = self.data / "ha-boot"
        boot = max(time.time_ns() // 1000, (_read_int(path) or 0) + 1)
        self.data.mkdir(parents=True, exist_ok=True)
        write_atomic(path, str(boot))
        return boot

    # -- what the component asks ----------------------------------------------------------------

    def may_serve(self) -> bool:
        """The request gate: ENABLED, not fenced, and within the lease.

        The lease: the peer cannot declare this member dead earlier than a window after
        its last heartbeat, so a member whose last heartbeat is older than a window
        (its loop stalled) must not answer: the peer may be ENABLED already.
        """
        if self.svc.state is not ENABLED or self.fenced_since is not None or self.last_sent is None:
            return False
        return self.clock() - self.last_sent <= self.window

    def peer_address(self) -> str:
        """Where to reach the peer now: the first of its addresses heard from within the
        window (the heartbeat link while it works, else the cloud network), else the first."""
        now = self.clock()
        for address in self.peer_addresses:
            heard = self.peer.paths.get(address)
            if heard is not None and now - heard <= self.window:
                return address
        return self.peer_addresses[0]

    def peer_took_over(self) -> bool:
        """The alive peer is ENABLED, or has a newer epoch: a write here is not to be acknowledged."""
        p = self.peer
        return self.peer_alive() and (p.state == "ENABLED" or p.epoch > self.epoch)

    async def may_acknowledge_unreplicated(self, refused: bool, upto: int | None = None) -> bool:
        """A write whose replication to the DISABLED peer did not succeed: may the client be
        told it succeeded?

        Refused by the peer (it is ENABLED, or has a newer epoch): never; the peer took over
        and this member's copy will be discarded when it steps down. A transport error: only
        once the peer is declared dead (the write then lives here alone, and redundancy loss
        is reported), never while the peer may still be alive and about to take over.
        """
        if refused:
            return False
        deadline = self.clock() + self.window + 2 * self.interval
        while self.clock() < deadline:
            if self.svc.state is not ENABLED or not self.may_serve() or self.peer_took_over():
                return False
            if not self.peer_alive():
                return True
            if upto is not None and self.peer.state == "DISABLED" and self.peer.last_seq >= upto:
                return True  # the peer has it after all (a lost answer, or its catch-up), says its heartbeat
            await asyncio.sleep(self.interval / 2)
        return False

    def learn_epoch(self, epoch: int, why: str) -> None:
        """The SDN controller holds ``epoch`` for this pair (it refused a VIP redirect or an
        intent as stale): the peer moved on while this member could not hear it. An
        ENABLED member older than that steps down; any member's next promotion goes above it."""
        if MAX_EPOCH >= epoch > (self.superseded or 0):
            self.superseded = epoch
            self.events.emit("ha.superseded", epoch=epoch, my_epoch=self.epoch, why=why)
            self._spawn(self._decide(why))

    def may_discard_state(self) -> bool:
        """This member stepped down since it last served, and its alive peer is ENABLED at a
        newer position (epoch, replicated state): the component may drop its own state for
        the peer's (catch-up). Only an authenticated heartbeat sets what the peer says, and
        a member never drops its state with nobody newer to catch up from."""
        p = self.peer
        return (self.discard_pending and self.svc.state is not ENABLED and self.peer_alive()
                and p.state == "ENABLED" and (p.epoch, p.last_seq) > (self.epoch, self.last_seq()))

    def peer_alive(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return self.peer.heard is not None and (now - self.peer.heard <= self.window or now < self.paused_until)

    def all_arbitrators_failed(self) -> bool:
        return bool(self.arbitrators) and all(a.failed for a in self.arbitrators)

    def status(self) -> dict:
        return {"epoch": self.epoch, "serving": self.may_serve(), "fenced": self.fenced_since is not None,
                "interval_ms": self.interval * 1000, "misses": self.misses,
                "peer": {"member": self.peer.member, "alive": self.peer_alive(), "state": self.peer.state,
                         "epoch": self.peer.epoch, "paths": sorted(
                             a for a, t in self.peer.paths.items() if self.clock() - t <= self.window)},
                "arbitrators": [{"name": a.name, "target": a.target, "ok": not a.failed, "stopped": a.stopped}
                                for a in self.arbitrators],
                "heartbeats_rejected": dict(self.rejected)}

    def set_arbitrator_stopped(self, name: str, stopped: bool) -> bool:
        """Stop (maintenance) or start an arbitrator; False when there is no such arbitrator."""
        for a in self.arbitrators:
            if a.name == name:
                # The maintenance flag file is the one truth (the arbitration round re-reads it):
                # the API writes it, or a stop would be undone within one period.
                flag = self.data / "arbitrators" / f"{name}.stopped"
                if stopped:
                    flag.parent.mkdir(parents=True, exist_ok=True)
                    flag.write_text("stopped through the HA API\n")
                else:
                    flag.unlink(missing_ok=True)
                if a.stopped != stopped:
                    a.stopped = stopped
                    self.events.emit("arbitrator.stop" if stopped else "arbitrator.start", arbitrator=name)
                    self._arbitrators_changed()
                return True
        return False

    # -- operator transitions (ModifyService) ----------------------------------------------------

    def transition(self, name: str) -> str:
        """Start an operator's transition (START, STOP, ENABLE, DISABLE, RESTART, or the state
        names ENABLED, DISABLED, STOPPED); returns the transition taken. Refused with
        TransitionError, changing nothing, when it makes no sense in this member's state or
        would leave the pair with nobody serving. A planned switchover runs in the background:
        its progress is in the member's state and events."""
        name = TRANSITION_FOR_STATE.get(name.upper(), name.upper())
        if name not in TRANSITIONS:
            raise TransitionError("InvalidParameterValue", f"unknown transition {name!r}: one of "
                                  f"{', '.join(TRANSITIONS)} (or the states {', '.join(TRANSITION_FOR_STATE)})")
        state, p = self.svc.state, self.peer
        if self.handover is not None:
            if self.handover.phase == "forwarding" and name in ("STOP", "RESTART"):
                # Handed over, still forwarding: it stops once the forwarding is done.
                self.handover.then = name
                return name
            raise TransitionError("IncorrectState", "a planned switchover of this member is in progress")
        if name in ("DISABLE", "STOP", "RESTART") and state is ENABLED:
            if self.fenced_since is not None:
                raise TransitionError("IncorrectState", "this member is fenced; it is handing nothing over")
            if not self._standby_ready(caught_up=False):
                raise TransitionError("IncorrectState", f"the peer ({p.member or 'unknown'}) cannot take over "
                                      f"(it is {p.state if self.peer_alive() else 'not heard'}): a switchover "
                                      "would leave the pair with nobody serving")
            self.handover = Handover(self.epoch, self.clock(), then=None if name == "DISABLE" else name)
            self.events.emit("ha.handover_start", transition=name, epoch=self.epoch, peer=p.member,
                             last_seq=self.last_seq(), peer_last_seq=p.last_seq)
            self._spawn(self._hand_over(self.handover))
        elif name == "ENABLE":
            if state is ENABLED:
                return name
            if state is not DISABLED:
                raise TransitionError("IncorrectState", f"a {state.value} member cannot be ENABLED; START it first")
            if self.peer_alive() and p.state == "ENABLED":
                raise TransitionError("IncorrectState", f"the peer {p.member} is ENABLED: DISABLE it (a planned "
                                      "switchover hands the pair over)")
            self._spawn(self._decide("operator: ENABLE"))
        elif name == "DISABLE":
            if state not in (DISABLED, NOTREADY):
                raise TransitionError("IncorrectState", f"a {state.value} member cannot be DISABLED; START it")
        elif name in ("STOP", "RESTART"):
            self._stop_for_maintenance()
            if name == "RESTART":
                self._start_after_maintenance()
        elif name == "START":
            if state is STOPPED:
                self._start_after_maintenance()
        return name

    def _standby_ready(self, caught_up: bool = True) -> bool:
        """The peer could take the pair now: alive, DISABLED, reaching users, not fenced, and
        (``caught_up``) holding everything this member has acknowledged."""
        p = self.peer
        return (self.peer_alive() and p.state == "DISABLED" and p.arb_ok and not p.fenced
                and (not caught_up or p.last_seq >= self.last_seq()))

    def _stop_for_maintenance(self) -> None:
        if self.svc.state is not STOPPED:
            self.svc.set_state(STOPPED, "stopped by the operator (maintenance)")
            self.send_heartbeat()  # the peer learns at once that this member will not take over

    def _start_after_maintenance(self) -> None:
        """STOPPED -> DISABLED: a standby again, after it has heard its peer (it may be behind)."""
        self.svc.set_state(DISABLED, "started by the operator")
        self.hold_until = max(self.hold_until, self.clock() + self.window + self.interval)
        self.send_heartbeat()

    async def _hand_over(self, h: Handover) -> None:
        """A planned switchover, on the ENABLED member: no request is lost (see the module doc)."""
        try:
            # Not within a second of taking the pair: a neighbour ignores an ARP update for an
            # entry changed less than a second ago (Linux's locktime), and one that had not yet
            # learnt this member's address would not learn the peer's either. Served as usual
            # meanwhile.
            wait = self.promoted_at + HANDOVER_AFTER_PROMOTE_S - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            # A peer behind (back from maintenance, say) catches up first, while this member
            # serves: nobody waits on it.
            deadline = self.clock() + self.handover_timeout_s
            while not self._standby_ready() and self.clock() < deadline and self.svc.state is ENABLED:
                await asyncio.sleep(self.interval)
            if not self._standby_ready():
                await self._end_handover(h, None, "the peer is not ready to take over (behind, or no longer "
                                         "a standby)")
                return
            h.phase = "holding"
            t_hold = self.clock()
            idle = await self.wait_idle(self.handover_timeout_s)
            if self.svc.state is not ENABLED or self.fenced_since is not None or not idle \
                    or not self._standby_ready():
                await self._end_handover(h, None, "requests in flight did not finish in time" if not idle
                                         else "this member or its peer changed meanwhile")
                return
            self.svc.set_state(DISABLED, "planned switchover")
            h.phase = "offered"
            t_offer = self.clock()
            self.send_heartbeat()
            try:
                await asyncio.wait_for(h.taken.wait(), self.handover_timeout_s)
            except asyncio.TimeoutError:
                await self._end_handover(h, None, "the peer did not take over in time")
                return
            h.phase = "forwarding"
            t_taken = self.clock()
            await self._end_handover(h, self.peer_address(), None)
            self.events.emit("ha.handover", epoch=self.peer.epoch, peer=self.peer.member,
                             waited_s=round(max(wait, 0.0), 4), hold_s=round(t_taken - t_hold, 4),
                             offer_to_taken_s=round(t_taken - t_offer, 4))
            # What still reaches this member (caches that have not yet seen the new holder's
            # gratuitous ARP) is forwarded meanwhile; then the VIPs go.
            await asyncio.sleep(self.handover_drain_s)
            await self.wait_forwarded(self.handover_timeout_s)
        except Exception as exc:
            if not h.settled.is_set():  # never leave requests held
                await self._end_handover(h, None, f"failed: {exc!r}")
            raise
        finally:
            if self.handover is h:
                self.handover = None
                if h.successor is not None:
                    await self._release_vips()
                    if self.on_demote is not None:
                        await self.on_demote("planned switchover")
                    self.events.emit("ha.demote", to=DISABLED.value, reason="planned switchover", epoch=self.epoch)
                    if h.then in ("STOP", "RESTART"):
                        self._stop_for_maintenance()
                    if h.then == "RESTART":
                        self._start_after_maintenance()

    async def _end_handover(self, h: Handover, successor: str | None, aborted: str | None) -> None:
        """Let the held requests go on: forwarded to ``successor``, or, the switchover undone,
        served here again (this member takes the pair back with a new epoch)."""
        h.successor = successor
        if aborted is not None:
            self.events.emit("ha.handover_aborted", reason=aborted, epoch=self.epoch)
            self.handover = None
            if self.svc.state is DISABLED and self.fenced_since is None:
                await self._promote(f"planned switchover undone: {aborted}", self.clock())
        h.settled.set()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._transport is None:
            for address in self.cfg.listen:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Heartbeats(self), local_addr=(address, self.port), reuse_port=True)
                self._endpoints.append(transport)
            self._transport = self._endpoints[0]
        # Start DISABLED whatever the config said: the election decides (docs/ha.md).
        if self.svc.state is ENABLED:
            self.svc.set_state(DISABLED, "HA start: electing")
        await self._release_vips()
        if self._run_cmd is None:
            await self._load_rules(ha_net.undivert_ruleset())  # a diversion a crash left behind
        self.last_tick = self.clock()
        self.hold_until = self.last_tick + self.window + self.interval
        self._spawn(self._reserve_epochs())
        self._next_tick: float | None = None
        # A failing tick is retried at the heartbeat's pace, never slower: silence would
        # hand the pair to the peer.
        self._tasks.append(asyncio.create_task(supervise(self.events, "ha.ticker", self._ticker_round,
                                                         pause=self.interval, max_backoff=self.interval,
                                                         first_pause=False)))
        if self.arbitrators:
            self._pinger = ha_net.Pinger()
            self._arb_wake = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._arbitrate()))
        self.events.emit("ha.start", pair=self.pair, epoch=self.epoch, interval_ms=self.interval * 1000,
                         misses=self.misses, peer_addresses=self.peer_addresses,
                         arbitrators=[a.name for a in self.arbitrators], vips=[v.address for v in self.vips])

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for transport in self._endpoints:
            transport.close()
        for t in list(self._running):
            t.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._pinger:
            self._pinger.close()
        self._garp_sender.close()

    # -- heartbeats --------------------------------------------------------------------------------

    def _message(self, now: float) -> bytes:
        self.seq += 1
        return seal(self.secret, json.dumps({
            "pair": self.pair, "member": self.host, "epoch": self.epoch, "state": self.svc.state.value,
            "seq": self.seq, "t_mono": now, "boot": self.boot, "ack": [self.peer.boot, self.peer.seq],
            "last_seq": self.last_seq(), "priority": self.priority,
            "arb_ok": not self.all_arbitrators_failed(), "arb_confirm": list(self.arb_confirm),
            "fenced": self.fenced_since is not None,
            "handover": self.handover is not None and self.handover.phase == "offered",
        }).encode())

    def send_heartbeat(self) -> None:
        """One heartbeat on every path; renews the lease when at least one path took it."""
        if self._transport is None:
            return
        now = self.clock()
        msg = self._message(now)
        sent = False
        for i, addr in enumerate(self.peer_addresses):
            try:
                self._sender(i).sendto(msg, (addr, self.port))
                sent = True
            except OSError:
                pass  # a cut path: the other one carries the heartbeat
        if sent:
            self.last_sent = now

    def _sender(self, path: int):
        """The socket for the peer's ``path``-th address: the one bound to this member's own
        address on that network (listen and peer_addresses go path by path), so the peer
        sees the heartbeat come from the address it expects on the path it took."""
        if len(self._endpoints) == len(self.peer_addresses):
            return self._endpoints[path]
        return self._transport

    def _reject(self, reason: str, addr) -> None:
        """Count a refused heartbeat; said in an event at most every REJECT_REPORT_S (the
        ticker says what is left once that has passed)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._rejected_since_report[reason] = self._rejected_since_report.get(reason, 0) + 1
        self._last_rejected_from = addr[0]
        self._report_rejections()

    def _report_rejections(self) -> None:
        now = self.clock()
        if self._rejected_since_report and now - self._last_reject_report >= REJECT_REPORT_S:
            self._last_reject_report = now
            self.events.emit("ha.heartbeat_rejected", last_from=self._last_rejected_from,
                             counts=self._rejected_since_report)
            self._rejected_since_report = {}

    def _read_heartbeat(self, data: bytes, addr) -> dict | None:
        """The heartbeat in ``data`` if it is one the peer sent: from one of its planned
        addresses, sealed with the pair's secret, well formed and within bounds; else None
        (and the refusal counted). Replays are judged by the caller, against the peer's boot."""
        if addr[0] not in self.peer_addresses:
            self._reject("address", addr)
            return None
        body = unseal(self.secret, data)
        if body is None:
            self._reject("tag", addr)
            return None
        try:
            m = json.loads(body)
            m["boot"], m["seq"], m["epoch"] = int(m["boot"]), int(m["seq"]), int(m["epoch"])
            m["last_seq"] = int(m.get("last_seq", 0))
            ack, confirm = m.get("ack") or [None, 0], m.get("arb_confirm") or [0, False]
            m["ack"] = [None if ack[0] is None else int(ack[0]), int(ack[1])]
            m["arb_confirm"] = [int(confirm[0]), bool(confirm[1])]
            m["priority"], m["t_mono"] = int(m.get("priority", 0)), float(m.get("t_mono", 0.0))
            ok = (m.get("pair") == self.pair and m["member"] != self.host and m["state"] in STATES
                  and (self.cfg.peer is None or m["member"] == self.cfg.peer)
                  and 0 < m["epoch"] <= MAX_EPOCH and 0 <= m["seq"] < MAX_COUNTER
                  and 0 <= m["last_seq"] < MAX_COUNTER and 0 < m["boot"] < MAX_COUNTER)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            ok = False
        if not ok:
            self._reject("malformed", addr)  # sealed with the secret, yet not a heartbeat of this pair
            return None
        return m

    def on_heartbeat(self, data: bytes, addr) -> None:
        m = self._read_heartbeat(data, addr)
        if m is None:
            return
        member, boot, seq = m["member"], m["boot"], m["seq"]
        now = self.clock()
        p = self.peer
        ack = m["ack"]
        newest = p.boot if p.boot is not None else self.peer_boot_floor or 0
        if boot < newest or (boot == p.boot and seq < p.seq):
            self._reject("replay", addr)  # an older incarnation's, or overtaken long ago
            return
        if p.boot is None and boot == newest and ack[0] != self.boot:
            # The incarnation this member heard before it restarted: its heartbeats may have
            # been recorded then. Only one that answers this incarnation's heartbeats (the
            # peer's ack names our boot, unknown before this start) is fresh.
            self._reject("unacknowledged", addr)
            return
        p.paths[addr[0]] = now
        if boot == p.boot and seq == p.seq:
            return  # the same heartbeat on the other path
        was_alive = self.peer_alive(now)
        if boot != p.boot:
            p.boot, p.acked = boot, 0  # a new incarnation of the peer
            self.peer_boot_floor = boot
            self._spawn(self._offload(write_atomic, self.peer_boot_file, str(boot)))
        p.member, p.seq, p.heard = member, seq, now
        if not self.rejoining:
            # From now on this member holds the pair's state (or will, once caught up): after
            # a restart it must hear its peer before it may claim the pair.
            self.joined_file.write_text(f"{member}\n")
            self.rejoining = True
        p.state, p.epoch, p.sent = m["state"], m["epoch"], m["t_mono"]
        if self._next_epoch() + EPOCH_LOW_WATER > self.reserved and not self._reserve_lock.locked():
            self._spawn(self._reserve_epochs())  # the peer's epoch rose: reserve past it now
        p.last_seq, p.priority = m["last_seq"], m["priority"]
        arb_was_ok = p.arb_ok
        p.arb_ok, p.fenced = bool(m.get("arb_ok", True)), bool(m.get("fenced", False))
        p.handover = bool(m.get("handover", False)) and p.state == "DISABLED"
        h = self.handover
        if h is not None and p.state == "ENABLED" and p.epoch > h.epoch:
            h.taken.set()
        p.arb_confirm = tuple(m["arb_confirm"]) if ack[0] == self.boot else (0, False)
        if arb_was_ok and not p.arb_ok and self.arbitrators:
            # The peer's users look gone: probe ours now, so it learns within milliseconds
            # whether stepping down would help (it stays ENABLED if we cannot do better).
            self.confirm_wanted = seq
            if self._arb_wake is not None:
                self._arb_wake.set()
        if ack[0] == self.boot:
            p.acked = max(p.acked, ack[1])
        self._arm_deadline()
        if not was_alive:
            self.peer_dead_reported = False
            self.events.emit("ha.peer_alive", peer=member, epoch=p.epoch, state=p.state,
                             my_state=self.svc.state.value)
        if self.svc.state is ENABLED and self.fenced_since is None and (p.state == "ENABLED" or p.fenced) \
                and now - self._last_reannounce > 1.0:
            # A peer that believes (or believed) it is primary may have answered ARP for
            # our VIPs: announce them again so nobody keeps its stale location.
            self._last_reannounce = now
            self._spawn(self._announce(GARP_SCHEDULE_S[:1]))
            if self.sdn_vips:
                self._spawn(self._redirect())
        urgent = (self.fenced_since is not None
                  or (self.svc.state is ENABLED and (p.state == "ENABLED" or p.epoch > self.epoch
                                                     or self.all_arbitrators_failed()))
                  or (self.svc.state is DISABLED and p.state != "ENABLED"))
        if urgent:
            self._spawn(self._decide("heartbeat"))

    def _arm_deadline(self, after: float | None = None) -> None:
        """Check for silence exactly one window after this heartbeat (or ``after`` seconds
        from now), not at the next tick: detection then costs misses x interval, not up to
        one interval more."""
        if not self._tasks:
            return  # not started (unit tests drive decisions through tick())
        loop = asyncio.get_running_loop()
        if self._deadline is not None:
            self._deadline.cancel()
        delay = self.window if after is None else after
        self._deadline = loop.call_later(delay + 0.0005, lambda: self._spawn(self._decide("silence")))

    async def _ticker_round(self) -> float:
        """One tick of the supervised loop ``ha.ticker``, paced on a fixed grid; the pause
        until the next. A tick that raises (say a heartbeat's event cannot be written) is a
        ``loop.failed`` event and the heartbeats go on."""
        now = self.clock()
        if self._next_tick is None or self._next_tick + self.interval <= now:
            self._next_tick = now  # the first tick, or ran late: do not catch up with a burst
        self.tick()
        self._next_tick += self.interval
        return max(self._next_tick - self.clock(), 0.0)

    def tick(self) -> None:
        """One heartbeat period: freeze check, heartbeat, decision."""
        now = self.clock()
        late = now - self.last_tick
        if late > 2 * self.interval and self.peer.heard is not None and self.last_tick - self.peer.heard <= self.window:
            # This process missed a whole tick while its peer was alive: it was not scheduled
            # (a starved host, or a virtual machine its hypervisor paused, which pauses the
            # peer too: 5 members here once woke 150-166 ms late together, and a secondary
            # that did not count itself frozen declared its equally paused peer dead). The
            # silence over the pause is no evidence: the peer counts as heard for one more
            # interval (corosync's "process pause detected" does the same for its token).
            self.paused_until = now + self.interval
            if late <= self.window:  # longer: ha.frozen below says it
                self.events.emit("ha.paused", late_s=round(late, 4), state=self.svc.state.value)
            self._arm_deadline(after=self.interval)  # judge again when the grace ends
        if late > self.window:
            # This process did not run for a whole window: what it knows is stale and the
            # peer may have taken over. Listen again before claiming anything, and if it
            # was ENABLED stop serving and let go of the VIPs at once, before anything else.
            self.hold_until = max(self.hold_until, now + self.window + self.interval)
            fence = self.svc.state is ENABLED and self.fenced_since is None
            self.events.emit("ha.frozen", late_s=round(late, 4), state=self.svc.state.value, fenced=fence)
            if fence:
                self.fenced_since = now
                self.fence_seq = self.seq + 1  # the heartbeat sent just below
                self._spawn(self._release_vips())
        self.last_tick = now
        self.send_heartbeat()
        self._report_rejections()
        # Decisions run beside the ticker: a slow takeover step must never delay a heartbeat.
        self._spawn(self._decide("tick"))

    def _spawn(self, coro) -> None:
        """Run a coroutine beside the ticker; an exception is an ``ha.error`` event, never lost."""
        self.events.spawn(coro, self._running, "ha.error")

    # -- decisions ---------------------------------------------------------------------------------

    def _outranks_peer(self) -> bool:
        mine = (self.epoch, self.last_seq(), self.priority)
        theirs = (self.peer.epoch, self.peer.last_seq, self.peer.priority)
        return mine > theirs

    async def _decide(self, why: str) -> None:
        # One decision at a time; a request arriving meanwhile runs right after it.
        if self._busy:
            self._again = True
            return
        self._busy = True
        try:
            while True:
                self._again = False
                await self._decide_once(why)
                if not self._again:
                    return
                why = "again"
        finally:
            self._busy = False

    async def _decide_once(self, why: str) -> None:
        now = self.clock()
        state = self.svc.state
        p = self.peer
        alive = self.peer_alive(now)
        if not alive and p.heard is not None and not self.peer_dead_reported:
            self.peer_dead_reported = True
            self.events.emit("ha.peer_dead", peer=p.member, last_heard=p.heard, detected_at=now,
                             silence_s=round(now - p.heard, 4), my_state=state.value, why=why)
            if state is ENABLED:
                self.events.emit("ha.redundancy_lost", peer=p.member)
        if self.fenced_since is not None:
            await self._after_freeze(now, alive)
            return
        if state is ENABLED:
            if self.all_arbitrators_failed():
                if self._peer_confirms_users():
                    await self._demote("all arbitrators failed", to=NOTREADY)
                elif not self._held_enabled:
                    # Users reach neither member (or the peer is gone): stepping down would
                    # only turn a doubtful reachability problem into a certain outage.
                    self._held_enabled = True
                    self.events.emit("ha.no_failover", reason="all arbitrators failed but the peer cannot "
                                     "take over", peer_alive=alive, peer_arb_ok=p.arb_ok,
                                     peer_confirm=list(p.arb_confirm))
                return
            self._held_enabled = False
            if self.superseded is not None and self.superseded > self.epoch:
                await self._demote(f"the SDN controller holds a newer epoch ({self.superseded})")
            elif alive and p.epoch > self.epoch:
                await self._demote(f"peer has a higher epoch ({p.epoch} > {self.epoch})")
            elif alive and p.state == "ENABLED" and not self._outranks_peer():
                await self._demote("peer is ENABLED and outranks this member")
            return
        if state is NOTREADY:
            if not self.all_arbitrators_failed():
                self.svc.set_state(DISABLED, "arbitrators recovered")
            return
        if state is not DISABLED or (self.handover is not None and self.handover.phase != "forwarding"):
            return  # STOPPED (maintenance) never takes over; a handover under way decides for itself
        # DISABLED: take over only when users can reach us and the data is ours to serve.
        if now < self.hold_until or self.all_arbitrators_failed():
            return
        if alive:
            if p.state == "ENABLED":
                return
            if self.last_seq() < p.last_seq:
                return  # behind: catching up first (never serve older state)
            if p.handover:
                await self._promote("planned switchover", now)
            elif p.state in NOT_SERVING:
                await self._promote(f"peer {p.state}" + ("" if p.arb_ok else ": it lost its arbitrators"), now)
            elif self._outranks_peer():
                await self._promote("election", now)
            return
        if p.heard is not None and self.last_seq() < p.last_seq:
            self._cannot_promote("missing replicated state", mine=self.last_seq(), peer=p.last_seq)
            return
        if p.heard is None and self.rejoining:
            self._cannot_promote("restarted without hearing its peer, which may hold newer state",
                                 epoch=self.epoch)
            return
        await self._promote("peer dead" if p.heard is not None else "no peer at start", now)

    def _cannot_promote(self, reason: str, **facts) -> None:
        """Log a refusal to take over once, not on every tick it is re-decided."""
        if self._refusal != (reason, facts):
            self._refusal = (reason, facts)
            self.events.emit("ha.cannot_promote", reason=reason, **facts)

    def _peer_confirms_users(self) -> bool:
        """True when the alive peer probed its arbitrators after ours all failed and reached one."""
        p = self.peer
        return (self.peer_alive() and p.arb_ok and self.arb_failed_seq is not None
                and p.arb_confirm[0] >= self.arb_failed_seq and p.arb_confirm[1])

    async def _after_freeze(self, now: float, alive: bool) -> None:
        """A fenced member decides only on a heartbeat the peer sent after hearing this
        member's post-freeze heartbeat (older ones may be queued in the socket), or on
        a window of silence after the freeze."""
        p = self.peer
        if alive and p.acked >= self.fence_seq:
            self.fenced_since = None
            self.events.emit("ha.unfenced", peer_state=p.state, peer_epoch=p.epoch)
            if p.state == "ENABLED" or p.epoch > self.epoch:
                await self._demote("peer took over while this member was frozen")
            else:
                await self._acquire_vips()  # the peer did not take over: carry on
        elif now - self.fenced_since > self.window + self.interval:
            self.fenced_since = None
            self.events.emit("ha.unfenced", peer_state=None, peer_epoch=p.epoch)
            if p.epoch > self.epoch:
                # The peer promoted while this member was frozen and is silent now: step
                # down; a fresh election with a new epoch follows if it stays silent.
                await self._demote("peer took over while this member was frozen")
            else:
                await self._acquire_vips()

    def _next_epoch(self) -> int:
        return max(self.epoch, self.peer.epoch, self.superseded or 0, self.floor) + 1

    async def _reserve_epochs(self, needed: int = 0) -> None:
        """Keep the reservation on disk EPOCH_RESERVE past the next epoch this member would use.

        In a worker thread: on a busy disk a rename can wait hundreds of ms for the
        filesystem journal, and the loop must go on sending heartbeats meanwhile (a stalled
        loop fences itself). One write at a time.
        """
        async with self._reserve_lock:
            if max(needed, self._next_epoch()) + EPOCH_LOW_WATER <= self.reserved:
                return
            target = max(needed, self._next_epoch()) + EPOCH_RESERVE
            await self._offload(write_atomic, self.reserve_file, str(target))
            self.reserved = max(self.reserved, target)

    async def _promote(self, reason: str, detected_at: float) -> None:
        epoch = self._next_epoch()
        t0 = self.clock()
        if epoch > self.reserved:
            # Before acting, past the reservation: write it first (rare: it runs ahead).
            await self._reserve_epochs(epoch)
        if not self.rejoining:
            # The first promotion of a member without history (the pair's start): from now on
            # it has been primary, and a restart must not start the pair alone. Not a takeover.
            await self._offload(write_atomic, self.epoch_file, str(epoch))
            self.rejoining = True
        persist_s = self.clock() - t0
        self.promoted_at = self.clock()
        self.epoch = epoch
        self.discard_pending = False  # its state is the pair's now
        if self.handover is not None:
            # Handed back while still forwarding to the peer (two switchovers in a row): it
            # serves here again, with the VIPs it still holds.
            self.events.emit("ha.handover_ended", reason="the pair came back", epoch=epoch)
            self.handover = None
        if self.on_promote is not None:
            await self.on_promote(self.epoch)
        self.svc.set_state(ENABLED, reason)
        self.send_heartbeat()  # tell the peer first: it must not think it is primary
        if reason == "planned switchover":
            await self._divert_peer_connections()  # before the VIPs: they pull those connections here
        garp = await self._acquire_vips()
        self.events.emit("ha.promote", epoch=self.epoch, reason=reason, detected_at=detected_at,
                         last_heard=self.peer.heard, vip_at=self.clock(), garp_sent=garp,
                         epoch_persist_s=round(persist_s, 4))
        self._spawn(self._record_epoch(epoch))

    async def _divert_peer_connections(self) -> None:
        """The new holder after a planned switchover: for ``handover_drain_s`` (while the old
        holder keeps its VIPs and answers), segments of connections the old holder accepted
        that reach this member, as neighbours take its gratuitous ARP mid-connection, go on
        to the old holder instead of being reset here (ha_net.divert_ruleset, docs/ha.md)."""
        routes = []
        for v in self.vips:
            net = ipaddress.ip_network(f"{v.address}/{v.prefix}", strict=False)
            peer = next((a for a in self.peer_addresses if ipaddress.ip_address(a) in net), None)
            if peer is not None:
                routes.append((v.address, peer, v.interface))
        if not routes or not await self._load_rules(ha_net.divert_ruleset(routes)):
            return
        self.events.emit("ha.divert", to=routes[0][1], vips=[r[0] for r in routes], seconds=self.handover_drain_s)
        self._diversion = diversion = object()  # a later switchover's diversion outlives this one's end

        async def end() -> None:
            await asyncio.sleep(self.handover_drain_s)
            if self._diversion is diversion and await self._load_rules(ha_net.undivert_ruleset()):
                self.events.emit("ha.divert_end")
        self._spawn(end())

    async def _load_rules(self, text: str) -> bool:
        """nftables input in this member's namespace (tests: recorded as an ``nft`` command)."""
        try:
            if self._run_cmd is not None:
                return await self._run_cmd("nft", text) == 0
            ha_net.load_rules(text)  # one netlink transaction, well under a millisecond
            return True
        except (OSError, RuntimeError) as exc:
            self.events.emit("ha.divert_failed", error=str(exc))
            return False

    async def _record_epoch(self, epoch: int) -> None:
        """After the takeover: ha-epoch (what a restart advertises) and the reservation ahead."""
        async with self._reserve_lock:
            if self.epoch == epoch:
                await self._offload(write_atomic, self.epoch_file, str(epoch))
        await self._reserve_epochs()

    async def _demote(self, reason: str, to: ServiceState = DISABLED) -> None:
        self.discard_pending = True
        self.svc.set_state(to, reason)
        self.send_heartbeat()  # at once: the peer may take over now
        await self._release_vips()
        if self.on_demote is not None:
            await self.on_demote(reason)
        self.events.emit("ha.demote", to=to.value, reason=reason, epoch=self.epoch)

    # -- VIPs --------------------------------------------------------------------------------------

    async def _acquire_vips(self) -> bool:
        """Add the VIPs and announce them (gratuitous ARP, or the controller's redirect for a
        VIP with takeover sdn); True when every VIP is up and announced."""
        codes = {v: await self._set_vip(True, v) for v in self.vips}
        ok = True
        for v in self.garp_vips:
            garp = codes[v] == 0 and self._send_garp(v)
            ok = ok and garp
            self.events.emit("ha.vip_acquired", vip=v.address, interface=v.interface, added=codes[v] == 0,
                             garp_sent=garp)
        if self.garp_vips:
            self._spawn(self._announce(GARP_SCHEDULE_S[1:]))
        if self.sdn_vips:
            # The address first (the kernel must accept the VIP's packets), then the flows.
            redirected = await self._redirect()
            for v in self.sdn_vips:
                ok = ok and codes[v] == 0 and redirected
                self.events.emit("ha.vip_acquired", vip=v.address, interface=v.interface, added=codes[v] == 0,
                                 redirected=redirected)
        return ok

    async def _redirect(self) -> bool:
        """Tell the SDN controller this member holds the pair's VIP at this epoch (takeover sdn).

        Refused (409): the controller accepted a newer epoch, the peer took over while this
        member could not hear it; the decision loop steps down. No controller or no answer:
        retried every interval in the background while this member stays ENABLED at this epoch.
        """
        epoch = self.epoch
        done = await self._redirect_once(epoch)
        if done is None:
            self._spawn(self._redirect_retry(epoch))
        return bool(done)

    async def _redirect_once(self, epoch: int) -> bool | None:
        """One redirect request; True accepted, False refused, None not answered."""
        t0 = self.clock()
        try:
            status, body = await self._redirect_call(epoch)
        except (OSError, ValueError) as exc:
            self.events.emit("ha.redirect_failed", epoch=epoch, error=str(exc))
            return None
        if status == 200:
            self.events.emit("ha.vip_redirected", epoch=epoch, seconds=round(self.clock() - t0, 4),
                             installed=body.get("installed"), flows_added=body.get("flows_added"))
            return True
        self.events.emit("ha.redirect_refused", epoch=epoch, status=status, error=body.get("error"),
                         current=body.get("current"))
        if status == 409 and isinstance(body.get("current"), int):
            self.learn_epoch(body["current"], "redirect refused")
        return False

    async def _redirect_retry(self, epoch: int) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.svc.state is not ENABLED or self.fenced_since is not None or self.epoch != epoch:
                return
            if await self._redirect_once(epoch) is not None:
                return

    def _send_garp(self, vip: VIP) -> bool:
        try:
            self._garp(vip.interface, vip.address)
            return True
        except OSError as exc:
            self.events.emit("ha.garp_failed", vip=vip.address, interface=vip.interface, error=str(exc))
            return False

    async def _announce(self, schedule=GARP_SCHEDULE_S) -> None:
        """Gratuitous ARP again: Linux ignores an ARP update for an entry changed less than
        locktime (1 s) ago, so the announcement is repeated past it."""
        start = self.clock()
        for at in schedule:
            delay = start + at - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # A member that lost the VIPs meanwhile must not announce them: that would pull
            # traffic back to a host that drops it.
            if self.svc.state is not ENABLED or self.fenced_since is not None:
                return
            for v in self.garp_vips:
                self._send_garp(v)

    async def release_vips(self) -> None:
        """Drop the VIPs (a member restarting after a crash may still hold them)."""
        await self._release_vips()

    async def _release_vips(self) -> None:
        for v in self.vips:
            await self._set_vip(False, v)

    async def _set_vip(self, add: bool, v: VIP) -> int:
        """Add or delete one VIP; 0 on success (deleting a VIP not held is no error)."""
        if self._run_cmd is not None:
            return await self._run_cmd("ip", "addr", "replace" if add else "del", f"{v.address}/{v.prefix}",
                                       "dev", v.interface)
        try:
            code = ha_net.set_address(add, v.interface, v.address, v.prefix)
        except OSError as exc:
            code = exc.errno or -1
        if add and code:
            self.events.emit("ha.vip_error", vip=v.address, interface=v.interface, errno=code)
        return code

    # -- arbitrators -------------------------------------------------------------------------------

    def _flagged(self, a: Arbitrator) -> bool:
        """Maintenance by file: ``<data_dir>/arbitrators/<name>.stopped`` stops an arbitrator."""
        return (self.data / "arbitrators" / f"{a.name}.stopped").exists()

    async def _arbitrate(self) -> None:
        # A random phase keeps the arbitrators of a pair from probing in lock step.
        await self._arbitration_pause(random.uniform(0, self.arb_period))
        await supervise(self.events, "ha.arbitrate", self._arbitrate_round, pause=self.arb_period, first_pause=False)

    async def _arbitrate_round(self) -> float:
        """One probe of every arbitrator, then the pause until the next (supervised)."""
        t0 = self.clock()
        self._arb_wake.clear()
        results = await asyncio.gather(*(self._pinger.ping(a.target, self.arb_timeout) for a in self.arbitrators))
        self.record_arbitration(results)
        await self._arbitration_pause(self.arb_period - (self.clock() - t0))
        return 0.0

    async def _arbitration_pause(self, seconds: float) -> None:
        """Sleep until the next round, or until the peer asks for a fresh one."""
        try:
            await asyncio.wait_for(self._arb_wake.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            pass

    def record_arbitration(self, results: list[bool]) -> None:
        """One round of arbitrator probes (one result per arbitrator, in order)."""
        confirm = self.confirm_wanted
        self.confirm_wanted = None
        for a, ok in zip(self.arbitrators, results):
            a.misses = 0 if ok else a.misses + 1
            a.ok = a.misses < a.fail_after
            flagged = self._flagged(a)
            if flagged != a.stopped:
                a.stopped = flagged
                self.events.emit("arbitrator.stop" if flagged else "arbitrator.start", arbitrator=a.name,
                                 by="file")
        if confirm is not None:
            # A round that started after the peer asked: tell it whether users reach us.
            self.arb_confirm = (confirm, any(r for r, a in zip(results, self.arbitrators) if not a.stopped))
            self.events.emit("arbitrator.confirm", peer_seq=confirm, reachable=self.arb_confirm[1])
        if not self._arbitrators_changed() and confirm is not None:
            self.send_heartbeat()

    def _arbitrators_changed(self) -> bool:
        """Report arbitrator changes; True when the set of failed arbitrators changed (a
        heartbeat then went out)."""
        failed = [a.name for a in self.arbitrators if a.failed]
        before = self._failed_arbitrators
        for a in self.arbitrators:
            if (a.name in failed) != (a.name in before):
                self.events.emit("arbitrator.fail" if a.failed else "arbitrator.recover", arbitrator=a.name,
                                 target=a.target, reason="stopped" if a.stopped else f"{a.misses} misses")
        if failed == before:
            return False
        self._failed_arbitrators = failed
        if self.all_arbitrators_failed():
            self.arb_failed_seq = self.seq + 1  # the heartbeat sent below
            self.events.emit("arbitrator.all_failed", arbitrators=failed, state=self.svc.state.value)
        elif failed:
            # Some arbitrators down (maintenance, a flaky path): advisory only.
            self.events.emit("arbitrator.advisory", failed=failed, total=len(self.arbitrators))
        if _loop_running():
            self._spawn(self._decide("arbitrators"))
        self.send_heartbeat()  # arb_ok travels in the heartbeat: the peer learns at once
        return True


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


class _Heartbeats(asyncio.DatagramProtocol):
    def __init__(self, agent: HAAgent):
        self.agent = agent

    def datagram_received(self, data: bytes, addr) -> None:
        self.agent.on_heartbeat(data, addr)
