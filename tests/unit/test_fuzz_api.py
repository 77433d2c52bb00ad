"""A property-based fuzzer for the EC2 and S3 APIs (hypothesis), on a real CLC and Walrus on loopback.

Requests are malformed and hostile: signed by botocore with awkward parameters
(control characters, huge numbers, foreign ids, unknown actions), signed then tampered
with (body, signature, region, service), unsigned, or bytes that are no query at all.
For every one: no 5xx (but S3's 501 NotImplemented for a feature Walrus lacks), both
processes alive, no internal error in their event logs,
and when the answer refuses the request (4xx), the CLC's database and Walrus's store
(rows and object files) are exactly as before it.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode
from xml.etree import ElementTree as ET

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.common.events import read_events

from tests.support.clc_client import create_account, send, upload_image
from tests.support.processes import ADMIN, clc_and_walrus

from .test_tenant_api import clc_dump, walrus_dump

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

EXAMPLES = 300  # per API: both together run in about 30 s here
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ACTIONS = ["DescribeImages", "RegisterImage", "RunInstances", "DescribeInstances", "TerminateInstances",
           "CreateSecurityGroup", "DeleteSecurityGroup", "AuthorizeSecurityGroupIngress",
           "RevokeSecurityGroupIngress", "DescribeSecurityGroups", "AllocateAddress", "AssociateAddress",
           "DisassociateAddress", "ReleaseAddress", "DescribeAddresses", "CreateVolume", "AttachVolume",
           "DetachVolume", "DeleteVolume", "DescribeVolumes", "DescribeImageAttribute", "ModifyImageAttribute",
           "DescribeAvailabilityZones", "CreateAccount", "NoSuchAction", ""]
PARAMS = ["ImageId", "ImageLocation", "Name", "MinCount", "MaxCount", "InstanceId.1", "GroupName",
          "GroupDescription", "GroupId", "IpPermissions.1.IpProtocol", "IpPermissions.1.FromPort",
          "IpPermissions.1.ToPort", "IpPermissions.1.IpRanges.1.CidrIp", "PublicIp", "AllocationId", "Size",
          "AvailabilityZone", "VolumeId", "Device", "Attribute", "LaunchPermission.Add.1.Group",
          "LaunchPermission.Add.1.UserId", "OperationType", "UserGroup.1", "Filter.1.Name", "Filter.1.Value.1",
          "Placement.AvailabilityZone", "AccountName", "ImageId.1", "Version"]
# Plausible parameters per action, so that requests reach the handlers; the fuzzer then
# replaces some of them and adds others.
TEMPLATES = {
    "RegisterImage": {"ImageLocation": "alice-images/boot.img", "Name": "fuzzed image"},
    "RunInstances": {"ImageId": "emi-00000000", "MinCount": "1", "MaxCount": "1"},
    "CreateSecurityGroup": {"GroupName": "fuzz", "GroupDescription": "fuzzed"},
    "AuthorizeSecurityGroupIngress": {"GroupName": "default", "IpPermissions.1.IpProtocol": "tcp",
                                      "IpPermissions.1.FromPort": "80", "IpPermissions.1.ToPort": "80",
                                      "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0"},
    "CreateVolume": {"Size": "1", "AvailabilityZone": "cluster1"},
    "ModifyImageAttribute": {"ImageId": "emi-00000000", "LaunchPermission.Add.1.Group": "all"},
    "DescribeImageAttribute": {"ImageId": "emi-00000000", "Attribute": "launchPermission"},
    "CreateAccount": {"AccountName": "fuzzed"},
}
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "\x01", "a\x1bb", "x\x08", "a\nb", "\ud800", "\ufffe", "9" * 5000, "-1", "1e9", "0x10",
                     "emi-00000000", "i-00000000", "sg-00000000", "vol-00000000", "10.0.128.1", "all",
                     "alice-images/boot.img", "../../etc/passwd", "bucket/\x01key", "%00", "<x>&amp;"]),
    st.integers(min_value=-2**70, max_value=2**70).map(str))


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with clc_and_walrus(tmp) as (clc, walrus, proc):
        alice = create_account(clc, "alice")
        upload_image(walrus, "alice-images/boot.img", *alice[1:])
        yield {"clc": clc, "walrus": walrus, "tmp": tmp, "proc": proc, "alice": alice}
        assert proc.poll() is None


def _check(cloud, status: int, before: dict, what: str, answer: bytes = b"", code: str | None = None,
           xml: bool = True) -> None:
    # The one 5xx allowed: S3's own answer to a feature Walrus does not implement (?acl,
    # ?uploads, ...), 501 NotImplemented, as AWS answers a feature it lacks.
    not_implemented = status == 501 and (b"<Code>NotImplemented</Code>" in answer or code == "NotImplemented")
    assert status < 500 or not_implemented, f"{status} for {what}"
    assert cloud["proc"].poll() is None, f"the CLC died on {what}"
    for log in (cloud["tmp"] / "events.jsonl", cloud["tmp"] / "walrus" / "events.jsonl"):
        errors = [e for e in read_events(log) if e["event"] in ("api.internal_error", "service.crash")]
        assert errors == [], f"{errors[-1]} on {what}"
    if xml and answer:  # every answer, error or not, is a well-formed document
        try:
            ET.fromstring(answer)
        except ET.ParseError as exc:
            raise AssertionError(f"{status} answer is not XML ({exc}) for {what}") from None
    if status >= 400:
        assert {**clc_dump(cloud["tmp"]), **walrus_dump(cloud["tmp"])} == before, f"{status} changed state: {what}"


def _keys(cloud, who: str) -> tuple[str, str]:
    return (ADMIN["access_key"], ADMIN["secret_key"]) if who == "admin" else tuple(cloud["alice"][1:])


EC2_FORMS = st.sampled_from(["signed", "signed", "signed", "tampered-body", "bad-signature", "other-region",
                             "other-service", "unsigned", "garbage-body", "query-string"])


@st.composite
def ec2_request(draw) -> tuple[str, dict]:
    """An action with its template's parameters, each kept or made hostile, plus others."""
    action = draw(st.sampled_from(ACTIONS + ["RegisterImage", "DescribeImages"] * 3))
    fields = dict(TEMPLATES.get(action, {}))
    for name in list(fields):
        if draw(st.booleans()):
            fields[name] = draw(HOSTILE_TEXT)
    fields.update(draw(st.dictionaries(st.sampled_from(PARAMS) | HOSTILE_TEXT, HOSTILE_TEXT, max_size=3)))
    return action, fields


@SETTINGS
@given(request=ec2_request(), form=EC2_FORMS, who=st.sampled_from(["admin", "alice"]),
       garbage=st.binary(max_size=64))
def test_ec2_never_answers_5xx_and_refusals_change_nothing(cloud, request, form, who, garbage):
    action, params = request
    ak, sk = _keys(cloud, who)
    fields = {"Action": action, "Version": "2016-11-15", **params}
    try:
        body = urlencode(fields).encode()
    except UnicodeEncodeError:  # a lone surrogate: sent as raw bytes instead
        body = b"Action=" + action.encode() + b"&Name=%ED%A0%80"
    if form == "garbage-body":
        body = garbage
    path = "/services/Eucalyptus"
    req = AWSRequest(method="POST", url=cloud["clc"] + path, data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    region = "us-east-1" if form == "other-region" else "eucalyptus"
    service = "s3" if form == "other-service" else "ec2"
    if form != "unsigned":
        SigV4Auth(Credentials(ak, sk), service, region).add_auth(req)
    headers = dict(req.headers)
    if form == "tampered-body":
        body += b"&Extra=1"
    if form == "bad-signature":
        headers["Authorization"] = headers["Authorization"][:-64] + "0" * 64
    method = "POST"
    if form == "query-string":  # the same fields in the URL of a signed GET
        query = body.decode("latin-1")
        get = AWSRequest(method="GET", url=f"{cloud['clc']}{path}?{query}")
        SigV4Auth(Credentials(ak, sk), "ec2", "eucalyptus").add_auth(get)
        method, path, headers, body = "GET", f"{path}?{quote(query, safe='=&%+')}", dict(get.headers), b""
    before = {**clc_dump(cloud["tmp"]), **walrus_dump(cloud["tmp"])}
    status, _, answer = send(cloud["clc"], method, path, headers, body)
    _check(cloud, status, before, f"{form} {action} {params!r}: {answer[:200]!r}", answer)


S3_FORMS = st.sampled_from(["signed", "signed", "signed", "no-content-sha256", "bad-signature", "other-region",
                            "unsigned", "presigned-garbled"])
S3_HEADERS = st.dictionaries(
    st.sampled_from(["Range"] * 4 + ["x-amz-decoded-content-length"] * 2 + [
        "Content-MD5", "x-amz-checksum-sha256", "x-amz-checksum-crc32", "x-amz-content-sha256", "Content-Type",
        "x-amz-meta-a", "Content-Encoding", "x-amz-date"]),
    st.one_of(st.sampled_from(["bytes=0-", "bytes=-" + "9" * 5000, "bytes=" + "9" * 5000 + "-", "bytes=5-1",
                               "9" * 5000, "UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                               "aws-chunked"]),
              HOSTILE_TEXT.filter(lambda v: v.isprintable() and v.isascii())),
    max_size=3)


# Mostly real targets (Alice's bucket and image, a bucket to create), so that requests
# get past routing and authentication into the handlers; the rest hostile names.
BUCKETS = st.one_of(st.sampled_from(["alice-images"] * 4 + ["fuzz-bucket"] * 2 + [
    "", "a", "UPPER", "x" * 70, "1.2.3.4", "dots..dots", "newline\n", "ctl\x01"]), HOSTILE_TEXT)
KEYS = st.one_of(st.sampled_from(["boot.img"] * 4 + ["", "k", "a/b/c", "x" * 1100]), HOSTILE_TEXT)


@SETTINGS
@given(method=st.sampled_from(["GET", "GET", "PUT", "PUT", "HEAD", "DELETE", "POST"]), bucket=BUCKETS, key=KEYS,
       query=st.sampled_from(["", "?acl", "?location", "?list-type=2&max-keys=-1", "?list-type=2&max-keys=" + "9" * 30,
                              "?continuation-token=%%%", "?encoding-type=bogus", "?uploads", "?list-type=2"]),
       headers=S3_HEADERS, body=st.binary(max_size=256), form=S3_FORMS,
       who=st.sampled_from(["admin", "alice", "alice"]))
def test_s3_never_answers_5xx_and_refusals_change_nothing(cloud, method, bucket, key, query, headers, body, form,
                                                          who):
    ak, sk = _keys(cloud, who)
    try:
        path = "/" + quote(bucket, safe="") + ("/" + quote(key, safe="/") if key else "")
    except UnicodeEncodeError:
        path = "/fuzz-bucket/%ED%A0%80"
    url = f"{cloud['walrus']}/services/Walrus{path}{query}"
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    if form != "unsigned":
        region = "us-east-1" if form == "other-region" else "eucalyptus"
        auth = SigV4Auth if form == "no-content-sha256" else S3SigV4Auth
        auth(Credentials(ak, sk), "s3", region).add_auth(req)
    sent = dict(req.headers)
    full_path = f"/services/Walrus{path}{query}"
    if form == "bad-signature":
        sent["Authorization"] = sent["Authorization"][:-64] + "f" * 64
    if form == "presigned-garbled":  # a fresh presigned URL whose signature is not hex
        from botocore.auth import S3SigV4QueryAuth

        pre = AWSRequest(method=method, url=url)
        S3SigV4QueryAuth(Credentials(ak, sk), "s3", "eucalyptus", expires=60).add_auth(pre)
        sent = dict(headers)
        full_path = "/" + pre.url.split("://", 1)[1].split("/", 1)[1].rsplit("&X-Amz-Signature=", 1)[0] + \
            "&X-Amz-Signature=" + "%C3%A9" * 64
    before = {**clc_dump(cloud["tmp"]), **walrus_dump(cloud["tmp"])}
    status, got, answer = send(cloud["walrus"], method, full_path, sent, body)
    _check(cloud, status, before, f"{form} {method} {full_path[:120]!r} {headers!r}: {answer[:200]!r}", answer,
           got.get("x-amz-error-code"),  # a HEAD answer's code is a header
           xml="xml" in got.get("Content-Type", ""))
