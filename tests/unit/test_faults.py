"""The fault catalogue's pure parts: verdicts, ENABLED intervals, split-brain overlap, loading."""

from __future__ import annotations

import pytest

from experiments.failover.runner import Experiment
from experiments.failover.faults import (CATALOGUE, FAILOVER, NO_FAILOVER, NO_OUTAGE, ONE_ENABLED, check_available,
                                         enabled_intervals, judge, overlap)


def verdict(expect, **kw):
    base = dict(promoted=False, primary_enabled_after=True, failed_probes=0, two_enabled_s=0.0, lost_writes=0,
                settled=True, recovered=True)
    base.update(kw)
    return judge(expect, **base)


def test_a_failover_fault_needs_a_promotion_and_users_served_again():
    assert verdict(FAILOVER, promoted=True) == []
    assert verdict(FAILOVER) == ["no failover"]
    assert verdict(FAILOVER, promoted=True, recovered=False) == ["failover but users were not served again"]


def test_a_promotion_during_a_no_failover_fault_is_a_false_failover():
    assert verdict(NO_FAILOVER, promoted=True) == ["false failover"]
    assert verdict(NO_FAILOVER, primary_enabled_after=False) == ["the primary stopped serving"]
    assert verdict(NO_FAILOVER, failed_probes=40) == []  # e.g. the gateway is dead: users reach nothing
    assert verdict(NO_OUTAGE, failed_probes=3) == ["3 failed user requests"]


def test_split_brain_lost_writes_and_an_unsettled_pair_are_flagged_whatever_the_fault():
    for expect in (FAILOVER, NO_FAILOVER, NO_OUTAGE, ONE_ENABLED):
        flags = verdict(expect, promoted=expect in (FAILOVER, ONE_ENABLED), two_enabled_s=0.0125, lost_writes=1,
                        settled=False)
        assert flags[-3:] == ["two ENABLED for 12 ms", "1 acknowledged write(s) lost",
                              "not exactly one ENABLED and one DISABLED after the restore"]


def ev(t, event, **kw):
    return {"t_mono": t, "event": event, **kw}


def test_enabled_intervals_end_at_a_state_change_a_restart_a_fence_or_the_fault():
    log = [ev(0, "service.start", state="DISABLED"), ev(1, "state.change", to="ENABLED"),
           ev(2, "state.change", to="DISABLED"), ev(3, "state.change", to="ENABLED"),
           ev(5, "service.start", state="DISABLED"),  # crashed and restarted: it served until then at most
           ev(6, "state.change", to="ENABLED"), ev(7, "ha.frozen", fenced=True)]
    assert enabled_intervals(log, end=10) == [(1, 2), (3, 5), (6, 7)]
    # A SIGKILL at 4 silences the member: its open interval ends there, later ones stand.
    assert enabled_intervals(log, end=10, silenced_at=4) == [(1, 2), (3, 4), (6, 7)]
    assert enabled_intervals([ev(1, "state.change", to="ENABLED")], end=9) == [(1, 9)]


def test_overlap_is_the_total_time_both_were_enabled():
    assert overlap([(0, 2), (5, 6)], [(1, 3), (5.5, 9)]) == pytest.approx(1.5)
    assert overlap([(0, 1)], [(1, 2)]) == 0


def test_the_catalogue_covers_the_ha_fault_table():
    assert {"sigkill", "sigstop", "host", "uplink", "partition", "heartbeat", "arbitrator", "arbitrators",
            "gateway", "loss", "delay", "cpu", "slow-replica", "secondary", "both", "double",
            "controller"} <= set(CATALOGUE)
    assert CATALOGUE["heartbeat"].expect == NO_FAILOVER and CATALOGUE["uplink"].expect == FAILOVER


def test_faults_this_machine_cannot_inject_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="netem"):
        check_available(CATALOGUE["delay"], netem=False, sdn=False)
    with pytest.raises(ValueError, match="sdn: true"):
        check_available(CATALOGUE["controller"], netem=True, sdn=False)
    check_available(CATALOGUE["delay"], netem=True, sdn=False)


@pytest.mark.parametrize("body, message", [
    ("sets: [{target: clc, trials: 1, fault: meteor}]", "fault must be one of"),
    ("sets: [{target: clc, trials: 0}]", "positive integer"),
    ("sets: [{target: clc, trials: 1, colour: red}]", "unknown field"),
    ("sets: [{target: keepalived, trials: 1, fault: uplink, advert_ms: 50}]", "sigkill"),
    ("sets: [{target: moon, trials: 1}]", "target must be one of"),
    # Member events on another server carry its clock: measured here only.
    ("spec: {servers: [localhost, 10.99.0.2]}\nsets: [{target: clc, trials: 1}]", "measures on this machine only"),
])
def test_a_bad_definition_gets_a_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        Experiment.load(path)


def test_the_shipped_definitions_load():
    from experiments.failover.runner import DEFINITIONS

    from experiments.failover.runner import sweep_points
    from topologies.spec import spec_from_dict

    from experiments.failover.safe_floor import SafeFloor, is_safe_floor

    for path in sorted(DEFINITIONS.glob("*.yaml")):
        if is_safe_floor(path):
            spec_from_dict(SafeFloor.load(path).spec, netem=True)
            continue
        exp = Experiment.load(path)
        assert exp.sets, path
        for point in sweep_points(exp.sweep):  # every deployment it would build is a valid spec
            for e in exp.at(point).deployments():
                spec_from_dict(e.spec, netem=True)


def test_a_set_with_a_spec_of_its_own_runs_on_a_deployment_of_its_own(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("spec: {name: default, heartbeat: {interval_ms: 50}}\n"
                    "sets: [{target: cc, trials: 2, fault: host, spec: {mode: EDGE}, label: edge},\n"
                    "       {target: clc, trials: 3}, {target: cc, trials: 1, fault: host},\n"
                    "       {target: sc, trials: 1, spec: {mode: EDGE}}]\n")
    exp = Experiment.load(path)
    first, edge = exp.deployments()
    assert [s.target for s in first.sets] == ["clc", "cc"] and "mode" not in first.spec
    assert [s.name for s in edge.sets] == ["edge", "eucalab SC crash"]
    assert edge.spec == {"name": "default", "heartbeat": {"interval_ms": 50}, "mode": "EDGE"}
    assert exp.spec == {"name": "default", "heartbeat": {"interval_ms": 50}}  # the definition is untouched
    path.write_text("sets: [{target: cc, trials: 1, spec: {mode: MOON}}]\n")
    with pytest.raises(ValueError, match="mode"):
        Experiment.load(path)  # refused before anything is built


def test_a_sweep_expands_to_every_combination_each_labelled(tmp_path):
    from experiments.failover.runner import sweep_points

    path = tmp_path / "sweep.yaml"
    path.write_text("sweep: {spec.heartbeat.interval_ms: [20, 50], set.params.loss_percent: [1, 5]}\n"
                    "sets: [{target: clc, trials: 2, fault: loss}]\n")
    exp = Experiment.load(path)
    points = sweep_points(exp.sweep)
    assert len(points) == 4
    e = exp.at(points[1])
    assert e.spec["heartbeat"]["interval_ms"] == 20 and e.sets[0].params == {"loss_percent": 5}
    assert e.sets[0].name.endswith("[interval_ms=20, loss_percent=5]")
    assert exp.sets[0].params == {}  # the definition itself is untouched


@pytest.mark.parametrize("sweep, message", [
    ("{spec.heartbeat.interval_ms: []}", "non-empty list"),
    ("{spec.heartbeat.interval_ms: [1]}", "heartbeat.interval_ms"),  # the spec's own validation
    ("{set.colour: [1]}", "names no trial-set field"),
    ("{moon: [1]}", "cannot set"),
    ("{set.fault: [meteor]}", "not in the catalogue"),
])
def test_a_bad_sweep_is_refused_before_anything_is_built(tmp_path, sweep, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"sweep: {sweep}\nsets: [{{target: clc, trials: 1}}]\n")
    with pytest.raises(ValueError, match=message):
        Experiment.load(path)


def test_an_unfenced_member_that_carries_on_serves_again_and_one_that_steps_down_does_not():
    carry_on = [ev(1, "state.change", to="ENABLED"), ev(2, "ha.frozen", fenced=True), ev(3, "ha.unfenced")]
    assert enabled_intervals(carry_on, end=5) == [(1, 2), (3, 5)]
    steps_down = carry_on + [ev(3.001, "state.change", to="DISABLED")]
    assert enabled_intervals(steps_down, end=5) == [(1, 2)]


def test_a_frozen_member_served_until_its_loop_stalled_not_until_it_noticed():
    """An SC primary's loop stalled 330 ms; its peer rightly took over meanwhile, and the
    resumed member fenced itself. It served nothing in the stall: not two ENABLED."""
    member = [ev(0.0, "state.change", to="ENABLED"), ev(1.0, "ha.frozen", fenced=True, late_s=0.33),
              ev(1.04, "ha.unfenced"), ev(1.0401, "state.change", to="DISABLED")]
    peer = [ev(0.85, "state.change", to="ENABLED")]
    assert enabled_intervals(member, end=2) == [(0.0, pytest.approx(0.67))]
    assert overlap(enabled_intervals(member, end=2), enabled_intervals(peer, end=2)) == 0


def test_a_set_sweep_leaves_the_keepalived_baseline_alone_and_checks_targets(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("sweep: {set.fault: [sigkill, sigstop]}\n"
                    "sets: [{target: clc, trials: 1}, {target: keepalived, trials: 1, advert_ms: 50}]\n")
    exp = Experiment.load(path)
    e = exp.at({"set.fault": "sigstop"})
    assert [ts.fault for ts in e.sets] == ["sigstop", "sigkill"]
    path.write_text("sweep: {set.target: [clc, moon]}\nsets: [{target: clc, trials: 1}]\n")
    with pytest.raises(ValueError, match="moon"):
        Experiment.load(path)


def test_an_interval_ends_where_its_process_was_killed_not_where_its_successor_starts():
    """A member killed in one trial and restarted later: its last interval ends at the kill,
    so it does not overlap its peer's promotion in the next trial."""
    log = [ev(1, "state.change", to="ENABLED"), ev(9, "state.change", to="DISABLED"),
           ev(9, "service.start", state="DISABLED")]
    assert enabled_intervals(log, end=20, silenced_at=[2.5, 15]) == [(1, 2.5)]


class _Tc:
    """The qdiscs tc leaves on interfaces, for the lines shaping and faults use (qdisc add,
    change, replace, del; class add): a fault's effect judged by the state it leaves."""

    def __init__(self):
        self.qdiscs: dict[str, dict[str, tuple[str, str, str]]] = {}  # dev -> parent -> (handle, kind, options)
        self.classes: dict[str, set[str]] = {}

    def run(self, line: str) -> bool:
        words = line.split()
        assert words[0] == "tc", line
        obj, verb, dev, rest = words[1], words[2], words[4], words[5:]
        tree, classes = self.qdiscs.setdefault(dev, {}), self.classes.setdefault(dev, set())
        parent = "root" if rest[0] == "root" else rest[1]
        rest = rest[1:] if rest[0] == "root" else rest[2:]
        if obj == "class":
            classes.add(rest[1])  # classid X
            return any(h == parent for h, _, _ in tree.values())
        handle = rest[1] if rest[:1] == ["handle"] else None
        rest = rest[2:] if handle else rest
        kind, options = (rest[0], " ".join(rest[1:])) if rest else (None, "")
        have = tree.get(parent)
        if verb == "del":
            if have is None or (handle and have[0] != handle):
                return False
            if parent == "root":
                tree.clear()
                classes.clear()
            else:
                del tree[parent]
            return True
        if verb == "change" and (have is None or have[:2] != (handle, kind)):
            return False
        if verb == "add" and (have is not None or (parent != "root" and parent not in classes)):
            return False
        if verb == "replace" and parent == "root":
            tree.clear()
            classes.clear()
        tree[parent] = (handle or (have[0] if have else None), kind, options)
        return True

    def cmd(self, text: str) -> str:
        """A shell line of tc commands, as Mininet's node.cmd runs it."""
        out = []
        for part in text.split(";"):
            line, _, on_fail = part.partition("||")
            line = line.replace("2>&1", "").replace("2>/dev/null", "").strip()
            if line and not self.run(line):
                out.append(on_fail.replace("echo", "").strip() or f"error: {line}")
        return "\n".join(out)

    def state(self) -> dict:
        return {dev: (dict(tree), sorted(self.classes[dev])) for dev, tree in self.qdiscs.items() if tree}


class _Shaped:
    """A deployment's shaping as the build leaves it, for the delay fault."""

    def __init__(self, links: dict):
        from topologies.plan import build_plan
        from topologies.shaping import interface_commands
        from topologies.spec import spec_from_dict

        self.plan = build_plan(spec_from_dict({"clusters": 1, "ncs_per_cluster": 1, "links": links}, netem=True))
        self.tc = _Tc()
        for _, _, cmds in interface_commands(self.plan):
            for line in cmds:
                assert self.tc.run("tc " + line), line

    def __getitem__(self, host: str) -> _Tc:
        return self.tc


@pytest.mark.parametrize("links, netem_before", [
    ({"by_network": {"heartbeat": {"bw_mbit": 100, "delay_ms": 2, "jitter_ms": 1, "loss_pct": 0.5}}},
     ("parent 5:1", 2, "1ms loss 0.5%")),
    ({"bw_mbit": 100}, ("parent 5:1", None, None)),
    ({"by_network": {"heartbeat": {"loss_pct": 1}}}, ("root", None, "loss 1%")),
    ({}, ("root", None, None)),
])
def test_the_delay_fault_adds_to_the_links_own_shaping_and_restores_exactly_it(links, netem_before):
    import re

    from experiments.failover.faults import FaultContext

    dep = _Shaped(links)
    pair = next(p for p in dep.plan.pairs if p.kind == "clc")
    built = dep.tc.state()
    ctx = FaultContext(dep, pair, pair.primary, pair.secondary, params={"delay_ms": 20})
    CATALOGUE["delay"].inject(ctx)
    hb = [i.name for i in dep.plan.hosts[pair.primary].interfaces if i.network == pair.heartbeat_network]
    where, delay, tail = netem_before
    for intf in hb:
        tree, _ = dep.tc.state()[intf]
        assert where.split()[-1] in tree, tree  # the spec's rate (HTB at the root) is still there
        _, kind, options = tree[where.split()[-1]]
        assert kind == "netem", tree
        assert float(re.match(r"delay ([\d.]+)ms", options).group(1)) == (delay or 0) + 20, options
        assert options.partition("ms")[2].strip() == (tail or ""), options  # jitter and loss kept
        if where != "root":
            assert tree["root"][:2] == ("5:", "htb") and tree == {**built[intf][0], **{"5:1": tree["5:1"]}}
    ctx.restore()
    assert dep.tc.state() == built


def test_only_runs_the_sets_of_the_targets_named():
    from experiments.failover.runner import DEFINITIONS, select_sets

    exp = Experiment.load(DEFINITIONS / "beyond-bound.yaml")
    assert exp.probe_interval_ms == 5 and all(s.trials == 100 for s in exp.sets)
    assert [s.target for s in select_sets(exp, ["sc", "clc"])] == ["clc", "sc"]  # the definition's order
    with pytest.raises(ValueError, match="no set targets klc"):
        select_sets(exp, ["clc", "klc"])  # a typo runs nothing rather than less


def test_the_runner_refuses_a_spec_over_several_servers_before_building_anything(tmp_path, monkeypatch):
    """A caller that builds an Experiment itself (the safe floor, the scale bench) meets the
    same refusal as a definition file: trials compare member events with this machine's clock."""
    from experiments.failover.runner import Runner, TrialSet
    from experiments.testbed import deployment

    def built(*a, **kw):
        raise AssertionError("a deployment was built")

    from experiments.failover import runner as runner_module

    for module in (deployment, runner_module):
        monkeypatch.setattr(module, "Deployment", built)
    exp = Experiment(name="two", spec={"servers": ["localhost", "10.99.0.2"]},
                     sets=[TrialSet(target="clc", trials=1)])
    runner = Runner(exp, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="measures on this machine only"):
        runner.run()
    assert not (tmp_path / "experiment.json").exists()
