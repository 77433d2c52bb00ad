"""A tiny failover experiment end to end: raw data, summary, plots and report agree."""

from __future__ import annotations

import json

from experiments.analysis.measures import Probe, outage
from experiments.analysis.report import build
from experiments.failover.runner import Experiment, Runner, TrialSet


def test_tiny_experiment_report_matches_raw_data(tmp_path):
    exp = Experiment(name="tiny", seed=7, spec={"name": "tiny", "clusters": 1, "ncs_per_cluster": 1},
                     sets=[TrialSet("clc", 2), TrialSet("cc", 1, fault="host"), TrialSet("sc", 1),
                           TrialSet("clc", 1, fault="heartbeat"), TrialSet("keepalived", 1, advert_ms=50)])
    run_dir = Runner(exp, run_dir=tmp_path, progress=False).run()
    trials = [json.loads(l) for l in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert [t["status"] for t in trials] == ["ok"] * 6, trials
    assert all(t["lost_writes"] in (0, None) for t in trials)
    # Each trial judged against its fault's expected outcome: the heartbeat cut is no failover.
    assert all(t.get("as_expected", True) for t in trials), [t.get("flags") for t in trials]
    cut = next(t for t in trials if t.get("fault") == "heartbeat")
    assert cut["expect"] == "no-failover" and cut["promotions"] == 0 and cut["two_enabled_s"] == 0
    # The outage in trials.jsonl is recomputed from the raw probes alone.
    probes = [json.loads(l) for l in (run_dir / "probes.jsonl").read_text().splitlines()]
    assert len(probes) == 6
    for p in probes:
        trial = next(t for t in trials if t["set"] == p["set"] and t["trial"] == p["trial"])
        until = p["t_fault"] + trial["hold_s"] if trial.get("hold_s") is not None else None
        assert outage([Probe(*x) for x in p["probes"]], p["t_fault"], until) == trial["outage_s"]
        if trial.get("expect", "failover") == "failover":
            assert 0.05 < trial["outage_s"] < 2.0
    summary = json.loads((run_dir / "summary.json").read_text())
    clc = [t["outage_s"] * 1000 for t in trials if t["target"] == "clc"]
    assert summary["eucalab CLC crash"]["outage_ms"]["max"] == max(clc)
    assert summary["eucalab CLC crash"]["ok"] == 2
    report = (run_dir / "report.md").read_text()
    assert "| eucalab CLC crash | failover | 2/2 |" in report and "keepalived advert 50 ms" in report
    assert "| eucalab CLC heartbeat | no-failover | 1/1 |" in report and "eucalab SC crash" in report
    for png in ("outage_cdf.png", "breakdown.png", "timeline.png"):
        assert (run_dir / png).stat().st_size > 10_000
        assert png in (run_dir / "report.html").read_text()
    # `eucalab report` regenerates the same summary from the raw data alone.
    (run_dir / "summary.json").unlink()
    build(run_dir)
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for name in ("versions.json", "experiment.json", "load.jsonl", "timing.json"):
        assert (run_dir / name).exists(), name


def test_a_cc_host_failure_leaves_edge_instances_answering(tmp_path):
    """The CC primary's host fails while users fetch HTTP from an instance's elastic IP every
    10 ms (experiments/failover/definitions/edge.yaml, shortened): in MANAGED the CC routes the
    instance and users wait for the takeover; in EDGE the NC's bridge translates the
    elastic IP and no probe fails while the CC pair fails over."""
    exp = Experiment(name="edge-tiny", seed=3, spec={"name": "edge-tiny", "clusters": 1, "ncs_per_cluster": 1},
                     sweep={"spec.mode": ["MANAGED", "EDGE"]}, sets=[TrialSet("cc", 2, fault="host")])
    run_dir = Runner(exp, run_dir=tmp_path, progress=False).run()
    trials = [json.loads(l) for l in (run_dir / "trials.jsonl").read_text().splitlines()]
    by_mode = {m: [t for t in trials if t["point"]["spec.mode"] == m] for m in ("MANAGED", "EDGE")}
    assert all(len(ts) == 2 for ts in by_mode.values()), trials
    for t in trials:  # the CC pair failed over in both modes
        assert t["status"] == "ok" and t["new_primary"] in ("c1cc1", "c1cc2"), t
    assert all(t["failed_probes"] > 0 for t in by_mode["MANAGED"]), by_mode["MANAGED"]
    assert all(t["failed_probes"] == 0 for t in by_mode["EDGE"]), by_mode["EDGE"]
    managed, edge = (max(t["outage_s"] for t in by_mode[m]) for m in ("MANAGED", "EDGE"))
    assert edge < 0.1 < managed  # EDGE: the longest gap between two answers, no outage
    assert "mode=EDGE" in (run_dir / "report.md").read_text()
