"""An HA agent's arbitrators: external entities (the border gateway, the external site) pinged
every period; all failing on the ENABLED member makes it step down unless its peer cannot do
better (docs/ha.md, "Arbitrators")."""

from __future__ import annotations

import asyncio
import random

from .. import ha_net
from ..supervise import supervise
from .model import Arbitrator, Part, _loop_running


class Arbitration(Part):
    """The arbitrators' rounds, their maintenance flags and what their failures set off."""

    SHARED = frozenset({
        "_decide", "_spawn", "arb_confirm", "arb_failed_seq", "arb_period", "arb_timeout", "arbitrators",
        "clock", "confirm_wanted", "data", "events", "send_heartbeat", "seq", "svc"})

    def __init__(self, agent):
        super().__init__(agent)
        self._pinger: ha_net.Pinger | None = None
        self._arb_wake: asyncio.Event | None = None
        self._failed_arbitrators: list[str] = []

    def start(self) -> asyncio.Task | None:
        """The task of the arbitration rounds; None without arbitrators."""
        if not self.arbitrators:
            return None
        self._pinger = ha_net.Pinger()
        self._arb_wake = asyncio.Event()
        return asyncio.create_task(self._arbitrate())

    def wake(self) -> None:
        """Probe now, not at the end of the pause (the peer asked for a fresh round)."""
        if self._arb_wake is not None:
            self._arb_wake.set()

    def close(self) -> None:
        if self._pinger:
            self._pinger.close()

    def all_arbitrators_failed(self) -> bool:
        return bool(self.arbitrators) and all(a.failed for a in self.arbitrators)

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
