"""The CLC with a cluster tier behind its ClusterClient: a stand-in CC on loopback.

The stand-in places instances on loopback addresses (127.0.0.2, 127.0.0.3), so a
request from that source address is, to the CLC, a request from that instance:
the metadata service's positive path, tested without a cluster network.
"""

from __future__ import annotations

import socket

import pytest
from botocore.exceptions import ClientError

from tests.support.clc_client import FakeCC, code_of, ec2_client, get_from, upload_image
from tests.support.util import wait_until
from tests.support.processes import clc_and_walrus

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 9)]  # 127.0.0.9 is nobody


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clc-cc")
    with FakeCC(ADDRESSES) as cc, clc_and_walrus(tmp, endpoints={"cc": {"cluster1": cc.url}},
                                             cluster_poll_s=0.05) as (base, walrus, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation=upload_image(walrus, "images/tiny.img"), Name="tiny")["ImageId"]
        web = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2,
                                                           SecurityGroupIds=[web])["Instances"]]
        yield base, cc, ec2, ids, web


def states(ec2, ids) -> dict:
    return {i["InstanceId"]: i["State"]["Name"]
            for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}


def test_instances_are_placed_and_follow_the_cc(cloud):
    base, cc, ec2, ids, web = cloud
    assert set(cc.instances) == set(ids)
    assert wait_until(lambda: set(states(ec2, ids).values()) == {"running"})
    got = {i["InstanceId"]: i["PrivateIpAddress"]
           for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    assert sorted(got.values()) == ADDRESSES[:2]
    by_ip = ec2.describe_instances(Filters=[{"Name": "private-ip-address", "Values": ["127.0.0.3"]}])
    assert [i["PrivateIpAddress"] for r in by_ip["Reservations"] for i in r["Instances"]] == ["127.0.0.3"]


def test_metadata_answers_each_instance_by_source_address(cloud):
    base, cc, ec2, ids, web = cloud
    ip_of = {i["PrivateIpAddress"]: i["InstanceId"]
             for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    for ip, iid in ip_of.items():
        assert get_from(base, "/latest/meta-data/instance-id", ip) == (200, iid)
        assert get_from(base, "/latest/meta-data/local-ipv4", ip) == (200, ip)
        assert get_from(base, "/latest/meta-data/security-groups", ip) == (200, "web")
        assert get_from(base, "/latest/meta-data/placement/availability-zone", ip) == (200, "cluster1")
        assert get_from(base, "/latest/meta-data/public-ipv4", ip)[0] == 404  # no elastic IP yet
    status, listing = get_from(base, "/latest/meta-data/", "127.0.0.2")
    assert status == 200 and {"instance-id", "local-ipv4", "placement/", "security-groups"} <= set(listing.split())
    assert get_from(base, "/latest/meta-data/no-such-key", "127.0.0.2")[0] == 404
    assert get_from(base, "/latest/meta-data/instance-id", "127.0.0.9")[0] == 404  # no instance there

    ip = ec2.allocate_address()["PublicIp"]
    ec2.associate_address(InstanceId=ip_of["127.0.0.2"], PublicIp=ip)
    assert cc.elastic == {ip: ip_of["127.0.0.2"]}  # the CC was told, for its NAT
    assert get_from(base, "/latest/meta-data/public-ipv4", "127.0.0.2") == (200, ip)
    ec2.disassociate_address(PublicIp=ip)
    assert cc.elastic == {}
    ec2.release_address(PublicIp=ip)


def test_group_rules_reach_the_cc(cloud):
    base, cc, ec2, ids, web = cloud
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    assert cc.groups[web]["rules"] == [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}]


def test_only_groups_a_cc_lacks_are_sent_again(cloud):
    base, cc, ec2, ids, web = cloud
    other = ec2.create_security_group(GroupName="quiet", Description="unchanged")["GroupId"]
    assert wait_until(lambda: other in cc.groups)
    # The check runs every 20 sync rounds (1 s here): a CC holding every group as sent
    # gets none of them again ...
    seen = len(cc.calls)
    assert wait_until(lambda: cc.calls[seen:].count(("GET", "/cluster/groups")) >= 2, timeout=6)
    assert not [c for c in cc.calls[seen:] if c[0] == "PUT"]
    # ... and one that lost a group (a restart) gets that one back, alone.
    sent = dict(cc.groups[other])
    del cc.groups[other]
    seen = len(cc.calls)
    assert wait_until(lambda: cc.groups.get(other) == sent, timeout=6)
    assert [c for c in cc.calls[seen:] if c[0] == "PUT"] == [("PUT", f"/cluster/groups/{other}")]


def test_volume_attach_detach_round_trip(cloud):
    base, cc, ec2, ids, web = cloud
    assert wait_until(lambda: states(ec2, ids)[ids[0]] == "running")
    vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
    att = ec2.attach_volume(VolumeId=vol, InstanceId=ids[0], Device="/dev/vdb")
    assert (att["State"], att["InstanceId"], att["Device"]) == ("attached", ids[0], "/dev/vdb")
    got = ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]
    assert got["State"] == "in-use" and got["Attachments"][0]["InstanceId"] == ids[0]
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=vol, InstanceId=ids[1], Device="/dev/vdc")
    assert code_of(err.value) == "VolumeInUse"
    with pytest.raises(ClientError) as err:
        ec2.delete_volume(VolumeId=vol)
    assert code_of(err.value) == "VolumeInUse"
    assert ec2.detach_volume(VolumeId=vol)["State"] == "detached"
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] == "available"
    ec2.delete_volume(VolumeId=vol)


def test_terminate_goes_to_the_cc_and_ends_metadata(cloud):
    base, cc, ec2, ids, web = cloud
    ip = ec2.describe_instances(InstanceIds=[ids[1]])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    ec2.terminate_instances(InstanceIds=[ids[1]])
    assert ("DELETE", f"/cluster/instances/{ids[1]}") in cc.calls
    assert states(ec2, [ids[1]]) == {ids[1]: "terminated"}
    assert get_from(base, "/latest/meta-data/instance-id", ip)[0] == 404


def test_insufficient_capacity_records_nothing(cloud):
    base, cc, ec2, ids, web = cloud
    emi = ec2.describe_images()["Images"][0]["ImageId"]
    before = len(ec2.describe_instances()["Reservations"])
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=emi, MinCount=cc.free + 1, MaxCount=cc.free + 1)
    assert code_of(err.value) == "InsufficientInstanceCapacity"
    assert len(ec2.describe_instances()["Reservations"]) == before


def test_a_cc_that_does_not_answer_gets_a_retryable_error_and_nothing_recorded(tmp_path):
    """Recorded, such instances would stay pending for good: no CC was asked to start them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends: refused
    with clc_and_walrus(tmp_path, endpoints={"cc": {"cluster1": dead}}) as (base, walrus, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation=upload_image(walrus, "images/tiny.img"), Name="tiny")["ImageId"]
        with pytest.raises(ClientError) as err:
            ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)
        assert code_of(err.value) == "ServiceUnavailable"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503  # boto3 retries a 503
        assert "cluster1" in str(err.value)
        assert ec2.describe_instances()["Reservations"] == []


def test_an_instance_its_nc_refused_is_terminated_in_the_run_answer(cloud):
    base, cc, ec2, ids, web = cloud
    emi = ec2.describe_images()["Images"][0]["ImageId"]
    cc.nc_refuses = True
    try:
        inst = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]
    finally:
        cc.nc_refuses = False
    assert inst["State"]["Name"] == "terminated"
    assert "refused" in inst["StateReason"]["Message"]


def test_a_run_the_cc_does_not_answer_in_time_is_withdrawn(tmp_path):
    """The CC took it but answers too late: the CLC terminates each id it sent there, so no
    instance runs that the CLC never recorded, and the client gets a retryable error."""
    with FakeCC(ADDRESSES) as cc, clc_and_walrus(tmp_path, endpoints={"cc": {"cluster1": cc.url}},
                                            cluster_run_timeout_s=0.3) as (base, walrus, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation=upload_image(walrus, "images/tiny.img"), Name="tiny")["ImageId"]
        cc.answer_after = 1.0
        with pytest.raises(ClientError) as err:
            ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2)
        assert code_of(err.value) == "Unavailable" and err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        # Every attempt's (boto3 tried again: a 503), each id withdrawn.
        assert len(cc.instances) >= 2 and {i["state"] for i in cc.instances.values()} == {"terminated"}
        assert sorted(path for method, path in cc.calls if method == "DELETE") == \
            sorted(f"/cluster/instances/{i}" for i in cc.instances)
        assert ec2.describe_instances()["Reservations"] == []


def test_terminate_detaches_the_instance_s_volumes(cloud):
    """TerminateInstances left the volume in-use (and its block session open) for good."""
    base, cc, ec2, ids, web = cloud
    emi = ec2.describe_images()["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert wait_until(lambda: states(ec2, [iid])[iid] == "running")
    vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
    ec2.terminate_instances(InstanceIds=[iid])
    got = ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]
    assert got["State"] == "available" and not got["Attachments"]
    assert ("DELETE", f"/cluster/instances/{iid}/volumes/{vol}") in cc.calls
    ec2.delete_volume(VolumeId=vol)


def test_user_data_is_served_to_its_instance_only(cloud):
    """RunInstances' UserData (boto3 and the AWS CLI send it base64) at /latest/user-data."""
    base, cc, ec2, ids, web = cloud
    emi = ec2.describe_images()["Images"][0]["ImageId"]
    script = "#!/bin/sh\necho hello from user-data\n"
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, UserData=script)["Instances"][0]["InstanceId"]
    assert wait_until(lambda: states(ec2, [iid])[iid] == "running")
    ip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    try:
        assert get_from(base, "/latest/user-data", ip) == (200, script)
        other = ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
        assert get_from(base, "/latest/user-data", other)[0] == 404  # launched without user data
        assert get_from(base, "/latest/user-data", "127.0.0.9")[0] == 404  # no instance there
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
    assert get_from(base, "/latest/user-data", ip)[0] == 404


@pytest.mark.parametrize("data, why", [("not base64!", "BASE64"), ("QUFB" * 5462, "limited")])
def test_bad_user_data_is_refused_and_starts_nothing(cloud, data, why):
    from tests.support.clc_client import raw_call

    base, cc, ec2, ids, web = cloud
    emi = ec2.describe_images()["Images"][0]["ImageId"]
    before = len(cc.instances)
    status, text = raw_call(base, {"Action": "RunInstances", "ImageId": emi, "MinCount": "1", "MaxCount": "1",
                                   "UserData": data, "Version": "2016-11-15"})
    assert status == 400 and "<Code>InvalidParameterValue</Code>" in text and why in text
    assert len(cc.instances) == before
