"""An HA agent's operator transitions (Eucalyptus's ModifyService): the planned switchover that
loses no request (``Handover``), and maintenance (STOPPED). The methods are those of the agent,
unchanged: their names are the agent's (``Part.SHARED``)."""

from __future__ import annotations

import asyncio

from .model import (DISABLED, ENABLED, HANDOVER_AFTER_PROMOTE_S, NOTREADY, STOPPED, TRANSITION_FOR_STATE, TRANSITIONS,
                    Handover, Part, TransitionError)


class Switchover(Part):
    """``transition()`` and the planned switchover it starts; the one in progress is ``agent.handover``."""

    SHARED = frozenset({
        "_decide", "_demote", "_promote", "_release_vips", "_spawn", "all_arbitrators_failed", "clock", "detector",
        "enable_ordered_until", "epoch", "events", "fenced_since",
        "handover", "handover_drain_s", "handover_timeout_s", "hold_until", "interval", "last_seq",
        "on_demote", "peer", "peer_address", "peer_alive", "promoted_at", "send_heartbeat", "svc",
        "wait_forwarded", "wait_idle", "window"})


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

    # The coordinator's orders (ha.detector coordinator): what its check round decided.
    ORDERS = ("DISABLE", "ENABLE")

    def coordinator_order(self, name: str) -> str:
        """Carry out the coordinator CLC's order for this member: DISABLE takes an ENABLED or
        NOTREADY member out of service at once (a failed check: no handover), ENABLE makes a
        DISABLED member take the pair, once its peer is neither alive and ENABLED nor ahead
        (it waits up to two windows for a crashed peer's heartbeats to stop; then the order
        lapses). Refused with TransitionError, changing nothing, under the heartbeat detector
        or for an unknown order; returns what this member does."""
        name = name.upper()
        if name not in self.ORDERS:
            raise TransitionError("InvalidParameterValue", f"unknown order {name!r}: one of {', '.join(self.ORDERS)}")
        if self.detector != "coordinator":
            raise TransitionError("IncorrectState", "this pair fails over on heartbeats (ha.detector heartbeat): "
                                  "it takes no coordinator's orders")
        state = self.svc.state
        self.events.emit("ha.coordinator_order", order=name, state=state.value, epoch=self.epoch)
        if name == "ENABLE":
            if state is ENABLED:
                return "none"
            if state is not DISABLED or self.handover is not None:
                raise TransitionError("IncorrectState", f"a {state.value} member cannot be ENABLED")
            self.enable_ordered_until = self.clock() + 2 * self.window + self.interval
            self._spawn(self._decide("coordinator: ENABLE"))
            return "enabling"
        if state is ENABLED and self.handover is None:
            to = NOTREADY if self.all_arbitrators_failed() else DISABLED
            self._spawn(self._demote("coordinator: DISABLE", to=to))
            return "disabling"
        if state is NOTREADY and not self.all_arbitrators_failed():
            self.svc.set_state(DISABLED, "coordinator: DISABLE")
            self.send_heartbeat()
            return "disabled"
        return "none"

    def _standby_ready(self, caught_up: bool = True) -> bool:
        """The peer could take the pair now: alive, DISABLED, reaching users, not fenced, and
        (``caught_up``) holding everything this member has acknowledged and ready to take it
        at once (a CC staged at the SDN controller: a CC the controller has not staged loses
        the users' packets that reach the groups' VLANs while their flows move to it)."""
        p = self.peer
        return (self.peer_alive() and p.state == "DISABLED" and p.arb_ok and not p.fenced
                and (not caught_up or (p.last_seq >= self.last_seq() and p.ready)))

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
            # serves: nobody waits on it. A peer that handed the pair here within its drain
            # is ready only once that drain is over (a CC withdraws its router, then the
            # controller stages it): that is waited for too.
            deadline = self.clock() + self.handover_drain_s + self.handover_timeout_s
            while not self._standby_ready() and self.clock() < deadline and self.svc.state is ENABLED:
                await asyncio.sleep(self.interval)
            if not self._standby_ready():
                await self._end_handover(h, None, "the peer is not ready to take over (behind, not staged, "
                                         "or no longer a standby)")
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
