"""The CLC's EC2 API as a real process on loopback, driven by boto3 (no cluster tier: instances stay pending)."""

from __future__ import annotations

import re
import sqlite3
import urllib.error
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support.clc_client import code_of, create_account, ec2_client, get_from, raw_call, upload_image
from tests.support.processes import ADMIN, TOKEN, clc_and_walrus, component

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

TABLES = ("accounts", "instances", "groups", "rules", "addresses", "volumes", "images", "oplog")


@pytest.fixture(scope="module")
def clc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clc")
    with clc_and_walrus(tmp) as (base, walrus, proc):
        yield base, tmp, proc, walrus


def dump(tmp) -> dict:
    """Every stored row, read beside the running service (WAL lets readers in)."""
    db = sqlite3.connect(f"file:{tmp / 'data' / 'clc.db'}?mode=ro", uri=True)
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        db.close()


def test_zones_and_default_group(clc):
    ec2 = ec2_client(clc[0])
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert [(z["ZoneName"], z["State"], z["RegionName"]) for z in zones] == [
        ("cluster1", "available", "eucalyptus"), ("cluster2", "available", "eucalyptus")]
    assert [z["ZoneName"] for z in ec2.describe_availability_zones(ZoneNames=["cluster2"])["AvailabilityZones"]] \
        == ["cluster2"]
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"]


def test_root_path_is_the_api_too(clc):
    assert len(ec2_client(clc[0], path="/").describe_availability_zones()["AvailabilityZones"]) == 2


def test_security_groups_and_rules(clc):
    ec2 = ec2_client(clc[0])
    web = ec2.create_security_group(GroupName="web", Description="web tier")["GroupId"]
    db = ec2.create_security_group(GroupName="db", Description="db tier")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"},
                                                                         {"CidrIp": "10.1.2.3/16"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "192.168.0.0/24"}]}])
    ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]}])
    # The older top-level form (euca2ools, early boto): one rule by name.
    ec2.authorize_security_group_ingress(GroupName="db", IpProtocol="udp", FromPort=53, ToPort=53,
                                         CidrIp="10.0.0.0/8")
    got = {g["GroupName"]: g for g in ec2.describe_security_groups(GroupIds=[web, db])["SecurityGroups"]}
    web_perms = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), p["IpRanges"][0]["CidrIp"])
                 for p in got["web"]["IpPermissions"]}
    assert web_perms == {("tcp", 80, 443, "0.0.0.0/0"), ("tcp", 80, 443, "10.1.0.0/16"),
                         ("icmp", 8, -1, "192.168.0.0/24")}
    db_perms = {(p["IpProtocol"], p["FromPort"]): p for p in got["db"]["IpPermissions"]}
    assert db_perms[("tcp", 5432)]["UserIdGroupPairs"][0]["GroupId"] == web
    assert db_perms[("udp", 53)]["IpRanges"] == [{"CidrIp": "10.0.0.0/8"}]
    assert got["web"]["Description"] == "web tier" and got["web"]["OwnerId"] == "000000000001"
    with pytest.raises(ClientError) as err:
        ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert code_of(err.value) == "InvalidPermission.Duplicate"
    ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"},
                                                                         {"CidrIp": "10.1.0.0/16"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "192.168.0.0/24"}]}])
    assert ec2.describe_security_groups(GroupIds=[web])["SecurityGroups"][0]["IpPermissions"] == []
    with pytest.raises(ClientError) as err:
        ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert code_of(err.value) == "InvalidPermission.NotFound"
    with pytest.raises(ClientError) as err:
        ec2.delete_security_group(GroupId=web)  # db's rule refers to it
    assert code_of(err.value) == "DependencyViolation"
    ec2.delete_security_group(GroupId=db)
    ec2.delete_security_group(GroupName="web")
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]


def test_images_instances_addresses(clc):
    ec2 = ec2_client(clc[0])
    emi = ec2.register_image(ImageLocation=upload_image(clc[3], "images/tiny.img"), Name="tiny")["ImageId"]
    image = ec2.describe_images(ImageIds=[emi])["Images"][0]
    assert (image["ImageLocation"], image["Name"], image["State"]) == ("images/tiny.img", "tiny", "available")
    res = ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2, Placement={"AvailabilityZone": "cluster2"})
    ids = [i["InstanceId"] for i in res["Instances"]]
    assert len(ids) == 2 and all(i["State"]["Name"] == "pending" for i in res["Instances"])
    assert res["Instances"][0]["SecurityGroups"][0]["GroupName"] == "default"
    desc = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["Placement"]["AvailabilityZone"] for i in desc} == {"cluster2"}
    assert {i["ImageId"] for i in desc} == {emi}
    got = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending"]}])
    assert {i["InstanceId"] for r in got["Reservations"] for i in r["Instances"]} >= set(ids)
    got = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [ids[1]]}])
    assert [i["InstanceId"] for r in got["Reservations"] for i in r["Instances"]] == [ids[1]]
    assert ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])[
        "Reservations"] == []

    alloc = ec2.allocate_address(Domain="standard")
    assert alloc["PublicIp"].startswith("10.0.128.") and alloc["AllocationId"].startswith("eipalloc-")
    ec2.associate_address(InstanceId=ids[0], PublicIp=alloc["PublicIp"])
    addr = ec2.describe_addresses(PublicIps=[alloc["PublicIp"]])["Addresses"][0]
    assert addr["InstanceId"] == ids[0]
    inst = ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"][0]
    assert inst["PublicIpAddress"] == alloc["PublicIp"]
    # Moving the address to the other instance takes it from the first.
    assoc = ec2.associate_address(InstanceId=ids[1], AllocationId=alloc["AllocationId"])["AssociationId"]
    pub = {i["InstanceId"]: i.get("PublicIpAddress") for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
           for i in r["Instances"]}
    assert pub == {ids[0]: None, ids[1]: alloc["PublicIp"]}
    ec2.disassociate_address(AssociationId=assoc)
    assert "InstanceId" not in ec2.describe_addresses(AllocationIds=[alloc["AllocationId"]])["Addresses"][0]
    ec2.release_address(AllocationId=alloc["AllocationId"])
    assert ec2.describe_addresses()["Addresses"] == []

    out = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {(o["PreviousState"]["Name"], o["CurrentState"]["Name"]) for o in out} == {("pending", "terminated")}
    with pytest.raises(ClientError) as err:
        ec2.associate_address(InstanceId=ids[0], PublicIp=ec2.allocate_address()["PublicIp"])
    assert code_of(err.value) == "IncorrectInstanceState"


def test_address_pool_exhaustion(clc):
    # The pool is a /28 (14 addresses) and each account may hold 5: three accounts drain it.
    clients = [ec2_client(clc[0])] + [ec2_client(clc[0], *create_account(clc[0], f"pool{n}")[1:]) for n in (1, 2)]
    for a in clients[0].describe_addresses()["Addresses"]:
        clients[0].release_address(PublicIp=a["PublicIp"])
    got = []
    with pytest.raises(ClientError) as err:
        for ec2 in clients:
            for _ in range(5):
                got.append((ec2, ec2.allocate_address()["PublicIp"]))
    assert code_of(err.value) == "AddressLimitExceeded" and len(got) == 14 == len({ip for _, ip in got})
    for ec2, ip in got:
        ec2.release_address(PublicIp=ip)


def test_quotas_refuse_without_changing_anything(clc):
    base, tmp, _, walrus = clc
    _, ak, sk = create_account(base, "quota")
    ec2 = ec2_client(base, ak, sk)
    for _ in range(5):  # the default elastic IP quota
        ec2.allocate_address()
    before = dump(tmp)
    with pytest.raises(ClientError) as err:
        ec2.allocate_address()
    assert code_of(err.value) == "AddressLimitExceeded" and err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert dump(tmp) == before
    for a in ec2.describe_addresses()["Addresses"]:
        ec2.release_address(PublicIp=a["PublicIp"])
    emi = ec2.register_image(ImageLocation=upload_image(walrus, "quota-images/q.img", ak, sk), Name="quota")["ImageId"]
    # Instances: 20 not terminated; a run asking for more starts as many as fit (MaxCount),
    # and one that cannot start MinCount is refused whole.
    first = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=15)["Instances"]
    second = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=15)["Instances"]
    assert (len(first), len(second)) == (15, 5)
    before = dump(tmp)
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)
    assert code_of(err.value) == "InstanceLimitExceeded" and err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert dump(tmp) == before
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in first[:2]])
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=emi, MinCount=3, MaxCount=3)
    assert code_of(err.value) == "InstanceLimitExceeded"
    assert len(ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2)["Instances"]) == 2
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for r in ec2.describe_instances()["Reservations"]
                                         for i in r["Instances"] if i["State"]["Name"] != "terminated"])


def test_security_group_quota(tmp_path):
    with component("clc", tmp_path, quotas={"security_groups": 3}) as (base, cfg, proc):
        ec2 = ec2_client(base)
        ec2.create_security_group(GroupName="one", Description="d")
        ec2.create_security_group(GroupName="two", Description="d")  # with default: 3
        before = dump(tmp_path)
        with pytest.raises(ClientError) as err:
            ec2.create_security_group(GroupName="three", Description="d")
        assert code_of(err.value) == "SecurityGroupLimitExceeded"
        assert dump(tmp_path) == before


def test_volumes(clc):
    ec2 = ec2_client(clc[0])
    vol = ec2.create_volume(Size=2, AvailabilityZone="cluster1")
    assert (vol["State"], vol["Size"], vol["AvailabilityZone"]) == ("available", 2, "cluster1")
    listed = ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"]
    assert [(v["VolumeId"], v["Attachments"]) for v in listed] == [(vol["VolumeId"], [])]
    emi = ec2.register_image(ImageLocation=upload_image(clc[3], "images/vol.img"), Name="vol-image")["ImageId"]
    pending = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(ClientError) as err:  # attaching needs a running instance
        ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=pending, Device="/dev/vdb")
    assert code_of(err.value) == "IncorrectState"
    with pytest.raises(ClientError) as err:
        ec2.detach_volume(VolumeId=vol["VolumeId"])
    assert code_of(err.value) == "IncorrectState"
    ec2.terminate_instances(InstanceIds=[pending])
    ec2.delete_volume(VolumeId=vol["VolumeId"])
    with pytest.raises(ClientError) as err:
        ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])
    assert code_of(err.value) == "InvalidVolume.NotFound"


def test_accounts_are_isolated_and_known_to_walrus_route(clc):
    base = clc[0]
    acct, ak, sk = create_account(base, "alice")
    assert re.fullmatch(r"\d{12}", acct) and ak.startswith("AKIA") and len(sk) == 40
    alice, admin = ec2_client(base, ak, sk), ec2_client(base)
    emi = admin.register_image(ImageLocation=upload_image(clc[3], "images/a.img"), Name="alpha")["ImageId"]
    mine = admin.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(ClientError) as err:
        alice.describe_instances(InstanceIds=[mine])
    assert code_of(err.value) == "InvalidInstanceID.NotFound"
    with pytest.raises(ClientError) as err:
        alice.terminate_instances(InstanceIds=[mine])
    assert code_of(err.value) == "InvalidInstanceID.NotFound"
    assert alice.describe_instances()["Reservations"] == []
    assert [g["GroupName"] for g in alice.describe_security_groups()["SecurityGroups"]] == ["default"]
    admin_default = admin.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    with pytest.raises(ClientError) as err:
        alice.describe_security_groups(GroupIds=[admin_default])
    assert code_of(err.value) == "InvalidGroup.NotFound"
    # Alice's own resources are hers alone.
    alloc = alice.allocate_address()["AllocationId"]
    with pytest.raises(ClientError) as err:
        admin.release_address(AllocationId=alloc)
    assert code_of(err.value) == "InvalidAllocationID.NotFound"
    alice.release_address(AllocationId=alloc)
    admin.terminate_instances(InstanceIds=[mine])
    # Only the admin creates accounts; names are unique.
    status, text = raw_call(base, {"Action": "CreateAccount", "AccountName": "eve"}, ak, sk)
    assert status == 403 and "UnauthorizedOperation" in text
    status, text = raw_call(base, {"Action": "CreateAccount", "AccountName": "alice"})
    assert status == 409 and "EntityAlreadyExists" in text
    # Walrus resolves alice's key through the internal route; without the token: refused.
    r = urllib.request.Request(f"{base}/internal/accounts/{ak}", headers={"X-Eucalab-Internal-Token": TOKEN})
    with urllib.request.urlopen(r) as resp:
        assert resp.read() == f'{{"account_id": "{acct}", "secret_key": "{sk}"}}'.encode()
    r = urllib.request.Request(f"{base}/internal/accounts/AKIANOSUCHKEY0000000", headers={"X-Eucalab-Internal-Token": TOKEN})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(r)
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/internal/accounts/{ak}")
    assert err.value.code == 403


def test_wrong_secret_and_unknown_key_refused(clc):
    for ak, sk in ((None, "x" * 40), ("AKIANOSUCHKEY0000000", "y" * 40)):
        client = ec2_client(clc[0], sk=sk) if ak is None else ec2_client(clc[0], ak, sk)
        with pytest.raises(ClientError) as err:
            client.describe_instances()
        assert code_of(err.value) == "AuthFailure"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    req = urllib.request.Request(f"{clc[0]}/services/Eucalyptus?Action=DescribeInstances")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 401 and b"AuthFailure" in err.value.read()


def test_metadata_refuses_unknown_sources(clc):
    for path in ("/latest/meta-data/", "/latest/meta-data/instance-id"):
        assert get_from(clc[0], path, "127.0.0.1")[0] == 404  # 127.0.0.1 is no instance


def test_state_writes_are_events_without_secrets(clc):
    base, tmp, *_ = clc
    create_account(base, "bob")
    text = (tmp / "events.jsonl").read_text()
    assert '"event": "state.write"' in text and '"type": "account.create"' in text
    secrets = [r[0] for r in sqlite3.connect(tmp / "data" / "clc.db").execute("SELECT secret_key FROM accounts")]
    assert secrets and not any(s in text for s in secrets)


BAD = [
    # (request parameters, EC2 error code, HTTP status)
    ({"Action": "NoSuchThing"}, "InvalidAction", 400),
    ({}, "MissingAction", 400),
    ({"Action": "RunInstances", "ImageId": "emi-12345678", "MinCount": "1"}, "MissingParameter", 400),
    ({"Action": "RunInstances", "ImageId": "emi-12345678", "MinCount": "one", "MaxCount": "1"},
     "InvalidParameterValue", 400),
    ({"Action": "RunInstances", "ImageId": "emi-12345678", "MinCount": "0", "MaxCount": "1"},
     "InvalidParameterValue", 400),
    ({"Action": "RunInstances", "ImageId": "emi-12345678", "MinCount": "3", "MaxCount": "2"},
     "InvalidParameterValue", 400),
    ({"Action": "RunInstances", "ImageId": "ami-bad", "MinCount": "1", "MaxCount": "1"}, "InvalidAMIID.Malformed", 400),
    ({"Action": "RunInstances", "ImageId": "emi-00000000", "MinCount": "1", "MaxCount": "1"},
     "InvalidAMIID.NotFound", 400),
    ({"Action": "DescribeImages", "ImageId.1": "emi-00000000"}, "InvalidAMIID.NotFound", 400),
    ({"Action": "RegisterImage", "ImageLocation": "no-key"}, "InvalidParameterValue", 400),
    ({"Action": "DescribeInstances", "InstanceId.1": "i-zzz"}, "InvalidInstanceID.Malformed", 400),
    ({"Action": "DescribeInstances", "InstanceId.1": "i-00000000"}, "InvalidInstanceID.NotFound", 400),
    ({"Action": "TerminateInstances"}, "MissingParameter", 400),
    ({"Action": "DescribeInstances", "Filter.1.Name": "tag:x", "Filter.1.Value.1": "y"}, "InvalidParameterValue", 400),
    ({"Action": "CreateSecurityGroup", "GroupName": "default", "GroupDescription": "d"}, "InvalidGroup.Duplicate", 400),
    ({"Action": "CreateSecurityGroup", "GroupName": "x"}, "MissingParameter", 400),
    ({"Action": "DeleteSecurityGroup", "GroupId": "sg-00000000"}, "InvalidGroup.NotFound", 400),
    ({"Action": "DeleteSecurityGroup", "GroupId": "group-1"}, "InvalidGroupId.Malformed", 400),
    ({"Action": "DeleteSecurityGroup", "GroupName": "default"}, "CannotDelete", 400),
    ({"Action": "DescribeSecurityGroups", "GroupName.1": "nope"}, "InvalidGroup.NotFound", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "90", "IpPermissions.1.ToPort": "80",
      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"}, "InvalidParameterValue", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "80", "IpPermissions.1.ToPort": "99999999999999999999999",
      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"}, "InvalidParameterValue", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "icmp",
      "IpPermissions.1.FromPort": "99999999999999999999999", "IpPermissions.1.ToPort": "-1",
      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"}, "InvalidParameterValue", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "gre",
      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"}, "InvalidParameterValue", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "80", "IpPermissions.1.ToPort": "80",
      "IpPermissions.1.IpRanges.1.CidrIp": "300.1.2.3/8"}, "InvalidParameterValue", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "80", "IpPermissions.1.ToPort": "80",
      "IpPermissions.1.Groups.1.GroupName": "nope"}, "InvalidGroup.NotFound", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default"}, "MissingParameter", 400),
    ({"Action": "RevokeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "udp",
      "IpPermissions.1.FromPort": "7", "IpPermissions.1.ToPort": "7",
      "IpPermissions.1.IpRanges.1.CidrIp": "1.2.3.4/32"}, "InvalidPermission.NotFound", 400),
    ({"Action": "ReleaseAddress", "AllocationId": "eipalloc-00000000"}, "InvalidAllocationID.NotFound", 400),
    ({"Action": "ReleaseAddress", "AllocationId": "alloc-1"}, "InvalidAllocationID.Malformed", 400),
    ({"Action": "ReleaseAddress", "PublicIp": "10.9.9.9"}, "InvalidAddress.NotFound", 400),
    ({"Action": "ReleaseAddress"}, "MissingParameter", 400),
    ({"Action": "DisassociateAddress", "AssociationId": "eipassoc-00000000"}, "InvalidAssociationID.NotFound", 400),
    ({"Action": "DescribeAddresses", "PublicIp.1": "10.9.9.9"}, "InvalidAddress.NotFound", 400),
    ({"Action": "CreateVolume", "Size": "1", "AvailabilityZone": "mars"}, "InvalidParameterValue", 400),
    ({"Action": "CreateVolume", "Size": "lots", "AvailabilityZone": "cluster1"}, "InvalidParameterValue", 400),
    ({"Action": "CreateVolume", "Size": "0", "AvailabilityZone": "cluster1"}, "InvalidParameterValue", 400),
    ({"Action": "CreateVolume", "AvailabilityZone": "cluster1"}, "MissingParameter", 400),
    ({"Action": "DeleteVolume", "VolumeId": "vol-00000000"}, "InvalidVolume.NotFound", 400),
    ({"Action": "DeleteVolume", "VolumeId": "volume"}, "InvalidVolumeID.Malformed", 400),
    ({"Action": "AttachVolume", "VolumeId": "vol-00000000", "InstanceId": "i-00000000", "Device": "/dev/vdb"},
     "InvalidVolume.NotFound", 400),
    ({"Action": "CreateAccount"}, "MissingParameter", 400),
    ({"Action": "CreateAccount", "AccountName": "no spaces"}, "InvalidParameterValue", 400),
    ({"Action": "CreateAccount", "AccountName": "caf\u00e9"}, "InvalidParameterValue", 400),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "2_2", "IpPermissions.1.ToPort": "22",
      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"}, "InvalidParameterValue", 400),
]


@pytest.mark.parametrize("params,code,status", BAD, ids=[f"{p.get('Action')}-{c}" for p, c, _ in BAD])
def test_bad_input_gets_its_error_and_changes_nothing(clc, params, code, status):
    base, tmp, proc, _ = clc
    before = dump(tmp)
    got_status, text = raw_call(base, params)
    assert re.search(f"<Code>{re.escape(code)}</Code>", text), text
    assert got_status == status and "<RequestID>" in text
    assert proc.poll() is None and dump(tmp) == before
    assert ec2_client(base).describe_availability_zones()["AvailabilityZones"]


@pytest.mark.parametrize("body,code,status", [
    (b"Action=DescribeInstances&%%%=&&=", "MalformedQueryString", 404),
    (b"Action=DescribeInstances&x=\xff\xfe", "MalformedQueryString", 404),
    (b"Action=DescribeInstances&x=" + b"a" * 300_000, "InvalidParameterValue", 413),
], ids=["syntax", "not-utf8", "oversized"])
def test_malformed_and_oversized_bodies(clc, body, code, status):
    base, tmp, proc, _ = clc
    before = dump(tmp)
    got_status, text = raw_call(base, {}, body=body)
    assert (got_status, f"<Code>{code}</Code>" in text) == (status, True), text
    assert proc.poll() is None and dump(tmp) == before


def test_a_disabled_clc_answers_service_unavailable(tmp_path):
    with component("clc", tmp_path, state="DISABLED") as (base, cfg, proc):
        for path in ("/services/Eucalyptus", "/"):
            status, text = raw_call(base, {"Action": "DescribeAvailabilityZones"}, path=path)
            assert status == 503 and "<Code>ServiceUnavailable</Code>" in text
        with urllib.request.urlopen(f"{base}/health") as r:
            assert r.status == 200


def test_get_with_the_query_in_the_url(clc):
    req = AWSRequest(method="GET", url=f"{clc[0]}/services/Eucalyptus?Action=DescribeAvailabilityZones"
                                        "&ZoneName.1=cluster2&Version=2016-11-15")
    SigV4Auth(Credentials(ADMIN["access_key"], ADMIN["secret_key"]), "ec2", "eucalyptus").add_auth(req)
    p = req.prepare()
    with urllib.request.urlopen(urllib.request.Request(p.url, headers=dict(p.headers))) as resp:
        text = resp.read().decode()
    assert re.findall(r"<zoneName>(.*?)</zoneName>", text) == ["cluster2"]
