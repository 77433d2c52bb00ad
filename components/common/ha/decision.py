"""An HA agent's decisions: the state machine that promotes and demotes a member (one decision
at a time), the freeze fence, and the queries that depend on the peer's liveness."""

from __future__ import annotations

import asyncio

from ..files import write_atomic
from ..states import ServiceState
from .model import DISABLED, ENABLED, MAX_EPOCH, NOT_SERVING, NOTREADY, Part


class Decision(Part):
    """Decides, promotes and demotes; ``peer_alive`` is the one judgement of the peer's silence."""

    SHARED = frozenset({
        "_acquire_vips", "_divert_peer_connections", "_next_epoch", "_offload", "_record_epoch", "_release_vips", "_reserve_epochs",
        "_spawn", "all_arbitrators_failed", "arb_failed_seq", "clock", "discard_pending", "epoch",
        "detector", "enable_ordered_until", "epoch_file", "events", "fence_seq", "fenced_since", "handover", "hold_until", "interval",
        "last_seq", "may_serve", "on_demote", "on_promote", "paused_until", "peer", "peer_dead_reported",
        "priority", "promoted_at", "rejoining", "reserved", "send_heartbeat", "superseded", "svc", "window"})

    def __init__(self, agent):
        super().__init__(agent)
        self._busy = False
        self._again = False
        self._held_enabled = False
        self._refusal: tuple | None = None  # the last ha.cannot_promote, logged once per change

    def peer_alive(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return self.peer.heard is not None and (now - self.peer.heard <= self.window or now < self.paused_until)

    def peer_took_over(self) -> bool:
        """The alive peer is ENABLED, or has a newer epoch: a write here is not to be acknowledged."""
        p = self.peer
        return self.peer_alive() and (p.state == "ENABLED" or p.epoch > self.epoch)

    def may_discard_state(self) -> bool:
        """This member stepped down since it last served, and its alive peer is ENABLED at a
        newer position (epoch, replicated state): the component may drop its own state for
        the peer's (catch-up). Only an authenticated heartbeat sets what the peer says, and
        a member never drops its state with nobody newer to catch up from."""
        p = self.peer
        return (self.discard_pending and self.svc.state is not ENABLED and self.peer_alive()
                and p.state == "ENABLED" and (p.epoch, p.last_seq) > (self.epoch, self.last_seq()))

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
                if self.detector == "coordinator":
                    pass  # the coordinator judges the arbitrators on its rounds and disables this member
                elif self._peer_confirms_users():
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
        # Under the coordinator a member takes over from a dead or failed peer only on its
        # ENABLE order, and with the same guards as below (never beside an ENABLED peer).
        ordered = now < self.enable_ordered_until
        waits = self.detector == "coordinator" and not ordered
        if alive:
            if p.state == "ENABLED":
                return
            if self.last_seq() < p.last_seq:
                return  # behind: catching up first (never serve older state)
            if p.handover:
                await self._promote("planned switchover", now)
            elif ordered and (p.state in NOT_SERVING or self._outranks_peer()):
                # Beside an alive DISABLED peer the order promotes only the member that would
                # win the election: the peer, deciding at the same moment, never promotes too.
                await self._promote("coordinator: ENABLE", now)
            elif p.state in NOT_SERVING:
                if not waits:
                    await self._promote(f"peer {p.state}" + ("" if p.arb_ok else ": it lost its arbitrators"), now)
            elif self._outranks_peer():
                await self._promote("election", now)
            return
        if p.heard is not None and waits:
            return  # the peer's silence is the coordinator's to judge
        if p.heard is not None and self.last_seq() < p.last_seq:
            self._cannot_promote("missing replicated state", mine=self.last_seq(), peer=p.last_seq)
            return
        if p.heard is None and self.rejoining:
            self._cannot_promote("restarted without hearing its peer, which may hold newer state",
                                 epoch=self.epoch)
            return
        await self._promote("coordinator: ENABLE" if ordered else "peer dead" if p.heard is not None
                            else "no peer at start", now)

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
        self.enable_ordered_until = float("-inf")  # carried out
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

    async def _demote(self, reason: str, to: ServiceState = DISABLED) -> None:
        self.discard_pending = True
        self.svc.set_state(to, reason)
        self.send_heartbeat()  # at once: the peer may take over now
        await self._release_vips()
        if self.on_demote is not None:
            await self.on_demote(reason)
        self.events.emit("ha.demote", to=to.value, reason=reason, epoch=self.epoch)
