"""Cluster tier under restarts, and SYSTEM mode end to end (each on a deployment of its own)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from botocore.exceptions import ClientError

from experiments.testbed.deployment import Deployment
from tests.support.util import instance_leaving
from topologies.spec import DeploymentSpec, HASpec, NetworkMode

from .conftest import aws_client


def boot_image(ec2, s3, groups: bool = True) -> str:
    """Register an image; where groups are enforced (``groups``), open HTTP in the default group."""
    s3.create_bucket(Bucket="images")
    s3.put_object(Bucket="images", Key="f.img", Body=os.urandom(2**20))
    emi = ec2.register_image(ImageLocation="images/f.img", Name="faults")["ImageId"]
    if not groups:
        return emi
    gid = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    return emi


def state_of(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    spec = DeploymentSpec(name="test-faults", clusters=1, ncs_per_cluster=2, vm_slots_per_nc=2,
                          ha=HASpec(clc=False, walrus=False, cc=False, sc=False))
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("faults")) as dep:
        dep.start_services()
        ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
        yield dep, ec2, s3, boot_image(ec2, s3)


def test_nc_restart_keeps_running_instances(small):
    dep, ec2, _, emi = small
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    inst = instance_leaving(ec2, iid)
    assert inst["State"]["Name"] == "running"
    nc = next(i["nc"] for i in json.loads(dep["c1cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {dep.internal_token}' http://10.0.1.10:8774/cluster/instances"
    ))["instances"] if i["id"] == iid)
    dep.kill(nc, sig=signal.SIGKILL)
    dep.process(nc).popen.wait(timeout=5)
    # The workload lives in its slot, not in the NC: it keeps answering.
    assert dep["c1cc1"].cmd(f"curl -s -m 2 http://{inst['PrivateIpAddress']}/").strip() == iid
    dep.start("nc", nc)
    time.sleep(0.5)
    assert state_of(ec2, iid)["State"]["Name"] == "running"
    listing = dep["c1cc1"].cmd(f"curl -s -H 'X-Eucalab-Internal-Token: {dep.internal_token}' "
                               f"http://{dep.plan.hosts[nc].main_ip}:8775/instances")
    assert iid in listing
    ec2.terminate_instances(InstanceIds=[iid])
    assert instance_leaving(ec2, iid, leave="running")["State"]["Name"] == "terminated"


def test_cc_restart_mid_boot_rebuilds_from_the_ncs(small):
    dep, ec2, _, emi = small
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2)["Instances"]]
    dep.kill("c1cc1", sig=signal.SIGKILL)  # while the NCs boot
    dep.process("c1cc1").popen.wait(timeout=5)
    (dep.run_dir / "hosts" / "c1cc1" / "data" / "cluster.json").unlink()  # the CC forgets everything
    dep.start("cc", "c1cc1")
    states = {instance_leaving(ec2, i)["State"]["Name"] for i in ids}
    assert states == {"running"}  # the restarted CC learned them from the NCs
    cap = json.loads(dep["c1cc1"].cmd(f"curl -s -H 'X-Eucalab-Internal-Token: {dep.internal_token}' "
                                      "http://10.0.1.10:8774/cluster/capacity"))
    assert cap["free"] == 2  # two slots in use, none leaked or double-booked
    # A new instance gets a fresh address, not one of the rebuilt ones.
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    new = instance_leaving(ec2, iid)
    old_ips = {state_of(ec2, i)["PrivateIpAddress"] for i in ids}
    assert new["State"]["Name"] == "running" and new["PrivateIpAddress"] not in old_ips
    ec2.terminate_instances(InstanceIds=ids + [iid])
    for i in ids + [iid]:
        assert instance_leaving(ec2, i, leave="running")["State"]["Name"] == "terminated"


def test_system_mode_end_to_end(tmp_path):
    spec = DeploymentSpec(name="test-system-e2e", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=2,
                          mode=NetworkMode.SYSTEM, ha=HASpec(clc=False, walrus=False, cc=False, sc=False))
    with Deployment(spec, run_dir=tmp_path / "run") as dep:
        dep.start_services()
        ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
        emi = boot_image(ec2, s3, groups=False)  # SYSTEM has no security groups
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        inst = instance_leaving(ec2, iid)
        assert inst["State"]["Name"] == "running"
        ip = inst["PrivateIpAddress"]
        assert ip.startswith("10.101.2.")  # flat addresses on the cluster network
        # The site routes VMs: users reach the instance directly, no CC in the path.
        assert dep["user"].cmd(f"curl -s -m 3 http://{ip}/").strip() == iid
        assert "via 10.101.0.1" in dep["c1n1v1"].cmd("ip route") + dep["c1n1v2"].cmd("ip route")
        with pytest.raises(ClientError) as err:
            ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2)
        assert err.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
