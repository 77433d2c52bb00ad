"""The CLC's EC2 API driven by boto3 on loopback (no cluster tier: instances stay pending)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from urllib.parse import urlencode

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from components.clc.ec2 import Params
from components.clc.state import Store

from .components_helper import ADMIN, TOKEN, component

CFG = Config(retries={"max_attempts": 1})


def ec2_client(base, ak=ADMIN["access_key"], sk=ADMIN["secret_key"]):
    return boto3.client("ec2", endpoint_url=f"{base}/services/Eucalyptus", aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="eucalyptus", config=CFG)


def raw_call(base, params: dict, ak=ADMIN["access_key"], sk=ADMIN["secret_key"], body=None):
    """A signed EC2 Query request outside boto3's model (CreateAccount, malformed input)."""
    data = body if body is not None else urlencode(params).encode()
    req = AWSRequest(method="POST", url=f"{base}/services/Eucalyptus", data=data,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials(ak, sk), "ec2", "eucalyptus").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def clc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clc")
    with component("clc", tmp) as (base, cfg, proc):
        yield base, tmp, proc


def code_of(exc):
    return exc.response["Error"]["Code"]


def test_zones_and_default_group(clc):
    ec2 = ec2_client(clc[0])
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert [z["ZoneName"] for z in zones] == ["cluster1", "cluster2"]
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"]


def test_security_groups_and_rules(clc):
    ec2 = ec2_client(clc[0])
    web = ec2.create_security_group(GroupName="web", Description="web tier")["GroupId"]
    db = ec2.create_security_group(GroupName="db", Description="db tier")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]}])
    got = {g["GroupName"]: g for g in ec2.describe_security_groups(GroupIds=[web, db])["SecurityGroups"]}
    perm = got["web"]["IpPermissions"][0]
    assert (perm["IpProtocol"], perm["FromPort"], perm["IpRanges"][0]["CidrIp"]) == ("tcp", 80, "0.0.0.0/0")
    assert got["db"]["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"] == web
    with pytest.raises(ClientError) as err:
        ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert code_of(err.value) == "InvalidPermission.Duplicate"
    ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert ec2.describe_security_groups(GroupIds=[web])["SecurityGroups"][0]["IpPermissions"] == []
    with pytest.raises(ClientError) as err:
        ec2.delete_security_group(GroupId=web)  # db's rule refers to it
    assert code_of(err.value) == "DependencyViolation"
    ec2.delete_security_group(GroupId=db)
    ec2.delete_security_group(GroupId=web)


def test_images_instances_addresses(clc):
    ec2 = ec2_client(clc[0])
    emi = ec2.register_image(ImageLocation="images/tiny.img", Name="tiny")["ImageId"]
    assert ec2.describe_images(ImageIds=[emi])["Images"][0]["ImageLocation"] == "images/tiny.img"
    res = ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2, Placement={"AvailabilityZone": "cluster2"})
    ids = [i["InstanceId"] for i in res["Instances"]]
    assert len(ids) == 2 and all(i["State"]["Name"] == "pending" for i in res["Instances"])
    desc = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    assert {i["Placement"]["AvailabilityZone"] for i in desc} == {"cluster2"}
    got = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending"]}])
    assert {i["InstanceId"] for r in got["Reservations"] for i in r["Instances"]} >= set(ids)
    alloc = ec2.allocate_address(Domain="standard")
    ec2.associate_address(InstanceId=ids[0], PublicIp=alloc["PublicIp"])
    addr = ec2.describe_addresses(PublicIps=[alloc["PublicIp"]])["Addresses"][0]
    assert addr["InstanceId"] == ids[0]
    inst = ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"][0]
    assert inst["PublicIpAddress"] == alloc["PublicIp"]
    ec2.disassociate_address(PublicIp=alloc["PublicIp"])
    ec2.release_address(PublicIp=alloc["PublicIp"])
    assert ec2.describe_addresses()["Addresses"] == []
    out = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {o["CurrentState"]["Name"] for o in out} == {"terminated"}


def test_address_pool_exhaustion(clc):
    ec2 = ec2_client(clc[0])
    got = []
    with pytest.raises(ClientError) as err:
        for _ in range(20):  # the pool is a /28: 14 addresses
            got.append(ec2.allocate_address()["PublicIp"])
    assert code_of(err.value) == "AddressLimitExceeded" and len(got) == 14
    for ip in got:
        ec2.release_address(PublicIp=ip)


def test_volumes(clc):
    ec2 = ec2_client(clc[0])
    vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")
    assert vol["State"] == "available"
    assert [v["VolumeId"] for v in ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"]] == [vol["VolumeId"]]
    ec2.delete_volume(VolumeId=vol["VolumeId"])
    with pytest.raises(ClientError) as err:
        ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])
    assert code_of(err.value) == "InvalidVolume.NotFound"


def test_accounts_are_isolated_and_known_to_walrus_route(clc):
    base = clc[0]
    status, text = raw_call(base, {"Action": "CreateAccount", "AccountName": "alice", "Version": "2016-11-15"})
    assert status == 200, text
    import re

    ak = re.search(r"<accessKeyId>(.*?)</accessKeyId>", text).group(1)
    sk = re.search(r"<secretAccessKey>(.*?)</secretAccessKey>", text).group(1)
    alice, admin = ec2_client(base, ak, sk), ec2_client(base)
    emi = admin.register_image(ImageLocation="images/a.img", Name="alpha")["ImageId"]
    mine = admin.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(ClientError) as err:
        alice.describe_instances(InstanceIds=[mine])
    assert code_of(err.value) == "InvalidInstanceID.NotFound"
    assert alice.describe_instances()["Reservations"] == []
    assert [g["GroupName"] for g in alice.describe_security_groups()["SecurityGroups"]] == ["default"]
    # Only the admin creates accounts.
    status, text = raw_call(base, {"Action": "CreateAccount", "AccountName": "eve"}, ak, sk)
    assert status == 403 and "UnauthorizedOperation" in text
    # Walrus resolves alice's key through the internal route; without the token: refused.
    r = urllib.request.Request(f"{base}/internal/accounts/{ak}", headers={"X-Eucalab-Internal-Token": TOKEN})
    with urllib.request.urlopen(r) as resp:
        assert b'"secret_key"' in resp.read()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{base}/internal/accounts/{ak}")


def test_wrong_secret_refused(clc):
    with pytest.raises(ClientError) as err:
        ec2_client(clc[0], sk="x" * 40).describe_instances()
    assert code_of(err.value) == "AuthFailure"
    req = urllib.request.Request(f"{clc[0]}/services/Eucalyptus?Action=DescribeInstances")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 401 and b"AuthFailure" in err.value.read()


def test_metadata_by_source_address(clc):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{clc[0]}/latest/meta-data/instance-id")
    assert err.value.code == 404  # 127.0.0.1 is no instance


BAD = [
    ({"Action": "NoSuchThing"}, "InvalidAction"),
    ({}, "MissingAction"),
    ({"Action": "RunInstances", "ImageId": "emi-12345678", "MinCount": "1"}, "MissingParameter"),
    ({"Action": "RunInstances", "ImageId": "emi-12345678", "MinCount": "one", "MaxCount": "1"}, "InvalidParameterValue"),
    ({"Action": "RunInstances", "ImageId": "ami-bad", "MinCount": "1", "MaxCount": "1"}, "InvalidAMIID.Malformed"),
    ({"Action": "RunInstances", "ImageId": "emi-00000000", "MinCount": "1", "MaxCount": "1"}, "InvalidAMIID.NotFound"),
    ({"Action": "DescribeInstances", "InstanceId.1": "i-zzz"}, "InvalidInstanceID.Malformed"),
    ({"Action": "DescribeInstances", "InstanceId.1": "i-00000000"}, "InvalidInstanceID.NotFound"),
    ({"Action": "CreateSecurityGroup", "GroupName": "default", "GroupDescription": "d"}, "InvalidGroup.Duplicate"),
    ({"Action": "DeleteSecurityGroup", "GroupId": "sg-00000000"}, "InvalidGroup.NotFound"),
    ({"Action": "ReleaseAddress", "AllocationId": "eipalloc-00000000"}, "InvalidAllocationID.NotFound"),
    ({"Action": "DeleteVolume", "VolumeId": "vol-00000000"}, "InvalidVolume.NotFound"),
    ({"Action": "CreateVolume", "Size": "1", "AvailabilityZone": "mars"}, "InvalidParameterValue"),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "90", "IpPermissions.1.ToPort": "80",
      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"}, "InvalidParameterValue"),
    ({"Action": "AuthorizeSecurityGroupIngress", "GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
      "IpPermissions.1.FromPort": "80", "IpPermissions.1.ToPort": "80",
      "IpPermissions.1.IpRanges.1.CidrIp": "300.1.2.3/8"}, "InvalidParameterValue"),
    ({"Action": "DescribeInstances", "Filter.1.Name": "tag:x", "Filter.1.Value.1": "y"}, "InvalidParameterValue"),
]


@pytest.mark.parametrize("params,code", BAD, ids=[c for _, c in BAD])
def test_bad_input_gets_its_error_and_changes_nothing(clc, params, code):
    base, tmp, proc = clc
    store = Store(tmp / "data" / "clc.db")
    before = store.last_seq
    status, text = raw_call(base, params)
    assert f"<Code>{code}</Code>" in text, text
    assert status in (400, 401, 403, 404, 409)
    assert proc.poll() is None and store.last_seq == before


def test_malformed_query_and_oversized_body(clc):
    base = clc[0]
    status, text = raw_call(base, {}, body=b"Action=DescribeInstances&%%%=&&=")
    assert "<Code>MalformedQueryString</Code>" in text
    status, text = raw_call(base, {}, body=b"Action=DescribeInstances&x=" + b"a" * 300_000)
    assert status == 413 and "RequestEntityTooLarge" in text


def test_params_flattening():
    p = Params({"InstanceId.2": "b", "InstanceId.1": "a", "IpPermissions.1.IpRanges.2.CidrIp": "2",
                "IpPermissions.1.IpRanges.1.CidrIp": "1", "Filter.1.Name": "x", "Filter.1.Value.1": "v"})
    assert p.list("InstanceId") == ["a", "b"]
    assert p.structs("IpPermissions")[0]["IpRanges.2.CidrIp"] == "2"
    assert p.filters() == {"x": ["v"]}


def test_op_log_replays_to_the_same_state(tmp_path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    a.apply({"type": "account.create", "id": "111111111111", "name": "x", "access_key": "AK", "secret_key": "s",
             "time": 1.0, "default_group": "sg-00000001"})
    a.apply({"type": "group.create", "id": "sg-00000002", "account": "111111111111", "name": "web",
             "description": "d"})
    a.apply({"type": "rules.add", "group": "sg-00000002", "rules": [{"protocol": "tcp", "from_port": 1,
                                                                    "to_port": 2, "cidr": "0.0.0.0/0"}]})
    assert b.apply_ops(a.export_ops()) == 3
    dump = lambda s: [tuple(r) for t in ("accounts", "groups", "rules") for r in s.q(f"SELECT * FROM {t}")]
    assert dump(a) == dump(b)
    assert b.apply_ops(a.export_ops()) == 3  # idempotent
    from components.clc.state import StoreError

    with pytest.raises(StoreError):
        b.apply_ops([{"seq": 9, "epoch": 1, "op": {"type": "group.delete", "id": "sg-00000002"}}])
