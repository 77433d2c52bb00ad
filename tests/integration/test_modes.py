"""Each networking mode walks its row of the table (components/common/modes.py) end to end:
every feature the mode has works from the user host or from inside an instance, every
one it lacks is refused by the API and absent from the network. One small deployment
per mode (1 cluster, 1 NC, 2 slots, no HA)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from components.common.modes import MODES, NC_ENFORCED_MODES, features
from experiments.bench.sdn import slot_interface
from experiments.testbed.deployment import Deployment, wait_until
from tests.support.util import instance_leaving
from topologies.spec import DeploymentSpec, HASpec, NetworkMode

from .conftest import aws_client
from .test_cluster_faults import boot_image

METADATA = "http://169.254.169.254/latest/meta-data/instance-id"


def slot_of(dep: Deployment, iid: str) -> str:
    listing = json.loads(dep["c1cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {dep.internal_token}' http://10.0.1.10:8774/cluster/instances"))
    return next(i["slot"] for i in listing["instances"] if i["id"] == iid)


def http(dep: Deployment, host: str, ip: str, timeout: int = 2) -> str:
    return dep[host].cmd(f"curl -s -m {timeout} http://{ip}/").strip()


def answers_arp(dep: Deployment, slot: str, ip: str) -> bool:
    """Whether ``ip`` answers ``slot``'s ARP on the segment (an on-link route bypasses the
    gateway, so only layer 2 decides)."""
    intf = slot_interface(dep, slot)
    dep[slot].cmd(f"ip route replace {ip}/32 dev {intf}; ping -c 1 -W 1 {ip}")
    return "lladdr" in dep[slot].cmd(f"ip neigh show {ip} dev {intf}")


def refused(call, mode: str, **kwargs) -> None:
    with pytest.raises(ClientError) as err:
        call(**kwargs)
    assert err.value.response["Error"]["Code"] == "UnsupportedOperation"
    assert mode in err.value.response["Error"]["Message"]


@pytest.mark.parametrize("mode", MODES)
def test_mode_delivers_exactly_its_table(mode, tmp_path):
    f = features(mode)
    spec = DeploymentSpec(name=f"test-modes-{mode.lower()}", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=2,
                          mode=NetworkMode(mode), ha=HASpec(clc=False, walrus=False, cc=False, sc=False))
    with Deployment(spec, run_dir=tmp_path / "run") as dep:
        dep.start_services()
        ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
        emi = boot_image(ec2, s3, groups=f.security_groups)  # opens HTTP in the default group where enforced
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        inst = instance_leaving(ec2, iid)
        assert inst["State"]["Name"] == "running", inst
        ip, slot = inst["PrivateIpAddress"], slot_of(dep, iid)
        gid = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
        http_rule = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]

        # The metadata service, from inside the instance.
        if f.metadata:
            assert dep[slot].cmd(f"curl -s -m 3 {METADATA}").strip() == iid
        else:  # nothing redirects 169.254.169.254 (no CC on the instance's path)
            assert dep[slot].cmd(f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' {METADATA}").strip() == "000"

        if f.elastic_ips:
            eip = ec2.allocate_address()["PublicIp"]
            ec2.associate_address(InstanceId=iid, PublicIp=eip)
            assert http(dep, "user", eip) == iid  # the CC (EDGE: the NC's bridge) NATs it to the instance
            assert http(dep, "user", ip, 1) == ""  # the private address is the CC's own business
        else:
            for call, kwargs in ((ec2.allocate_address, {}),
                                 (ec2.associate_address, {"InstanceId": iid, "PublicIp": "10.0.128.1"}),
                                 (ec2.disassociate_address, {"PublicIp": "10.0.128.1"})):
                refused(call, mode, **kwargs)
            assert ec2.describe_addresses()["Addresses"] == []
            assert http(dep, "user", ip) == iid  # the site routes the instance's own address

        if f.security_groups:  # the rule boot_image added is what lets HTTP in: revoking it shuts it out
            ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=http_rule)
            assert wait_until(lambda: http(dep, "user", eip, 1) == "", 10, 0.2)
            ec2.disassociate_address(PublicIp=eip)
            ec2.release_address(PublicIp=eip)
        else:
            refused(ec2.authorize_security_group_ingress, mode, GroupId=gid, IpPermissions=http_rule)
            refused(ec2.revoke_security_group_ingress, mode, GroupId=gid, IpPermissions=http_rule)
            assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissions"] == []

        # Layer-2 isolation: an instance of another group, on the same NC, answers this one's
        # ARP unless the mode puts each group in its own VLAN, or (EDGE) the NC's bridge
        # passes nothing between groups that admit nothing of each other.
        ec2.create_security_group(GroupName="other", Description="another tenant tier")
        other = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1,
                                  SecurityGroups=["other"])["Instances"][0]["InstanceId"]
        assert instance_leaving(ec2, other)["State"]["Name"] == "running"
        other_ip = ec2.describe_instances(InstanceIds=[other])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
        assert answers_arp(dep, slot, other_ip) is not (f.l2_isolation or mode in NC_ENFORCED_MODES)

        ec2.terminate_instances(InstanceIds=[iid, other])
        assert instance_leaving(ec2, iid, leave="running")["State"]["Name"] == "terminated"
