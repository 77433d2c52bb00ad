"""An HA agent's clock work: the ticker that sends a heartbeat every interval, the pause
detector (a tick that ran late: paused, or frozen and fenced), the silence deadline, and the
lease that gates every request."""

from __future__ import annotations

import asyncio

from .model import ENABLED, Part


class Ticker(Part):
    """One tick per interval on a fixed grid; ``may_serve`` is the request gate."""

    SHARED = frozenset({
        "_decide", "_release_vips", "_report_rejections", "_spawn", "_tasks", "agent", "clock", "events",
        "fence_seq", "fenced_since", "hold_until", "interval", "last_sent", "last_tick", "paused_until",
        "peer", "send_heartbeat", "seq", "svc", "window"})

    def __init__(self, agent):
        super().__init__(agent)
        self._deadline: asyncio.TimerHandle | None = None
        self._next_tick: float | None = None

    def stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()

    def may_serve(self) -> bool:
        """The request gate: ENABLED, not fenced, and within the lease.

        The lease: the peer cannot declare this member dead earlier than a window after
        its last heartbeat, so a member whose last heartbeat is older than a window
        (its loop stalled) must not answer: the peer may be ENABLED already.
        """
        if self.svc.state is not ENABLED or self.fenced_since is not None or self.last_sent is None:
            return False
        return self.clock() - self.last_sent <= self.window

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
        self.agent.tick()  # the agent's: one wrapped there is the one that runs
        self._next_tick += self.interval
        return max(self._next_tick - self.clock(), 0.0)

    def tick(self) -> None:
        """One heartbeat period: freeze check, heartbeat (or, beside the heartbeat thread, what
        it sends), decision."""
        now = self.clock()
        # How late this process ran: beside the heartbeat thread, how late its heartbeats went
        # out (a busy loop is no pause; a process not scheduled, or a wedged loop, is), else the loop's.
        thread = self.agent.heartbeat_thread
        late = now - self.last_tick if thread is None else thread.take_late()
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
        if thread is None or late > self.window:
            self.send_heartbeat()  # after a freeze, the loop's heartbeat goes first (the thread waits for it)
        else:
            self.agent.heartbeats.publish()  # the thread sends it on time
        self._report_rejections()
        # Decisions run beside the ticker: a slow takeover step must never delay a heartbeat.
        self._spawn(self._decide("tick"))
