"""``HAAgent``: the facade a component builds and calls. It holds the state its parts share
(what the member knows of itself and of its peer) and delegates each concern to one part,
built once here (see the package's docstring for the design and the parts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable

from .. import ha_net
from ..ha_config import HAConfig, VIP
from ..supervise import supervise
from .arbitration import Arbitration
from .decision import Decision
from .epochs import Epochs
from .heartbeat_thread import HeartbeatThread
from .heartbeats import Heartbeats
from .model import DISABLED, ENABLED, HANDOVER_DRAIN_S, HANDOVER_TIMEOUT_S, Arbitrator, Delegate, Handover, Peer, \
    _idle, _mono
from .switchover import Switchover
from .ticker import Ticker
from .vips import Vips


class HAAgent:
    """The HA half of a component: decides when it is ENABLED, and fences it when it must not serve.

    ``service`` needs ``events`` (an EventLog), ``state`` (a ServiceState) and
    ``set_state(state, reason)``. The component sets ``last_seq`` (its replicated-state
    position), ``on_promote(epoch)`` and ``on_demote(reason)`` before ``start()``, and may set
    ``standby_ready()`` (then it sends a heartbeat when that turns true).
    """

    # What the component asks (the request gate, the peer, replication's questions).
    may_serve = Delegate("ticker")
    peer_address = Delegate("heartbeats")
    peer_alive = Delegate("decision")
    peer_took_over = Delegate("decision")
    may_acknowledge_unreplicated = Delegate("decision")
    may_discard_state = Delegate("decision")
    learn_epoch = Delegate("decision")
    all_arbitrators_failed = Delegate("arbitration")
    set_arbitrator_stopped = Delegate("arbitration")
    record_arbitration = Delegate("arbitration")
    transition = Delegate("switchover")
    coordinator_order = Delegate("switchover")
    release_vips = Delegate("virtual_ips")
    # Heartbeats and ticks (tests drive them by hand).
    send_heartbeat = Delegate("heartbeats")
    on_heartbeat = Delegate("heartbeats")
    rejected = Delegate("heartbeats")
    peer_boot_floor = Delegate("heartbeats")
    tick = Delegate("ticker")
    # What one part asks of another (Part.SHARED names them).
    _report_rejections = Delegate("heartbeats")
    _arm_deadline = Delegate("ticker")
    _decide = Delegate("decision")
    _promote = Delegate("decision")
    _demote = Delegate("decision")
    _next_epoch = Delegate("epochs")
    _reserve_epochs = Delegate("epochs")
    _record_epoch = Delegate("epochs")
    reserved = Delegate("epochs")
    epoch_file = Delegate("epochs")
    joined_file = Delegate("epochs")
    _acquire_vips = Delegate("virtual_ips")
    _release_vips = Delegate("virtual_ips")
    _announce = Delegate("virtual_ips")
    _redirect = Delegate("virtual_ips")
    _divert_peer_connections = Delegate("virtual_ips")
    _load_rules = Delegate("virtual_ips")

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
        self.detector = self.cfg.detector  # heartbeat, or coordinator: a takeover waits for its order
        self.enable_ordered_until = float("-inf")  # the coordinator's ENABLE stands until then
        self.superseded: int | None = None  # a newer epoch of this pair the SDN controller holds
        self.arbitrators = [Arbitrator(a.name, a.target, self.cfg.arbitrator_fail_after)
                            for a in self.cfg.arbitrators]
        self.arb_period, self.arb_timeout = self.cfg.arbitrator_period_s, self.cfg.arbitrator_timeout_s
        self.data = Path(self.cfg.data_dir)
        self._offload = offload or asyncio.to_thread  # blocking file work, off the loop (tests: inline)
        self._running: set[asyncio.Task] = set()
        self.peer = Peer()
        self.epochs = Epochs(self)  # sets epoch and rejoining from the files
        self.secret = self.cfg.secret
        self.boot = self.epochs._new_boot()
        self.heartbeats = Heartbeats(self)
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
        # Whether this member, DISABLED, could take the pair at once (a CC: staged at the SDN
        # controller at the newest epoch); a planned switchover to it waits for it.
        self.standby_ready: Callable[[], bool] = lambda: True
        self.on_promote: Callable[[int], Awaitable[None]] | None = None
        self.on_demote: Callable[[str], Awaitable[None]] | None = None
        self._transport = transport
        self._endpoints: list = []  # the heartbeat sockets, one per listening address
        self.heartbeat_thread: HeartbeatThread | None = None  # with real sockets only (not in unit tests)
        self._run_cmd = run  # tests record `ip addr` commands; by default rtnetlink does it
        self._tasks: list[asyncio.Task] = []
        self.arb_failed_seq: int | None = None  # our heartbeat that first said all arbitrators failed
        self.confirm_wanted: int | None = None  # the peer's heartbeat asking for a fresh arbitrator round
        self.arb_confirm: tuple = (0, False)
        # Stepped down since it last served: its state may hold writes nobody acknowledged,
        # to be dropped once a newer ENABLED peer is there to catch up from (may_discard_state).
        self.discard_pending = False
        self.handover: Handover | None = None
        self.promoted_at = float("-inf")  # when this member last took the pair
        self.handover_drain_s = float(config.get("ha", {}).get("handover_drain_s", HANDOVER_DRAIN_S))
        self.handover_timeout_s = float(config.get("ha", {}).get("handover_timeout_s", HANDOVER_TIMEOUT_S))
        # The component's requests in flight: a handover waits for them to finish (set by Service).
        self.wait_idle: Callable[[float], Awaitable[bool]] = _idle
        self.wait_forwarded: Callable[[float], Awaitable[bool]] = _idle
        self.ticker = Ticker(self)
        self.decision = Decision(self)
        self.virtual_ips = Vips(self, garp, redirect)
        self.arbitration = Arbitration(self)
        self.switchover = Switchover(self)

    def status(self) -> dict:
        return {"epoch": self.epoch, "serving": self.may_serve(), "fenced": self.fenced_since is not None,
                "interval_ms": self.interval * 1000, "misses": self.misses,
                "peer": {"member": self.peer.member, "alive": self.peer_alive(), "state": self.peer.state,
                         "epoch": self.peer.epoch, "paths": sorted(
                             a for a, t in self.peer.paths.items() if self.clock() - t <= self.window)},
                "arbitrators": [{"name": a.name, "target": a.target, "ok": not a.failed, "stopped": a.stopped}
                                for a in self.arbitrators],
                "heartbeats_rejected": dict(self.rejected)}

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._transport is None:
            self.heartbeats.open()
            self.heartbeat_thread = HeartbeatThread(self, asyncio.get_running_loop())
        # Start DISABLED whatever the config said: the election decides (docs/ha.md).
        if self.svc.state is ENABLED:
            self.svc.set_state(DISABLED, "HA start: electing")
        await self._release_vips()
        if self._run_cmd is None:
            await self._load_rules(ha_net.undivert_ruleset())  # a diversion a crash left behind
        self.last_tick = self.clock()
        self.hold_until = self.last_tick + self.window + self.interval
        self._spawn(self._reserve_epochs())
        # A failing tick is retried at the heartbeat's pace, never slower: silence would
        # hand the pair to the peer.
        self._tasks.append(asyncio.create_task(supervise(self.events, "ha.ticker", self.ticker._ticker_round,
                                                         pause=self.interval, max_backoff=self.interval,
                                                         first_pause=False)))
        arbitrate = self.arbitration.start()
        if arbitrate is not None:
            self._tasks.append(arbitrate)
        if self.heartbeat_thread is not None:
            # No await from here to the caller's service.start: the thread hands heartbeats to
            # the loop at its next await, so ha.peer_alive follows ha.start and service.start
            # in the event log (readers take service.start for a new process: an earlier
            # peer_alive would be forgotten, and the member never counted as a standby).
            self.heartbeats.publish()
            self.heartbeat_thread.start()
            self.heartbeat_thread.ready.wait(1.0)  # the thread's first lines: well under a millisecond
            self.events.emit("ha.heartbeat_thread", policy=self.heartbeat_thread.policy,
                             error=self.heartbeat_thread.error)
        self.events.emit("ha.start", pair=self.pair, epoch=self.epoch, interval_ms=self.interval * 1000,
                         misses=self.misses, peer_addresses=self.peer_addresses,
                         arbitrators=[a.name for a in self.arbitrators], vips=[v.address for v in self.vips])

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.heartbeat_thread is not None:
            await asyncio.to_thread(self.heartbeat_thread.stop)
        for transport in self._endpoints:
            transport.close()
        for t in list(self._running):
            t.cancel()
        self.ticker.stop()
        self.arbitration.close()
        self.virtual_ips.close()

    def _spawn(self, coro) -> None:
        """Run a coroutine beside the ticker; an exception is an ``ha.error`` event, never lost."""
        self.events.spawn(coro, self._running, "ha.error")
