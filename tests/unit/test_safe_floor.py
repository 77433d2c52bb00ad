"""The safe-floor experiment's logic (experiments/failover/safe_floor.py): which setting is the floor,
the bounds an outage is judged against, and its definition's validation."""

from __future__ import annotations

import pytest

from experiments.failover.safe_floor import SafeFloor, bound, floor, outcome, render, soak_row, trial_sets, vrrp_bound


def clean(**extra):
    return {"false_failovers": 0, "dual": 0, **extra}


def test_the_floor_is_the_shortest_setting_safe_with_every_longer_one():
    soaks = {50: clean(), 30: clean(), 20: clean(), 15: {"false_failovers": 2, "dual": 0}, 10: clean()}
    # 10 ms soaked clean, but 15 ms did not: luck below an unsafe setting is no floor.
    assert floor(soaks) == 20
    assert floor({50: clean(), 20: clean()}) == 20
    assert floor({50: {"false_failovers": 0, "dual": 1}, 20: clean()}) is None  # two serving is unsafe too
    assert floor({}) is None


def test_bounds():
    # (k-1)h .. kh, plus takeover, plus one probe interval at the end.
    assert bound(20, 3, probe_ms=2, takeover_ms=1) == (41, 63)
    assert bound(50, 3, probe_ms=10, takeover_ms=1) == (101, 161)
    # VRRPv3 with backup priority 90: Master_Down = 3 x 20 + 166/256 x 20 = 72.97 ms.
    lo, hi = vrrp_bound(20, probe_ms=2, priority=90, takeover_ms=1)
    assert lo == pytest.approx(72.96875 - 20 + 1) and hi == pytest.approx(72.96875 + 3)


def soak_summary(promotions=0, dual=0, fenced=0, keepalived=None):
    s = {"false_failovers": promotions, "demotions": [{}] * promotions, "state_changes": [],
         "dual_enabled_samples": dual + fenced, "dual_enabled_unfenced_samples": dual,
         "suspicions": {"ha.paused": 3}, "soak_s": 60.1, "frozen_late_s": [], "paused_late_s": [0.041, 0.052]}
    if keepalived is not None:
        s["keepalived"] = keepalived
    return s


def test_a_soak_row_counts_takeovers_and_two_serving_not_a_fenced_twin():
    row = soak_row(soak_summary(promotions=1, fenced=2))
    assert row["eucalab"]["false_failovers"] == 1 and row["eucalab"]["dual"] == 0
    assert row["eucalab"]["dual_fenced"] == 2 and "keepalived" not in row
    row = soak_row(soak_summary(keepalived={"false_failovers": 3, "dual_holder_samples": 1, "soak_s": 60.0,
                                            "adverts": {"seen": 100, "dropped": 1}}))
    assert row["keepalived"]["false_failovers"] == 3 and row["keepalived"]["dual"] == 1


def test_trials_run_at_each_systems_own_floor():
    d = SafeFloor()
    sets = trial_sets(d, 20, 30, trials=7)
    assert [(s.target, s.fault, s.trials) for s in sets[:4]] == [
        ("clc", "sigkill", 7), ("walrus", "sigkill", 7), ("sc", "sigkill", 7), ("cc", "host", 7)]
    assert sets[4].target == "keepalived" and sets[4].advert_ms == 30 and sets[4].params["rt_priority"] > 0
    assert [s.target for s in trial_sets(d, None, 30, 1)] == ["keepalived"]
    assert trial_sets(d, None, None, 1) == []


def test_the_report_sets_each_setting_and_the_outage_beside_the_bound():
    d = SafeFloor(probe_interval_ms=2)
    soaks = {50: soak_row(soak_summary(keepalived={"false_failovers": 0, "dual_holder_samples": 0, "soak_s": 60,
                                                   "adverts": {"seen": 10, "dropped": 0}})),
             20: soak_row(soak_summary(promotions=2, keepalived={"false_failovers": 0, "dual_holder_samples": 0,
                                                                 "soak_s": 60, "adverts": {"seen": 10,
                                                                                           "dropped": 0}}))}
    trials = {"eucalab CLC crash": {"trials": 10, "ok": 10, "outage_ms": {"p50": 140.0, "max": 150.0}},
              "keepalived advert 20 ms": {"trials": 10, "ok": 9, "outage_ms": {"p50": 70.0, "max": 80.0}}}
    result = outcome(d, soaks, trials, {"eucalab": 50, "keepalived": 20})
    assert result["eucalab"]["floor_ms"] == 50 and list(result["eucalab"]["trial_sets"]) == ["eucalab CLC crash"]
    assert result["eucalab"]["trial_sets"]["eucalab CLC crash"]["bound_ms"] == [101.0, 153.0]
    assert result["eucalab"]["settings"]["20"]["false_failovers"] == 2
    assert list(result["keepalived"]["trial_sets"]) == ["keepalived advert 20 ms"]
    md = render(d, result, soak_minutes=1, trials=10)
    assert "## eucalab: floor 50 ms" in md and "| eucalab CLC crash | 10/10 | 140.0 | - | 150.0 | 101..153 |" in md
    assert "| 20 | 60.1 | 2 | 0 | 52 | ha.paused 3 |" in md
    assert "| 20 | 60 | 0 | 0 | - | adverts seen 10 (one per 6000 ms), dropped 0 |" in md
    # The third detector, labelled a model, on the same targets.
    assert "## Eucalyptus 3.x's coordinator (a model, not measured)" in md
    assert "| clc (the coordinator) | process |" in md and "| cc | host |" in md


@pytest.mark.parametrize("body, message", [
    ("kind: safe-floor\nintervals_ms: []\n", "intervals_ms"),
    ("kind: safe-floor\nintervals_ms: [20, -1]\n", "intervals_ms"),
    ("kind: safe-floor\nmisses: 1\n", "misses"),
    ("kind: safe-floor\nloss_pct: 100\n", "loss_pct"),
    ("kind: safe-floor\ntargets: [{target: keepalived}]\n", "targets"),
    ("kind: safe-floor\ntargets: [{target: clc, trials: 3}]\n", "targets"),
    ("kind: safe-floor\nsoak: 10\n", "unknown field"),
    ("kind: other\n", "kind must be"),
    ("kind: safe-floor\nspec: {clusters: 0}\n", "clusters"),
    # Member events on another server carry its clock: measured here only.
    ("kind: safe-floor\nspec: {servers: [localhost, 10.99.0.2]}\n", "measures on this machine only"),
])
def test_a_bad_definition_gets_a_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        SafeFloor.load(path)


def test_keepalived_rounds_its_interval_and_the_bound_follows_what_it_ran():
    from experiments.failover.safe_floor import advert_ms

    # Asked for 15 ms, keepalived sent one advert per 20 ms (it rounds to centiseconds).
    assert advert_ms({"soak_s": 60.0, "adverts": {"seen": 2978, "dropped": 37}}) == 20.1
    assert advert_ms({"soak_s": 60.0, "adverts": None}) is None
    soaks = {15: {"keepalived": {"false_failovers": 0, "dual": 0, "soak_s": 60.0,
                                 "adverts": {"seen": 2978, "dropped": 37}}}}
    trials = {"keepalived advert 15 ms": {"trials": 3, "ok": 3, "outage_ms": {"p50": 70.0}}}
    r = outcome(SafeFloor(probe_interval_ms=2), soaks, trials, {"eucalab": None, "keepalived": 15})
    lo, hi = vrrp_bound(20, 2)
    assert r["keepalived"]["trial_sets"]["keepalived advert 15 ms"]["bound_ms"] == [round(lo, 2), round(hi, 2)]


def test_a_run_directory_is_reported_again_from_its_raw_results(tmp_path):
    import json
    from dataclasses import asdict

    from experiments.failover.safe_floor import build, is_run

    d = SafeFloor(intervals_ms=[50, 20], targets=[{"target": "clc"}])
    (tmp_path / "definition.json").write_text(json.dumps({**asdict(d), "run_soak_minutes": 1, "run_trials": 2}))
    (tmp_path / "soaks.json").write_text(json.dumps({"50": soak_row(soak_summary()),
                                                     "20": soak_row(soak_summary(promotions=1))}))
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "summary.json").write_text(json.dumps(
        {"eucalab CLC crash": {"trials": 2, "ok": 2, "outage_ms": {"p50": 150.0, "max": 160.0}}}))
    assert is_run(tmp_path) and not is_run(tmp_path / "trials")
    build(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["floors_ms"] == {"eucalab": 50.0, "keepalived": None} and summary["trials"] == 2
    assert "| eucalab CLC crash | 2/2 | 150.0 |" in (tmp_path / "report.md").read_text()
    assert "During the crash trials" not in (tmp_path / "report.md").read_text()  # no trial records kept

    # With the trials' records and the members' events: promotions no fault called for are counted.
    (tmp_path / "trials" / "trials.jsonl").write_text(json.dumps(
        {"target": "clc", "t_fault": 100.0, "hold_s": 0.05, "redundancy_restored_s": 2.0, "new_primary": "clc2"})
        + "\n" + json.dumps({"target": "clc", "t_fault": 160.0, "hold_s": 0.05, "new_primary": "clc1"}) + "\n")
    for host, times in {"clc2": [100.03], "clc1": [130.0, 160.04]}.items():
        d = tmp_path / "trials" / "deployment" / "hosts" / host
        d.mkdir(parents=True)
        (d / "events.jsonl").write_text("".join(json.dumps({"event": "ha.promote", "host": host, "t_mono": t}) + "\n"
                                                for t in times))
    # The runner's load samples: a core's CPU stolen by the hypervisor just before clc1's
    # promotion at 130.0 s (120 ms), little elsewhere.
    (tmp_path / "trials" / "load.jsonl").write_text("".join(
        json.dumps({"t_mono": t, "cpu_percent": 50.0, "steal_ms": [st, 0.0]}) + "\n"
        for t, st in ((99.5, 0.0), (129.5, 0.0), (130.0, 120.0), (130.5, 10.0), (160.0, 0.0))))
    build(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    during = summary["systems"]["eucalab"]["during_trials"]
    assert {k: during[k] for k in ("false_failovers", "by_host", "minutes")} == {
        "false_failovers": 1, "by_host": {"clc1": 1}, "minutes": 1.0}
    assert during["beside_steal"] == 1 and during["stolen_ms_near"] == [120.0]
    # Only the samples from the first fault to the last (99.5 s is before it).
    assert during["cpu_stolen"] == {"total_ms": 130.0, "max_ms": 120.0, "stalls": 1, "samples": 4}
    report = (tmp_path / "report.md").read_text()
    assert "promotions no fault called for: 1 (clc1 1): **the floor did not hold**" in report
    assert "1 of 4 samples with 20 ms or more. Of the takeovers, 1 came within 1 s of such a sample." in report

    # A run from before steal was recorded is rebuilt saying so, not with 0 stolen.
    (tmp_path / "trials" / "load.jsonl").write_text("".join(
        json.dumps({"t_mono": t, "cpu_percent": 50.0, "load1": 1.0}) + "\n" for t in (120.0, 130.0)))
    build(tmp_path)
    during = json.loads((tmp_path / "summary.json").read_text())["systems"]["eucalab"]["during_trials"]
    assert during["cpu_stolen"] is None and "beside_steal" not in during
    assert "CPU stolen by the hypervisor during them: not recorded." in (tmp_path / "report.md").read_text()


def test_a_promotion_no_trial_called_for_counts_against_the_floor():
    from experiments.failover.safe_floor import unexpected_promotions

    trials = [{"target": "clc", "t_fault": 100.0, "hold_s": 0.05, "redundancy_restored_s": 5.0,
               "new_primary": "clc2"},
              {"target": "walrus", "t_fault": 200.0, "hold_s": 0.05, "redundancy_restored_s": None,
               "new_primary": None},
              {"target": "keepalived", "t_fault": 300.0}]

    def promote(host, t):
        return {"event": "ha.promote", "host": host, "t_mono": t}

    expected = promote("clc2", 100.03)
    false = [promote("clc1", 100.5),      # the other member, inside the trial: not called for
             promote("c1cc1", 101.0),     # another pair during the trial
             promote("clc2", 150.0),      # between trials
             promote("walrus2", 200.02)]  # a trial that recorded no new primary
    assert unexpected_promotions([expected, *false], trials) == false


def test_a_run_soaks_only_the_settings_intervals_names(tmp_path):
    import json
    from dataclasses import asdict

    from experiments.failover.safe_floor import build, only_intervals

    d = SafeFloor()
    assert only_intervals(d, None) == [50, 30, 20, 15, 10]
    assert only_intervals(d, [10, 20, 15.0]) == [20, 15, 10]  # the definition's order: longest first
    with pytest.raises(ValueError, match="25: the definition's settings are 50, 30, 20, 15, 10 ms"):
        only_intervals(d, [20, 25])
    with pytest.raises(ValueError, match="none given"):
        only_intervals(d, [])

    # The report says which settings this run left out; the floor is judged among those soaked.
    run = SafeFloor(intervals_ms=[20, 10], targets=[{"target": "clc"}])
    (tmp_path / "definition.json").write_text(json.dumps(
        {**asdict(run), "run_soak_minutes": 10, "run_trials": 2, "run_defined_intervals_ms": [50, 30, 20, 15, 10]}))
    (tmp_path / "soaks.json").write_text(json.dumps({"20": soak_row(soak_summary()),
                                                     "10": soak_row(soak_summary(promotions=1))}))
    build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Settings soaked: 20, 10 ms; not in this run (`--intervals`): 50, 30, 15 ms." in md
    assert json.loads((tmp_path / "summary.json").read_text())["floors_ms"]["eucalab"] == 20.0


@pytest.mark.parametrize("argv, message", [
    (["--intervals", "20,x"], "not a comma-separated list"),
    (["--intervals", "20,-5"], "above 0 ms"),
    (["--intervals", ","], "above 0 ms"),
])
def test_intervals_on_the_command_line_get_a_clear_error(capsys, argv, message):
    from experiments.cli import main

    with pytest.raises(SystemExit):
        main(["experiment", "experiments/failover/definitions/safe-floor.yaml", *argv])
    assert message in capsys.readouterr().err


def test_a_setting_the_definition_lacks_is_refused_before_anything_runs():
    from experiments.cli import main

    with pytest.raises(SystemExit, match="--intervals: 25: the definition's settings are 50, 30, 20, 15, 10 ms"):
        main(["experiment", "experiments/failover/definitions/safe-floor.yaml", "--intervals", "20,25"])
    with pytest.raises(SystemExit, match="are for safe-floor definitions"):
        main(["experiment", "experiments/failover/definitions/default.yaml", "--intervals", "20"])


def test_a_cut_run_resumes_with_its_soaks_and_its_trials_set_aside(tmp_path):
    import json
    from dataclasses import asdict

    from experiments.failover.safe_floor import resume_plan

    run = SafeFloor(intervals_ms=[20, 15, 10], targets=[{"target": "clc"}])
    (tmp_path / "definition.json").write_text(json.dumps(
        {**asdict(run), "run_soak_minutes": 10, "run_trials": 100, "run_defined_intervals_ms": [50, 30, 20, 15, 10]}))
    (tmp_path / "soaks.json").write_text(json.dumps({"20": soak_row(soak_summary()), "15": soak_row(soak_summary())}))
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "trials.jsonl").write_text("{}\n")
    d, minutes, n, soaks = resume_plan(tmp_path, trials=30)
    assert d.intervals_ms == [20, 15, 10] and minutes == 10 and n == 30
    assert sorted(soaks) == [15.0, 20.0]  # 10 ms is still to soak
    assert not (tmp_path / "trials").exists()
    cut = list(tmp_path.glob("trials-cut-*"))
    assert len(cut) == 1 and (cut[0] / "trials.jsonl").exists()  # kept, not reported
    raw = json.loads((tmp_path / "definition.json").read_text())
    assert raw["run_trials"] == 30 and raw["run_defined_intervals_ms"] == [50, 30, 20, 15, 10]
    with pytest.raises(ValueError, match="not a safe-floor run directory"):
        resume_plan(tmp_path / "trials-nowhere")


def test_resume_is_refused_with_a_clear_error_where_it_makes_no_sense(tmp_path):
    from experiments.cli import main

    with pytest.raises(SystemExit, match="not a safe-floor run directory"):
        main(["experiment", "experiments/failover/definitions/safe-floor.yaml", "--resume", str(tmp_path)])
    with pytest.raises(SystemExit, match="no --soak-minutes or --intervals"):
        main(["experiment", "experiments/failover/definitions/safe-floor.yaml", "--resume", str(tmp_path),
              "--intervals", "10"])
    with pytest.raises(SystemExit, match="are for safe-floor definitions"):
        main(["experiment", "experiments/failover/definitions/default.yaml", "--resume", str(tmp_path)])


def test_the_takeover_the_runner_causes_for_keepalived_is_no_false_failover(tmp_path):
    # After eucalab's last trial the runner stops the CLCs to run keepalived on their hosts;
    # the surviving CLC takes over then (run 20261207T161326Z: 0.2 s after the last trial's
    # end). That is the harness's doing; a takeover between two trials is not.
    import json

    from experiments.failover.safe_floor import trial_promotions, unexpected_promotions

    trials = [{"target": "clc", "t_fault": 100.0, "hold_s": 0.05, "redundancy_restored_s": 1.0,
               "new_primary": "clc2"},
              {"target": "walrus", "t_fault": 103.0, "hold_s": 0.05, "redundancy_restored_s": 1.0,
               "new_primary": "walrus2"},
              {"target": "keepalived", "t_fault": 110.0}]
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    for host, times in {"clc2": [100.03], "walrus2": [103.03], "clc1": [102.0, 104.3]}.items():
        d = tmp_path / "deployment" / "hosts" / host
        d.mkdir(parents=True)
        (d / "events.jsonl").write_text("".join(json.dumps({"event": "ha.promote", "host": host, "t_mono": t})
                                                + "\n" for t in times))
    records, promotions = trial_promotions(tmp_path)
    # 104.3 comes after the last trial ended (103 + 0.05 + 1.0): the CLC stopped for keepalived.
    assert [e["t_mono"] for e in unexpected_promotions(promotions, records)] == [102.0]


def test_eucalab_report_rebuilds_a_safe_floor_run_as_one(tmp_path, capsys):
    # It used to build a failover report there, over the safe-floor run's own report.md.
    import json
    from dataclasses import asdict

    from experiments.cli import main

    d = SafeFloor(intervals_ms=[20], targets=[{"target": "clc"}])
    (tmp_path / "definition.json").write_text(json.dumps({**asdict(d), "run_soak_minutes": 10, "run_trials": 2}))
    (tmp_path / "soaks.json").write_text(json.dumps({"20": soak_row(soak_summary())}))
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text().startswith("# Safe floor: safe-floor")
    assert json.loads((tmp_path / "summary.json").read_text())["floors_ms"]["eucalab"] == 20.0
    assert f"report written: {tmp_path / 'report.md'}" in capsys.readouterr().out


def _cut_run(tmp_path, **raw_extra):
    import json
    from dataclasses import asdict

    run = SafeFloor(intervals_ms=[20, 10], targets=[{"target": "clc"}])
    raw = {**asdict(run), "run_soak_minutes": 10, "run_trials": 100, **raw_extra}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "definition.json").write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    (tmp_path / "trials").mkdir()
    return tmp_path


def test_resume_refuses_before_it_moves_anything(tmp_path):
    from experiments.failover.safe_floor import resume_plan

    # A definition.json that lacks what the run wrote: refused, trials/ left where it is.
    run = _cut_run(tmp_path / "a", run_soak_minutes=None)
    with pytest.raises(ValueError, match="is not a safe-floor run's"):
        resume_plan(run)
    assert (run / "trials").is_dir() and not list(run.glob("trials-cut-*"))
    # A run whose crash trials finished: nothing to resume; its trials stay reported.
    run = _cut_run(tmp_path / "b")
    (run / "trials" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="finished its crash trials"):
        resume_plan(run)
    assert (run / "trials" / "summary.json").exists()
    # Two resumes within a second keep both cut trial directories.
    run = _cut_run(tmp_path / "c")
    resume_plan(run)
    (run / "trials").mkdir()
    resume_plan(run)
    assert len(list(run.glob("trials-cut-*"))) == 2


def test_resume_and_report_errors_on_the_command_line(tmp_path):
    from experiments.cli import main

    run = _cut_run(tmp_path / "r", name="another-floor")
    with pytest.raises(SystemExit, match="is a run of 'another-floor', not of"):
        main(["experiment", "experiments/failover/definitions/safe-floor.yaml", "--resume", str(run)])
    # Cut before its first soak finished: no report to build, and it says so.
    with pytest.raises(SystemExit, match="no soak finished yet"):
        main(["report", str(run)])
    with pytest.raises(SystemExit):
        main(["experiment", "experiments/failover/definitions/safe-floor.yaml", "--trials", "0"])
