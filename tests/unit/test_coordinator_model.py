"""The model of Eucalyptus 3.x's coordinator (experiments/failover/coordinator_model.py): who
coordinates, what one check round does, and the outage it allows."""

from __future__ import annotations

import pytest

from experiments.failover.coordinator_model import (COORDINATOR_CHECK_BACKOFF_SECS, FD_MAX_TRIES, FD_TIMEOUT_S,
                                                    HOST_CHECK_TIMEOUT_S, VERIFY_SUSPECT_TIMEOUT_S, ServiceView, bounds,
                                                    check_round, coordinator, outage, sample, view_change_s)


def test_the_coordinator_is_the_clc_in_the_view_no_other_started_after():
    clcs = {"clc1": 100.0, "clc2": 200.0}
    assert coordinator(clcs, {"clc1", "clc2"}) == "clc2"
    # clc2 dropped out of the view: clc1 is the coordinator now.
    assert coordinator(clcs, {"clc1"}) == "clc1"
    assert coordinator(clcs, set()) is None


def test_a_round_makes_the_failed_member_notready_then_promotes_its_disabled_peer():
    pairs = {"walrus": {"w1": ServiceView("ENABLED", answered=False), "w2": ServiceView("DISABLED")},
             "sc": {"s1": ServiceView("ENABLED"), "s2": ServiceView("DISABLED")}}
    actions = check_round(pairs)
    assert actions == [("notready", "w1", "check failed"), ("disable", "w1", "NOTREADY"),
                       ("enable", "w2", "no ENABLED member")]
    assert pairs["walrus"]["w2"].state == "ENABLED" and pairs["sc"]["s1"].state == "ENABLED"
    assert check_round(pairs) == []  # the next round finds nothing to do


def test_arbitrators_some_failing_is_advisory_all_failing_is_fatal():
    pairs = {"cc": {"c1": ServiceView("ENABLED", arbitrators=[False, True]), "c2": ServiceView("DISABLED")}}
    assert check_round(pairs) == [("advisory", "c1", "some arbitrators unreachable")]
    assert pairs["cc"]["c1"].state == "ENABLED"
    pairs["cc"]["c1"].arbitrators = [False, False]
    assert [a[0] for a in check_round(pairs)] == ["notready", "disable", "enable"]
    assert pairs["cc"]["c2"].state == "ENABLED"


def test_no_promotion_without_a_disabled_peer():
    pairs = {"clc": {"a": ServiceView("ENABLED", answered=False), "b": ServiceView("NOTREADY")}}
    assert check_round(pairs) == [("notready", "a", "check failed"), ("disable", "a", "NOTREADY"),
                                  ("disable", "b", "NOTREADY")]


def test_outage_follows_the_check_cycle_and_the_view_change():
    period = COORDINATOR_CHECK_BACKOFF_SECS
    assert outage("process", 3.0) == 3.0
    assert outage("host", 3.0) == 3.0 + HOST_CHECK_TIMEOUT_S
    # The coordinator's own crash: the group drops it first, then the survivor's round.
    assert view_change_s("process") == VERIFY_SUSPECT_TIMEOUT_S
    assert view_change_s("host") == FD_TIMEOUT_S * FD_MAX_TRIES + VERIFY_SUSPECT_TIMEOUT_S
    assert outage("process", 3.0, coordinator=True) == VERIFY_SUSPECT_TIMEOUT_S + 3.0
    assert bounds("process") == (0.0, period)
    assert bounds("host", coordinator=True) == (8.0, 8.0 + period)
    with pytest.raises(ValueError):
        outage("process", period)
    # All arbitrators lost: the pings one check starts are judged by the next one.
    assert outage("arbitrators", 3.0) == 3.0 + period
    with pytest.raises(ValueError):
        view_change_s("arbitrators")
    with pytest.raises(ValueError):
        outage("disk", 1.0)


def test_samples_lie_within_the_bounds_and_spread_over_the_cycle():
    lo, hi = bounds("host")
    s = sample("host", False, 1000, seed=3)
    assert all(lo <= x < hi for x in s)
    assert sorted(s)[500] == pytest.approx(lo + COORDINATOR_CHECK_BACKOFF_SECS / 2, abs=0.5)
    assert sample("host", False, 10, seed=3) == s[:10]  # seeded
