"""The CC pair's view on the real network: an elastic IP associated while the pair's
heartbeat link is cut still routes after the CC fails over, and a second elastic IP on one
instance leaves the CLC and the CC agreeing (a deployment of its own: it kills a CC)."""

from __future__ import annotations

import json
import signal

import pytest

from experiments.testbed.deployment import Deployment, wait_until
from tests.support.util import web_image
from topologies.spec import DeploymentSpec, HASpec, HeartbeatSpec

from .conftest import aws_client


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    spec = DeploymentSpec(name="test-cc-repl", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=2,
                          ha=HASpec(clc=False, walrus=False, cc=True, sc=False),
                          heartbeat=HeartbeatSpec(interval_ms=100, misses=5))
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("cc-repl")) as dep:
        dep.start_services()
        ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
        emi, _ = web_image(ec2, s3, "r.img", "replication")
        yield dep, ec2, emi


def _pair(dep):
    return next(p for p in dep.plan.pairs if p.kind == "cc")


def _primary(dep) -> str:
    enabled = [m for m in _pair(dep).members if dep.member_state(m) == "ENABLED"]
    assert len(enabled) == 1, {m: dep.member_state(m) for m in _pair(dep).members}
    return enabled[0]


def _answers(dep, ip: str) -> str:
    return dep["user"].cmd(f"curl -s -m 1 http://{ip}/").strip()


def _public_ip(dep, cc: str, iid: str) -> str | None:
    """The elastic IP a CC's view gives an instance, from the view it keeps on disk (a
    standby's API answers 503; the file is written just after each change)."""
    try:
        view = json.loads((dep.host_dir(cc) / "data" / "cluster.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return view["instances"].get(iid, {}).get("public_ip")


def _running(ec2, emi) -> str:
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert wait_until(lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                      ["State"]["Name"] == "running", 30)
    return iid


def test_an_address_associated_while_the_heartbeat_link_is_cut_routes_after_a_failover(cloud):
    dep, ec2, emi = cloud
    pair = _pair(dep)
    assert wait_until(lambda: dep.redundant(pair), 30)
    old = _primary(dep)
    standby = next(m for m in pair.members if m != old)
    iid = _running(ec2, emi)
    eip = ec2.allocate_address()["PublicIp"]
    dep.set_link(old, pair.heartbeat_network, up=False)  # heartbeats go on over the cloud network
    try:
        ec2.associate_address(InstanceId=iid, PublicIp=eip)
        assert wait_until(lambda: _answers(dep, eip) == iid, 10)
        assert wait_until(lambda: _public_ip(dep, standby, iid) == eip, 2)  # replicated over the cloud network
        dep.kill(old, sig=signal.SIGKILL)
        dep.process(old).popen.wait(timeout=5)
        assert wait_until(lambda: dep.member_state(standby) == "ENABLED", 20)
        assert wait_until(lambda: _answers(dep, eip) == iid, 15), "the elastic IP no longer routes"
        shown = {a["PublicIp"]: a.get("InstanceId") for a in ec2.describe_addresses()["Addresses"]}
        assert shown[eip] == iid and _public_ip(dep, standby, iid) == eip
    finally:
        dep.set_link(old, pair.heartbeat_network, up=True)
        if not dep.process(old).alive():
            dep.start("cc", old)
    assert wait_until(lambda: dep.redundant(pair), 30)
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.release_address(PublicIp=eip)


def test_a_second_elastic_ip_replaces_the_first_at_the_clc_and_the_cc(cloud):
    dep, ec2, emi = cloud
    iid = _running(ec2, emi)
    first, second = (ec2.allocate_address()["PublicIp"] for _ in range(2))
    ec2.associate_address(InstanceId=iid, PublicIp=first)
    assert wait_until(lambda: _answers(dep, first) == iid, 10)
    ec2.associate_address(InstanceId=iid, PublicIp=second)
    shown = {a["PublicIp"]: a.get("InstanceId") for a in ec2.describe_addresses()["Addresses"]}
    assert shown == {first: None, second: iid}
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PublicIpAddress"] == second
    assert wait_until(lambda: _answers(dep, second) == iid, 10)
    assert wait_until(lambda: _answers(dep, first) == "", 10)  # the first no longer routes
    assert wait_until(lambda: _public_ip(dep, _primary(dep), iid) == second, 2)
    ec2.terminate_instances(InstanceIds=[iid])
    for ip in (first, second):
        ec2.release_address(PublicIp=ip)
