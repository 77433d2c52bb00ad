"""Walrus's S3 API driven by boto3 and the AWS CLI, on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from components.common.events import read_events
from experiments.testbed.loopback import JsonHandler
from tests.support.clc_client import s3_client
from tests.support.processes import ADMIN, TOKEN, component
from tests.support.util import free_port

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

MAX_OBJECT = 8 * 2**20 + 100
# A second account, known only to the (fake) CLC: Walrus must look it up there.
OTHER = {"account_id": "000000000002", "access_key": "AKIAOTHER000000TEST", "secret_key": "othersecret0000000000"}


class FakeCLC:
    """The CLC side of the account contract: GET /internal/accounts/{access_key} with the token."""

    def __init__(self):
        import http.server
        import threading

        self.lookups: list[str] = []
        clc = self

        class Handler(JsonHandler):
            def do_GET(self):
                ak = self.path.rsplit("/", 1)[-1]
                clc.lookups.append(ak)
                if self.headers.get("X-Eucalab-Internal-Token") != TOKEN:
                    self._answer(403, {"error": "bad token"})
                elif self.path.startswith("/internal/accounts/") and ak == OTHER["access_key"]:
                    self._answer(200, {"account_id": OTHER["account_id"], "secret_key": OTHER["secret_key"]})
                else:
                    self._answer(404, {"error": "NoSuchEntity"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/Eucalyptus"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_clc():
    clc = FakeCLC()
    yield clc
    clc.close()


@pytest.fixture(scope="module")
def walrus(tmp_path_factory, fake_clc):
    tmp = tmp_path_factory.mktemp("walrus")
    with component("walrus", tmp, max_object_bytes=MAX_OBJECT, endpoints={"clc": fake_clc.url}) as (base, cfg, proc):
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
    events = read_events(tmp / "events.jsonl")
    put = [e for e in events if e["event"] == "object.put" and e["bucket"] == "images"]
    gone = [e for e in events if e["event"] == "object.delete" and e["bucket"] == "images"]
    etag = hashlib.md5(b"hello").hexdigest()
    assert [(e["key"], e["size"], e["etag"]) for e in put] == [("dir/a b.txt", 5, etag)]
    assert [(e["key"], e["size"], e["etag"]) for e in gone] == [("dir/a b.txt", 5, etag)]


def test_unicode_and_awkward_keys(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="unicode")
    keys = ["données/été €.txt", "a+b=c&d?e#f", "sp ace/ /x", "ctl\x01char", "%2F literal", "雪/☃"]
    for i, k in enumerate(keys):
        s3.put_object(Bucket="unicode", Key=k, Body=str(i).encode(), ContentType="text/plain")
    for i, k in enumerate(keys):
        got = s3.get_object(Bucket="unicode", Key=k)
        assert got["Body"].read() == str(i).encode() and got["ContentType"] == "text/plain"
    # botocore asks for encoding-type=url and decodes: even a control character round-trips.
    assert [c["Key"] for c in s3.list_objects_v2(Bucket="unicode")["Contents"]] == sorted(keys)
    page = s3.list_objects_v2(Bucket="unicode", Delimiter="/", Prefix="")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["données/", "sp ace/", "雪/"]


def test_multi_megabyte_object_byte_for_byte(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="big")
    data = os.urandom(8 * 2**20)
    put = s3.put_object(Bucket="big", Key="blob", Body=data)
    assert put["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
    got = s3.get_object(Bucket="big", Key="blob")
    assert got["ContentLength"] == len(data) and got["Body"].read() == data
    tail = s3.get_object(Bucket="big", Key="blob", Range="bytes=-3000000")["Body"].read()
    assert tail == data[-3000000:]


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


def _raw(base, method, path, body=b"", headers=None, sign_body=None, query=""):
    """A request signed by botocore's S3 signer, sent with urllib; returns (status, headers, body)."""
    import urllib.error
    import urllib.request

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{base}/services/Walrus{path}" + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, data=body if sign_body is None else sign_body, headers=headers or {})
    S3SigV4Auth(Credentials(ADMIN["access_key"], ADMIN["secret_key"]), "s3", "eucalyptus").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=body or None, headers=dict(p.headers), method=method)
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _xml_code(body: bytes) -> str:
    from xml.etree import ElementTree as ET

    root = ET.fromstring(body)
    assert root.tag == "Error" and root.find("RequestId").text and root.find("Message").text
    return root.find("Code").text


def _raw_code(*args, **kw):
    status, _, body = _raw(*args, **kw)
    return status, _xml_code(body)


BAD_INPUT = {
    "bucket name with capitals": (lambda s3, b: s3.create_bucket(Bucket="Bad_Name"), "InvalidBucketName"),
    "bucket name too short": (lambda s3, b: s3.create_bucket(Bucket="ab"), "InvalidBucketName"),
    "bucket name an IP address": (lambda s3, b: s3.create_bucket(Bucket="10.0.0.1"), "InvalidBucketName"),
    "bucket name with ..": (lambda s3, b: s3.create_bucket(Bucket="a..b"), "InvalidBucketName"),
    "get from missing bucket": (lambda s3, b: s3.get_object(Bucket="nosuchbucket", Key="k"), "NoSuchBucket"),
    "put into missing bucket": (lambda s3, b: s3.put_object(Bucket="nosuchbucket", Key="k", Body=b"x"),
                                "NoSuchBucket"),
    "missing key": (lambda s3, b: s3.get_object(Bucket="keep", Key="missing"), "NoSuchKey"),
    "head missing key": (lambda s3, b: s3.head_object(Bucket="keep", Key="missing"), "404"),
    "delete non-empty bucket": (lambda s3, b: s3.delete_bucket(Bucket="keep"), "BucketNotEmpty"),
    "object over max_object_bytes": (lambda s3, b: s3.put_object(Bucket="keep", Key="k",
                                                                  Body=b"x" * (MAX_OBJECT + 1)), "EntityTooLarge"),
    "range past the end": (lambda s3, b: s3.get_object(Bucket="keep", Key="k", Range="bytes=99-"), "InvalidRange"),
    "create own bucket again": (lambda s3, b: s3.create_bucket(Bucket="keep"), "BucketAlreadyOwnedByYou"),
    "max-keys too large": (lambda s3, b: s3.list_objects_v2(Bucket="keep", MaxKeys=5000), "InvalidArgument"),
    "wrong Content-MD5": (lambda s3, b: s3.put_object(Bucket="keep", Key="k", Body=b"changed",
                                                      ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg=="), "BadDigest"),
    "wrong secret key": (lambda s3, b: s3_client(b, sk="x" * 40).put_object(Bucket="keep", Key="k", Body=b"bad"),
                         "SignatureDoesNotMatch"),
    "unknown access key": (lambda s3, b: s3_client(b, ak="AKIANOBODY").delete_object(Bucket="keep", Key="k"),
                           "InvalidAccessKeyId"),
    "unsupported subresource": (lambda s3, b: s3.put_bucket_policy(Bucket="keep", Policy='{"Statement": []}'),
                                "NotImplemented"),
    "unknown canned ACL": (lambda s3, b: s3.put_object(Bucket="keep", Key="k", Body=b"new", ACL="everyone"),
                           "InvalidArgument"),
    "ACL grant by e-mail": (lambda s3, b: s3.put_bucket_acl(Bucket="keep", GrantRead="emailAddress=a@b.c"),
                            "UnresolvableGrantByEmailAddress"),
    "canned ACL and grants at once": (lambda s3, b: s3.put_bucket_acl(Bucket="keep", ACL="private",
                                                                      GrantRead='id="x"'), "InvalidRequest"),
    "part of an upload that does not exist": (lambda s3, b: s3.upload_part(Bucket="keep", Key="k", UploadId="nope",
                                                                           PartNumber=1, Body=b"x"), "NoSuchUpload"),
    "complete an upload that does not exist": (lambda s3, b: s3.complete_multipart_upload(
        Bucket="keep", Key="k", UploadId="nope", MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "x"}]}),
        "NoSuchUpload"),
    "list parts of an upload that does not exist": (lambda s3, b: s3.list_parts(Bucket="keep", Key="k",
                                                                                UploadId="nope"), "NoSuchUpload"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_its_error_and_changes_nothing(walrus, case):
    action, code = BAD_INPUT[case]
    base, _, proc = walrus
    s3 = s3_client(base)
    try:
        s3.create_bucket(Bucket="keep")
        s3.put_object(Bucket="keep", Key="k", Body=b"kept")
    except ClientError:
        pass
    before = _snapshot(base)
    with pytest.raises(ClientError) as err:
        action(s3, base)
    assert code_of(err.value) == code
    assert proc.poll() is None
    assert _snapshot(base) == before
    assert s3.get_object(Bucket="keep", Key="k")["Body"].read() == b"kept"


@pytest.mark.parametrize("case,request_args,status,code", [
    ("malformed XML", ("PUT", "/xmlbucket", b"<CreateBucketConfiguration><oops>"), 400, "MalformedXML"),
    ("oversized bucket configuration", ("PUT", "/xmlbucket", b"<a>" + b" " * 70000 + b"</a>"), 400,
     "MaxMessageLengthExceeded"),
    ("body does not match its signed hash", ("PUT", "/keep/k", b"tampered", None, b"original"), 400,
     "XAmzContentSHA256Mismatch"),
    ("wrong x-amz-checksum-crc32", ("PUT", "/keep/k", b"new", {"x-amz-checksum-crc32": "AAAAAA=="}), 400,
     "BadDigest"),
    ("wrong x-amz-checksum-sha256", ("PUT", "/keep/k", b"new", {"x-amz-checksum-sha256": "AAAA"}), 400,
     "BadDigest"),
    ("checksum Walrus cannot verify", ("PUT", "/keep/k", b"new", {"x-amz-checksum-crc32c": "AAAAAA=="}), 501,
     "NotImplemented"),
    ("unknown method on an object", ("PATCH", "/keep/k"), 405, "MethodNotAllowed"),
    ("POST on a bucket", ("POST", "/keep", b"<Delete/>"), 405, "MethodNotAllowed"),
    ("unknown method on the service", ("DELETE", "/"), 405, "MethodNotAllowed"),
    ("invalid range syntax", ("GET", "/keep/k", b"", {"Range": "bytes=x-y"}), 416, "InvalidRange"),
    ("bad continuation token", ("GET", "/keep", b"", None, None, "list-type=2&continuation-token=_w%3D%3D"), 400,
     "InvalidArgument"),
    ("bad encoding-type", ("GET", "/keep", b"", None, None, "list-type=2&encoding-type=base64"), 400,
     "InvalidArgument"),
    ("max-keys of versions too large", ("GET", "/keep", b"", None, None, "versions&max-keys=5000"), 400,
     "InvalidArgument"),
    ("max-uploads not a number", ("GET", "/keep", b"", None, None, "max-uploads=x&uploads"), 400, "InvalidArgument"),
    ("versioning without a document", ("PUT", "/keep", b"", None, None, "versioning"), 400, "MalformedXML"),
    ("unknown metadata directive", ("PUT", "/keep/k2", b"", {"x-amz-copy-source": "keep/k",
                                                             "x-amz-metadata-directive": "MOVE"}), 400,
     "InvalidArgument"),
    ("copy onto itself unchanged", ("PUT", "/keep/k", b"", {"x-amz-copy-source": "/keep/k"}), 400, "InvalidRequest"),
    ("version that does not exist", ("GET", "/keep/k", b"", None, None, "versionId=nope"), 404, "NoSuchVersion"),
    ("versionId on a PUT", ("PUT", "/keep/k", b"x", None, None, "versionId=nope"), 400, "InvalidArgument"),
    ("canned ACL and grant headers", ("PUT", "/keep/k", b"", {"x-amz-acl": "public-read",
                                                              "x-amz-grant-read": 'id="x"'}, None, "acl"), 400,
     "InvalidRequest"),
    ("ACL document that is not one", ("PUT", "/keep", b"<Other/>", None, None, "acl"), 400, "MalformedACLError"),
    ("tagging without a document", ("PUT", "/keep/k", b"<Tagging/>", None, None, "tagging"), 400, "MalformedXML"),
])
def test_bad_raw_requests_get_s3_error_xml_and_change_nothing(walrus, case, request_args, status, code):
    base, _, proc = walrus
    s3 = s3_client(base)
    try:
        s3.create_bucket(Bucket="keep")
        s3.put_object(Bucket="keep", Key="k", Body=b"kept")
    except ClientError:
        pass
    before = _snapshot(base)
    assert _raw_code(base, *request_args) == (status, code)
    assert proc.poll() is None
    assert _snapshot(base) == before
    assert s3.get_object(Bucket="keep", Key="k")["Body"].read() == b"kept"


def test_path_traversal_keys_stay_inside_the_store(walrus):
    base, tmp, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="trav")
    s3.put_object(Bucket="trav", Key="../../../../etc/eucalab-escape", Body=b"nope")
    assert not Path("/etc/eucalab-escape").exists()
    assert s3.get_object(Bucket="trav", Key="../../../../etc/eucalab-escape")["Body"].read() == b"nope"
    names = [p.name for p in (tmp / "data" / "objects").iterdir()]
    assert all(len(n) == 32 for n in names)  # random ids, never keys


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


def test_the_internal_object_route_honours_range_and_an_nc_resumes_from_it(walrus, tmp_path):
    """An NC that has the first part of an image asks for the rest only (Range), and
    Walrus answers 206 with exactly those bytes; the image that results is whole."""
    import asyncio

    import aiohttp

    from components.nc.images import ImageCache, ImageSettings, download

    base, _, _ = walrus
    body = os.urandom(3 * 2**20 + 5)  # larger than what Walrus answers in one piece
    etag = hashlib.md5(body).hexdigest()
    s3_client(base).create_bucket(Bucket="resume")
    s3_client(base).put_object(Bucket="resume", Key="emi.img", Body=body)
    cache = ImageCache(tmp_path / "images", 2**30)
    cache.part(etag).write_bytes(body[:2**20 + 3])  # what a cut download left
    seen = []

    async def fetch():
        async def on_end(session, ctx, params):
            seen.append((params.response.status, params.response.headers.get("Content-Range")))
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_end)
        async with aiohttp.ClientSession(trace_configs=[trace]) as http:
            return await download(http, f"{base}/internal/object", {"bucket": "resume", "key": "emi.img"},
                                  {"X-Eucalab-Internal-Token": TOKEN}, etag, len(body), cache, ImageSettings())
    path, resumed = asyncio.run(fetch())
    assert resumed == 1
    assert seen == [(206, f"bytes {2**20 + 3}-{len(body) - 1}/{len(body)}")]
    assert path.read_bytes() == body


def test_accounts_from_the_clc_are_isolated(walrus, fake_clc):
    base, _, _ = walrus
    admin, other = s3_client(base), s3_client(base, OTHER["access_key"], OTHER["secret_key"])
    admin.create_bucket(Bucket="admin-private")
    admin.put_object(Bucket="admin-private", Key="secret", Body=b"admin data")
    other.create_bucket(Bucket="other-bucket")
    other.put_object(Bucket="other-bucket", Key="mine", Body=b"other data")
    assert [b["Name"] for b in other.list_buckets()["Buckets"]] == ["other-bucket"]
    assert "other-bucket" not in [b["Name"] for b in admin.list_buckets()["Buckets"]]
    for action in (lambda: other.list_objects_v2(Bucket="admin-private"),
                   lambda: other.get_object(Bucket="admin-private", Key="secret"),
                   lambda: other.put_object(Bucket="admin-private", Key="secret", Body=b"overwrite"),
                   lambda: other.delete_object(Bucket="admin-private", Key="secret"),
                   lambda: other.delete_bucket(Bucket="admin-private"),
                   lambda: admin.get_object(Bucket="other-bucket", Key="mine")):
        with pytest.raises(ClientError) as err:
            action()
        assert code_of(err.value) == "AccessDenied"
    with pytest.raises(ClientError) as err:
        other.create_bucket(Bucket="admin-private")
    assert code_of(err.value) == "BucketAlreadyExists"
    assert admin.get_object(Bucket="admin-private", Key="secret")["Body"].read() == b"admin data"
    # The CLC was asked once for the new key (then cached), never for the admin key from the config.
    assert fake_clc.lookups.count(OTHER["access_key"]) == 1
    assert ADMIN["access_key"] not in fake_clc.lookups
    # A key the CLC does not know stays refused.
    with pytest.raises(ClientError) as err:
        s3_client(base, "AKIASTRANGER0000", "x" * 40).list_buckets()
    assert code_of(err.value) == "InvalidAccessKeyId"
    assert "AKIASTRANGER0000" in fake_clc.lookups


def test_presigned_urls(walrus):
    import urllib.error
    import urllib.request

    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="presign")
    s3.put_object(Bucket="presign", Key="img/€ 1.bin", Body=b"presigned bytes")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "presign", "Key": "img/€ 1.bin"}, ExpiresIn=60)
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"presigned bytes"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace("presign/img", "presign/IMG"))
    assert err.value.code == 403 and _xml_code(err.value.read()) == "SignatureDoesNotMatch"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "presign", "Key": "up"}, ExpiresIn=60)
    urllib.request.urlopen(urllib.request.Request(put_url, data=b"via presigned put", method="PUT")).read()
    assert s3.get_object(Bucket="presign", Key="up")["Body"].read() == b"via presigned put"


def _streaming_put(base, path, chunks, tamper=False):
    """PUT an aws-chunked body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), every chunk signed."""
    import hmac
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from components.common.sigv4 import signing_key

    total = sum(len(c) for c in chunks)
    req = AWSRequest(method="PUT", url=f"{base}/services/Walrus{path}",
                     headers={"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                              "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(total)})
    SigV4Auth(Credentials(ADMIN["access_key"], ADMIN["secret_key"]), "s3", "eucalyptus").add_auth(req)
    p = req.prepare()
    headers = {k: v for k, v in p.headers.items() if k.lower() != "content-length"}  # urllib sets it
    prev = headers["Authorization"].rsplit("Signature=", 1)[1]
    amz = headers["X-Amz-Date"]
    scope = f"{amz[:8]}/eucalyptus/s3/aws4_request"
    key = signing_key(ADMIN["secret_key"], amz[:8], "eucalyptus", "s3")
    body = b""
    for data in chunks + [b""]:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz, scope, prev, hashlib.sha256(b"").hexdigest(),
                             hashlib.sha256(data).hexdigest()])
        prev = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        body += f"{len(data):x};chunk-signature={prev}\r\n".encode() + data + b"\r\n"
    if tamper:
        body = body.replace(chunks[-1], bytes(reversed(chunks[-1])))
    r = urllib.request.Request(p.url, data=body, headers=headers, method="PUT")
    assert urlsplit(p.url).path.startswith("/services/Walrus/")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, b""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_streaming_signed_upload_and_a_tampered_chunk(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="chunked")
    chunks = [os.urandom(65536), os.urandom(65536), b"tail-bytes"]
    assert _streaming_put(base, "/chunked/obj", chunks) == (200, b"")
    assert s3.get_object(Bucket="chunked", Key="obj")["Body"].read() == b"".join(chunks)
    status, body = _streaming_put(base, "/chunked/obj", [b"A" * 1000, b"0123456789"], tamper=True)
    assert (status, _xml_code(body)) == (403, "SignatureDoesNotMatch")
    assert s3.get_object(Bucket="chunked", Key="obj")["Body"].read() == b"".join(chunks)


def test_bucket_location_and_list_objects_v1(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="v1list")
    assert s3.get_bucket_location(Bucket="v1list")["LocationConstraint"] is None
    s3.create_bucket(Bucket="with-config", CreateBucketConfiguration={"LocationConstraint": "eucalyptus"})
    assert "with-config" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    keys = [f"k{i:02d}" for i in range(12)] + ["dir/a", "dir/b"]
    for k in keys:
        s3.put_object(Bucket="v1list", Key=k, Body=b"")
    seen, marker = [], ""
    while True:
        page = s3.list_objects(Bucket="v1list", MaxKeys=5, Marker=marker)
        seen += [c["Key"] for c in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        marker = seen[-1]
    assert seen == sorted(keys)
    page = s3.list_objects(Bucket="v1list", Delimiter="/", MaxKeys=1)
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["dir/"] and page["NextMarker"]
    page = s3.list_objects(Bucket="v1list", Delimiter="/", Marker=page["NextMarker"], MaxKeys=100)
    assert [c["Key"] for c in page["Contents"]] == sorted(keys)[2:] and "CommonPrefixes" not in page
    assert s3.list_objects_v2(Bucket="v1list", MaxKeys=0)["KeyCount"] == 0


def test_sigterm_exit_restart_with_data_and_disabled_state(tmp_path):
    import urllib.request

    with component("walrus", tmp_path) as (base, cfg, proc):
        s3 = s3_client(base)
        s3.create_bucket(Bucket="durable")
        s3.put_object(Bucket="durable", Key="obj", Body=b"survives restarts", Metadata={"a": "1"})
        start = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "service.start"][0]
        assert start["pid"] == proc.pid and start["port"] == cfg["port"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    events = [e["event"] for e in read_events(tmp_path / "events.jsonl")]
    assert events[-1] == "service.stop" and events.count("service.stop") == 1
    # What a crash mid-write leaves: a temporary file and an object file no metadata names.
    objects = tmp_path / "data" / "objects"
    (objects / ".0123456789abcdef0123456789abcdef.part").write_bytes(b"torn")
    (objects / "fedcba9876543210fedcba9876543210").write_bytes(b"unreferenced")
    with component("walrus", tmp_path, state="DISABLED") as (base, cfg, proc):
        with pytest.raises(ClientError) as err:
            s3_client(base).list_buckets()
        assert code_of(err.value) == "ServiceUnavailable"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with urllib.request.urlopen(f"{base}/health") as r:
            assert json.loads(r.read()) == {"ok": True}
        with urllib.request.urlopen(f"{base}/status") as r:
            status = json.loads(r.read())
        assert (status["component"], status["state"], status["pid"]) == ("walrus", "DISABLED", proc.pid)
    # The restart swept both; only the one committed object's file is left.
    names = [p.name for p in objects.iterdir()]
    assert len(names) == 1 and len(names[0]) == 32 and names[0] != "fedcba9876543210fedcba9876543210"
    with component("walrus", tmp_path) as (base, cfg, proc):
        got = s3_client(base).get_object(Bucket="durable", Key="obj")
        assert got["Body"].read() == b"survives restarts" and got["Metadata"] == {"a": "1"}
        assert [p.name for p in objects.iterdir()] == names


def test_a_body_without_its_length_is_refused_as_s3_does(walrus):
    """A PUT with no Content-Length is 411 MissingContentLength, a chunked one 501 (it used
    to store an empty object, or the chunked body, where S3 refuses both)."""
    import http.client
    from urllib.parse import urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="lengths")
    before = _snapshot(base)
    for transfer, status, code in ((None, 411, "MissingContentLength"), ("chunked", 501, "NotImplemented")):
        req = AWSRequest(method="PUT", url=f"{base}/services/Walrus/lengths/k", data=b"",
                         headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
        S3SigV4Auth(Credentials(ADMIN["access_key"], ADMIN["secret_key"]), "s3", "eucalyptus").add_auth(req)
        u = urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.putrequest("PUT", "/services/Walrus/lengths/k", skip_accept_encoding=True)
        for k, v in req.prepare().headers.items():
            if k.lower() != "content-length":
                conn.putheader(k, v)
        if transfer:
            conn.putheader("Transfer-Encoding", transfer)
        conn.endheaders(b"5\r\nhello\r\n0\r\n\r\n" if transfer else None)
        r = conn.getresponse()
        assert (r.status, _xml_code(r.read())) == (status, code)
        conn.close()
    assert _snapshot(base) == before
