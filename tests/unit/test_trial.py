"""One failover trial's steps (experiments/failover/trial.py) against a stand-in deployment:
which member the fault goes to when a takeover happens during the warm-up."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from experiments.analysis.measures import Probe
from experiments.failover.experiment import Experiment, TrialSet
from experiments.failover.runner import Runner
from experiments.failover.workload import Workload

PRIMARY, SECONDARY = "c1cc1", "c1cc2"


class StandInDeployment:
    """A pair's members as states, a crash that makes the peer ENABLED, a restart that makes
    the crashed member DISABLED again: the few things a trial asks of a deployment."""

    def __init__(self, tmp_path):
        self.run_dir = tmp_path
        (tmp_path / "events.jsonl").write_text("")
        self.pair = SimpleNamespace(name="cc1", kind="cc", members=[PRIMARY, SECONDARY], heartbeat_network="hb1")
        self.plan = SimpleNamespace(pair=lambda target, cluster=None: self.pair)
        self.spec = SimpleNamespace(heartbeat=SimpleNamespace(interval_ms=20, misses=3), ha=SimpleNamespace(detector="heartbeat"))
        self.events = SimpleNamespace(emit=lambda *args, **fields: None)
        self.state = {PRIMARY: "ENABLED", SECONDARY: "DISABLED"}
        self.killed: list[str] = []
        self.lock = threading.Lock()

    def member_state(self, host):
        return self.state[host]

    def redundant(self, pair):
        return sorted(self.state.values()) == ["DISABLED", "ENABLED"]

    def takeover(self, to):
        with self.lock:
            for m in self.state:
                self.state[m] = "ENABLED" if m == to else "DISABLED"

    def kill(self, host, label=None, sig=None, group=False):
        self.killed.append(host)
        with self.lock:
            self.state[host] = "DEAD"
            for m in self.state:
                if m != host:
                    self.state[m] = "ENABLED"

    def start(self, kind, host, config=None, *, wait=True, **options):
        self.state[host] = "DISABLED"

    def process(self, host, label=None):
        path = self.run_dir / f"{host}.events.jsonl"
        path.touch()
        return SimpleNamespace(events_path=path, popen=SimpleNamespace(wait=lambda timeout=None: 0))


class StandInProber:
    """Every snapshot a new successful probe; the first ``warmup_calls`` snapshots are the
    warm-up's, after which ``during_warmup`` runs once (e.g. a takeover)."""

    def __init__(self, during_warmup=None):
        self.probes: list[Probe] = []
        self.during_warmup, self.overhead = during_warmup, None

    def snapshot(self):
        now = time.monotonic()
        self.probes.append(Probe(now, now + 0.001, True))
        if self.during_warmup is not None and len(self.probes) == 3:
            self.during_warmup()
        return list(self.probes)

    def stop(self):
        return list(self.probes)


def run_trial(tmp_path, during_warmup=None, setup=None):
    dep = StandInDeployment(tmp_path)
    runner = Runner(Experiment(capture=False, recovery_timeout_s=2.0), run_dir=tmp_path, progress=False)
    if setup is not None:
        setup(dep, runner)
    prober = StandInProber(during_warmup and (lambda: during_warmup(dep)))
    runner.prober = lambda dep, url, headers, expect: prober
    w = Workload(dep=dep, presigned="", disk="", iid="i-00000001", eip="198.51.100.1")
    try:
        record = runner.trial(dep, TrialSet(target="cc", trials=1, fault="sigkill"), 0, w)
    finally:
        runner.trials_file.close()
        runner.probes_file.close()
    return dep, record


def test_the_fault_goes_to_the_enabled_member(tmp_path):
    dep, record = run_trial(tmp_path)
    assert dep.killed == [PRIMARY]
    assert record["primary"] == PRIMARY and record["status"] == "ok"
    assert "warmup_takeover" not in record
    assert not any("warm-up" in f for f in record["flags"])


def test_a_takeover_during_the_warm_up_moves_the_fault_to_the_new_primary_and_is_recorded(tmp_path):
    dep, record = run_trial(tmp_path, during_warmup=lambda dep: dep.takeover(SECONDARY))
    # The member ENABLED once the warm-up is over is the one faulted, not the standby.
    assert dep.killed == [SECONDARY]
    assert record["primary"] == SECONDARY
    assert record["warmup_takeover"] == {"from": PRIMARY, "to": SECONDARY}
    assert any("takeover during the warm-up" in f for f in record["flags"])
    assert record["as_expected"] is False


def test_under_the_coordinator_the_fault_falls_at_a_random_phase_of_its_check_cycle(tmp_path):
    # A fault waits for the coordinator's next round: drawn within a heartbeat interval only,
    # every trial would meet the cycle at about the same phase (the trials' own rhythm).
    drawn = []

    def setup(dep, runner):
        dep.spec.ha = SimpleNamespace(detector="coordinator", coordinator_check_s=0.3)
        uniform = runner.rng.uniform
        runner.rng.uniform = lambda a, b: drawn.append((a, b)) or uniform(a, b)
    dep, record = run_trial(tmp_path, setup=setup)
    assert (0, 0.3) in drawn and 0 <= record["phase_s"] < 0.3
    assert record["status"] == "ok"


def test_a_promotion_logged_just_after_the_pair_looked_redundant_is_the_trials():
    """Run 20261207T190150Z: a planned switchover's new primary changed state at +0.5246 s,
    the runner saw the pair redundant at +0.5256 s, and the ha.promote line (written after the
    VIP and its gratuitous ARP) came at +0.5264 s: the trial was judged "no failover"."""
    from experiments.failover.trial import promotions_within

    t_fault, t_settled = 100.0, 100.5259
    promote = {"event": "ha.promote", "t_mono": 100.5264, "detected_at": 100.5234, "epoch": 9}
    events = {PRIMARY: [{"event": "state.change", "t_mono": 100.5212, "to": "DISABLED"}],
              SECONDARY: [{"event": "state.change", "t_mono": 100.5236, "to": "ENABLED"}, promote]}
    assert promotions_within(events, t_fault, t_settled) == [(SECONDARY, promote)]
    # One decided before the fault, or after redundancy was back, is not this trial's.
    early = {**promote, "t_mono": 99.9, "detected_at": 99.8}
    late = {**promote, "t_mono": 100.9, "detected_at": 100.8}
    assert promotions_within({SECONDARY: [early, late]}, t_fault, t_settled) == []
