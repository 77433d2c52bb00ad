"""``vlan_tagging: host`` under the real cloud: CLC -> CC -> NC boot and terminate instances,
and the NC component itself bridges each into its group's VLAN (components/nc/slots.py).

One cluster, one NC with two VM slots, MANAGED, no HA, no SDN controller. Two instances on
the NC in two groups: "default" admits tcp 80 from anywhere, "closed" admits nothing.
"""

from __future__ import annotations

import json

import pytest

from components.common import vlan as vlans
from experiments.bench.sdn import capture
from experiments.testbed.deployment import Deployment, wait_until
from experiments.testbed.timescale import scaled
from tests.support.util import web_image
from topologies.spec import spec_from_dict

SPEC = {"name": "k-vlan-cloud", "clusters": 1, "ncs_per_cluster": 1, "vm_slots_per_nc": 2, "sdn": False,
        "vlan_tagging": "host", "ha": {"clc": False, "walrus": False, "cc": False, "sc": False},
        "arbitrators": {"per_host": 0}}


def nc_records(dep) -> dict:
    """The NC's own instance records (instances.json in its data directory)."""
    return json.loads((dep.host_dir("c1n1") / "data" / "instances.json").read_text())


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    with Deployment(spec_from_dict(SPEC), run_dir=tmp_path_factory.mktemp("vlan-cloud") / "run") as dep:
        dep.start_services()
        ec2, s3 = dep.aws_client("ec2"), dep.aws_client("s3")
        emi, default = web_image(ec2, s3, "vlan.img", "vlan-host", size=2**16)
        closed = ec2.create_security_group(GroupName="closed", Description="no ingress")["GroupId"]
        ids = [ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, SecurityGroupIds=[g])["Instances"][0]
               ["InstanceId"] for g in (default, closed)]

        def states() -> dict:
            res = ec2.describe_instances(InstanceIds=ids)["Reservations"]
            return {i["InstanceId"]: i for r in res for i in r["Instances"]}

        assert wait_until(lambda: all(i["State"]["Name"] != "pending" for i in states().values()),
                          timeout=scaled(60))
        insts = states()
        assert all(i["State"]["Name"] == "running" for i in insts.values()), insts
        records = nc_records(dep)
        yield dep, ec2, [dict(insts[i], slot=records[i]["slot"], vlan=records[i]["vlan"]) for i in ids]


def test_the_nc_bridges_each_instance_into_its_groups_vlan(cloud):
    dep, _, (web, closed) = cloud
    assert web["vlan"] != closed["vlan"] and None not in (web["vlan"], closed["vlan"])
    for inst in (web, closed):
        bridged = vlans.link_names(dep["c1n1"].cmd(f"ip -o link show master {vlans.vlan_bridge(inst['vlan'])}"))
        assert bridged == {f"c1n1-eth0.{inst['vlan']}", dep.plan.nc_port(inst["slot"])}, bridged


def test_instances_reach_each_other_only_as_their_groups_allow(cloud):
    dep, _, (web, closed) = cloud
    with capture(dep, "c1n1", f"vlan {closed['vlan']} and host {web['PrivateIpAddress']}", "cap-uplink") as up:
        assert dep[closed["slot"]].cmd(f"curl -s -m {scaled(3)} http://{web['PrivateIpAddress']}/").strip() \
            == web["InstanceId"]
    assert up["count"] > 0  # routed through the CC: left the NC tagged with the closed group's VLAN
    assert wait_until(lambda: not dep[closed["slot"]].cmd(
        f"ss -Htn state connected exclude time-wait dst {web['PrivateIpAddress']}").strip(), scaled(5))
    with capture(dep, closed["slot"], f"host {web['PrivateIpAddress']}", "cap-closed") as cap:
        code = dep[web["slot"]].cmd(f"curl -s -m {scaled(1)} -o /dev/null -w '%{{http_code}}' "
                                    f"http://{closed['PrivateIpAddress']}/").strip()
    assert code == "000" and cap["count"] == 0, cap["lines"]


def test_terminating_releases_the_slots_port(cloud):
    dep, ec2, (web, closed) = cloud
    ec2.terminate_instances(InstanceIds=[closed["InstanceId"]])
    port = dep.plan.nc_port(closed["slot"])
    assert wait_until(lambda: nc_records(dep)[closed["InstanceId"]]["state"] == "terminated", timeout=scaled(30))
    assert vlans.link_names(dep["c1n1"].cmd(f"ip -o link show master {vlans.vlan_bridge(closed['vlan'])}")) \
        == {f"c1n1-eth0.{closed['vlan']}"}
    assert port not in vlans.link_names(dep["c1n1"].cmd("ip -o link show master " + vlans.vlan_bridge(web["vlan"])))
