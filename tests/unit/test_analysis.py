"""Outage computation and statistics on synthetic probe streams."""

from __future__ import annotations

import pytest

from experiments.analysis.measures import Probe, beyond_bound, bootstrap_ci, outage, outage_span, percentile, resolution, summarize


def stream(start, end, step, down=None, duration=0.002):
    out, t = [], start
    while t < end:
        ok = not (down and down[0] <= t < down[1])
        out.append(Probe(t, t + (duration if ok else 0.3), ok))
        t += step
    return out


def test_outage_is_first_success_after_minus_last_success_before():
    probes = stream(0.0, 2.0, 0.01, down=(1.0, 1.2))
    assert outage(probes, 1.0) == pytest.approx(1.2 + 0.002 - (0.99 + 0.002), abs=1e-6)


def test_the_span_starts_before_the_fault_and_served_again_counts_from_it():
    probes = stream(0.0, 2.0, 0.01, down=(1.0, 1.2))
    start, end = outage_span(probes, 1.005)
    # The gap starts at the last success before the fault (up to a probe interval earlier);
    # service is back at the end of the gap, measured from the fault.
    assert start == pytest.approx(0.992) and end == pytest.approx(1.202)
    assert outage(probes, 1.005) == pytest.approx(end - start)
    assert outage_span(stream(0.0, 1.0, 0.01, down=(0.5, 1.0)), 0.5) is None  # never served again


def test_probe_in_flight_at_the_fault_counts_only_if_done_before_it():
    probes = [Probe(0.0, 0.005, True), Probe(0.01, 0.05, True), Probe(0.06, 0.07, True)]
    # The second probe completes after the fault at 0.02: it is neither before nor after.
    assert outage(probes, 0.02) == pytest.approx(0.07 - 0.005)


def test_no_success_after_or_before_gives_none():
    assert outage(stream(0, 1, 0.01, down=(0.5, 2.0)), 0.5) is None
    assert outage(stream(0, 1, 0.01, down=(0.0, 0.5)), 0.2) is None
    assert outage([], 1.0) is None


def test_out_of_order_records_are_handled():
    ordered = stream(0.0, 1.0, 0.01, down=(0.5, 0.6))
    assert outage(list(reversed(ordered)), 0.5) == outage(ordered, 0.5) == pytest.approx(0.11, abs=0.011)


def test_lost_probes_widen_the_gap_not_the_outage():
    probes = [p for i, p in enumerate(stream(0.0, 1.0, 0.01)) if i % 7]  # some probes never recorded
    o = outage(probes, 0.5)
    assert 0 < o <= 0.03


def test_resolution_reports_probe_spacing():
    r = resolution(stream(0.0, 1.0, 0.01))
    assert r["interval_p50_ms"] == pytest.approx(10, abs=0.01)


def test_percentile_and_summary():
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    s = summarize([float(v) for v in values])
    assert s["n"] == 100 and "p99" in s and s["max"] == 100
    small = summarize([1.0, 2.0, 3.0])
    assert "p99" not in small and small["p50"] == 2.0
    lo, hi = small["p50_ci95"]
    assert lo <= 2.0 <= hi
    assert summarize([]) == {"n": 0}


def test_bootstrap_is_seeded_and_brackets_the_median():
    values = [0.1 * i for i in range(50)]
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    lo, hi = bootstrap_ci(values)
    assert lo <= percentile(values, 50) <= hi


def test_a_probe_that_slips_through_before_the_fault_bites_does_not_hide_the_outage():
    """A partition's rules take a few ms to install: a probe sent just after the fault
    still succeeds, then service is gone until the failover."""
    probes = stream(0.0, 2.0, 0.01, down=(0.52, 0.8))
    assert outage(probes, 0.5) == pytest.approx(0.8 + 0.002 - (0.51 + 0.002), abs=1e-6)


def test_a_request_finished_by_a_resumed_process_after_the_failover_is_not_service_before():
    """SIGSTOP: a request taken just before the hang completes when the process resumes,
    after the peer already answers; the outage is never negative."""
    probes = stream(0.0, 0.5, 0.01) + [Probe(0.4995, 0.64, True)] + [
        Probe(0.5 + i * 0.01, 0.8, False) for i in range(12)] + stream(0.63, 1.0, 0.01)
    assert outage(probes, 0.5) == pytest.approx(0.632 - 0.492, abs=1e-6)


def test_an_early_lone_failure_does_not_shorten_the_gap_and_a_rejoin_blip_is_not_the_outage():
    # A probe fails alone just after the fault, one still succeeds, then the real outage.
    probes = stream(0.0, 0.5, 0.01) + [Probe(0.501, 0.8, False), Probe(0.505, 0.507, True)] + \
        stream(0.51, 2.0, 0.01, down=(0.51, 0.7))
    assert outage(probes, 0.5) == pytest.approx(0.702 - 0.507, abs=1e-6)
    # After the restore at 1.0 a rejoining member causes a longer blip: not the fault's outage.
    rejoin = [p for p in probes if not (1.2 <= p.sent < 1.6)]
    assert outage(rejoin, 0.5, until=1.0) == pytest.approx(0.702 - 0.507, abs=1e-6)


def test_beyond_bound_splits_served_again_minus_the_bound_into_its_parts():
    trial = {"t_fault": 10.0, "served_again_s": 0.162, "detection_s": 0.148, "takeover_s": 0.002,
             "detection_bound_s": 0.15, "new_primary": "clc2", "promote_reason": "peer dead"}
    probes = [Probe(9.97, 9.974, True), Probe(9.98, 9.983, False), Probe(9.99, 10.01, True),
              Probe(10.16, 10.162, True)]
    parts = beyond_bound(trial, probes)
    assert parts["beyond"] == pytest.approx(12.0)
    assert parts["late"] == pytest.approx(-2.0) and parts["takeover"] == pytest.approx(2.0)
    assert parts["vip_to_served"] == pytest.approx(12.0)
    assert parts["late"] + parts["takeover"] + parts["vip_to_served"] == pytest.approx(parts["beyond"])
    # Requests before the fault only, answered ones: not the failed one, not the one done after it.
    assert parts["requests"] == pytest.approx([4.0])
    assert beyond_bound(trial)["requests"] == []


def test_beyond_bound_is_none_without_a_heartbeat_driven_promotion():
    trial = {"served_again_s": 0.162, "detection_s": 0.148, "takeover_s": 0.002, "detection_bound_s": 0.15,
             "new_primary": "clc2"}
    assert beyond_bound(trial) is not None  # older records carry no reason
    assert beyond_bound({**trial, "promote_reason": "peer NOTREADY: it lost its arbitrators"}) is None
    assert beyond_bound({**trial, "new_primary": None}) is None
    assert beyond_bound({**trial, "detection_s": None}) is None  # the keepalived baseline


def test_the_cpu_the_hypervisor_stole_is_summed_and_found_around_a_moment():
    from experiments.analysis.measures import steal_near, steal_summary
    from experiments.analysis.report import steal_line

    load = [{"t_mono": 10.0, "steal_ms": [0.0, 0.0]}, {"t_mono": 10.5, "steal_ms": [100.0, 0.0]},
            {"t_mono": 11.0, "steal_ms": [0.0, 10.0]}, {"t_mono": 13.0, "steal_ms": [0.0, 30.0]}]
    assert steal_summary(load) == {"total_ms": 140.0, "max_ms": 100.0, "stalls": 2, "samples": 4}
    assert steal_near(load, 10.4, 0.5) == 100.0 and steal_near(load, 12.0, 0.5) == 0.0
    assert steal_near(load, 11.4) == 100.0 and steal_near(load, 12.0) == 30.0  # STEAL_WINDOW_S, 1 s
    assert steal_near([], 10.0, 0.5) == 0.0
    assert "0.14 s over the run, at most 100 ms from one core in one sample; 2 of 4 samples" in steal_line(load)
    # A run recorded before steal was sampled (or a sample without the figure) says so, rather than 0.
    assert steal_summary([{"t_mono": 1.0, "cpu_percent": 5.0}, {"t_mono": 2.0, "steal_ms": None}]) is None
    assert steal_line([{"t_mono": 1.0, "cpu_percent": 5.0}]).endswith("not recorded")
