"""The safe floor of failover detection: the shortest timer with no false failover, and the outage there.

    eucalab experiment experiments/failover/definitions/safe-floor.yaml [--trials N] [--soak-minutes M]

A failure detector can always be made faster by shortening its timer, until it starts to
fail over when nothing failed. So two systems are compared at their safe floors, not at
one setting. For each interval h of ``intervals_ms`` (eucalab's heartbeat with ``misses``
misses; keepalived's VRRPv3 advert interval, on the same hosts):

1. a soak (experiments/failover/soak.py) of ``soak_minutes`` on a deployment of its own:
   ``loss_pct`` of heartbeats (adverts) dropped, ``hog_cores`` cores busy, one arbitrator
   of every ENABLED member stopped, the deployment's services running; then keepalived's
   soak as long on the same deployment with the same loss and hog;
2. a setting is safe when its soak saw 0 false failovers and 0 samples with two members
   serving; the floor is the shortest setting at which it and every longer one were safe
   (``floor``);
3. crash trials at each floor on one deployment (experiments/failover/runner.py): ``trials``
   each of ``targets`` at eucalab's floor, and keepalived's at its own, probed every
   ``probe_interval_ms``.

The report (``report.md``) sets per system the false failovers at every setting, the
floor, and the outage p50/p99 at the floor beside the theoretical bound of that setting
(``bound``). Everything raw stays beside it: ``soaks/`` (each soak's run directory),
``trials/`` (the failover run directory, with its own report).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.common.events import read_events
from topologies.spec import spec_from_dict

from ..analysis.measures import STEAL_STALL_MS, STEAL_WINDOW_S, steal_near, steal_summary
from ..testbed.clocks import measured_on_one_machine
from ..testbed.rundir import new_run_dir, utc_stamp, write_json
from .experiment import read_definition

KIND = "safe-floor"
# keepalived's backup in these runs (experiments/failover/keepalived.py: 100, then 90): its skew time.
KEEPALIVED_BACKUP_PRIORITY = 90
# Taking over a VIP by gratuitous ARP on veth, measured (docs/ha.md): about a millisecond.
TAKEOVER_MS = 1.0
# How long after a trial's restore its promotions still count as the trial's, when the trial
# never saw redundancy back (``trial_promotions``).
RECOVERY_WAIT_S = 10.0


@dataclass
class SafeFloor:
    """A safe-floor definition (experiments/failover/definitions/safe-floor.yaml)."""

    name: str = KIND
    kind: str = KIND
    seed: int = 1
    spec: dict = field(default_factory=lambda: {"name": "default"})
    intervals_ms: list[float] = field(default_factory=lambda: [50, 30, 20, 15, 10])
    misses: int = 3
    soak_minutes: float = 10.0
    loss_pct: float = 1.0
    hog_cores: int = 1
    keepalived: bool = True
    trials: int = 100
    targets: list[dict] = field(default_factory=lambda: [
        {"target": "clc"}, {"target": "walrus"}, {"target": "sc"}, {"target": "cc", "fault": "host"}])
    probe_interval_ms: float = 2.0
    probe_timeout_ms: float = 300.0
    recovery_timeout_s: float = 10.0

    @classmethod
    def load(cls, path: str | Path) -> "SafeFloor":
        d = cls(**read_definition(cls, path))
        d.validate(str(path))
        return d

    def validate(self, where: str = "safe-floor") -> None:
        from .experiment import FAULTS, TARGETS

        if self.kind != KIND:
            raise ValueError(f"{where}: kind must be {KIND!r}")
        if not isinstance(self.intervals_ms, list) or not self.intervals_ms \
                or any(not isinstance(h, (int, float)) or h <= 0 for h in self.intervals_ms):
            raise ValueError(f"{where}: intervals_ms must be a non-empty list of positive intervals")
        if not isinstance(self.misses, int) or self.misses < 2:
            raise ValueError(f"{where}: misses must be an integer >= 2 (one miss makes the window the period)")
        numbers = {name: getattr(self, name) for name in ("soak_minutes", "trials", "probe_interval_ms", "loss_pct",
                                                          "hog_cores", "probe_timeout_ms", "recovery_timeout_s")}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {name} must be a number, not {value!r}")
        if self.soak_minutes <= 0 or self.trials < 1 or self.probe_interval_ms <= 0:
            raise ValueError(f"{where}: soak_minutes, trials and probe_interval_ms must be positive")
        if not 0 <= self.loss_pct < 100:
            raise ValueError(f"{where}: loss_pct is a percentage in [0, 100)")
        for i, t in enumerate(self.targets):
            if not isinstance(t, dict) or t.get("target") not in TARGETS[:-1] \
                    or t.get("fault", "sigkill") not in FAULTS or set(t) - {"target", "fault"}:
                raise ValueError(f"{where}: targets[{i}] must be {{target: clc|walrus|cc|sc, fault: ...}}")
        try:
            measured_on_one_machine(spec_from_dict(self.spec), "the safe floor")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


# -- pure logic ------------------------------------------------------------------------------------


def safe(soak: dict) -> bool:
    """A soak with no false failover and no moment with two serving."""
    return soak["false_failovers"] == 0 and soak["dual"] == 0


def floor(soaks: dict[float, dict]) -> float | None:
    """The shortest interval at which it and every longer interval soaked safely; None when
    even the longest did not. A safe short setting below an unsafe longer one is luck, not a floor."""
    best = None
    for h in sorted(soaks, reverse=True):
        if not safe(soaks[h]):
            break
        best = h
    return best


def bound(interval_ms: float, misses: int, probe_ms: float, takeover_ms: float = TAKEOVER_MS) -> tuple[float, float]:
    """The outage a heartbeat detector allows after a crash, in ms: detection between
    (k-1)h and kh (the crash falls at a random phase of the heartbeat), plus takeover,
    plus up to one probe interval of measurement resolution at the end."""
    return (misses - 1) * interval_ms + takeover_ms, misses * interval_ms + takeover_ms + probe_ms


def vrrp_bound(advert_ms: float, probe_ms: float, priority: int = KEEPALIVED_BACKUP_PRIORITY,
               takeover_ms: float = TAKEOVER_MS) -> tuple[float, float]:
    """The same for VRRPv3 (RFC 5798): the backup declares the master down after
    Master_Down_Interval = 3 x Adv + Skew, Skew = (256 - priority) x Adv / 256, counted
    from the last advert heard."""
    down = (3 + (256 - priority) / 256) * advert_ms
    return down - advert_ms + takeover_ms, down + takeover_ms + probe_ms


def unexpected_promotions(promotions: list[dict], trials: list[dict], settle_s: float = 1.0) -> list[dict]:
    """The ``ha.promote`` events of a crash-trial deployment no fault called for: all but the
    new primary's within its own trial (fault to redundancy restored, plus ``settle_s``).
    The trials' deployment ran at the floor for as long as they took: a promotion between
    or beside them is a false failover at that setting, under the trials' load."""
    windows = []
    for t in trials:
        if t.get("t_fault") is None or t.get("target") == "keepalived":
            continue
        end = t["t_fault"] + (t.get("hold_s") or 0) + (t.get("redundancy_restored_s") or 0) + settle_s
        windows.append((t.get("new_primary"), t["t_fault"], end))
    return [e for e in promotions
            if not any(e.get("host") == host and start <= e.get("t_mono", -1) <= end for host, start, end in windows)]


def trial_promotions(trials_dir: Path) -> tuple[list[dict], list[dict]]:
    """(the trial records, every ``ha.promote`` after the first fault) of a crash-trial run."""
    path = trials_dir / "trials.jsonl"
    trials = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    ours = [t for t in trials if t.get("t_fault") is not None and t.get("target") != "keepalived"]
    if not ours:
        return trials, []
    # Up to the end of the last of eucalab's trials (redundancy back; a trial that never got
    # there: RECOVERY_WAIT_S): after it the runner stops the CLCs for keepalived's sets, and
    # the survivor's takeover then is the harness's doing, not a false failover.
    first = min(t["t_fault"] for t in ours)
    last = max(t["t_fault"] + (t.get("hold_s") or 0) + (t.get("redundancy_restored_s") or RECOVERY_WAIT_S)
               for t in ours)
    promotions = [e for path in sorted((trials_dir / "deployment" / "hosts").glob("*/events.jsonl"))
                  for e in read_events(path)
                  if e.get("event") == "ha.promote" and first <= e.get("t_mono", -1) <= last]
    return trials, promotions


def advert_ms(row: dict) -> float | None:
    """keepalived's advert interval as the backup received it (ms): keepalived rounds a
    VRRPv3 interval to whole centiseconds (15 ms becomes 20), so the one asked for may not
    be the one it ran."""
    a = row.get("adverts") or {}
    return round(row["soak_s"] * 1000 / a["seen"], 1) if a.get("seen") else None


def soak_row(summary: dict) -> dict:
    """What the floor needs of a bench_soak summary, for eucalab and (if soaked) keepalived."""
    # A takeover is a false failover; a sample with two ENABLED of which one was fenced
    # (refusing every request) had one serving, and is counted beside.
    row = {"eucalab": {"false_failovers": summary["false_failovers"], "demotions": len(summary["demotions"]),
                       "state_changes": len(summary["state_changes"]),
                       "dual": summary["dual_enabled_unfenced_samples"],
                       "dual_fenced": summary["dual_enabled_samples"] - summary["dual_enabled_unfenced_samples"],
                       "suspicions": summary["suspicions"], "soak_s": summary["soak_s"],
                       "frozen_late_s": summary["frozen_late_s"],
                       # The latest a member's heartbeat tick ran (s), paused or frozen: what bounds the floor.
                       "tick_late_max_s": max(summary["frozen_late_s"] + summary.get("paused_late_s", []),
                                              default=None)}}
    k = summary.get("keepalived")
    if k:
        row["keepalived"] = {"false_failovers": k["false_failovers"], "dual": k["dual_holder_samples"],
                             "soak_s": k["soak_s"], "adverts": k["adverts"]}
    return row


def trial_sets(d: SafeFloor, eucalab_floor: float | None, keepalived_floor: float | None, trials: int) -> list:
    """The crash trials at the floors: each target at eucalab's, keepalived at its own."""
    from ..testbed.configs import HEARTBEAT_PRIORITY
    from .experiment import TrialSet

    sets = []
    if eucalab_floor is not None:
        sets += [TrialSet(target=t["target"], fault=t.get("fault", "sigkill"), trials=trials) for t in d.targets]
    if keepalived_floor is not None:
        # At the realtime priority of eucalab's heartbeat threads: the same care for both detectors.
        sets.append(TrialSet(target="keepalived", trials=trials, advert_ms=keepalived_floor,
                             params={"rt_priority": HEARTBEAT_PRIORITY}))
    return sets


def outcome(d: SafeFloor, soaks: dict[float, dict], trials_summary: dict | None, floors: dict,
            during_trials: dict | None = None) -> dict:
    """Per system: every setting's soak figures, the floor, and each trial set's outage at
    the floor beside its bound."""
    out = {}
    for system in ("eucalab", "keepalived"):
        rows = {h: r[system] for h, r in soaks.items() if system in r}
        if not rows:
            continue
        h = floors[system]
        sets = {}
        for name, s in (trials_summary or {}).items():
            if (system == "keepalived") != name.startswith("keepalived"):
                continue
            # keepalived's bound at the interval it really ran (its rounding), within 10% of one.
            ran = advert_ms(rows[h]) if system == "keepalived" else None
            adv = round(ran / 10) * 10 if ran else h
            lo, hi = (vrrp_bound(adv, d.probe_interval_ms) if system == "keepalived"
                      else bound(h, d.misses, d.probe_interval_ms))
            o = s.get("outage_ms", {})
            sets[name] = {"trials": s.get("trials"), "ok": s.get("ok"), "p50": o.get("p50"), "p99": o.get("p99"),
                          "max": o.get("max"), "bound_ms": [round(lo, 2), round(hi, 2)]}
        out[system] = {"floor_ms": h, "settings": {str(k): v for k, v in sorted(rows.items(), reverse=True)},
                       "trial_sets": sets}
        if system == "eucalab" and during_trials is not None:
            out[system]["during_trials"] = during_trials
    return out


def coordinator_rows(d: SafeFloor, n: int = 1000) -> dict:
    """The third detector beside the two measured: Eucalyptus 3.x's coordinator, as
    experiments/failover/coordinator_model.py models it, on the same targets and faults (outage
    p50/p99 over ``n`` random check phases, and the model's bounds; seconds)."""
    from ..analysis.measures import percentile
    from . import coordinator_model as cm

    rows = {}
    for t in d.targets:
        fault, coord = cm.TARGETS[t["target"]]
        values = cm.sample(fault, coord, n, seed=d.seed)
        lo, hi = cm.bounds(fault, coord)
        rows[t["target"]] = {"fault": fault, "coordinator": coord, "p50_s": round(percentile(values, 50), 2),
                             "p99_s": round(percentile(values, 99), 2), "bounds_s": [lo, hi]}
    return rows


def render(d: SafeFloor, result: dict, soak_minutes: float, trials: int,
           defined_ms: list[float] | None = None) -> str:
    """report.md of a safe-floor run; ``defined_ms``: the definition's settings, when the run
    soaked only some of them (``--intervals``)."""
    lines = [f"# Safe floor: {d.name}", "",
             f"Soak per setting: {soak_minutes:g} min ({d.loss_pct:g}% heartbeat/advert loss, {d.hog_cores} core(s) "
             f"busy, one arbitrator of each ENABLED member stopped); a setting is safe with 0 false failovers "
             f"and 0 samples with two serving. Crash trials at the floor: {trials} per set, probed every "
             f"{d.probe_interval_ms:g} ms. eucalab: heartbeat h x {d.misses} misses; keepalived: VRRPv3 advert h "
             f"(its VRRP process at SCHED_FIFO like eucalab's heartbeat threads).", ""]
    skipped = [h for h in defined_ms or [] if h not in d.intervals_ms]
    if skipped:
        lines += [f"Settings soaked: {', '.join(f'{h:g}' for h in d.intervals_ms)} ms; not in this run "
                  f"(`--intervals`): {', '.join(f'{h:g}' for h in skipped)} ms. The floor is judged among "
                  "the settings soaked.", ""]
    for system, r in result.items():
        lines += [f"## {system}: floor {r['floor_ms'] if r['floor_ms'] is not None else 'none'} ms", "",
                  "| h (ms) | soaked (s) | false failovers | samples with two serving | latest tick (ms) "
                  "| detector events |", "|---|---|---|---|---|---|"]
        for h, s in r["settings"].items():
            extra = ", ".join(f"{k} {v}" for k, v in (s.get("suspicions") or {}).items()) or "-"
            if system == "keepalived" and s.get("adverts"):
                a = s["adverts"]
                extra = f"adverts seen {a['seen']} (one per {advert_ms(s):g} ms), dropped {a['dropped']}"
            fenced = f" (+{s['dual_fenced']} with one fenced)" if s.get("dual_fenced") else ""
            late = s.get("tick_late_max_s")
            late = f"{late * 1000:.0f}" if late is not None else "-"
            lines.append(f"| {h} | {s['soak_s']} | {s['false_failovers']} | {s['dual']}{fenced} | {late} | {extra} |")
        if r["trial_sets"]:
            lines += ["", "| trial set (at the floor) | trials ok | outage p50 (ms) | p99 | max | bound (ms) |",
                      "|---|---|---|---|---|---|"]
            for name, s in r["trial_sets"].items():
                def f(v):
                    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"
                lines.append(f"| {name} | {s['ok']}/{s['trials']} | {f(s['p50'])} | {f(s['p99'])} | {f(s['max'])} "
                             f"| {s['bound_ms'][0]:g}..{s['bound_ms'][1]:g} |")
        dt = r.get("during_trials")
        if dt is not None:
            verdict = "the floor held" if dt["false_failovers"] == 0 else "**the floor did not hold**"
            lines += ["", f"During the crash trials ({dt['minutes']:g} min at {r['floor_ms']:g} ms on their own "
                      f"deployment), promotions no fault called for: {dt['false_failovers']} "
                      f"({', '.join(f'{k} {v}' for k, v in dt['by_host'].items()) or 'none'}): {verdict}."]
            st = dt.get("cpu_stolen")
            if st is None:
                lines += ["", "CPU stolen by the hypervisor during them: not recorded."]
            else:
                beside = (f"Of the takeovers, {dt['beside_steal']} came within {STEAL_WINDOW_S:g} s of such a "
                          "sample. " if dt["false_failovers"] else "")
                lines += ["", f"CPU stolen by the hypervisor during them: {st['total_ms'] / 1000:.2f} s, at most "
                          f"{st['max_ms']:.0f} ms from one core in one load sample, {st['stalls']} of "
                          f"{st['samples']} samples with {STEAL_STALL_MS:g} ms or more. {beside}"
                          "(docs/ha.md, \"What bounds the floor here\")"]
        lines.append("")
    coord = coordinator_rows(d)
    lines += ["## Eucalyptus 3.x's coordinator (a model, not measured)", "",
              "The same targets under experiments/failover/coordinator_model.py: a check round every 10 s on the "
              "coordinator CLC, arbitrators probed with a 2 s reachability timeout; a CLC crash is the "
              "coordinator's own, seen first through the group view. Over 1000 random check phases:", "",
              "| target | fault | outage p50 (s) | p99 (s) | model bounds (s) |", "|---|---|---|---|---|"]
    for target, r in coord.items():
        who = " (the coordinator)" if r["coordinator"] else ""
        lines.append(f"| {target}{who} | {r['fault']} | {r['p50_s']:g} | {r['p99_s']:g} "
                     f"| {r['bounds_s'][0]:g}..{r['bounds_s'][1]:g} |")
    lines.append("")
    lines += ["p99 needs at least 100 trials (experiments/analysis/measures.py); the bound is (k-1)h..kh + takeover "
              f"({TAKEOVER_MS:g} ms) + one probe interval, and for VRRPv3 Master_Down_Interval - Adv .. "
              "Master_Down_Interval + the same.", ""]
    return "\n".join(lines)


def only_intervals(d: SafeFloor, intervals: list[float] | None) -> list[float]:
    """The settings a run soaks: the definition's ``intervals_ms``, or those of them that
    ``--intervals`` names (a long definition in parts; a setting it does not have is an error)."""
    if intervals is None:
        return list(d.intervals_ms)
    unknown = [h for h in intervals if h not in d.intervals_ms]
    if not intervals or unknown:
        raise ValueError(f"--intervals: {', '.join(f'{h:g}' for h in unknown) or 'none given'}: "
                         f"the definition's settings are {', '.join(f'{h:g}' for h in d.intervals_ms)} ms")
    return [h for h in d.intervals_ms if h in intervals]


def stored_definition(raw: dict) -> SafeFloor:
    """The definition a run wrote to its definition.json (beside its own ``run_*`` fields)."""
    return SafeFloor(**{k: v for k, v in raw.items() if not k.startswith("run_")})


def resumable(run_dir: str | Path) -> tuple[SafeFloor, dict]:
    """A cut safe-floor run's definition and its raw ``definition.json``, checked; ValueError
    (nothing changed) for a directory that is no safe-floor run, whose crash trials finished,
    or whose definition.json lacks what the run wrote."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise ValueError(f"--resume: {run_dir} is not a safe-floor run directory (no definition.json of kind {KIND})")
    if (run_dir / "trials" / "summary.json").exists():
        raise ValueError(f"--resume: {run_dir} finished its crash trials; `eucalab report {run_dir}` rebuilds "
                         "its report, a new run measures again")
    raw = json.loads((run_dir / "definition.json").read_text())
    try:
        d = stored_definition(raw)
        d.validate(str(run_dir / "definition.json"))
        float(raw["run_soak_minutes"]), int(raw["run_trials"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"--resume: {run_dir / 'definition.json'} is not a safe-floor run's: {e}") from None
    return d, raw


def resume_plan(run_dir: str | Path, trials: int | None = None) -> tuple[SafeFloor, float, int, dict[float, dict]]:
    """What a run cut short still has to do (``--resume DIR``): its definition, soak length and
    trials per set (``trials`` lowers it), and the soaks it finished (soaks.json). Crash trials
    it had begun are set aside as ``trials-cut-<UTC>/`` (kept, never reported), to run again."""
    run_dir = Path(run_dir)
    d, raw = resumable(run_dir)  # everything checked before anything in the directory changes
    n = min(trials, int(raw["run_trials"])) if trials is not None else int(raw["run_trials"])
    path = run_dir / "soaks.json"
    soaks = {float(h): r for h, r in json.loads(path.read_text()).items()} if path.exists() else {}
    if (run_dir / "trials").exists():
        cut = run_dir / f"trials-cut-{utc_stamp()}"
        while cut.exists():  # two resumes within a second
            cut = cut.with_name(cut.name + "-")
        (run_dir / "trials").rename(cut)
    write_json(run_dir / "definition.json", {**raw, "run_trials": n})
    return d, float(raw["run_soak_minutes"]), n, soaks


def run(path: str | Path, trials: int | None = None, soak_minutes: float | None = None,
        intervals: list[float] | None = None, resume: str | Path | None = None) -> Path:
    """Run a safe-floor definition; its run directory (report.md, summary.json, soaks/, trials/).
    ``intervals``: soak only these of its settings; the floor is then judged among them.
    ``resume``: finish the run in that directory (the soaks it lacks, then the crash trials)."""
    from .experiment import Experiment
    from .runner import Runner
    from .soak import soak

    if resume is not None:
        run_dir = Path(resume).resolve()
        d, minutes, n, soaks = resume_plan(run_dir, trials)
    else:
        d = SafeFloor.load(path)
        defined = list(d.intervals_ms)
        d = dataclasses.replace(d, intervals_ms=only_intervals(d, intervals))
        minutes = soak_minutes if soak_minutes is not None else d.soak_minutes
        n = min(trials, d.trials) if trials is not None else d.trials
        run_dir = new_run_dir(d.name)
        write_json(run_dir / "definition.json", {**dataclasses.asdict(d), "run_soak_minutes": minutes,
                                                 "run_trials": n, "run_defined_intervals_ms": defined})
        soaks = {}
    (run_dir / "soaks").mkdir(exist_ok=True)
    for h in sorted(d.intervals_ms, reverse=True):
        if h in soaks:
            continue  # soaked before the run was cut
        soak_dir, summary = soak(minutes=minutes, interval_ms=h, misses=d.misses, loss_pct=d.loss_pct,
                                 hog_cores=d.hog_cores, spec_path=d.spec, results_root=run_dir / "soaks",
                                 keepalived_advert_ms=h if d.keepalived else None)
        soaks[h] = {**soak_row(summary), "run_dir": soak_dir.name}
        write_json(run_dir / "soaks.json", {str(k): v for k, v in soaks.items()})
    floors = floors_of(soaks)
    sets = trial_sets(d, floors["eucalab"], floors["keepalived"] if d.keepalived else None, n)
    if sets:
        spec = json.loads(json.dumps(d.spec))
        spec["heartbeat"] = {"interval_ms": floors["eucalab"] or max(d.intervals_ms), "misses": d.misses}
        exp = Experiment(name=f"{d.name}-trials", seed=d.seed, spec=spec, probe_interval_ms=d.probe_interval_ms,
                         probe_timeout_ms=d.probe_timeout_ms, recovery_timeout_s=d.recovery_timeout_s, sets=sets)
        (run_dir / "trials").mkdir()
        Runner(exp, run_dir=run_dir / "trials").run()
    return build(run_dir)


def floors_of(soaks: dict[float, dict]) -> dict:
    """Each system's floor from the soak rows."""
    return {s: floor({h: r[s] for h, r in soaks.items() if s in r}) for s in ("eucalab", "keepalived")}


def build(run_dir: str | Path) -> Path:
    """summary.json and report.md of a safe-floor run, from its raw results (definition.json,
    soaks.json, trials/summary.json); ``eucalab report DIR`` runs it again."""
    run_dir = Path(run_dir)
    raw = json.loads((run_dir / "definition.json").read_text())
    minutes, n = raw["run_soak_minutes"], raw["run_trials"]
    defined = raw.get("run_defined_intervals_ms")
    d = stored_definition(raw)
    if not (run_dir / "soaks.json").exists():
        raise ValueError(f"{run_dir}: no soak finished yet (no soaks.json): nothing to report; "
                         "`eucalab experiment ... --resume` finishes the run")
    soaks = {float(h): r for h, r in json.loads((run_dir / "soaks.json").read_text()).items()}
    floors = floors_of(soaks)
    trials_path = run_dir / "trials" / "summary.json"
    trials_summary = json.loads(trials_path.read_text()) if trials_path.exists() else None
    during = None
    records, promotions = trial_promotions(run_dir / "trials") if trials_summary is not None else ([], [])
    if records:
        false = unexpected_promotions(promotions, records)
        faults = [t["t_fault"] for t in records if t.get("t_fault") is not None and t.get("target") != "keepalived"]
        by_host: dict[str, int] = {}
        for e in false:
            by_host[e["host"]] = by_host.get(e["host"], 0) + 1
        # The load samples over eucalab's trials only (not the start, keepalived's sets or the end).
        first, last = (min(faults), max(faults)) if faults else (0.0, -1.0)
        load = [x for x in read_events(run_dir / "trials" / "load.jsonl") if first <= x.get("t_mono", -1) <= last]
        during = {"false_failovers": len(false), "by_host": dict(sorted(by_host.items())),
                  "minutes": round((last - first) / 60, 1) if faults else 0.0,
                  "cpu_stolen": steal_summary(load)}
        if during["cpu_stolen"] is not None:
            # How many came within STEAL_WINDOW_S of a load sample with a core's CPU stolen.
            during["stolen_ms_near"] = [steal_near(load, e["t_mono"]) for e in false]
            during["beside_steal"] = sum(v >= STEAL_STALL_MS for v in during["stolen_ms_near"])
    result = outcome(d, soaks, trials_summary, floors, during)
    write_json(run_dir / "summary.json", {"floors_ms": floors, "systems": result, "soak_minutes": minutes,
                                          "trials": n, "coordinator_model": coordinator_rows(d)})
    (run_dir / "report.md").write_text(render(d, result, minutes, n, defined))
    return run_dir


def is_run(run_dir: str | Path) -> bool:
    """Whether a run directory is a safe-floor run's."""
    path = Path(run_dir) / "definition.json"
    return path.exists() and json.loads(path.read_text()).get("kind") == KIND


def is_safe_floor(path: str | Path) -> bool:
    """Whether a definition file is a safe-floor one (``kind: safe-floor``)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return False  # not a definition of any kind: loading it says so
    return isinstance(data, dict) and data.get("kind") == KIND
