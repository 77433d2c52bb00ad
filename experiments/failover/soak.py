"""HA soak: no false failover under the faults a healthy cloud lives with.

    eucalab bench soak [--minutes 10] [--interval-ms 50] [--misses 3] [--loss 1] [--hog-cores 1]

The default deployment with every service runs for ``--minutes`` while, all at once:

* one arbitrator of every ENABLED member is stopped (maintenance: advisory only);
* ``--loss`` percent of the heartbeats arriving on every HA host's heartbeat link are
  dropped (an iptables ``statistic`` rule on INPUT in each member's namespace, so both
  directions of every pair are lossy); ``--loss-paths all`` also drops heartbeats
  arriving on the cloud network, the pair's second path;
* ``--hog-cores`` processes busy-loop, each pinned to one core.

Nothing fails, so every ``ha.promote``, every state change of a member and any moment
at which two members of a pair are ENABLED is a false failover. The bench samples
every pair's states every 100 ms, reads the members' event logs at the end, and exits
1 on any false failover (a benchmark gate).

With ``keepalived_advert_ms`` (the safe-floor experiment, experiments/failover/safe_floor.py), the
same deployment then soaks keepalived as long on the CLC pair's hosts, with the CLCs out
of the way: VRRPv3 adverts at that interval, the same share of adverts dropped (protocol
``vrrp`` arriving on each host's cloud interface), the same CPU hog; every ``Entering
MASTER STATE`` keepalived logs after its pair settled is a false failover, and every
sample in which both hosts hold the VIP is a moment with two serving
(``summary.json``'s ``keepalived``). keepalived has no arbitrators: that stress is eucalab's.

Writes ``results/<UTC>-soak/``: ``config.json``, ``versions.json``, ``events.jsonl``
(every HA member's events, merged by time), ``states.jsonl`` (state changes the
sampler saw), ``load.jsonl`` (CPU every second), ``iptables.json`` (the loss rules'
counters per host), ``summary.json``, and the deployment's own run directory.

The stresses themselves are in stress.py, keepalived's soak in keepalived.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from components.common.events import read_events
from topologies.spec import HeartbeatSpec, load_spec

from ..analysis.measures import STEAL_STALL_MS, percentile, steal_near, steal_summary
from ..testbed.rundir import new_run_dir, write_json
from ..testbed.timescale import wait_until
from .stress import (CpuHog, LoadSampler, add_loss, busy_seconds, cpu_seconds, loss_figures, ovs_pids, pick_cores,
                     rule_counters, stop_arbitrators)

SAMPLE_S = 0.1
# Events that change who serves: after start-up, in a soak where nothing fails, each is false.
DISRUPTIONS = ("ha.promote", "ha.demote", "state.change")
# Events that show the detector or the arbitrators came close to acting.
SUSPICIONS = ("ha.peer_dead", "ha.peer_alive", "ha.frozen", "ha.redundancy_lost", "ha.no_failover",
              "ha.cannot_promote", "ha.error", "arbitrator.fail", "arbitrator.recover", "arbitrator.all_failed",
              "arbitrator.confirm")


# -- pure logic ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What happened during a soak, from the members' events and the sampled states."""

    promotions: list[dict] = field(default_factory=list)
    demotions: list[dict] = field(default_factory=list)
    state_changes: list[dict] = field(default_factory=list)
    dual_enabled: list[dict] = field(default_factory=list)  # samples with two ENABLED members of a pair
    suspicions: dict[str, int] = field(default_factory=dict)

    @property
    def false_failovers(self) -> int:
        """Takeovers nothing called for: one per promotion."""
        return len(self.promotions)

    @property
    def ok(self) -> bool:
        return not (self.promotions or self.demotions or self.state_changes or self.dual_enabled)


def judge(events: list[dict], t_start: float, t_end: float, dual_enabled: list[dict] = ()) -> Verdict:
    """Sort the events logged in [t_start, t_end] into disruptions and suspicions."""
    v = Verdict(dual_enabled=list(dual_enabled))
    counts: Counter = Counter()
    for e in events:
        if not t_start <= e.get("t_mono", -1.0) <= t_end:
            continue
        name = e.get("event")
        if name == "ha.promote":
            v.promotions.append(e)
        elif name == "ha.demote":
            v.demotions.append(e)
        elif name == "state.change":
            v.state_changes.append(e)
        elif name in SUSPICIONS:
            counts[name] += 1
    v.suspicions = dict(sorted(counts.items()))
    return v


def enabled_twice(states: dict[str, str | None], pairs: dict[str, list[str]]) -> list[str]:
    """The pairs of which more than one member is ENABLED in ``states`` (member -> state)."""
    return [name for name, members in pairs.items() if sum(states.get(m) == "ENABLED" for m in members) > 1]


class StateTail:
    """A member's service state, and whether it is fenced (ENABLED but refusing every
    request after a freeze), from the new lines of its event log (read incrementally)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.state, self.fenced = path, 0, None, False

    def poll(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.state
        end = chunk.rfind(b"\n") + 1  # a line being written waits for the next poll
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "state.change":
                self.state = e.get("to")
            elif e.get("event") == "service.start":
                self.state = e.get("state")
            elif e.get("event") == "ha.frozen" and e.get("fenced"):
                self.fenced = True
            elif e.get("event") == "ha.unfenced":
                self.fenced = False
        return self.state


# -- the run ---------------------------------------------------------------------------------------


def _ha_members(dep) -> dict[str, list[str]]:
    return {p.name: p.members for p in dep.plan.pairs if p.secondary is not None}


def run(minutes: float = 10.0, interval_ms: float = 50, misses: int = 3, loss_pct: float = 1.0,
        hog_cores: int = 1, loss_paths: str = "heartbeat", spec_path: str | None = None,
        results_root: Path | None = None, progress: bool | None = None) -> int:
    """Run the soak, print its figures and write its run directory; 1 on any false failover."""
    _, summary = soak(minutes, interval_ms, misses, loss_pct, hog_cores, loss_paths, spec_path,
                      results_root, progress)
    return 0 if summary["ok"] else 1


def soak(minutes: float = 10.0, interval_ms: float = 50, misses: int = 3, loss_pct: float = 1.0,
         hog_cores: int = 1, loss_paths: str = "heartbeat", spec_path: str | dict | None = None,
         results_root: Path | None = None, progress: bool | None = None,
         keepalived_advert_ms: float | None = None) -> tuple[Path, dict]:
    """The soak (and keepalived's after it, with ``keepalived_advert_ms``); its run
    directory and summary. ``spec_path``: a spec file, or a spec as a dict."""
    from rich.console import Console

    from topologies.spec import spec_from_dict

    from ..testbed.clocks import measured_on_one_machine
    from ..testbed.configs import HEARTBEAT_PRIORITY
    from ..testbed.deployment import Deployment
    from ..testbed.versions import versions

    base = spec_from_dict(spec_path) if isinstance(spec_path, dict) else load_spec(spec_path)
    measured_on_one_machine(base, "eucalab bench soak", error=SystemExit)  # what is wrong first, then root
    if os.geteuid() != 0:
        raise SystemExit("eucalab bench soak: builds a network and needs root")
    if not 0 <= loss_pct < 100:
        raise SystemExit("eucalab bench soak: --loss is a percentage in [0, 100)")
    console = Console(width=max(110, Console().width))
    cores = pick_cores(hog_cores)
    spec = dataclasses.replace(base, name="soak", heartbeat=HeartbeatSpec(interval_ms=interval_ms, misses=misses))
    run_dir = new_run_dir("soak", results_root)
    config = {"minutes": minutes, "interval_ms": interval_ms, "misses": misses, "loss_pct": loss_pct,
              "loss_paths": loss_paths, "hog_cores": cores, "sample_s": SAMPLE_S, "spec": spec_path or "default",
              "cpu_count": psutil.cpu_count(), "argv": sys.argv, "keepalived_advert_ms": keepalived_advert_ms}
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "versions.json", versions())
    console.print(f"[bold]HA soak[/]: {minutes:g} min, heartbeat {interval_ms:g} ms x {misses}, "
                  f"{loss_pct:g}% heartbeat loss ({loss_paths} path{'s' if loss_paths == 'all' else ''}), "
                  f"one arbitrator down per ENABLED member, CPU hog on core(s) {cores}; run directory {run_dir}")

    with Deployment(spec, run_dir=run_dir / "deployment") as dep:
        t0 = time.monotonic()
        dep.start_services()
        pairs = _ha_members(dep)
        for pair in (p for p in dep.plan.pairs if p.name in pairs):
            members = pair.members
            # Elected, and each member has heard its peer: start-up is over.
            if not wait_until(lambda p=pair: dep.redundant(p), 30, step=0.05):
                raise RuntimeError(f"no stable pair at start-up: { {x: dep.member_state(x) for x in members} }")
        startup_s = time.monotonic() - t0
        hosts = [h for members in pairs.values() for h in members]
        console.print(f"  deployment up and {len(pairs)} pairs elected in {startup_s:.1f} s")

        # The soak starts before the stresses: a failover they cause counts.
        t_start = time.clock_gettime(time.CLOCK_MONOTONIC)
        dep.events.emit("soak.start", pairs=pairs)
        stopped = stop_arbitrators(dep, pairs)
        installed = add_loss(dep, pairs, loss_pct, loss_paths)
        counters_before = rule_counters(dep, hosts)
        load = LoadSampler(run_dir / "load.jsonl").start()
        hog = CpuHog(cores)
        groups = {"deployment": [p.pid for p in dep.processes.values()], "ovs": ovs_pids(), "driver": [os.getpid()]}
        try:
            hog.start()
            dep.events.emit("soak.stressed", arbitrators_stopped=stopped, loss_rules=installed,
                            hog_pids=[p.pid for p in hog.procs], hog_cores=cores)
            cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
            sys0 = psutil.cpu_times()
            wall0 = time.monotonic()
            dual, sampled = _sample(dep, pairs, minutes * 60, run_dir / "states.jsonl", console, progress)
            wall = time.monotonic() - wall0
            hog_s = hog.cpu_seconds()
            cpu1 = {k: cpu_seconds(v) for k, v in groups.items()}
            sys1 = psutil.cpu_times()
        finally:
            hog.stop()
            load.stop()
        t_end = time.clock_gettime(time.CLOCK_MONOTONIC)
        counters_after = rule_counters(dep, hosts)
        dep.events.emit("soak.end")
        events = sorted((e for h in hosts for e in read_events(dep.process(h).events_path)),
                        key=lambda e: e.get("t_mono", 0.0))
        keepalived = None
        if keepalived_advert_ms is not None:
            console.print(f"  keepalived: {minutes:g} min, VRRPv3 advert {keepalived_advert_ms:g} ms, same stresses")
            from .keepalived import keepalived_soak

            keepalived = keepalived_soak(dep, keepalived_advert_ms, minutes * 60, loss_pct, cores,
                                         HEARTBEAT_PRIORITY if dep.realtime else None)

    with open(run_dir / "events.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    counters = {h: {k: counters_after[h].get(k, 0) - counters_before[h].get(k, 0) for k in counters_after[h]}
                for h in hosts}
    write_json(run_dir / "iptables.json", {"before": counters_before, "after": counters_after, "soak": counters})
    verdict = judge(events, t_start, t_end, dual)
    cores_used = {k: (cpu1[k] - cpu0[k]) / wall for k in groups}
    cores_used["hog"] = hog_s / wall
    cores_used["machine"] = (busy_seconds(sys1) - busy_seconds(sys0)) / wall
    cores_used["others"] = cores_used["machine"] - sum(v for k, v in cores_used.items() if k != "machine")
    summary = _summary(config, verdict, sampled, wall, startup_s, loss_figures(counters), load.samples,
                       cores_used, stopped, events, t_start, t_end, hosts)
    if keepalived is not None:
        summary["keepalived"] = keepalived
    write_json(run_dir / "summary.json", summary)
    _print(console, summary, run_dir)
    return run_dir, summary


def _sample(dep, pairs: dict[str, list[str]], seconds: float, path: Path, console,
            progress: bool | None) -> tuple[list[dict], int]:
    """Every member's state every SAMPLE_S for ``seconds``; returns the samples with two
    ENABLED members of a pair, and how many samples were taken. State changes go to ``path``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    tails = {m: StateTail(dep.process(m).events_path) for members in pairs.values() for m in members}
    procs = {m: dep.process(m) for m in tails}
    tty = console.is_terminal if progress is None else progress
    dual: list[dict] = []
    last: dict[str, str | None] = {}
    n = 0
    every = max(10.0, seconds / 10)  # a plain progress line this often without a terminal
    t0 = time.monotonic()
    next_line = t0 + every
    with open(path, "a", buffering=1) as out, Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not tty) as bar:
        task = bar.add_task("soak", total=seconds)
        next_at = t0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            states = {m: (t.poll() if procs[m].alive() else "DEAD") for m, t in tails.items()}
            n += 1
            if states != last:
                out.write(json.dumps({"t_mono": time.clock_gettime(time.CLOCK_MONOTONIC), "states": states}) + "\n")
                last = states
            for name in enabled_twice(states, pairs):
                dual.append({"t_mono": time.clock_gettime(time.CLOCK_MONOTONIC), "pair": name,
                             "states": {m: states[m] for m in pairs[name]},
                             "fenced": [m for m in pairs[name] if tails[m].fenced]})
            changed = sum(1 for m, s in states.items() if s not in ("ENABLED", "DISABLED"))
            bar.update(task, completed=now - t0,
                       description=f"soak: {len(dual)} dual-ENABLED samples, {changed} members not ENABLED/DISABLED")
            if not tty and now >= next_line:
                next_line += every
                print(f"eucalab: soak {now - t0:.0f}/{seconds:.0f} s, {n} samples, {len(dual)} with two ENABLED",
                      flush=True)
            next_at += SAMPLE_S
            time.sleep(max(0.0, next_at - time.monotonic()))
    return dual, n


def _summary(config, verdict: Verdict, sampled: int, wall: float, startup_s: float, loss: dict,
             load: list[dict], cores_used: dict, stopped: list[dict], events: list[dict], t_start: float,
             t_end: float, hosts: list[str]) -> dict:
    frozen = [e["late_s"] for e in events if e.get("event") == "ha.frozen" and t_start <= e["t_mono"] <= t_end]
    # Ticks that ran more than two intervals late but within the window: the pause rule
    # (docs/ha.md) kept them from counting; how late a member's timer runs bounds the floor.
    paused = [e["late_s"] for e in events if e.get("event") == "ha.paused" and t_start <= e["t_mono"] <= t_end]
    silences = [e["silence_s"] for e in events if e.get("event") == "ha.peer_dead"
                and t_start <= e["t_mono"] <= t_end]
    cpu = [s["cpu_percent"] for s in load]
    load1 = [s["load1"] for s in load]
    expected = wall / (config["interval_ms"] / 1000) * len(hosts)  # heartbeats each path should carry

    def brief(e):
        keep = ("t_mono", "host", "event", "from", "to", "reason", "epoch")
        return {k: e[k] for k in keep if k in e}

    restarted = [{"host": e["host"], "arbitrator": e.get("arbitrator"), "by": e.get("by", "api")} for e in events
                 if e.get("event") == "arbitrator.start" and t_start <= e["t_mono"] <= t_end]
    return {
        "ok": verdict.ok,
        "false_failovers": verdict.false_failovers,
        # Each with the CPU the hypervisor stole from a core around it (stress.LoadSampler).
        "promotions": [{**brief(e), "stolen_ms_near": steal_near(load, e["t_mono"])}
                       for e in verdict.promotions],
        "cpu_stolen": steal_summary(load),
        "demotions": [brief(e) for e in verdict.demotions],
        "state_changes": [brief(e) for e in verdict.state_changes],
        "dual_enabled_samples": len(verdict.dual_enabled),
        # Two ENABLED of which neither was fenced: both may have served (the lease is not in the events).
        "dual_enabled_unfenced_samples": sum(1 for d in verdict.dual_enabled if not d.get("fenced")),
        "dual_enabled": verdict.dual_enabled[:100],
        "samples": sampled,
        "soak_s": round(wall, 2),
        "startup_s": round(startup_s, 2),
        "suspicions": verdict.suspicions,
        "peer_dead_silence_s": silences,
        "frozen_late_s": frozen,
        "paused_late_s": paused,
        "heartbeats": {path: {**figures, "expected": round(expected)} for path, figures in loss.items()},
        "arbitrators_stopped": stopped,
        "arbitrators_started_again": restarted,
        "cpu_percent": {"mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
                        "p50": percentile(cpu, 50) if cpu else None,
                        "p95": percentile(cpu, 95) if cpu else None, "max": max(cpu, default=None)},
        "load1": {"mean": round(sum(load1) / len(load1), 2) if load1 else None,
                  "max": round(max(load1), 2) if load1 else None},
        "other_runs_max": max((s["other_runs"] for s in load), default=None),
        "cores_used": {k: round(v, 3) for k, v in cores_used.items()},
        "config": config,
    }


def _print(console, s: dict, run_dir: Path) -> None:
    c = s["config"]
    verdict = "[green]PASS[/]" if s["ok"] else "[red]FAIL[/]"
    console.print(f"{verdict}  heartbeat {c['interval_ms']:g} ms x {c['misses']}, {s['soak_s']:.0f} s soaked, "
                  f"{s['samples']} state samples")
    console.print(f"  false failovers (ha.promote): {s['false_failovers']}   demotions: {len(s['demotions'])}   "
                  f"member state changes: {len(s['state_changes'])}   samples with two ENABLED: "
                  f"{s['dual_enabled_samples']} ({s['dual_enabled_unfenced_samples']} with neither fenced)")
    for e in s["promotions"] + s["demotions"] + s["state_changes"]:
        console.print(f"    {e['t_mono']:.3f} {e['host']:10} {e['event']:14} "
                      f"{e.get('from', '')}{'->' if 'to' in e else ''}{e.get('to', '')} {e.get('reason', '')}")
    sus = ", ".join(f"{k} {v}" for k, v in s["suspicions"].items()) or "none"
    console.print(f"  detector and arbitrator events: {sus}")
    held = "held" if not s["arbitrators_started_again"] else f"started again: {s['arbitrators_started_again']}"
    console.print(f"  arbitrators stopped: {len(s['arbitrators_stopped'])} ({held})")
    if s["peer_dead_silence_s"]:
        console.print(f"  peer silences that reached the window (s): {s['peer_dead_silence_s']}")
    if s["frozen_late_s"]:
        console.print(f"  late ticks beyond the window (s): {s['frozen_late_s']}")
    for path, h in s["heartbeats"].items():
        frac = h["drop_fraction"]
        console.print(f"  heartbeats on the {path} path: {h['seen']} seen ({h['expected']} expected), {h['dropped']} "
                      f"dropped = {frac * 100 if frac is not None else float('nan'):.2f}% "
                      f"(target {c['loss_pct']:g}%)")
    cu = s["cores_used"]
    console.print(f"  CPU: machine {s['cpu_percent']['mean']}% mean, p95 {s['cpu_percent']['p95']}% of "
                  f"{c['cpu_count']} cores; load1 mean {s['load1']['mean']}, max {s['load1']['max']}; "
                  f"other eucalab runs on the machine: up to {s['other_runs_max']}")
    console.print("  cores used: " + ", ".join(f"{k} {v:.2f}" for k, v in cu.items()))
    st = s["cpu_stolen"]
    if st is not None:
        console.print(f"  CPU stolen by the hypervisor (eucalab's soak): {st['total_ms'] / 1000:.2f} s, at most "
                      f"{st['max_ms']:.0f} ms from one core in one sample, {st['stalls']} of {st['samples']} samples "
                      f"with {STEAL_STALL_MS:g} ms or more; each false failover's in summary.json "
                      "(promotions, stolen_ms_near)")
    k = s.get("keepalived")
    if k:
        adv = k["adverts"] or {}
        console.print(f"{'[green]PASS[/]' if k['ok'] else '[red]FAIL[/]'}  keepalived advert {k['advert_ms']:g} ms: "
                      f"false failovers {k['false_failovers']}, samples with both holding the VIP "
                      f"{k['dual_holder_samples']} of {k['samples']}; adverts seen {adv.get('seen')}, "
                      f"dropped {adv.get('dropped')}")
    console.print(f"results: {run_dir / 'summary.json'}")
