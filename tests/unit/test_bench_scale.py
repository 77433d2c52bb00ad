"""The scale benchmark's pure parts: how instances are spread over the zones, and every
figure printed with its target and verdict."""

from __future__ import annotations

import pytest

from components.cc.netalloc import NetworkAllocator, AllocationError, instances_per_group
from experiments.bench.scale import figure_rows, load_spec_dict, XL_SPEC, zone_plan
from topologies.plan import build_plan
from topologies.spec import spec_from_dict


def test_instances_go_round_robin_in_batches_within_each_zones_free_slots():
    calls = zone_plan({"cluster1": 127, "cluster2": 128}, 250, 25)
    assert sum(n for _, _, n in calls) == 250 and max(n for _, _, n in calls) == 25
    assert calls[:2] == [("cluster1", 0, 25), ("cluster2", 0, 25)]
    per_zone = {z: sum(n for zz, _, n in calls if zz == z) for z in ("cluster1", "cluster2")}
    assert per_zone["cluster1"] <= 127 and per_zone["cluster2"] <= 128


def test_a_zones_instances_spread_over_groups_each_within_its_subnets_addresses():
    # xl: 8 clusters of 128 slots, 1,000 instances; a group's /27 addresses 29 instances a cluster
    # (the CC refused the 26th to 50th of one group with InsufficientAddressCapacity before).
    per_group = instances_per_group(32)
    assert per_group == 29
    calls = zone_plan({f"cluster{k}": 128 for k in range(1, 9)}, 1000, 25, per_group)
    assert sum(n for _, _, n in calls) == 1000 and max(n for _, _, n in calls) <= 25
    held: dict[tuple[str, int], int] = {}
    for zone, group, n in calls:
        held[(zone, group)] = held.get((zone, group), 0) + n
    assert max(held.values()) <= per_group
    per_zone = [sum(n for (z, _), n in held.items() if z == f"cluster{k}") for k in range(1, 9)]
    assert max(per_zone) <= 128 and max(per_zone) - min(per_zone) <= 25  # round robin, a batch apart at most
    assert {g for _, g in held} == {0, 1, 2, 3, 4}  # about 125 a cluster: 4 full groups and a fifth
    # Without a subnet per group (SYSTEM, STATIC, EDGE) one group holds everything.
    assert {g for _, g, _ in zone_plan({"cluster1": 128}, 100, 25)} == {0}


def test_instances_per_group_is_what_the_ccs_allocator_addresses():
    for addrs in (8, 32, 64):
        alloc = NetworkAllocator("MANAGED", cluster=1, addrs_per_net=addrs)
        for i in range(instances_per_group(addrs)):
            alloc.allocate(f"i-{i}", "sg-1")
        with pytest.raises(AllocationError, match="no free address"):
            alloc.allocate("i-more", "sg-1")


def test_more_instances_than_free_slots_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        zone_plan({"cluster1": 3}, 4, 2)


def test_the_xl_spec_is_8_clusters_of_32_ncs_with_4_slots_and_full_ha():
    spec = spec_from_dict(load_spec_dict(XL_SPEC, None))
    assert (spec.clusters, spec.ncs_per_cluster, spec.vm_slots_per_nc) == (8, 32, 4)
    assert spec.mode.value == "MANAGED" and spec.sdn
    assert spec.ha.clc and spec.ha.walrus and spec.ha.cc and spec.ha.sc
    # Arbitrators at Eucalyptus's 2 s reachability timeout: at xl a probe through the
    # saturated datapath outlived the default 0.5 s (run 20261207T004622Z).
    a = spec.arbitrators
    assert (a.period_s, a.timeout_s, a.fail_after) == (2.0, 2.0, 3)
    plan = build_plan(spec)
    assert len(plan.hosts_by_role("nc")) == 256 and len(plan.hosts) > 1300
    small = spec_from_dict(load_spec_dict(XL_SPEC, (2, 4, 4)))
    assert (small.clusters, small.ncs_per_cluster, small.vm_slots_per_nc, small.name) == (2, 4, 4, "xl-2x4x4")


def test_every_figure_is_printed_with_its_target_and_a_verdict():
    fig = {"network_up_s": 12.0, "network_down_s": 3.0, "services_up_s": 50.0, "as_planned": 20, "members": 20,
           "not_as_planned": {}, "ncs_running": 8, "peak_total": 2 * 2**30, "instances_s": 130.0,
           "instances_running": 24, "instances_requested": 24,
           "outages": {"clc": {"p50": 0.23, "trials": 1, "as_expected": 1},
                       "walrus": {"p50": 0.2, "trials": 1, "as_expected": 1}}}
    ref = {"clc": {"p50": 0.2}, "walrus": {"p50": 0.2}}
    rows = {r["figure"].split(" (")[0]: r for r in figure_rows(fig, {"up": 4.0, "down": 2.0}, ref)}
    assert rows["network up"]["met"] == "NO" and rows["network up"]["mininet"] == "4.0 s"
    assert rows["services up"]["met"] == "yes" and rows["peak memory"]["met"] == "yes"
    assert rows["24/24 instances running"]["met"] == "NO"
    assert rows["CLC outage p50"]["met"] == "yes"  # 230 ms <= 1.2 x 200 ms
    assert rows["WALRUS outage p50"]["eucalab"] == "200 ms"
    assert rows["CC outage p50"]["met"] == "-"  # not measured: no verdict, never a pass
    assert all(r["target"] for r in rows.values())


def test_instances_not_all_running_by_the_launchs_end_miss_their_target():
    # 30 of 40 ran by the launch's timeout: no time to all running, and the target is missed
    # (it used to print "-", as for a launch never made).
    fig = {"instances_running": 30, "instances_requested": 40, "instances_s": None}
    (inst,) = [r for r in figure_rows(fig, None, None) if "instances running" in r["figure"]]
    assert inst["figure"] == "30/40 instances running" and inst["eucalab"] == "-" and inst["met"] == "NO"
    (never,) = [r for r in figure_rows({}, None, None) if "instances running" in r["figure"]]
    assert never["met"] == "-"  # the deployment ended before any launch: not measured


def test_the_trials_are_make_runs_for_the_four_ha_components():
    from experiments.bench.scale import TARGETS_ORDER, experiment
    from experiments.failover.faults import PLANNED_SWITCHOVER
    from experiments.failover.runner import DEFINITIONS, Experiment

    made = Experiment.load(DEFINITIONS / "default.yaml")
    exp = experiment({"name": "xl"}, 3, "xl")
    assert [ts.target for ts in exp.sets] == list(TARGETS_ORDER)
    assert all(ts.trials == 3 for ts in exp.sets)
    assert [(ts.target, ts.fault) for ts in exp.sets] == [(ts.target, ts.fault) for ts in made.sets
                                                          if ts.target in TARGETS_ORDER and ts.fault != PLANNED_SWITCHOVER
                                                          and not ts.spec]  # not the EDGE deployment's
    assert (exp.probe_interval_ms, exp.probe_timeout_ms) == (made.probe_interval_ms, made.probe_timeout_ms)
    assert exp.spec == {"name": "xl"}


class _FakeEC2:
    """RunInstances and DescribeInstances as a CLC answers them. ``lost``: which call of each
    kind (``run``, ``describe``; 1 the first) loses its answer, as when the CLC fails over
    (its connection closes unanswered). ``pending_for``: how many DescribeInstances an
    instance stays pending. ``per_group``: the instances a security group's subnet addresses
    in a zone; the CC refuses more InsufficientAddressCapacity (components/cc/netalloc.py)."""

    def __init__(self, lost: dict[str, int] | None = None, pending_for: int = 0, per_group: int | None = None):
        self.lost = dict(lost or {})
        self.answered = {"run": 0, "describe": 0}
        self.pending_for, self.per_group = pending_for, per_group
        self.instances: dict[str, dict] = {}
        self.calls: list[tuple[str, int, list[str]]] = []
        self.pending_at_call: list[int] = []  # instances pending when each RunInstances came

    def _answer(self, what: str) -> None:
        from botocore.exceptions import ConnectionClosedError

        self.answered[what] += 1
        if self.lost.get(what) == self.answered[what]:
            raise ConnectionClosedError(endpoint_url="http://10.0.0.10:8773/services/Eucalyptus")

    def register_image(self, **kw):
        return {"ImageId": "emi-12345678"}

    def create_security_group(self, GroupName, Description):  # noqa: N803 (boto3's names)
        return {"GroupId": f"sg-{GroupName}"}

    def run_instances(self, ImageId, MinCount, MaxCount, Placement, SecurityGroupIds=("sg-default",)):  # noqa: N803
        from botocore.exceptions import ClientError

        zone, group = Placement["AvailabilityZone"], SecurityGroupIds[0]
        self.calls.append((zone, MinCount, list(SecurityGroupIds)))
        self.pending_at_call.append(sum(i["pending"] > 0 for i in self.instances.values()))
        self._answer("run")
        held = sum(i["zone"] == zone and i["group"] == group for i in self.instances.values())
        if self.per_group is not None and held + MinCount > self.per_group:
            raise ClientError({"Error": {"Code": "InsufficientAddressCapacity",
                                         "Message": f"group {group} has no free address left"}}, "RunInstances")
        ids = [f"i-{len(self.instances) + k:08x}" for k in range(MinCount)]
        for i in ids:
            self.instances[i] = {"zone": zone, "group": group, "pending": self.pending_for}
        return {"Instances": [{"InstanceId": i} for i in ids]}

    def describe_instances(self, InstanceIds=None):  # noqa: N803
        if InstanceIds is None:
            return {"Reservations": []}
        self._answer("describe")
        out = []
        for i in InstanceIds:
            rec = self.instances[i]
            out.append({"InstanceId": i, "State": {"Name": "pending" if rec["pending"] else "running"}})
            rec["pending"] = max(0, rec["pending"] - 1)
        return {"Reservations": [{"Instances": out}]}


class _FakeS3:
    def create_bucket(self, **kw):
        pass

    def put_object(self, **kw):
        pass


def _launch(ec2: _FakeEC2, monkeypatch, clusters: int, slots: int, count: int, batch: int,
            cc_config: dict | None = None, **kw) -> dict:
    """``launch_instances`` against ``ec2`` on a MANAGED deployment of ``clusters`` x 4 NCs
    x ``slots`` slots per NC, its CCs configured ``cc_config``, polling without a pause."""
    from types import SimpleNamespace

    from components.common.modes import MANAGED_MODES
    from experiments.bench import scale

    monkeypatch.setattr(scale, "LAUNCH_POLL_S", 0.0)
    spec = spec_from_dict({"name": "t", "clusters": clusters, "ncs_per_cluster": 4, "vm_slots_per_nc": slots})
    assert spec.mode.value in MANAGED_MODES
    dep = SimpleNamespace(spec=spec, plan=build_plan(spec), aws_client=lambda kind: ec2 if kind == "ec2" else _FakeS3(),
                          component_config=lambda component, host: dict(cc_config or {}) if component == "cc" else {})
    return scale.launch_instances(dep, count, batch, timeout=30, reserve_gib=0, **kw)


def test_a_clc_failing_over_during_the_launch_is_recorded_and_the_launch_goes_on(monkeypatch):
    # Run 20261207T070514Z: the CLC failed over during a RunInstances; botocore's
    # ConnectionClosedError ended the launch and the deployment before any trial.
    ec2 = _FakeEC2(lost={"run": 2, "describe": 1})
    out = _launch(ec2, monkeypatch, 2, 8, 40, 10)
    assert len(ec2.calls) == 4 and out["run_calls"] == 4
    assert len(out["run_refused"]) == 1 and "Connection was closed" in out["run_refused"][0]["error"]
    assert out["instances_running"] == 30 and out["instances_failed"] == 0
    assert out["instances_s"] is None  # 30 of 40: the figure is not met, never a pass
    # 29 addresses per group a cluster: cluster1's 20 fit in group 0, so do cluster2's.
    assert {tuple(g) for _, _, g in ec2.calls} == {("sg-scale-0",)} and out["security_groups"] == 1


def test_each_runinstances_names_the_group_whose_subnet_has_room(monkeypatch):
    # Run 20261207T062529Z at 2x32x4: one group for all, and the CC refused every instance
    # beyond a group's 29th in a cluster (150 of 200).
    ec2 = _FakeEC2(per_group=instances_per_group())
    out = _launch(ec2, monkeypatch, 2, 16, 100, 25)
    assert not out["run_refused"] and out["instances_running"] == 100 and out["instances_s"] is not None
    planned = zone_plan({"cluster1": 64, "cluster2": 64}, 100, 25, instances_per_group())
    assert ec2.calls == [(zone, n, [f"sg-scale-{group}"]) for zone, group, n in planned]
    assert out["security_groups"] == 2  # 50 a cluster: two groups of at most 29
    # A CC configured with smaller subnets: 13 instances a group, 25 a cluster take two.
    ec2 = _FakeEC2(per_group=13)
    out = _launch(ec2, monkeypatch, 2, 8, 50, 25, cc_config={"addrs_per_net": 16})
    assert not out["run_refused"] and out["instances_running"] == 50 and out["security_groups"] == 2


def test_the_launch_holds_back_while_in_flight_and_the_clc_does_not_answer(monkeypatch):
    # No RunInstances while --in-flight instances are pending, nor while DescribeInstances
    # is left unanswered (the CLC failing over): it used to raise and end the launch.
    ec2 = _FakeEC2(lost={"describe": 1}, pending_for=2)
    out = _launch(ec2, monkeypatch, 2, 8, 30, 10, in_flight=10)
    assert not out["run_refused"] and out["instances_running"] == 30
    assert ec2.pending_at_call == [0, 0, 0]  # each batch of 10 waited for the last to run


def test_the_launch_timeout_option_reaches_the_bench_and_refuses_no_time(monkeypatch):
    from experiments import cli
    from experiments.bench import scale

    seen = []
    monkeypatch.setattr(scale, "run", lambda *a, **kw: seen.append(kw["launch_timeout"]) or 0)
    for argv, want in ((["--launch-timeout", "45"], 45.0), ([], scale.LAUNCH_TIMEOUT_S)):
        args = cli.build_parser().parse_args(["bench", "scale", *argv])
        assert args.bench(args) == 0 and seen[-1] == want
    assert scale.LAUNCH_TIMEOUT_S == 2.5 * scale.TARGET_INSTANCES_S
    for bad in ("0", "-5", "nan", "soon"):  # 0 used to mean the default, silently
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["bench", "scale", "--launch-timeout", bad])


def _launch_clock(monkeypatch, sleep_s: float) -> list[float]:
    """A clock of the launch's own (the bench's and the testbed's poller's, not the
    interpreter's) that a sleep advances by ``sleep_s``; [now], to move it by hand."""
    from types import SimpleNamespace

    from experiments.bench import scale
    from experiments.testbed import timescale

    clock = [0.0]

    def sleep(seconds):
        clock[0] += sleep_s

    fake = SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep)
    monkeypatch.setattr(scale, "time", fake)
    monkeypatch.setattr(timescale, "time", fake)
    return clock


def test_no_runinstances_goes_out_once_the_launchs_time_is_up(monkeypatch):
    # Run 20261207T212008Z (xl): the launch's 300 s ran out while calls were still going
    # out, and every call left was made all the same (the launch went on for 20 minutes);
    # then the instances were never counted, the polls' time being up too.
    clock = _launch_clock(monkeypatch, sleep_s=0.0)
    ec2 = _FakeEC2()
    answer = ec2.run_instances

    def slow_run(**kw):
        clock[0] += 12.0  # each RunInstances answered 12 s later, as a starved CLC does
        return answer(**kw)

    ec2.run_instances = slow_run
    out = _launch(ec2, monkeypatch, 2, 8, 60, 10)  # 7 calls (a group holds 29), 30 s for the launch
    assert len(ec2.calls) == 3 and out["instances_not_called"] == 30
    assert (out["run_calls"], out["run_calls_planned"]) == (3, 7)
    assert out["instances_running"] == 30 and out["instances_s"] is None


def test_a_clc_failing_over_as_the_launchs_time_runs_out_gets_time_to_answer_the_count(monkeypatch):
    # Its count then is what it answers; a CLC that never answers gives no count, not 0.
    from experiments.bench import scale

    for never in (False, True):
        clock = _launch_clock(monkeypatch, sleep_s=1.0)
        ec2 = _FakeEC2(pending_for=10 ** 6)  # never all running within the launch's 30 s
        answer = ec2.describe_instances
        lost = []

        def describe(InstanceIds=None, answer=answer, lost=lost, never=never):  # noqa: N803
            if InstanceIds is not None and clock[0] >= 30.0 and (never or len(lost) < 5):
                from botocore.exceptions import ConnectionClosedError

                lost.append(clock[0])  # the CLC failing over: 5 answers lost, or every one
                raise ConnectionClosedError(endpoint_url="http://10.0.0.10:8773/services/Eucalyptus")
            return answer(InstanceIds=InstanceIds)

        ec2.describe_instances = describe
        out = _launch(ec2, monkeypatch, 2, 8, 20, 10)
        if never:
            assert out["instances_running"] is None and out["instances_s"] is None
            assert clock[0] >= 30.0 + scale.LAUNCH_COUNT_S and len(lost) > 5
            rows = scale.figure_rows(out, None, None)
            assert any(r["figure"] == "?/20 instances running" and r["met"] == "NO" for r in rows)
        else:
            assert len(lost) == 5 and out["instances_running"] == 0 and out["instances_failed"] == 0


def test_a_spec_over_several_servers_is_refused_before_anything_is_made(tmp_path, monkeypatch):
    """The bench's trials compare member events with this machine's clock, and another
    server's carry its own: refused, with nothing written."""
    from experiments.bench import scale

    spec = tmp_path / "two.yaml"
    spec.write_text("servers: [localhost, 10.99.0.2]\nclusters: 1\nncs_per_cluster: 1\n")
    from experiments.bench import bringup
    from experiments.failover import runner
    from experiments.testbed import deployment, preflight

    def built(*a, **kw):
        raise AssertionError("a network was built")

    for module, name in ((deployment, "Deployment"), (runner, "Deployment"), (bringup, "_run_child"),
                         (preflight, "datapath")):
        monkeypatch.setattr(module, name, built)
    with pytest.raises(SystemExit, match="measures on this machine only"):
        scale.run(spec, results_root=tmp_path / "results")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("body, message", [(None, "No such file"), ("clusters: [", "while parsing"),
                                           ("clusters: 0\n", "clusters")])
def test_a_bad_spec_file_is_one_line_before_anything_is_made(tmp_path, monkeypatch, body, message):
    from experiments.bench import scale
    from experiments.testbed import preflight

    def built(*a, **kw):
        raise AssertionError("a network was built")

    monkeypatch.setattr(preflight, "datapath", built)
    spec = tmp_path / "spec.yaml"
    if body is not None:
        spec.write_text(body)
    with pytest.raises(SystemExit, match=f"^eucalab bench scale: {spec}: .*{message}"):
        scale.run(spec, results_root=tmp_path / "results")
    assert not (tmp_path / "results").exists()
