"""The report from raw trial records alone: verdict columns, flagged trials, the HA-target section."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from experiments.analysis.report import build


def write_trials(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def crash(i, outage):
    return {"set": "eucalab CLC crash", "target": "clc", "fault": "sigkill", "expect": "failover", "trial": i,
            "status": "ok", "outage_s": outage, "detection_s": 0.13, "takeover_s": 0.003, "new_primary": "clc2",
            "detection_bound_s": 0.15, "redundancy_restored_s": 1.0, "as_expected": True, "flags": []}


def test_the_ha_target_section_needs_100_trials_and_reads_the_raw_records(tmp_path):
    rng = random.Random(1)
    outages = [rng.uniform(0.14, 0.17) for _ in range(100)]
    write_trials(tmp_path / "trials.jsonl", [crash(i, o) for i, o in enumerate(outages)])
    build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Against the HA targets" in md and "Against the HA targets" in (tmp_path / "report.html").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())["eucalab CLC crash"]
    # Records without served_again_s (older runs): beyond the bound from the gap's start.
    assert summary["outage_beyond_detection_bound_ms"]["max"] == max(1000 * (o - 0.15) for o in outages)
    # With it: from the fault, as the bound counts; the gap's version is kept beside it.
    write_trials(tmp_path / "trials.jsonl", [dict(crash(i, o), served_again_s=o - 0.008)
                                             for i, o in enumerate(outages)])
    build(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())["eucalab CLC crash"]
    assert summary["outage_beyond_detection_bound_ms"]["max"] == max(1000 * (o - 0.008 - 0.15) for o in outages)
    assert summary["outage_gap_beyond_detection_bound_ms"]["max"] == max(1000 * (o - 0.15) for o in outages)
    assert "gap - bound p99" in (tmp_path / "report.md").read_text()
    write_trials(tmp_path / "trials.jsonl", [crash(i, o) for i, o in enumerate(outages[:99])])
    build(tmp_path)
    assert "## Against the HA targets" not in (tmp_path / "report.md").read_text()  # no p99 below 100 trials


def test_a_trial_that_went_wrong_is_listed_with_its_reasons_and_capture(tmp_path):
    bad = {**crash(1, 0.3), "expect": "no-failover", "fault": "heartbeat", "set": "eucalab CLC heartbeat",
           "as_expected": False, "flags": ["false failover", "two ENABLED for 193 ms"],
           "capture": "captures/eucalab-clc-heartbeat-1"}
    write_trials(tmp_path / "trials.jsonl", [crash(0, 0.15), bad])
    build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| eucalab CLC heartbeat | no-failover | 0/1 |" in md
    assert "false failover; two ENABLED for 193 ms" in md and "captures/eucalab-clc-heartbeat-1" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eucalab CLC heartbeat"]["false_failovers"] == 1


def test_the_report_says_where_the_time_beyond_the_bound_goes(tmp_path):
    records, streams = [], []
    for i in range(100):
        t_fault = 100.0 + i
        served = 0.160 + (i % 10) / 1000
        records.append(dict(crash(i, served + 0.005), served_again_s=served, t_fault=t_fault,
                            promote_reason="peer dead", datapath_ports=53, datapath_priority=20))
        streams.append({"set": "eucalab CLC crash", "trial": i, "t_fault": t_fault,
                        "probes": [[t_fault - 0.02, t_fault - 0.016, True], [t_fault + served - 0.004,
                                                                              t_fault + served, True]]})
    records.append({**crash(100, 2.4), "set": "eucalab CLC uplink", "fault": "uplink", "detection_s": 2.3,
                    "served_again_s": 2.39, "promote_reason": "peer NOTREADY: it lost its arbitrators"})
    write_trials(tmp_path / "trials.jsonl", records)
    write_trials(tmp_path / "probes.jsonl", streams)
    build(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = summary["eucalab CLC crash"]["beyond_bound_parts_ms"]
    assert parts["late"]["p50"] == pytest.approx(-20.0) and parts["takeover"]["max"] == pytest.approx(3.0)
    assert parts["vip_to_served"]["max"] == pytest.approx(36.0)  # 169 - 130 - 3
    assert parts["beyond"]["max"] == pytest.approx(19.0) and parts["requests"]["p50"] == pytest.approx(4.0)
    assert summary["eucalab CLC uplink"]["beyond_bound_parts_ms"] == {}  # the arbitrators' bound differs
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Where the time beyond the detection bound goes")[1].split("##")[0]
    assert "| eucalab CLC crash | 100 | 53 | FIFO 20 | 14.5 / 19.0 | -20.0 / -20.0 | 3.0 / 3.0 |" in section
    assert "eucalab CLC uplink" not in section
    assert "Where the time beyond the detection bound goes" in (tmp_path / "report.html").read_text()


def test_the_report_shows_the_measured_paths_and_link_parameters(tmp_path):
    write_trials(tmp_path / "trials.jsonl", [crash(0, 0.15)])
    links = {"bw_mbit": None, "delay_ms": 20, "jitter_ms": None, "loss_pct": None, "by_network": {}}
    write_trials(tmp_path / "paths.jsonl", [
        {"from": "user", "to": "clc", "ip": "10.0.0.10", "sent": 20, "received": 20, "links": links,
         "rtt_ms": {"min": 160.2, "p50": 161.0, "max": 170.9}},
        {"from": "user", "to": "walrus", "ip": "10.0.0.20", "sent": 20, "received": 0, "links": links,
         "rtt_ms": None}])
    build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## The network as measured" in md
    assert "- links: " in md and '"delay_ms": 20' in md and md.count("- links") == 1
    assert "- user -> clc (10.0.0.10): RTT p50 161.00 ms (min 160.20, max 170.90); 0/20 lost" in md
    assert "- user -> walrus (10.0.0.20): no answer; 20/20 lost" in md
    assert "The network as measured" in (tmp_path / "report.html").read_text()
    (tmp_path / "paths.jsonl").unlink()
    build(tmp_path)
    assert "The network as measured" not in (tmp_path / "report.md").read_text()


def test_the_detectors_section_sets_the_same_faults_side_by_side(tmp_path):
    from experiments.failover.experiment import Experiment

    exp = Experiment.load(Path(__file__).parents[2] / "experiments/failover/definitions/detectors.yaml")
    records = []
    for ts in exp.sets:
        detector = (ts.spec.get("ha") or {}).get("detector", "heartbeat")
        outage = {"keepalived": 0.18, "coordinator": 5.0}.get("keepalived" if ts.target == "keepalived" else detector,
                                                            0.14)
        records += [dict(crash(i, outage + i / 100), set=ts.name, target=ts.target, fault=ts.fault, detector=detector)
                    for i in range(2)]
    write_trials(tmp_path / "trials.jsonl", records)
    build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Detectors side by side" in md
    assert ("| fault | Eucalyptus 3.x's coordinator | keepalived's VRRP | eucalab's peer heartbeats |") in md
    assert "| CLC process crash | 5005.0 / 5010.0 (2) | 185.0 / 190.0 (2) | 145.0 / 150.0 (2) |" in md
    assert "| CC host failure | 5005.0 / 5010.0 (2) | - | 145.0 / 150.0 (2) |" in md
    assert "Detectors side by side" in (tmp_path / "report.html").read_text()
    # One detector only (older runs recorded none: heartbeats): no such section.
    write_trials(tmp_path / "trials.jsonl", [{k: v for k, v in r.items() if k != "detector"} for r in records
                                             if r["detector"] == "heartbeat" and r["target"] != "keepalived"])
    build(tmp_path)
    assert "Detectors side by side" not in (tmp_path / "report.md").read_text()
