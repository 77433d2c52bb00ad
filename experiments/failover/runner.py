"""Failover experiments: crash a primary, measure the outage a user sees, repeat; keepalived beside it.

    eucalab run                                 the default experiment (experiments/failover/definitions/default.yaml)
    eucalab experiment FILE                     any other definition (copy and edit the default)

Flow: definition (experiment.py) -> deployment -> workload (workload.py: an instance with
an elastic IP, an object, a signed EC2 request) -> trials (trial.py: probe, fault at a
seeded random phase, recovery, restore; keepalived.py for the baseline) -> raw data
(trials.jsonl, probes.jsonl, every component's events) -> report (experiments/analysis/report.py).
The ``Runner`` here runs every sweep point on a deployment of its own and writes the records.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

from topologies.spec import spec_from_dict

from ..analysis.measures import Probe
from ..testbed.clocks import measured_on_one_machine
from ..testbed.deployment import Deployment, wait_until
from ..testbed.preflight import datapath_ports
from ..testbed.rundir import new_run_dir, write_json
from .experiment import (DEFINITIONS, FAULTS, KEEPALIVED_FAULTS, TARGETS, Experiment, TrialSet,  # noqa: F401
                         point_label, sweep_points)
from .faults import CATALOGUE, check_available
from .keepalived import KeepalivedBaseline
from .probes import Prober
from .stress import LoadSampler
from .trial import Trial
from .workload import Workload

# The machine's load, sampled every half second through a run (a measurement's context).
LOAD_PERIOD_S = 0.5

# What other modules import from here.
__all__ = ["DEFINITIONS", "FAULTS", "KEEPALIVED_FAULTS", "TARGETS", "Experiment", "Prober", "Runner", "TrialSet",
           "run_definition", "sweep_points"]


class Runner:
    def __init__(self, exp: Experiment, run_dir: Path | None = None, progress: bool = True, observer=None):
        self.exp = exp
        # Told before a deployment's services start (``starting(dep)``), when they are up
        # (``services_up(dep, seconds)``) and when the workload is ready, before the first
        # trial (``prepared(dep)``): a benchmark measures there (experiments/bench/scale.py).
        self.observer = observer
        self.run_dir = run_dir or new_run_dir(exp.name)
        self.rng = random.Random(exp.seed)
        self.progress = progress
        self.written: set = set()  # (set, trial) recorded at the current sweep point
        self.trials_file = open(self.run_dir / "trials.jsonl", "a", buffering=1)
        self.probes_file = open(self.run_dir / "probes.jsonl", "a", buffering=1)

    def prober(self, dep: Deployment, url: str, headers: dict, expect: tuple[str, bytes]) -> Prober:
        """The user's requests of ``url`` for one trial, started, at the experiment's interval and timeout."""
        return Prober(dep, url, headers, self.exp.probe_interval_ms / 1000, self.exp.probe_timeout_ms / 1000,
                      expect).start()

    def trial(self, dep: Deployment, ts: TrialSet, n: int, w: Workload) -> dict:
        """One fault on ``dep`` (experiments/failover/trial.py); its record."""
        return Trial(self, dep, w).run(ts, n)

    def keepalived_set(self, dep: Deployment, ts: TrialSet, bar, point: dict | None = None) -> list[dict]:
        """A keepalived trial set on ``dep`` (experiments/failover/keepalived.py); its records, written."""
        return KeepalivedBaseline(self).run_set(dep, ts, bar, point)

    def write(self, record: dict, bar) -> None:
        self.trials_file.write(json.dumps(record) + "\n")
        self.written.add((record["set"], record["trial"]))
        bar(record["set"])

    def write_probes(self, set_name: str, n: int, t_fault: float, probes: list[Probe]) -> None:
        self.probes_file.write(json.dumps({"set": set_name, "trial": n, "t_fault": t_fault,
                                           "probes": [[p.sent, p.done, p.ok] for p in probes]}) + "\n")

    # -- the whole run ----------------------------------------------------------------------------------

    def run(self) -> Path:
        """Every sweep point (one when there is no sweep) on its own deployment, then the report."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from ..analysis import report
        from ..testbed.preflight import has_netem
        from ..testbed.versions import versions

        exp = self.exp
        points = [(point, e) for point in sweep_points(exp.sweep) for e in exp.at(point).deployments()]
        for _, e in points:  # refuse what this machine cannot do before building anything
            spec = spec_from_dict(e.spec)
            measured_on_one_machine(spec, "a failover experiment")
            controller = (spec.sdn if e.sdn is None else e.sdn) or spec.ha.takeover == "sdn"
            for ts in e.sets:
                check_available(CATALOGUE[ts.fault], netem=has_netem(), sdn=controller)
        write_json(self.run_dir / "experiment.json", dataclasses.asdict(exp))
        write_json(self.run_dir / "versions.json", versions())
        total = sum(s.trials for _, e in points for s in e.sets)
        load = LoadSampler(self.run_dir / "load.jsonl", period=LOAD_PERIOD_S).start()
        t0 = time.monotonic()
        try:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          disable=not self.progress) as progress:
                task = progress.add_task("starting the deployment", total=total)
                done = [0]
                tty = progress.console.is_terminal

                def bar(name):
                    progress.update(task, advance=1, description=name)
                    done[0] += 1
                    if not tty and (done[0] % 10 == 0 or done[0] == total):
                        # No terminal (CI, a log file): a plain progress line instead of the bar.
                        elapsed = time.monotonic() - t0
                        eta = elapsed / done[0] * (total - done[0])
                        print(f"eucalab: {done[0]}/{total} trials ({name}), {elapsed:.0f} s elapsed, "
                              f"about {eta:.0f} s left", flush=True)

                for i, (point, e) in enumerate(points):
                    progress.update(task, description="starting the deployment" + (f" ({point_label(point)})"
                                                                                   if point else ""))
                    sub = self.run_dir / ("deployment" if len(points) == 1 else f"deployment-{i}")
                    self.written = set()
                    try:
                        self._run_point(e, point, sub, progress, task, bar)
                    except Exception as exc:
                        # A point that cannot be set up is recorded, trial by trial, and the
                        # run goes on with the next one.
                        self._record_failed_point(e, point, f"{type(exc).__name__}: {exc}", bar)
        finally:
            load.stop()
            self.trials_file.close()
            self.probes_file.close()
            write_json(self.run_dir / "timing.json", {"wall_s": time.monotonic() - t0, "trials": total,
                                                      "trials_per_minute": total / (time.monotonic() - t0) * 60})
            report.build(self.run_dir)  # whatever happened, the raw data gets its report
        return self.run_dir

    def _record_paths(self, dep: Deployment, point: dict) -> None:
        """The network as users and arbitrators see it before the first fault (paths.jsonl)."""
        from ..testbed.linkcheck import measure_paths

        with open(self.run_dir / "paths.jsonl", "a") as f:
            links = dataclasses.asdict(dep.spec.links)
            for record in measure_paths(dep):
                f.write(json.dumps({**record, "links": links, **({"point": point} if point else {})}) + "\n")

    def _record_failed_point(self, exp: "Experiment", point: dict, error: str, bar) -> None:
        for ts in exp.sets:
            for n in range(ts.trials):
                if (ts.name, n) in self.written:  # trials already run at this point stand
                    continue
                record = {"set": ts.name, "target": ts.target, "fault": ts.fault, "trial": n, "status": "error",
                          "error": f"deployment: {error}"}
                if point:
                    record["point"] = point
                self.write(record, bar)

    def _run_point(self, exp: "Experiment", point: dict, run_dir: Path, progress, task, bar) -> None:
        saved, self.exp = self.exp, exp  # trials read the point's timing parameters
        try:
            with Deployment(spec_from_dict(exp.spec), run_dir=run_dir, sdn=exp.sdn) as dep:
                if self.observer is not None:
                    self.observer.starting(dep)
                t0 = time.monotonic()
                dep.start_services()
                if self.observer is not None:
                    self.observer.services_up(dep, time.monotonic() - t0)
                w = Workload.prepare(dep)
                if self.observer is not None:
                    self.observer.prepared(dep)
                self._record_paths(dep, point)
                for pair in dep.plan.pairs:
                    wait_until(lambda p=pair: [m for m in p.members if dep.member_state(m) == "ENABLED"], 10)
                # What one packet's trip through a bridge costs depends on it (userspace datapath).
                ports = datapath_ports(dep.network.datapath)
                for ts in [s for s in exp.sets if s.target != "keepalived"]:
                    for n in range(ts.trials):
                        progress.update(task, description=ts.name)
                        try:
                            record = self.trial(dep, ts, n, w)
                        except Exception as exc:  # recorded, never silently dropped
                            record = {"set": ts.name, "target": ts.target, "trial": n, "status": "error",
                                      "error": repr(exc)}
                        if point:
                            record["point"] = point
                        record["datapath_ports"] = ports
                        record["datapath_priority"] = dep.datapath_priority
                        self.write(record, bar)
                for ts in [s for s in exp.sets if s.target == "keepalived"]:
                    self.keepalived_set(dep, ts, bar, point)
        finally:
            self.exp = saved


def select_sets(exp: Experiment, targets: list[str]) -> list:
    """The sets of ``exp`` whose target is one of ``targets``, in the definition's order;
    a target the definition has no set of is an error (a typo must not run nothing)."""
    have = {s.target for s in exp.sets}
    unknown = sorted(set(targets) - have)
    if unknown:
        raise ValueError(f"{exp.name}: no set targets {', '.join(unknown)} (its targets: {', '.join(sorted(have))})")
    return [s for s in exp.sets if s.target in targets]


def run_definition(path: str | Path | None = None, trials: int | None = None,
                   only: list[str] | None = None) -> Path:
    exp = Experiment.load(path or DEFINITIONS / "default.yaml")
    if only is not None:
        exp.sets = select_sets(exp, only)
    if trials is not None:
        for s in exp.sets:
            s.trials = min(s.trials, trials)
    return Runner(exp).run()
