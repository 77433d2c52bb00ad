"""The soak benchmark on the real network, for 10 seconds: every stress is applied and measured,
the verdict is the exit code, and nothing it started outlives it. Ten seconds hold thousands of
heartbeats and 200 keepalived adverts, enough that the asked loss shows (none lost by chance
has a probability under 1e-4) and the bounds below are the same share of the time."""

from __future__ import annotations

import json

import psutil

from experiments.failover.soak import SAMPLE_S, run, soak
from experiments.testbed.configs import HEARTBEAT_PRIORITY

SOAK_S = 10  # each soak's length (the bench's own default is ten minutes)


def test_soak_applies_and_measures_every_stress(tmp_path):
    rc = run(minutes=SOAK_S / 60, interval_ms=50, misses=3, loss_pct=1.0, hog_cores=1, results_root=tmp_path,
             progress=False)
    (run_dir,) = tmp_path.glob("*-soak")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert rc == (0 if summary["ok"] else 1)
    # A state sample every 0.1 s (SAMPLE_S): at least three quarters of them taken.
    assert summary["soak_s"] >= SOAK_S and summary["samples"] >= 0.75 * SOAK_S / SAMPLE_S

    # One arbitrator down on every ENABLED member (6 pairs), for the whole soak.
    assert len(summary["arbitrators_stopped"]) == 6
    assert summary["arbitrators_started_again"] == []

    # The loss happened, about as asked, on heartbeats that kept flowing.
    hb = summary["heartbeats"]["hb"]
    assert hb["seen"] > 0.8 * hb["expected"]
    assert 0 < hb["dropped"] < 0.05 * hb["seen"]

    # The hog ran, and was ended with the run.
    assert summary["cores_used"]["hog"] > 0.1
    driver = [json.loads(line) for line in (run_dir / "deployment" / "events.jsonl").read_text().splitlines()]
    (stressed,) = [e for e in driver if e["event"] == "soak.stressed"]
    assert stressed["hog_pids"] and not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                                            for pid in stressed["hog_pids"])

    # Raw data beside the figures.
    for name in ("config.json", "versions.json", "events.jsonl", "states.jsonl", "load.jsonl", "iptables.json"):
        assert (run_dir / name).stat().st_size > 0, name


def test_keepalived_soaks_after_eucalab_on_the_same_deployment(tmp_path):
    """The safe-floor experiment's second half of a setting: keepalived on the CLC hosts,
    its adverts dropped as asked, its transitions and VIP holders counted, then stopped."""
    run_dir, summary = soak(minutes=SOAK_S / 60, interval_ms=50, misses=3, loss_pct=5.0, hog_cores=1,
                            results_root=tmp_path, progress=False, keepalived_advert_ms=50)
    k = summary["keepalived"]
    # Its VRRP process at the priority of eucalab's heartbeat threads.
    assert k["soak_s"] >= SOAK_S and k["samples"] >= 0.66 * SOAK_S / SAMPLE_S and k["rt_priority"] == HEARTBEAT_PRIORITY
    # The master's adverts reached the backup (20 a second), and about 5% were dropped.
    adverts = k["adverts"]
    assert adverts["seen"] > 0.8 * SOAK_S * 20 and 0 < adverts["dropped"] < 0.15 * adverts["seen"]
    assert k["false_failovers"] == sum(k["masters_by_host"].values())
    assert k["ok"] == (k["false_failovers"] == 0 and k["dual_holder_samples"] == 0)
    assert k["no_holder_samples"] < k["samples"]  # someone held the VIP
    # keepalived and its responder were stopped before the deployment went down.
    driver = [json.loads(line) for line in (run_dir / "deployment" / "events.jsonl").read_text().splitlines()]
    started = {(e["host"], e["label"]) for e in driver if e["event"] == "process.start"
               and e["label"] in ("keepalived", "http8080")}
    exited = {(e["host"], e["label"]) for e in driver if e["event"] == "process.exit"}
    assert {("clc1", "keepalived"), ("clc2", "keepalived")} <= started
    assert {(h, "keepalived") for h, label in started if label == "keepalived"} <= exited
