"""The SDN controller under the real cloud: CLC -> CC -> NC boot instances, the CC pushes the intent.

One cluster, one NC with two VM slots, MANAGED, no HA. Two instances on the same NC
bridge in two groups: "default" admits tcp 80 from anywhere, "closed" admits nothing.
Only their VLANs keep them apart at layer 2.
"""

from __future__ import annotations

import time

import pytest

from experiments.bench.sdn import capture, intent_request
from experiments.testbed.deployment import Deployment, wait_until
from tests.support.util import web_image
from topologies.spec import DeploymentSpec, HASpec, NetworkMode


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    spec = DeploymentSpec(name="test-sdn-cloud", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=2,
                          mode=NetworkMode.MANAGED, ha=HASpec(clc=False, walrus=False, cc=False, sc=False))
    spec.arbitrators.per_host = 0
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("sdn-cloud"), sdn=True) as dep:
        dep.start_services()
        ec2, s3 = dep.aws_client("ec2"), dep.aws_client("s3")
        emi, default = web_image(ec2, s3, "sdn.img", "sdn-e2e")
        closed = ec2.create_security_group(GroupName="closed", Description="no ingress")["GroupId"]
        ids = [ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, SecurityGroupIds=[g])["Instances"][0]
               ["InstanceId"] for g in (default, closed)]
        deadline = time.monotonic() + 30
        while True:
            res = ec2.describe_instances(InstanceIds=ids)["Reservations"]
            insts = {i["InstanceId"]: i for r in res for i in r["Instances"]}
            if all(i["State"]["Name"] != "pending" for i in insts.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert all(i["State"]["Name"] == "running" for i in insts.values()), insts
        _, intent = intent_request(dep, "GET", "/intent")
        slots = {i["id"]: i["slot"] for i in intent["clusters"]["1"]["instances"]}
        yield dep, ec2, [dict(insts[i], slot=slots[i]) for i in ids]


def test_the_ccs_intent_is_accepted_and_installed(cloud):
    dep, _, (web, closed) = cloud
    events = (dep.run_dir / "controller" / "events.jsonl").read_text()
    assert '"intent.applied"' in events and '"intent.rejected"' not in events
    _, intent = intent_request(dep, "GET", "/intent")
    vlans = {g["vlan"] for g in intent["clusters"]["1"]["groups"]}
    assert len(vlans) == 2 and None not in vlans


def test_instances_reach_each_other_only_as_their_groups_allow(cloud):
    dep, _, (web, closed) = cloud
    assert dep["c1cc1"].cmd(f"curl -s -m 3 http://{web['PrivateIpAddress']}/").strip() == web["InstanceId"]
    assert dep[closed["slot"]].cmd(f"curl -s -m 3 http://{web['PrivateIpAddress']}/").strip() == web["InstanceId"]
    # curl returns before its connection has closed: the last packets from web (FIN, the
    # final ACK) must have arrived before the capture starts, or they would count as leaks.
    assert wait_until(lambda: not dep[closed["slot"]].cmd(
        f"ss -Htn state connected exclude time-wait dst {web['PrivateIpAddress']}").strip(), 5)
    with capture(dep, closed["slot"], f"host {web['PrivateIpAddress']}", "cap-closed") as cap:
        code = dep[web["slot"]].cmd(f"curl -s -m 1 -o /dev/null -w '%{{http_code}}' "
                                    f"http://{closed['PrivateIpAddress']}/").strip()
    assert code == "000" and cap["count"] == 0, cap["lines"]


def test_elastic_ip_through_the_cc(cloud):
    dep, ec2, (web, _) = cloud
    eip = ec2.allocate_address()["PublicIp"]
    ec2.associate_address(InstanceId=web["InstanceId"], PublicIp=eip)
    deadline = time.monotonic() + 5
    while dep["user"].cmd(f"curl -s -m 1 http://{eip}/").strip() != web["InstanceId"]:
        assert time.monotonic() < deadline, "elastic IP never answered"
    ec2.disassociate_address(PublicIp=eip)
    ec2.release_address(PublicIp=eip)
