"""The EC2 Query plumbing on its own: parameter parsing, ids, and XML that botocore reads back."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.parsers import create_parser

from components.clc.ec2 import EC2Error, Params, check_id, error_xml, new_id, parse_query, response_xml

EC2_MODEL = botocore.session.get_session().get_service_model("ec2")


def botocore_reads(action: str, body: bytes, status: int = 200) -> dict:
    """What boto3 would hand its caller for this response."""
    shape = EC2_MODEL.operation_model(action).output_shape
    return create_parser("ec2").parse({"body": body, "headers": {}, "status_code": status}, shape)


def test_flattened_lists_and_structs():
    p = Params({"InstanceId.2": "b", "InstanceId.10": "c", "InstanceId.1": "a",
                "IpPermissions.1.IpRanges.2.CidrIp": "2", "IpPermissions.1.IpRanges.1.CidrIp": "1",
                "Filter.1.Name": "x", "Filter.1.Value.1": "v", "Filter.1.Value.2": "w"})
    assert p.list("InstanceId") == ["a", "b", "c"]  # by number, not as text
    assert p.structs("IpPermissions")[0]["IpRanges.2.CidrIp"] == "2"
    assert p.filters() == {"x": ["v", "w"]}


@pytest.mark.parametrize("pairs,call,code", [
    ({}, lambda p: p.req("GroupName"), "MissingParameter"),
    ({"GroupName": ""}, lambda p: p.req("GroupName"), "MissingParameter"),
    ({"MinCount": "1.5"}, lambda p: p.int("MinCount"), "InvalidParameterValue"),
    ({"MinCount": "1_000"}, lambda p: p.int("MinCount"), "InvalidParameterValue"),
    ({"MinCount": " 1"}, lambda p: p.int("MinCount"), "InvalidParameterValue"),
    ({"MinCount": "9" * 30}, lambda p: p.int("MinCount"), "InvalidParameterValue"),
    ({"MinCount": "0"}, lambda p: p.int("MinCount", low=1), "InvalidParameterValue"),
    ({}, lambda p: p.int("MinCount"), "MissingParameter"),
    ({"Filter.1.Value.1": "v"}, lambda p: p.filters(), "InvalidParameterValue"),
])
def test_parameter_errors(pairs, call, code):
    with pytest.raises(EC2Error) as err:
        call(Params(pairs))
    assert (err.value.code, err.value.status) == (code, 400)


def test_query_and_form_body_are_merged():
    p = parse_query("Action=DescribeInstances&Version=2016-11-15", b"InstanceId.1=i-0000000a&Filter.1.Name=a%20b")
    assert (p.get("Action"), p.list("InstanceId"), p.get("Filter.1.Name")) == \
        ("DescribeInstances", ["i-0000000a"], "a b")
    assert parse_query("", b"").p == {}


@pytest.mark.parametrize("query,body", [("a=1&&b", b""), ("", b"Action=X&%%%"), ("", b"Action=\xff")])
def test_malformed_queries(query, body):
    with pytest.raises(EC2Error) as err:
        parse_query(query, body)
    assert (err.value.code, err.value.status) == ("MalformedQueryString", 404)


def test_ids():
    assert check_id("instance", new_id("i")) and check_id("group", new_id("sg"))
    for kind, bad, code in (("instance", "i-123", "InvalidInstanceID.Malformed"),
                            ("image", "ami-0000000a", "InvalidAMIID.Malformed"),
                            ("allocation", "", "InvalidAllocationID.Malformed")):
        with pytest.raises(EC2Error) as err:
            check_id(kind, bad)
        assert err.value.code == code


def test_botocore_reads_responses_into_its_fields():
    body = response_xml("AllocateAddress", {"publicIp": "10.0.128.1", "domain": "standard",
                                            "allocationId": "eipalloc-0000000a"}, "rid-1")
    got = botocore_reads("AllocateAddress", body)
    assert (got["PublicIp"], got["AllocationId"], got["ResponseMetadata"]["RequestId"]) == \
        ("10.0.128.1", "eipalloc-0000000a", "rid-1")
    body = response_xml("DescribeSecurityGroups", {"securityGroupInfo": [{
        "groupId": "sg-0000000a", "groupName": "web <&> tier", "ownerId": "000000000001",
        "ipPermissions": [{"ipProtocol": "tcp", "fromPort": 80, "toPort": 80, "ipRanges": [{"cidrIp": "0.0.0.0/0"}],
                           "groups": [{"groupId": "sg-0000000b"}]}]}]}, "rid-2")
    group = botocore_reads("DescribeSecurityGroups", body)["SecurityGroups"][0]
    assert group["GroupName"] == "web <&> tier"  # escaped on the wire, intact after parsing
    perm = group["IpPermissions"][0]
    assert (perm["FromPort"], perm["IpRanges"], perm["UserIdGroupPairs"]) == \
        (80, [{"CidrIp": "0.0.0.0/0"}], [{"GroupId": "sg-0000000b"}])
    assert botocore_reads("DeleteSecurityGroup", response_xml("DeleteSecurityGroup", {"return": True}, "r"))[
        "Return"] is True


def test_botocore_reads_errors():
    body = error_xml(EC2Error("InvalidGroup.NotFound", "The security group 'x' does not exist"), "rid-3")
    got = botocore_reads("DescribeSecurityGroups", body, status=400)
    assert got["Error"]["Code"] == "InvalidGroup.NotFound" and got["ResponseMetadata"]["RequestId"] == "rid-3"


def test_public_pool_from_cidr_or_list():
    from components.clc.service import public_pool

    assert public_pool("10.0.128.0/29") == [f"10.0.128.{i}" for i in range(1, 7)]
    assert public_pool(["192.0.2.7", "192.0.2.9"]) == ["192.0.2.7", "192.0.2.9"]
    for bad in ("10.0.128.0/33", ["10.0.0.300"], 5):
        with pytest.raises(ValueError, match="public_ips"):
            public_pool(bad)
