"""One failover trial, step by step: from full redundancy, probe the target as a user,
pick the member to fault (the ENABLED one once the warm-up is over), inject the fault at a
seeded phase, wait for its effect, restore, measure and judge (``Trial.run``)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

from components.common.events import read_events

from ..analysis.measures import Probe, outage_span, resolution
from ..testbed.deployment import Deployment, wait_until
from .experiment import TrialSet
from .faults import CATALOGUE, FAILOVER, SWITCHOVER, Fault, FaultContext, enabled_intervals, judge, overlap
from .probes import Capture, Prober, mono
from .workload import Workload, probe_for

if TYPE_CHECKING:
    from .runner import Runner


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def hold(dep: Deployment, ts: TrialSet) -> float:
    """How long a fault that expects no failover is held: long enough for every
    detector to have fired if it were going to (heartbeat misses, arbitrator rounds)."""
    if ts.hold_s is not None:
        return ts.hold_s
    hb, arb = dep.spec.heartbeat, dep.spec.arbitrators
    return max(2.0, 4 * hb.interval_ms * hb.misses / 1000, (arb.fail_after + 1) * arb.period_s + arb.timeout_s)


@dataclass
class TrialState:
    """What one trial knows as it goes; each step reads and adds to it."""

    ts: TrialSet
    n: int
    fault: Fault
    pair: object  # topologies.plan.ServicePair
    record: dict
    revived: list[str] = field(default_factory=list)
    markers: list[str | None] = field(default_factory=list)
    enabled_before: str | None = None  # the ENABLED member when the pair was last fully redundant
    primary: str | None = None  # the member the fault is injected into: ENABLED after the warm-up
    peer: str | None = None
    ctx: FaultContext | None = None
    probe: Prober | None = None
    capture: Capture | None = None
    phase: float = 0.0
    t_fault: float = 0.0
    t_restore: float = 0.0
    t_settled: float = 0.0
    error: str | None = None
    recovered: bool = False
    settled: bool = False
    primary_enabled: bool = False
    cpu: float | None = None


def promotions_within(events: dict[str, list[dict]], t_fault: float, t_settled: float) -> list[tuple[str, dict]]:
    """Each member's ``ha.promote`` decided or logged between the fault and full redundancy,
    as (member, event). The line follows the state change and the VIP, which may already
    have made the pair look redundant to the runner (a planned switchover's pair did, 0.8 ms
    before the line), so one decided (``detected_at``) in the window counts even if logged
    after it; none may be decided after a restore."""
    def within(t: float) -> bool:
        return t_fault <= t <= t_settled

    return [(m, e) for m, evs in events.items() for e in evs if e["event"] == "ha.promote"
            and (within(e.get("detected_at", e["t_mono"])) or within(e["t_mono"]))]


def decision_period_s(spec) -> float:
    """How often the spec's detector decides: the heartbeat interval, or under ``ha.detector:
    coordinator`` the coordinator's check cycle (a fault waits for the next round: its phase
    within the cycle is its outage, so it is drawn over the whole cycle)."""
    if spec.ha.detector == "coordinator":
        return spec.ha.coordinator_check_s
    return spec.heartbeat.interval_ms / 1000


class Trial:
    """Runs the trials of one deployment for a runner (its experiment, seeded RNG and files)."""

    def __init__(self, runner: "Runner", dep: Deployment, w: Workload):
        self.runner, self.dep, self.w = runner, dep, w

    def run(self, ts: TrialSet, n: int) -> dict:
        """One fault: probe, inject at a seeded phase, wait for its effect, restore, judge."""
        dep = self.dep
        fault = CATALOGUE[ts.fault]
        pair = dep.plan.pair(ts.target, 1 if ts.target in ("cc", "sc") else None)
        s = TrialState(ts, n, fault, pair, {"set": ts.name, "target": ts.target, "fault": ts.fault,
                                            "expect": fault.expect, "trial": n, "params": ts.params})
        self.revive(s)
        s.markers.append(self.w.marker_write(ts.target, n, self.runner.rng))
        if not self.redundant(s, "before the fault"):
            return s.record
        self.start_watching(s)
        try:
            if not self.warm_up(s) or not self.choose_victim(s):
                return s.record
            self.inject(s)
            self.await_effect(s)
            self.restore(s)
            probes = s.probe.stop()
            self.measure(s, probes)
            self.judge(s)
            self.runner.write_probes(ts.name, n, s.t_fault, probes)
            return s.record
        finally:
            # Whatever went wrong above, nothing of this trial outlives it: the fault is
            # undone, the probes stop, the capture ends (kept: the trial went wrong).
            if s.ctx is not None and s.ctx.undo:
                try:
                    s.ctx.restore()
                except Exception:
                    pass
            s.probe.stop()
            if s.capture is not None and not s.capture.done:
                s.capture.finish(keep=True)

    def revive(self, s: TrialState) -> None:
        """Every trial starts from full redundancy: a member whose process is gone (it died on
        its own: its log says why) is started again, once, and the trial says so; left dead,
        every later trial would be void."""
        s.revived = [m for m in s.pair.members if self.dep.member_state(m) == "DEAD"]
        for m in s.revived:
            self.dep.events.emit("member.revived", host=m, label=s.pair.kind, trial=s.n)
            self.dep.start(s.pair.kind, m, wait=False)
        if s.revived:
            s.record["revived"] = s.revived

    def redundant(self, s: TrialState, when: str) -> bool:
        """Wait for one ENABLED member, its peer DISABLED and caught up; else the trial is invalid."""
        dep = self.dep
        if not wait_until(lambda: dep.redundant(s.pair), 20):
            s.record.update(status="invalid", error=f"the pair was not one ENABLED and one DISABLED {when}",
                            states={m: dep.member_state(m) for m in s.pair.members})
            return False
        s.enabled_before = next(m for m in s.pair.members if dep.member_state(m) == "ENABLED")
        s.record["primary"] = s.enabled_before
        return True

    def start_watching(self, s: TrialState) -> None:
        """The user's prober, and the capture kept if the trial goes wrong."""
        runner = self.runner
        url, headers, expect = probe_for(s.ts.target, self.w)
        if runner.exp.capture:
            s.capture = Capture(self.dep, runner.run_dir / "captures" / f"{slug(s.ts.name)}-{s.n}")
        s.probe = runner.prober(self.dep, url, headers, expect)

    def warm_up(self, s: TrialState) -> bool:
        """Probes succeed before the fault (on a loaded machine, wait for them)."""
        psutil.cpu_percent(None)
        time.sleep(0.3)
        if wait_until(lambda: sum(p.ok for p in s.probe.snapshot()) >= 3, 5, 0.01):
            return True
        s.probe.stop()
        if s.capture is not None:
            s.capture.finish(keep=True)
        s.record.update(status="invalid", error="users were not served before the fault (warm-up)")
        return False

    def choose_victim(self, s: TrialState) -> bool:
        """The member to fault is the one ENABLED now, after the warm-up: a takeover during the
        warm-up (a false failover) made the other member primary, and faulting the one picked
        before would hit the standby. Such a takeover is recorded and flags the trial."""
        before = s.enabled_before
        if not self.redundant(s, "after the warm-up"):
            return False
        s.primary = s.enabled_before
        s.peer = next(m for m in s.pair.members if m != s.primary)
        if s.primary != before:
            s.record["warmup_takeover"] = {"from": before, "to": s.primary}
        s.ctx = FaultContext(self.dep, s.pair, s.primary, s.peer, params=dict(s.ts.params),
                             write_marker=lambda: self.w.marker_write(s.ts.target, s.n, self.runner.rng))
        return True

    def inject(self, s: TrialState) -> None:
        """At a random phase of the period the failover is decided at, seeded: faults line up
        neither with the heartbeat's ticks nor with the coordinator's check rounds."""
        s.phase = self.runner.rng.uniform(0, decision_period_s(self.dep.spec))
        time.sleep(s.phase)
        s.t_fault = mono()
        try:
            s.fault.inject(s.ctx)
        except Exception as exc:
            s.error = f"inject: {exc!r}"

    def _served_after(self, s: TrialState, t: float) -> bool:
        return any(p.ok and p.sent >= t for p in s.probe.snapshot())

    def await_effect(self, s: TrialState) -> None:
        """Wait for the takeover the fault expects, or hold a fault that expects none."""
        dep, exp = self.dep, self.runner.exp
        if s.error:
            s.recovered = False
        elif s.fault.expect in (FAILOVER, SWITCHOVER):
            s.recovered = wait_until(lambda: dep.member_state(s.peer) == "ENABLED"
                                     and self._served_after(s, s.t_fault), exp.recovery_timeout_s)
        elif s.ts.fault == "both":
            s.recovered = wait_until(lambda: any(dep.member_state(m) == "ENABLED" for m in s.pair.members)
                                     and self._served_after(s, s.t_fault), exp.recovery_timeout_s)
        else:
            time.sleep(hold(dep, s.ts))
            s.recovered = True  # judged after the restore: users must be served again then

    def restore(self, s: TrialState) -> None:
        """Undo the fault; back to full redundancy (one ENABLED, the other DISABLED and caught
        up) with users served."""
        dep = self.dep
        s.t_restore = mono()
        s.primary_enabled = dep.member_state(s.primary) == "ENABLED"
        s.cpu = psutil.cpu_percent(None)
        try:
            s.ctx.restore()
        except Exception as exc:
            s.error = (s.error + "; " if s.error else "") + repr(exc)
        s.settled = wait_until(lambda: dep.redundant(s.pair) and self._served_after(s, mono() - 0.2), 20)
        s.t_settled = mono()
        if s.fault.expect != FAILOVER:
            s.recovered = s.recovered and s.settled
        time.sleep(0.1)

    def measure(self, s: TrialState, probes: list[Probe]) -> None:
        """The outage users saw, detection and takeover from the members' events, two ENABLED
        at once, and writes lost."""
        dep, pair, peer, t_fault = self.dep, s.pair, s.peer, s.t_fault
        span = outage_span(probes, t_fault, s.t_restore)
        out = span[1] - span[0] if span else None
        fault_probes = [p for p in probes if t_fault <= p.sent < s.t_restore]
        rejoin_probes = [p for p in probes if p.sent >= s.t_restore]
        ev = {m: read_events(dep.process(m).events_path) for m in pair.members}
        promotes = promotions_within(ev, t_fault, s.t_settled)
        if s.recovered and s.fault.expect in (FAILOVER, SWITCHOVER) and not any(m == peer for m, _ in promotes):
            # The peer took over, and its ha.promote line, written after its VIPs, may not be
            # there yet on a busy machine: a moment more for it.
            def logged() -> bool:
                nonlocal promotes
                ev[peer] = read_events(dep.process(peer).events_path)
                promotes = promotions_within(ev, t_fault, s.t_settled)
                return any(m == peer for m, _ in promotes)
            wait_until(logged, 1.0)
        promote = next((e for m, e in promotes if m == peer), None)
        dead = next((e["detected_at"] for e in ev[peer] if e["event"] == "ha.peer_dead"
                     and e["t_mono"] >= t_fault), None)
        lo = t_fault - 0.5
        # Every time a member's process was crashed or stopped (this trial or an earlier one)
        # ends its ENABLED interval there, not where its successor's log begins.
        signalled = [e for e in read_events(dep.run_dir / "events.jsonl") if e.get("event") == "process.signal"
                     and e.get("signal") in (signal.SIGKILL, signal.SIGSTOP) and e.get("label") == pair.kind]
        silenced = {m: [e["t_mono"] for e in signalled if e["host"] == m] + (
            [s.ctx.silenced[m]] if m in s.ctx.silenced else []) for m in pair.members}
        spans = {m: [(max(x, lo), y) for x, y in enabled_intervals(ev[m], s.t_settled, silenced[m]) if y > lo]
                 for m in pair.members}
        two_enabled = overlap(*spans.values())
        lost, check_error = self.w.lost_writes(s.ts.target, s.markers + s.ctx.markers)
        s.record.update(
            status="error" if s.error else ("ok" if s.recovered and out is not None else "no-recovery"),
            new_primary=peer if promote else None, t_fault=t_fault, phase_s=s.phase, hold_s=s.t_restore - t_fault,
            outage_s=out, served_again_s=(span[1] - t_fault) if span else None,
            failed_probes=sum(1 for p in fault_probes if not p.ok),
            rejoin_failed_probes=sum(1 for p in rejoin_probes if not p.ok),
            detection_s=(promote["detected_at"] - t_fault) if promote else None,
            takeover_s=(promote["vip_at"] - promote["detected_at"]) if promote else None,
            promote_reason=promote.get("reason") if promote else None,
            peer_dead_after_s=(dead - t_fault) if dead else None, promotions=len(promotes),
            two_enabled_s=two_enabled, probes=len(probes), cpu_percent=s.cpu, load1=os.getloadavg()[0],
            # The heartbeat bound means nothing where the coordinator's rounds decide.
            detector=dep.spec.ha.detector,
            detection_bound_s=(dep.spec.heartbeat.misses * dep.spec.heartbeat.interval_ms / 1000
                               if dep.spec.ha.detector == "heartbeat" else None),
            lost_writes=lost, redundancy_restored_s=(s.t_settled - s.t_restore) if s.settled else None,
            two_enabled_at_end=sum(dep.member_state(m) == "ENABLED" for m in pair.members) > 1,
            **s.ctx.notes, prober=s.probe.overhead,
            **{f"probe_{k}": v for k, v in resolution(probes).items()})
        if s.error:
            s.record["error"] = s.error
        if check_error:
            s.record["check_error"] = check_error
        s.record["flags"] = judge(s.fault.expect, promoted=bool(promotes), primary_enabled_after=s.primary_enabled,
                                  failed_probes=s.record["failed_probes"], two_enabled_s=two_enabled,
                                  lost_writes=lost, settled=s.settled, recovered=s.recovered)

    def judge(self, s: TrialState) -> None:
        """Flags beyond the fault's own expectations; whether the trial went as expected; the
        capture kept when it did not."""
        record = s.record
        if s.revived:
            record["flags"].append(f"{', '.join(s.revived)} had died before the trial (started again)")
        if "warmup_takeover" in record:
            takeover = record["warmup_takeover"]
            record["flags"].append(f"takeover during the warm-up, before the fault: {takeover['from']} -> "
                                   f"{takeover['to']} (the fault went to {takeover['to']})")
        record["as_expected"] = not record["flags"] and record["status"] == "ok"
        if s.capture is not None:
            s.capture.finish(keep=not record["as_expected"])
            if s.capture.kept:
                record["capture"] = str(s.capture.path.relative_to(self.runner.run_dir))
