"""Tenants against each other and hostile input, on a real CLC and Walrus on loopback.

Images are private to their account until shared with Group=all; RegisterImage reads
the image object with the caller's own key; a refused request changes nothing in the
CLC's database or Walrus's store and never answers 5xx.
"""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.request
from xml.etree import ElementTree as ET

import boto3
import pytest
from botocore.exceptions import ClientError

from components.sc import blockproto as bp

from tests.support.clc_client import (CFG, code_of, create_account, ec2_client, raw_call, s3_client, send, signed_s3,
                                      upload_image)
from tests.support.processes import clc_and_walrus

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

CLC_TABLES = ("accounts", "instances", "groups", "rules", "addresses", "volumes", "images", "oplog")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    with clc_and_walrus(tmp) as (clc, walrus, _):
        alice = create_account(clc, "alice")
        bob = create_account(clc, "bob")
        location = upload_image(walrus, "alice-images/boot.img", *alice[1:])
        emi = ec2_client(clc, *alice[1:]).register_image(ImageLocation=location, Name="alice boot")["ImageId"]
        yield {"clc": clc, "walrus": walrus, "tmp": tmp, "alice": alice, "bob": bob, "emi": emi}


def clc_dump(tmp) -> dict:
    db = sqlite3.connect(f"file:{tmp / 'data' / 'clc.db'}?mode=ro", uri=True)
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in CLC_TABLES}
    finally:
        db.close()


def walrus_dump(tmp) -> dict:
    db = sqlite3.connect(f"file:{tmp / 'walrus' / 'data' / 'walrus.db'}?mode=ro", uri=True)
    try:
        out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in ("buckets", "objects", "ops")}
    finally:
        db.close()
    out["files"] = sorted(p.name for p in (tmp / "walrus" / "data" / "objects").iterdir())
    return out


def refused(call) -> tuple[str, str]:
    with pytest.raises(ClientError) as err:
        call()
    return code_of(err.value), err.value.response["Error"]["Message"]


def test_an_image_is_private_to_its_account(cloud):
    alice, bob = ec2_client(cloud["clc"], *cloud["alice"][1:]), ec2_client(cloud["clc"], *cloud["bob"][1:])
    emi = cloud["emi"]
    assert [(i["ImageId"], i["Public"]) for i in alice.describe_images()["Images"]] == [(emi, False)]
    assert bob.describe_images()["Images"] == []
    before = clc_dump(cloud["tmp"])
    # Another account's private image is answered exactly as one that does not exist.
    for attempt in (lambda i: bob.describe_images(ImageIds=[i]),
                    lambda i: bob.run_instances(ImageId=i, MinCount=1, MaxCount=1),
                    lambda i: bob.describe_image_attribute(ImageId=i, Attribute="launchPermission"),
                    lambda i: bob.modify_image_attribute(ImageId=i, LaunchPermission={"Add": [{"Group": "all"}]})):
        code, message = refused(lambda: attempt(emi))
        missing_code, missing_message = refused(lambda: attempt("emi-0badf00d"))
        assert code == missing_code == "InvalidAMIID.NotFound"
        assert message.replace(emi, "ID") == missing_message.replace("emi-0badf00d", "ID")
    assert clc_dump(cloud["tmp"]) == before


def test_launch_permission_group_all_shares_an_image_and_takes_it_back(cloud):
    alice, bob = ec2_client(cloud["clc"], *cloud["alice"][1:]), ec2_client(cloud["clc"], *cloud["bob"][1:])
    emi = cloud["emi"]
    alice.modify_image_attribute(ImageId=emi, LaunchPermission={"Add": [{"Group": "all"}]})
    try:
        assert alice.describe_image_attribute(ImageId=emi, Attribute="launchPermission")["LaunchPermissions"] \
            == [{"Group": "all"}]
        assert [(i["ImageId"], i["Public"], i["OwnerId"]) for i in bob.describe_images()["Images"]] == \
            [(emi, True, cloud["alice"][0])]
        assert bob.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["ImageId"] == emi
        # Shared is not owned: only the owner reads or changes the attribute.
        assert refused(lambda: bob.describe_image_attribute(ImageId=emi, Attribute="launchPermission"))[0] \
            == "AuthFailure"
        assert refused(lambda: bob.modify_image_attribute(
            ImageId=emi, LaunchPermission={"Remove": [{"Group": "all"}]}))[0] == "AuthFailure"
        # Per-account grants are not implemented: refused, not silently made public.
        assert refused(lambda: alice.modify_image_attribute(
            ImageId=emi, LaunchPermission={"Add": [{"UserId": cloud["bob"][0]}]}))[0] == "InvalidParameterValue"
    finally:
        alice.modify_image_attribute(ImageId=emi, LaunchPermission={"Remove": [{"Group": "all"}]})
    assert alice.describe_image_attribute(ImageId=emi, Attribute="launchPermission")["LaunchPermissions"] == []
    assert bob.describe_images()["Images"] == []
    # The older form (euca2ools): OperationType and UserGroup.N.
    status, text = raw_call(cloud["clc"], {"Action": "ModifyImageAttribute", "ImageId": emi, "Attribute":
                                           "launchPermission", "OperationType": "add", "UserGroup.1": "all",
                                           "Version": "2016-11-15"}, *cloud["alice"][1:])
    assert status == 200, text
    assert [i["ImageId"] for i in bob.describe_images()["Images"]] == [emi]
    alice.modify_image_attribute(ImageId=emi, LaunchPermission={"Remove": [{"Group": "all"}]})


def test_register_image_reads_the_object_with_the_callers_key(cloud):
    """Bob cannot register Alice's private object, and cannot tell it from a missing one."""
    bob = ec2_client(cloud["clc"], *cloud["bob"][1:])
    before = clc_dump(cloud["tmp"])
    answers = {loc: refused(lambda: bob.register_image(ImageLocation=loc, Name="stolen"))
               for loc in ("alice-images/boot.img", "alice-images/missing.img", "no-such-bucket/boot.img")}
    assert {(code, message.replace(loc, "LOC")) for loc, (code, message) in answers.items()} == \
        {("InvalidManifest", "Image location LOC cannot be read with your credentials")}
    assert clc_dump(cloud["tmp"]) == before
    # Bob's own object registers (and is Bob's).
    location = upload_image(cloud["walrus"], "bob-images/own.img", *cloud["bob"][1:])
    emi = bob.register_image(ImageLocation=location, Name="bob own")["ImageId"]
    assert [i["ImageId"] for i in bob.describe_images()["Images"]] == [emi]


@pytest.mark.parametrize("params", [
    {"Action": "RegisterImage", "ImageLocation": "alice-images/boot.img", "Name": "\x01evil"},
    {"Action": "CreateSecurityGroup", "GroupName": "g\x1b[31m", "GroupDescription": "x"},
    {"Action": "CreateSecurityGroup", "GroupName": "ok", "GroupDescription": "nul\x00byte"},
    {"Action": "RegisterImage", "ImageLocation": "alice-images/boot.img", "Name": "\ufffe"},
])
def test_control_characters_are_refused_before_anything_is_stored(cloud, params):
    before = clc_dump(cloud["tmp"])
    status, text = raw_call(cloud["clc"], {**params, "Version": "2016-11-15"}, *cloud["alice"][1:])
    assert status == 400 and "<Code>InvalidParameterValue</Code>" in text, text
    ET.fromstring(text.encode())  # the error itself is valid XML
    assert clc_dump(cloud["tmp"]) == before
    for who in ("alice", "bob"):  # everyone's listings stay valid XML
        status, text = raw_call(cloud["clc"], {"Action": "DescribeImages", "Version": "2016-11-15"},
                                *cloud[who][1:])
        assert status == 200
        ET.fromstring(text.encode())


def test_an_ec2_presigned_url_from_boto3_answers(cloud):
    """botocore signs the SHA-256 of the empty body, and the operation's method (POST for
    EC2 unless HttpMethod says otherwise): the URL is used with the method it was signed for."""
    ec2 = ec2_client(cloud["clc"])
    for method, url in (("POST", ec2.generate_presigned_url("describe_availability_zones", ExpiresIn=60)),
                        ("GET", ec2.generate_presigned_url("describe_availability_zones", ExpiresIn=60,
                                                           HttpMethod="GET"))):
        with urllib.request.urlopen(urllib.request.Request(url, data=b"" if method == "POST" else None,
                                                           method=method)) as r:
            assert r.status == 200 and b"cluster1" in r.read()


def test_a_signature_for_another_region_is_refused(cloud):
    ec2 = boto3.client("ec2", endpoint_url=f"{cloud['clc']}/services/Eucalyptus", region_name="us-east-1",
                       aws_access_key_id=cloud["alice"][1], aws_secret_access_key=cloud["alice"][2], config=CFG)
    assert refused(ec2.describe_images)[0] == "AuthFailure"
    status, _, body = signed_s3(cloud["walrus"], "GET", "/", ak=cloud["alice"][1], sk=cloud["alice"][2],
                                region="us-east-1")
    assert status == 400 and b"AuthorizationHeaderMalformed" in body


@pytest.mark.parametrize("name, request_args, status, code", [
    ("bucket name with a trailing newline", ("PUT", "/newline%0A"), 400, "InvalidBucketName"),
    ("PutObject without x-amz-content-sha256", ("PUT", "/alice-images/unsigned.img", {}, b"data", False),
     400, "InvalidRequest"),
    ("a Range of 5,000 digits", ("GET", "/alice-images/boot.img", {"Range": "bytes=" + "9" * 5000 + "-"}),
     416, "InvalidRange"),
    ("a suffix Range of 5,000 digits", ("GET", "/alice-images/boot.img", {"Range": "bytes=-" + "9" * 5000}),
     206, None),
    ("a decoded length of 4,300 digits", ("PUT", "/alice-images/long.img",
                                          {"x-amz-decoded-content-length": "9" * 4300}, b"data"),
     400, "InvalidArgument"),
])
def test_hostile_s3_requests_get_their_4xx_and_change_nothing(cloud, name, request_args, status, code):
    method, path, *rest = request_args
    headers, body, content_sha256 = rest + [{}, b"", True][len(rest):]
    before = walrus_dump(cloud["tmp"])
    got, _, answer = signed_s3(cloud["walrus"], method, path, headers, body, *cloud["alice"][1:],
                               content_sha256=content_sha256)
    assert got == status, answer[:300]
    if code:
        assert f"<Code>{code}</Code>".encode() in answer
        ET.fromstring(answer)
    assert walrus_dump(cloud["tmp"]) == before
    assert "newline\n" not in [b["Name"] for b in s3_client(cloud["walrus"], *cloud["alice"][1:])
                               .list_buckets()["Buckets"]]


def test_a_non_ascii_presigned_signature_is_a_4xx(cloud):
    url = s3_client(cloud["walrus"], *cloud["alice"][1:]).generate_presigned_url(
        "get_object", Params={"Bucket": "alice-images", "Key": "boot.img"}, ExpiresIn=60)
    head, _, _ = url.partition("&X-Amz-Signature=")
    path = head.split("://", 1)[1].partition("/")[2]
    status, _, body = send(cloud["walrus"], "GET", "/" + path + "&X-Amz-Signature=" + "%C3%A9" * 64, {})
    assert status == 400 and b"AuthorizationHeaderMalformed" in body


def test_a_strange_access_key_is_refused_without_asking_the_clc(cloud):
    status, _, body = send(cloud["walrus"], "GET", "/services/Walrus/",
                           {"Authorization": "AWS4-HMAC-SHA256 Credential=../../x?y/20260101/eucalyptus/s3/"
                                             "aws4_request, SignedHeaders=host, Signature=" + "0" * 64})
    assert status == 403 and b"InvalidAccessKeyId" in body


def test_a_block_request_at_offset_minus_one_is_refused_before_the_wire():
    client = bp.BlockClient("127.0.0.1", 9, "vol-00000001", "secret")  # never connected: refused before
    for call in (lambda: client.read(-1, 16), lambda: client.read(0, bp.MAX_IO + 1),
                 lambda: client.write(2**64, b"x")):
        with pytest.raises(ValueError):
            asyncio.run(call())


def test_the_ncs_answer_to_an_out_of_range_block_is_a_400():
    from components.nc.volumes import _block_error

    assert _block_error(bp.BlockError(bp.OUT_OF_RANGE, "beyond the end")).status == 400
    assert _block_error(bp.BlockError(bp.NOT_ATTACHED)).status == 502
