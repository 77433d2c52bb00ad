"""End to end from RunInstances: CLC -> CC -> NC -> a reachable instance, on the real network."""

from __future__ import annotations

import json
import os
import time

import pytest
from botocore.exceptions import ClientError

from experiments.testbed.deployment import wait_until
from tests.support.util import instance_leaving

IMAGE = os.urandom(2 * 2**20)


@pytest.fixture(scope="module")
def image(deployment, ec2, s3):
    try:
        s3.create_bucket(Bucket="images")
    except ClientError:
        pass
    s3.put_object(Bucket="images", Key="e2e.img", Body=IMAGE)
    emi = ec2.register_image(ImageLocation="images/e2e.img", Name="e2e")["ImageId"]
    gid = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    try:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    except ClientError:
        pass
    return emi


def capacity(deployment, cluster: int) -> dict:
    out = deployment[f"c{cluster}cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' "
        f"http://10.0.{cluster}.10:8774/cluster/capacity")
    return json.loads(out)


def test_run_reach_terminate(deployment, ec2, image):
    free_before = capacity(deployment, 1)["free"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                            Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
    inst = instance_leaving(ec2, iid)
    assert inst["State"]["Name"] == "running", inst
    ip = inst["PrivateIpAddress"]
    assert ip.startswith("10.101.16.")
    assert capacity(deployment, 1)["free"] == free_before - 1
    # The workload answers from its own cluster (the primary CC routes for it) ...
    assert deployment["c1cc1"].cmd(f"curl -s -m 3 http://{ip}/").strip() == iid
    # ... and through an elastic IP, from the user host.
    eip = ec2.allocate_address()["PublicIp"]
    ec2.associate_address(InstanceId=iid, PublicIp=eip)
    assert deployment["user"].cmd(f"curl -s -m 3 http://{eip}/").strip() == iid
    # The private address itself is not reachable from users (MANAGED).
    assert deployment["user"].cmd(f"curl -s -m 1 -o /dev/null -w '%{{http_code}}' http://{ip}/").strip() == "000"
    ec2.terminate_instances(InstanceIds=[iid])
    assert instance_leaving(ec2, iid, leave="running")["State"]["Name"] == "terminated"
    assert capacity(deployment, 1)["free"] == free_before
    assert deployment["user"].cmd(f"curl -s -m 1 -o /dev/null -w '%{{http_code}}' http://{eip}/").strip() == "000"
    ec2.release_address(PublicIp=eip)


def test_more_instances_than_slots_is_refused(deployment, ec2, image):
    free = capacity(deployment, 2)["free"]
    assert free == 4  # 2 NCs x 2 slots
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=free + 1, MaxCount=free + 1,
                          Placement={"AvailabilityZone": "cluster2"})
    assert err.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert capacity(deployment, 2)["free"] == free  # nothing leaked
    res = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=free + 3, Placement={"AvailabilityZone": "cluster2"})
    ids = [i["InstanceId"] for i in res["Instances"]]
    assert len(ids) == free  # as many as fit
    states = {instance_leaving(ec2, i)["State"]["Name"] for i in ids}
    assert states == {"running"}
    listing = json.loads(deployment["c2cc1"].cmd(  # placement as the CC sees it
        f"curl -s -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' http://10.0.2.10:8774/cluster/instances"))
    placed = {i["id"]: i["nc"] for i in listing["instances"] if i["id"] in ids}
    assert sorted(placed.values()) == ["c2n1", "c2n1", "c2n2", "c2n2"]  # ROUNDROBIN over both NCs
    ec2.terminate_instances(InstanceIds=ids)
    for i in ids:
        assert instance_leaving(ec2, i, leave="running")["State"]["Name"] == "terminated"
    assert capacity(deployment, 2)["free"] == free


def test_unknown_image_and_corrupt_image(deployment, ec2, s3, image):
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId="emi-0000dead", MinCount=1, MaxCount=1)
    assert err.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    # Corrupt the stored bytes of an image behind Walrus's back: the NC's download
    # check must catch it and the instance ends terminated with the reason.
    s3.put_object(Bucket="images", Key="corrupt.img", Body=b"good bytes" * 1000)
    emi = ec2.register_image(ImageLocation="images/corrupt.img", Name="corrupt")["ImageId"]
    import sqlite3

    walrus_data = deployment.run_dir / "hosts" / "walrus1" / "data"
    db = sqlite3.connect(walrus_data / "walrus.db")
    fname = db.execute("SELECT file FROM objects WHERE bucket='images' AND key='corrupt.img'").fetchone()[0]
    db.close()
    (walrus_data / "objects" / fname).write_bytes(b"evil bytes" * 1000)
    free = capacity(deployment, 1)["free"]
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1,
                            Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
    inst = instance_leaving(ec2, iid)
    assert inst["State"]["Name"] == "terminated"
    assert "corrupt" in inst["StateReason"]["Message"]
    time.sleep(0.3)
    assert capacity(deployment, 1)["free"] == free  # the slot and address went back


def test_nc_refuses_a_slot_it_does_not_have(deployment):
    body = json.dumps({"id": "i-00000bad", "slot": "c1n1v9", "image": {"bucket": "images", "key": "e2e.img"},
                       "mac": "d0:0d:0a:65:10:63", "ip": "10.101.16.99", "prefix": 27, "gateway": "10.101.16.97"})
    out = deployment["c1cc1"].cmd(
        f"curl -s -X POST -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' "
        f"-H 'Content-Type: application/json' -d '{body}' http://10.101.1.1:8775/instances")
    assert json.loads(out)["error"] == "InvalidSlot"
    assert deployment.process("c1n1").alive()


def test_volume_attach_and_write_lands_on_the_sc(deployment, ec2, image):
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                            Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
    assert instance_leaving(ec2, iid)["State"]["Name"] == "running"
    vol = ec2.create_volume(Size=2, AvailabilityZone="cluster1")["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] == "in-use"
    listing = json.loads(deployment["c1cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' http://10.0.1.10:8774/cluster/instances"))
    nc = next(i for i in listing["instances"] if i["id"] == iid)["nc"]
    nc_ip = deployment.plan.hosts[nc].main_ip
    token = f"-H 'X-Eucalab-Internal-Token: {deployment.internal_token}'"
    out = deployment[nc].cmd(f"curl -s -X PUT {token} --data-binary 'written-through-the-attachment' "
                             f"'http://{nc_ip}:8775/volumes/{vol}/blocks?offset=8192'")
    assert json.loads(out) == {"written": True}
    read = deployment[nc].cmd(f"curl -s {token} 'http://{nc_ip}:8775/volumes/{vol}/blocks?offset=8192&length=30'")
    assert read == "written-through-the-attachment"
    on_sc = (deployment.run_dir / "hosts" / "c1sc1" / "data" / "volumes" / f"{vol}.img").read_bytes()
    assert on_sc[8192:8222] == b"written-through-the-attachment"
    ec2.detach_volume(VolumeId=vol)
    ec2.delete_volume(VolumeId=vol)
    ec2.terminate_instances(InstanceIds=[iid])
    assert instance_leaving(ec2, iid, leave="running")["State"]["Name"] == "terminated"


def test_volume_blocks_through_an_elastic_ip(deployment, ec2, image):
    """A user reads and writes an instance's volume through its elastic IP: the workload
    relays to the NC's disk channel for that instance, the NC to the SC."""
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                            Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
    assert instance_leaving(ec2, iid)["State"]["Name"] == "running"
    eip = ec2.allocate_address()["PublicIp"]
    ec2.associate_address(InstanceId=iid, PublicIp=eip)
    vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
    other = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
    url = f"http://{eip}/volumes/{vol}/blocks"
    user = deployment["user"]
    # The CC installs the elastic IP's NAT shortly after the association returns.
    assert wait_until(lambda: user.cmd(f"curl -s -m 1 http://{eip}/").strip() == iid, 10)
    # Before the attachment the NC knows no such volume for this instance.
    assert user.cmd(f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' '{url}?offset=0&length=4'") == "404"
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
    data = os.urandom(1500).hex()  # over 1 KiB: curl sends Expect: 100-continue
    out = user.cmd(f"curl -s -m 5 -X PUT --data-binary '{data}' '{url}?offset=4096'")
    assert json.loads(out) == {"written": True}
    assert user.cmd(f"curl -s -m 3 '{url}?offset=4096&length={len(data)}'") == data
    on_sc = (deployment.run_dir / "hosts" / "c1sc1" / "data" / "volumes" / f"{vol}.img").read_bytes()
    assert on_sc[4096:4096 + len(data)] == data.encode()
    # A volume of the cloud not attached to this instance is not on its disk.
    assert user.cmd(f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' "
                    f"'http://{eip}/volumes/{other}/blocks?offset=0&length=4'") == "404"
    assert user.cmd(f"curl -s -m 3 http://{eip}/").strip() == iid  # every other path: its id
    ec2.detach_volume(VolumeId=vol)
    assert user.cmd(f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' '{url}?offset=4096&length=4'") == "404"
    listing = json.loads(deployment["c1cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' http://10.0.1.10:8774/cluster/instances"))
    nc = next(i["nc"] for i in listing["instances"] if i["id"] == iid)
    disk = deployment.run_dir / "hosts" / nc / "data" / "instances" / iid / "disk.sock"
    assert disk.is_socket()
    ec2.terminate_instances(InstanceIds=[iid])
    assert instance_leaving(ec2, iid, leave="running")["State"]["Name"] == "terminated"
    assert not disk.exists() and not disk.parent.exists()  # the channel goes with the instance
    ec2.release_address(PublicIp=eip)
    for v in (vol, other):
        ec2.delete_volume(VolumeId=v)


def test_metadata_service_answers_the_instance(deployment, ec2, image):
    """169.254.169.254:80 is DNATed by the primary CC to the CLC, which knows the instance
    by its source address."""
    res = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "cluster1"})
    iid = res["Instances"][0]["InstanceId"]
    inst = instance_leaving(ec2, iid)
    assert inst["State"]["Name"] == "running"
    listing = json.loads(deployment["c1cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' http://10.0.1.10:8774/cluster/instances"))
    slot = next(i["slot"] for i in listing["instances"] if i["id"] == iid)
    base = "http://169.254.169.254/latest/meta-data"
    assert deployment[slot].cmd(f"curl -s -m 3 {base}/instance-id").strip() == iid
    assert deployment[slot].cmd(f"curl -s -m 3 {base}/local-ipv4").strip() == inst["PrivateIpAddress"]
    assert deployment[slot].cmd(f"curl -s -m 3 {base}/placement/availability-zone").strip() == "cluster1"
    assert "default" in deployment[slot].cmd(f"curl -s -m 3 {base}/security-groups")
    ec2.terminate_instances(InstanceIds=[iid])
    assert instance_leaving(ec2, iid, leave="running")["State"]["Name"] == "terminated"
