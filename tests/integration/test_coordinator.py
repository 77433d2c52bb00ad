"""Eucalyptus 3.x's coordinator as the detector (ha.detector coordinator) on the real network:
the coordinator CLC's round repairs a crashed member, and the coordinator's own crash makes the
surviving CLC the coordinator, which promotes itself. One deployment for both cases, with a
2 s check cycle (the source's is 10 s) and only the two pairs they fault (the CLC and Walrus;
the round over CCs and SCs is the unit tests' and detectors.yaml's) to keep it short."""

from __future__ import annotations

import time

import pytest

from components.common.coordinator import HOST_CHECK_TIMEOUT_S, VERIFY_SUSPECT_TIMEOUT_S
from components.common.events import read_events
from experiments.failover.faults import enabled_intervals, overlap
from experiments.testbed.deployment import Deployment, wait_until
from topologies.spec import DeploymentSpec, HASpec

from .test_ha import heal, taken_over

CHECK_S = 2.0
SLACK_S = 2.0  # process start-up of an order, the loaded 2-core machine


@pytest.fixture(scope="module")
def coordinated(tmp_path_factory):
    spec = DeploymentSpec(name="test-coordinator", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=0,
                          ha=HASpec(cc=False, sc=False, detector="coordinator", coordinator_check_s=CHECK_S))
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("coordinator")) as dep:
        dep.start_services()
        for pair in ("clc", "walrus"):
            heal(dep, pair)
        yield dep


def events_of(dep, host: str) -> list[dict]:
    return list(read_events(dep.process(host).events_path))


def never_two_enabled(dep, pair: str, killed: str, killed_at: float) -> None:
    p = next(x for x in dep.plan.pairs if x.name == pair)
    end = time.monotonic()
    spans = {m: enabled_intervals(events_of(dep, m), end, killed_at if m == killed else None) for m in p.members}
    a, b = p.members
    assert overlap(spans[a], spans[b]) == 0.0, spans


def promotions(dep, host: str, after: float) -> list[dict]:
    return [e for e in events_of(dep, host) if e["event"] == "ha.promote" and e["t_mono"] > after]


def orders(dep, host: str, after: float) -> list[dict]:
    return [e for e in events_of(dep, host) if e["event"] == "ha.coordinator_order" and e["order"] == "ENABLE"
            and e["t_mono"] > after]


def crash_primary(dep, pair: str) -> tuple[str, str, float]:
    """Kill the pair's ENABLED member once the pair is whole: (it, its peer, when)."""
    primary = heal(dep, pair)
    secondary = next(m for p in dep.plan.pairs if p.name == pair for m in p.members if m != primary)
    t = time.monotonic()
    dep.kill(primary)
    return primary, secondary, t


def test_the_coordinator_s_round_repairs_a_crashed_walrus(coordinated):
    dep = coordinated
    primary, secondary, t = crash_primary(dep, "walrus")
    # Its peer's heartbeats stop at once, but under the coordinator the standby waits for the
    # round: the next one (within a cycle) fails the check and orders the standby's ENABLE.
    assert wait_until(lambda: taken_over(dep, "walrus", primary), CHECK_S + HOST_CHECK_TIMEOUT_S + SLACK_S)
    took, ordered = promotions(dep, secondary, t), orders(dep, secondary, t)
    assert [e["reason"] for e in took] == ["coordinator: ENABLE"]
    assert ordered and ordered[0]["t_mono"] <= took[0]["t_mono"]
    clc = next(m for p in dep.plan.pairs if p.name == "clc" for m in p.members if dep.member_state(m) == "ENABLED")
    rounds = [e for e in events_of(dep, clc) if e["event"] == "coordinator.round" and e["t_mono"] > t]
    assert any(["enable", secondary, "no ENABLED member"] in r["actions"] for r in rounds), rounds
    never_two_enabled(dep, "walrus", primary, t)
    dep.start("walrus", primary)
    heal(dep, "walrus")


def test_the_coordinator_clc_s_crash_makes_the_survivor_coordinator_and_enabled(coordinated):
    dep = coordinated
    primary, secondary, t = crash_primary(dep, "clc")
    # FD_SOCK suspects at once, VERIFY_SUSPECT drops it from the view, the survivor's next round.
    assert wait_until(lambda: taken_over(dep, "clc", primary),
                      VERIFY_SUSPECT_TIMEOUT_S + CHECK_S + SLACK_S)
    ev = events_of(dep, secondary)
    left = [e for e in ev if e["event"] == "membership.leave" and e["t_mono"] > t]
    assert left and "FD_SOCK" in left[0]["why"]
    assert left[0]["t_mono"] - t >= VERIFY_SUSPECT_TIMEOUT_S
    took = promotions(dep, secondary, t)
    assert [e["reason"] for e in took] == ["coordinator: ENABLE"] and took[0]["t_mono"] > left[0]["t_mono"]
    never_two_enabled(dep, "clc", primary, t)
    dep.start("clc", primary)
    heal(dep, "clc")
