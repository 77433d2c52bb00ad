"""Walrus's S3 API driven by boto3 and the AWS CLI, on loopback."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from components.common.events import read_events

from .components_helper import ADMIN, component

CFG = Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"})


def s3_client(base, ak=ADMIN["access_key"], sk=ADMIN["secret_key"]):
    return boto3.client("s3", endpoint_url=f"{base}/services/Walrus", aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="eucalyptus", config=CFG)


@pytest.fixture(scope="module")
def walrus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walrus")
    with component("walrus", tmp, max_object_bytes=4 * 2**20 + 100) as (base, cfg, proc):
        yield base, tmp, proc


def code_of(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def test_bucket_and_object_round_trip(walrus):
    base, tmp, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="images")
    assert "images" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.put_object(Bucket="images", Key="dir/a b.txt", Body=b"hello", Metadata={"kind": "demo"})
    got = s3.get_object(Bucket="images", Key="dir/a b.txt")
    assert got["Body"].read() == b"hello"
    assert got["ETag"] == '"%s"' % hashlib.md5(b"hello").hexdigest()
    assert got["Metadata"] == {"kind": "demo"}
    head = s3.head_object(Bucket="images", Key="dir/a b.txt")
    assert head["ContentLength"] == 5
    s3.delete_object(Bucket="images", Key="dir/a b.txt")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="images", Key="dir/a b.txt")
    assert code_of(err.value) == "NoSuchKey"
    s3.delete_bucket(Bucket="images")
    events = [e["event"] for e in read_events(tmp / "events.jsonl")]
    assert "object.put" in events and "object.delete" in events


def test_multi_megabyte_object_byte_for_byte(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="big")
    data = os.urandom(4 * 2**20 + 17)
    s3.put_object(Bucket="big", Key="blob", Body=data)
    assert s3.get_object(Bucket="big", Key="blob")["Body"].read() == data


def test_ranges(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="ranges")
    data = bytes(range(256)) * 40
    s3.put_object(Bucket="ranges", Key="r", Body=data)
    r = s3.get_object(Bucket="ranges", Key="r", Range="bytes=10-19")
    assert r["Body"].read() == data[10:20] and r["ContentRange"] == f"bytes 10-19/{len(data)}"
    assert s3.get_object(Bucket="ranges", Key="r", Range="bytes=-5")["Body"].read() == data[-5:]
    assert s3.get_object(Bucket="ranges", Key="r", Range="bytes=10000-")["Body"].read() == data[10000:]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="ranges", Key="r", Range=f"bytes={len(data)}-")
    assert code_of(err.value) == "InvalidRange"


def test_list_objects_v2(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="listing")
    keys = [f"a/{i:02d}" for i in range(20)] + ["b/1", "b/2", "c", "d/x/y", "e"]
    for k in keys:
        s3.put_object(Bucket="listing", Key=k, Body=b"x")
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket="listing", MaxKeys=10, **kw)
        seen += [c["Key"] for c in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys)
    page = s3.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "b/", "d/"]
    assert [c["Key"] for c in page["Contents"]] == ["c", "e"]
    page = s3.list_objects_v2(Bucket="listing", Prefix="a/1", StartAfter="a/12")
    assert [c["Key"] for c in page["Contents"]] == ["a/13", "a/14", "a/15", "a/16", "a/17", "a/18", "a/19"]
    # Paging with a delimiter: common prefixes are not repeated across pages.
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket="listing", Delimiter="/", MaxKeys=2, **kw)
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [c["Key"] for c in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert sorted(seen) == ["a/", "b/", "c", "d/", "e"]


def test_wrong_secret_and_unknown_key_refused(walrus):
    base, _, _ = walrus
    with pytest.raises(ClientError) as err:
        s3_client(base, sk="wrong" * 8).list_buckets()
    assert code_of(err.value) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as err:
        s3_client(base, ak="AKIANOBODY").list_buckets()
    assert code_of(err.value) == "InvalidAccessKeyId"


def _snapshot(base):
    s3 = s3_client(base)
    out = {}
    for b in s3.list_buckets()["Buckets"]:
        out[b["Name"]] = sorted((o["Key"], o["ETag"]) for o in
                                s3.list_objects_v2(Bucket=b["Name"]).get("Contents", []))
    return out


@pytest.mark.parametrize("action,code", [
    (lambda s3: s3.create_bucket(Bucket="Bad_Name"), "InvalidBucketName"),
    (lambda s3: s3.create_bucket(Bucket="ab"), "InvalidBucketName"),
    (lambda s3: s3.create_bucket(Bucket="10.0.0.1"), "InvalidBucketName"),
    (lambda s3: s3.get_object(Bucket="nosuchbucket", Key="k"), "NoSuchBucket"),
    (lambda s3: s3.get_object(Bucket="keep", Key="missing"), "NoSuchKey"),
    (lambda s3: s3.delete_bucket(Bucket="keep"), "BucketNotEmpty"),
    (lambda s3: s3.put_object(Bucket="keep", Key="huge", Body=b"x" * (4 * 2**20 + 101)), "EntityTooLarge"),
    (lambda s3: s3.get_object(Bucket="keep", Key="k", Range="bytes=99-"), "InvalidRange"),
    (lambda s3: s3.create_bucket(Bucket="keep"), "BucketAlreadyOwnedByYou"),
    (lambda s3: s3.list_objects_v2(Bucket="keep", MaxKeys=5000), "InvalidArgument"),
])
def test_bad_input_gets_its_error_and_changes_nothing(walrus, action, code):
    base, _, proc = walrus
    s3 = s3_client(base)
    try:
        s3.create_bucket(Bucket="keep")
        s3.put_object(Bucket="keep", Key="k", Body=b"kept")
    except ClientError:
        pass
    before = _snapshot(base)
    with pytest.raises(ClientError) as err:
        action(s3)
    assert code_of(err.value) == code
    assert proc.poll() is None
    assert _snapshot(base) == before


def test_path_traversal_keys_stay_inside_the_store(walrus):
    base, tmp, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="trav")
    s3.put_object(Bucket="trav", Key="../../../../etc/eucalab-escape", Body=b"nope")
    assert not Path("/etc/eucalab-escape").exists()
    assert s3.get_object(Bucket="trav", Key="../../../../etc/eucalab-escape")["Body"].read() == b"nope"
    names = [p.name for p in (tmp / "data" / "objects").iterdir()]
    assert all(len(n) == 32 for n in names)  # random ids, never keys


def test_malformed_xml_and_tampered_body(walrus):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import urllib.request

    base, _, _ = walrus
    url = f"{base}/services/Walrus/xmlbucket"
    req = AWSRequest(method="PUT", url=url, data=b"<CreateBucketConfiguration><oops>")
    S3SigV4Auth(Credentials(ADMIN["access_key"], ADMIN["secret_key"]), "s3", "eucalyptus").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method="PUT")
    try:
        urllib.request.urlopen(r)
        raise AssertionError("malformed XML accepted")
    except urllib.error.HTTPError as exc:
        assert b"<Code>MalformedXML</Code>" in exc.read()
    # A body that does not match its signed hash is refused and stores nothing.
    s3_client(base).create_bucket(Bucket="tamper")
    req = AWSRequest(method="PUT", url=f"{base}/services/Walrus/tamper/k", data=b"original")
    S3SigV4Auth(Credentials(ADMIN["access_key"], ADMIN["secret_key"]), "s3", "eucalyptus").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=b"tampered", headers=dict(p.headers), method="PUT")
    try:
        urllib.request.urlopen(r)
        raise AssertionError("tampered body accepted")
    except urllib.error.HTTPError as exc:
        assert b"XAmzContentSHA256Mismatch" in exc.read()
    assert s3_client(base).list_objects_v2(Bucket="tamper")["KeyCount"] == 0


def test_aws_cli_lists_buckets(walrus):
    base, _, _ = walrus
    s3_client(base).create_bucket(Bucket="cli-visible")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ADMIN["access_key"], AWS_SECRET_ACCESS_KEY=ADMIN["secret_key"],
               AWS_DEFAULT_REGION="eucalyptus")
    aws = Path(sys.executable).parent / "aws"
    out = subprocess.run([str(aws), "--endpoint-url", f"{base}/services/Walrus", "s3", "ls"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "cli-visible" in out.stdout


def test_internal_object_route_needs_the_token(walrus):
    import urllib.request

    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="imgs")
    s3.put_object(Bucket="imgs", Key="emi.img", Body=b"image-bytes")
    try:
        urllib.request.urlopen(f"{base}/internal/object?bucket=imgs&key=emi.img")
        raise AssertionError("no token accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    r = urllib.request.Request(f"{base}/internal/object?bucket=imgs&key=emi.img",
                               headers={"X-Eucalab-Internal-Token": "internal-test-token"})
    with urllib.request.urlopen(r) as resp:
        assert resp.read() == b"image-bytes"
        assert resp.headers["ETag"].strip('"') == hashlib.md5(b"image-bytes").hexdigest()
