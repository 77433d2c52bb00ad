"""SigV4 verification against signatures made by botocore's own signer."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from components.common.sigv4 import ChunkedDecoder, SigV4Error, _parse_amz_date, verify

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

AK, SK = "AKIAEXAMPLE123", "secret/Key+example"
CREDS = Credentials(AK, SK)


def lookup(key):
    return (SK, "123456789012") if key == AK else None


def sign(method, url, service, body=b"", headers=None, auth_cls=None):
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    cls = auth_cls or (S3SigV4Auth if service == "s3" else SigV4Auth)
    cls(CREDS, service, "eucalyptus").add_auth(req)
    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    headers = dict(prepared.headers)
    headers.setdefault("Host", parts.netloc)  # the HTTP layer adds it on the wire
    return parts.path, parts.query, headers, body


@pytest.mark.parametrize("url", [
    "http://10.0.0.20:8773/services/Walrus/bucket/key",
    "http://10.0.0.20:8773/services/Walrus/bucket/a%20b/c%2Bd.txt",
    "http://10.0.0.20:8773/services/Walrus/bucket/%E2%82%AC%20unicode",
    "http://10.0.0.20:8773/services/Walrus/bucket?list-type=2&prefix=a%2Fb&delimiter=%2F",
])
def test_s3_requests_verify(url):
    path, query, headers, _ = sign("GET", url, "s3")
    res = verify("GET", path, query, headers, None, lookup, dialect="s3")
    assert res.access_key == AK and res.account_id == "123456789012" and res.service == "s3"


def test_s3_put_with_body_hash():
    body = b"hello world"
    path, query, headers, _ = sign("PUT", "http://h:8773/services/Walrus/b/k", "s3", body)
    assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    assert verify("PUT", path, query, headers, hashlib.sha256(body).hexdigest(), lookup, "s3").payload_mode == "signed"
    with pytest.raises(SigV4Error) as err:
        verify("PUT", path, query, headers, hashlib.sha256(b"tampered").hexdigest(), lookup, "s3")
    assert err.value.code == "SignatureDoesNotMatch"


def test_ec2_form_post_verifies_and_tampering_fails():
    body = b"Action=DescribeInstances&Version=2016-11-15"
    hdrs = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    path, query, headers, _ = sign("POST", "http://10.0.0.10:8773/services/Eucalyptus", "ec2", body, hdrs)
    digest = hashlib.sha256(body).hexdigest()
    assert verify("POST", path, query, headers, digest, lookup, "ec2").service == "ec2"
    with pytest.raises(SigV4Error) as err:
        verify("POST", path, query, headers, hashlib.sha256(body + b"&x=1").hexdigest(), lookup, "ec2")
    assert err.value.code == "AuthFailure" and err.value.http_status == 401


def test_wrong_secret_unknown_key_and_missing_signature():
    path, query, headers, _ = sign("GET", "http://h/services/Walrus/b", "s3")
    with pytest.raises(SigV4Error) as err:
        verify("GET", path, query, headers, None, lambda k: ("other", "1"), "s3")
    assert err.value.code == "SignatureDoesNotMatch"
    with pytest.raises(SigV4Error) as err:
        verify("GET", path, query, headers, None, lambda k: None, "s3")
    assert err.value.code == "InvalidAccessKeyId"
    with pytest.raises(SigV4Error) as err:
        verify("GET", path, query, {"Host": "h"}, None, lookup, "ec2")
    assert err.value.code == "AuthFailure"


def test_tampered_header_and_skewed_clock():
    path, query, headers, _ = sign("GET", "http://h/services/Walrus/b", "s3", headers={"x-amz-meta-a": "1"})
    headers["x-amz-meta-a"] = "2"
    with pytest.raises(SigV4Error):
        verify("GET", path, query, headers, None, lookup, "s3")
    path, query, headers, _ = sign("GET", "http://h/services/Walrus/b", "s3")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=20)
    with pytest.raises(SigV4Error) as err:
        verify("GET", path, query, headers, None, lookup, "s3", now=later)
    assert err.value.code == "RequestTimeTooSkewed"


def test_presigned_url():
    req = AWSRequest(method="GET", url="http://h:8773/services/Walrus/b/k")
    S3SigV4QueryAuth(CREDS, "s3", "eucalyptus", expires=60).add_auth(req)
    parts = urlsplit(req.prepare().url)
    res = verify("GET", parts.path, parts.query, {"Host": "h:8773"}, None, lookup, "s3")
    assert res.payload_mode == "unsigned"
    expired = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120)
    with pytest.raises(SigV4Error):
        verify("GET", parts.path, parts.query, {"Host": "h:8773"}, None, lookup, "s3", now=expired)


def _chunked(auth_res, chunks):
    import hmac

    prev, out = auth_res.signature, b""
    for data in chunks + [b""]:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", auth_res.amz_date, auth_res.scope, prev,
                             hashlib.sha256(b"").hexdigest(), hashlib.sha256(data).hexdigest()])
        sig = hmac.new(auth_res.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        out += f"{len(data):x};chunk-signature={sig}\r\n".encode() + data + b"\r\n"
        prev = sig
    return out


def test_streaming_chunks_verify_and_a_tampered_chunk_fails():
    # botocore's S3 signer would replace the declared hash; the generic one signs it as given.
    hdrs = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}
    path, query, headers, _ = sign("PUT", "http://h/services/Walrus/b/k", "s3", headers=hdrs, auth_cls=SigV4Auth)
    res = verify("PUT", path, query, headers, None, lookup, "s3")
    assert res.payload_mode == "streaming"
    body = _chunked(res, [b"a" * 70000, b"b" * 123])
    dec = ChunkedDecoder(res)
    data = b"".join(dec.feed(body[i:i + 1000]) for i in range(0, len(body), 1000))
    assert data == b"a" * 70000 + b"b" * 123 and dec.finished
    bad = bytearray(body)
    bad[200] ^= 1
    with pytest.raises(SigV4Error):
        ChunkedDecoder(res).feed(bytes(bad))


def test_query_needing_encoding_and_unicode_key_with_botocore_client():
    """The exact request boto3 builds (ListObjectsV2 with awkward parameters) verifies."""
    import boto3
    from botocore.config import Config

    seen = {}

    def capture(request, **_):
        parts = urlsplit(request.url)
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        seen.update(path=parts.path, query=parts.query, headers=headers,
                    host=parts.netloc, method=request.method)

    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9/services/Walrus", aws_access_key_id=AK,
                      aws_secret_access_key=SK, region_name="eucalyptus",
                      config=Config(s3={"addressing_style": "path"}))
    s3.meta.events.register("before-send.s3.*", lambda request, **kw: capture(request) or _ok())
    s3.list_objects_v2(Bucket="b", Prefix="données/€ a+b=c&d", Delimiter="/", StartAfter="x y")
    assert "%E2%82%AC" in seen["query"] and "%2B" in seen["query"]
    headers = dict(seen["headers"], Host=seen["host"])
    res = verify(seen["method"], seen["path"], seen["query"], headers, None, lookup, "s3", service="s3")
    assert res.access_key == AK
    s3.put_object(Bucket="b", Key="dir/ünï cødé ☃.txt", Body=b"")
    assert seen["headers"]["X-Amz-Content-SHA256"] == hashlib.sha256(b"").hexdigest()
    headers = dict(seen["headers"], Host=seen["host"])
    assert verify("PUT", seen["path"], seen["query"], headers, None, lookup, "s3").payload_mode == "signed"
    # The path is signed exactly as sent: the same key percent-encoded differently fails.
    with pytest.raises(SigV4Error) as err:
        verify("PUT", seen["path"].replace("%E2%98%83", "%e2%98%83"), seen["query"], headers, None, lookup, "s3")
    assert err.value.code == "SignatureDoesNotMatch"


def _ok():
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, **_):
            yield b""

    return AWSResponse("http://x", 200, {}, Raw())


def test_date_header_instead_of_x_amz_date():
    from email.utils import formatdate

    path, query, headers, _ = sign("GET", "http://h/services/Walrus/b", "s3")
    # Re-sign by hand with only a Date header: same time, RFC 1123 form.
    when = dt.datetime.strptime(headers.pop("X-Amz-Date"), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    headers["Date"] = formatdate(when.timestamp(), usegmt=True)
    headers["Authorization"] = headers["Authorization"].replace("x-amz-date", "date")
    # The old signature covered x-amz-date: must now fail, proving the Date header is what is signed.
    with pytest.raises(SigV4Error):
        verify("GET", path, query, headers, None, lookup, "s3")
    import hmac

    from components.common.sigv4 import canonical_query, signing_key

    amz = when.strftime("%Y%m%dT%H%M%SZ")
    signed = "date;host;x-amz-content-sha256"
    canon = "\n".join(["GET", path, canonical_query(query), f"date:{headers['Date']}\nhost:h\n"
                       f"x-amz-content-sha256:{headers['X-Amz-Content-SHA256']}\n", signed,
                       headers["X-Amz-Content-SHA256"]])
    scope = f"{amz[:8]}/eucalyptus/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canon.encode()).hexdigest()])
    sig = hmac.new(signing_key(SK, amz[:8], "eucalyptus", "s3"), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={signed}, Signature={sig}"
    assert verify("GET", path, query, headers, None, lookup, "s3").amz_date == amz


def test_wrong_service_and_unsupported_payload_forms():
    path, query, headers, _ = sign("GET", "http://h/services/Walrus/b", "ec2")
    with pytest.raises(SigV4Error) as err:
        verify("GET", path, query, headers, None, lookup, "s3", service="s3")
    assert err.value.code == "AuthorizationHeaderMalformed" and err.value.http_status == 400
    hdrs = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"}  # no SDK of ours sends it
    path, query, headers, _ = sign("PUT", "http://h/services/Walrus/b/k", "s3", headers=hdrs, auth_cls=SigV4Auth)
    with pytest.raises(SigV4Error) as err:
        verify("PUT", path, query, headers, None, lookup, "s3")
    assert err.value.code == "InvalidArgument" and "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" in err.value.message


def test_presigned_bounds_and_ec2_skew():
    req = AWSRequest(method="GET", url="http://h:8773/services/Walrus/b/k")
    S3SigV4QueryAuth(CREDS, "s3", "eucalyptus", expires=60).add_auth(req)
    parts = urlsplit(req.prepare().url)
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
    with pytest.raises(SigV4Error) as err:
        verify("GET", parts.path, parts.query, {"Host": "h:8773"}, None, lookup, "s3", now=earlier)
    assert err.value.code == "RequestTimeTooSkewed"
    # X-Amz-Expires is signed: raising it past a week is refused before the signature.
    too_long = parts.query.replace("X-Amz-Expires=60", f"X-Amz-Expires={8 * 24 * 3600}")
    with pytest.raises(SigV4Error) as err:
        verify("GET", parts.path, too_long, {"Host": "h:8773"}, None, lookup, "s3")
    assert err.value.code == "AuthorizationHeaderMalformed"
    tampered = parts.query.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
    with pytest.raises(SigV4Error) as err:
        verify("GET", parts.path, tampered, {"Host": "h:8773"}, None, lookup, "s3")
    assert err.value.code == "SignatureDoesNotMatch"
    body = b"Action=DescribeRegions&Version=2016-11-15"
    path, query, headers, _ = sign("POST", "http://h/services/Eucalyptus", "ec2", body)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=16)
    with pytest.raises(SigV4Error) as err:
        verify("POST", path, query, headers, hashlib.sha256(body).hexdigest(), lookup, "ec2", now=later)
    assert err.value.code == "RequestExpired"


def _streaming_auth():
    hdrs = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}
    path, query, headers, _ = sign("PUT", "http://h/services/Walrus/b/k", "s3", headers=hdrs, auth_cls=SigV4Auth)
    return verify("PUT", path, query, headers, None, lookup, "s3")


@pytest.mark.parametrize("mangle,what", [
    (lambda body: body + b"extra", "after the final chunk"),
    (lambda body: body.replace(b"x" * 100 + b"\r\n", b"x" * 100 + b"\n\n"), "CRLF"),
    (lambda body: b"zz;" + body[body.index(b"chunk-signature"):], "chunk size"),
    (lambda body: b"1" * 5000, "too long"),
])
def test_malformed_chunked_bodies(mangle, what):
    res = _streaming_auth()
    body = mangle(_chunked(res, [b"x" * 100]))
    with pytest.raises(SigV4Error) as err:
        ChunkedDecoder(res).feed(body)
    assert err.value.code == "IncompleteBody" and what in err.value.message


def test_chunked_decoder_fed_one_byte_at_a_time_and_reordered_chunks():
    res = _streaming_auth()
    body = _chunked(res, [b"one", b"two" * 1000, b"three"])
    dec = ChunkedDecoder(res)
    assert b"".join(dec.feed(body[i:i + 1]) for i in range(len(body))) == b"one" + b"two" * 1000 + b"three"
    assert dec.finished and dec.decoded == 3 + 3000 + 5
    # Each chunk's signature chains on the previous one: chunks cannot be reordered.
    body = _chunked(res, [b"AAAA", b"BBBB"])
    first, second = body.index(b"4;chunk"), body.index(b"4;chunk", body.index(b"AAAA"))
    end = body.index(b"BBBB") + 6
    swapped = body[second:end] + body[first:second] + body[end:]
    with pytest.raises(SigV4Error) as err:
        ChunkedDecoder(res).feed(swapped)
    assert err.value.code == "SignatureDoesNotMatch"


def test_x_amz_date_is_parsed_exactly_and_a_bad_one_is_a_malformed_request():
    for value in ("20261202T224715Z", "19991231T235959Z", "20240229T000000Z"):
        assert _parse_amz_date(value) == dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    for bad in ("20261202T224715", "2026120T2247159Z", "20261302T224715Z", "20230229T000000Z", "2026-12-02T22:47:15Z",
                "20261202 224715Z", "2026120²T224715Z", "+0261202T224715Z", "20261202T246060Z", ""):
        with pytest.raises(ValueError):
            _parse_amz_date(bad)
    path, query, headers, _ = sign("GET", "http://h/services/Eucalyptus?Action=DescribeRegions", "ec2")
    headers["X-Amz-Date"] = "20261302T224715Z"
    with pytest.raises(SigV4Error) as err:
        verify("GET", path, query, headers, None, lookup, "ec2")
    assert err.value.code == "AuthFailure" and "bad X-Amz-Date '20261302T224715Z'" in str(err.value)


def test_verifying_a_request_imports_nothing_new():
    """A member promoted to primary serves its first request without loading a module:
    strptime's first call (imports _strptime, builds its tables) cost a Walrus takeover
    about 2 ms."""
    code = ("import sys; from tests.unit.test_sigv4 import sign, lookup; from components.common.sigv4 import verify; "
            "p, q, h, _ = sign('GET', 'http://h/services/Walrus/b/k', 's3'); before = set(sys.modules); "
            "verify('GET', p, q, h, None, lookup, 's3'); print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]", out.stdout


def test_a_non_ascii_presigned_signature_is_malformed_not_a_crash():
    req = AWSRequest(method="GET", url="http://h:8773/services/Walrus/b/k")
    S3SigV4QueryAuth(CREDS, "s3", "eucalyptus", expires=60).add_auth(req)
    parts = urlsplit(req.prepare().url)
    query = parts.query.split("&X-Amz-Signature=")[0] + "&X-Amz-Signature=" + "%C3%A9" * 64
    with pytest.raises(SigV4Error) as err:
        verify("GET", parts.path, query, {"Host": "h:8773"}, None, lookup, "s3")
    assert (err.value.code, err.value.http_status) == ("AuthorizationHeaderMalformed", 400)


def test_s3_header_auth_without_content_sha256_is_invalid_request():
    """S3 requires x-amz-content-sha256 on every header-signed SigV4 request."""
    path, query, headers, _ = sign("PUT", "http://h:8773/services/Walrus/b/k", "s3", b"data", auth_cls=SigV4Auth)
    assert not any(h.lower() == "x-amz-content-sha256" for h in headers)
    with pytest.raises(SigV4Error) as err:
        verify("PUT", path, query, headers, None, lookup, "s3", service="s3")
    assert (err.value.code, err.value.http_status) == ("InvalidRequest", 400)


@pytest.mark.parametrize("service, dialect, code, status", [
    ("s3", "s3", "AuthorizationHeaderMalformed", 400), ("ec2", "ec2", "AuthFailure", 401)])
def test_the_credential_scope_must_name_the_servers_region_and_service(service, dialect, code, status):
    url = "http://h:8773/services/Walrus/b/k" if service == "s3" else "http://h:8773/services/Eucalyptus"
    req = AWSRequest(method="GET", url=url)
    (S3SigV4Auth if service == "s3" else SigV4Auth)(CREDS, service, "us-east-1").add_auth(req)
    p = req.prepare()
    headers = dict(p.headers, Host="h:8773")
    parts = urlsplit(p.url)
    with pytest.raises(SigV4Error) as err:
        verify("GET", parts.path, parts.query, headers, None, lookup, dialect, service=service, region="eucalyptus")
    assert (err.value.code, err.value.http_status) == (code, status)
    assert verify("GET", parts.path, parts.query, headers, None, lookup, dialect, service=service).region \
        == "us-east-1"  # without a region to hold it to, the signature itself is good
    path, query, headers, _ = sign("GET", url, "sts" if service == "ec2" else "s3")
    if service == "ec2":  # another service's credential
        with pytest.raises(SigV4Error) as err:
            verify("GET", path, query, headers, None, lookup, dialect, service=service, region="eucalyptus")
        assert err.value.code == code


def test_an_ec2_presigned_query_signs_the_empty_body_hash():
    """botocore's SigV4QueryAuth (every service but S3) signs SHA-256 of the body, not
    UNSIGNED-PAYLOAD: boto3's ec2.generate_presigned_url was refused as a bad signature."""
    from botocore.auth import SigV4QueryAuth

    req = AWSRequest(method="GET", url="http://h:8773/services/Eucalyptus?Action=DescribeAvailabilityZones"
                                       "&Version=2016-11-15")
    SigV4QueryAuth(CREDS, "ec2", "eucalyptus", expires=60).add_auth(req)
    parts = urlsplit(req.prepare().url)
    res = verify("GET", parts.path, parts.query, {"Host": "h:8773"}, hashlib.sha256(b"").hexdigest(), lookup,
                 "ec2", service="ec2", region="eucalyptus")
    assert res.payload_mode == "signed" and res.service == "ec2"


def test_sign_makes_what_verify_and_botocore_agree_on():
    from components.common.sigv4 import sign as sign_request

    headers = sign_request("HEAD", "/services/Walrus/b/a%20key", "", "h:8773", AK, SK, "eucalyptus", "s3")
    res = verify("HEAD", "/services/Walrus/b/a%20key", "", dict(headers, Host="h:8773"), None, lookup, "s3",
                 service="s3", region="eucalyptus")
    assert res.account_id == "123456789012" and res.payload_mode == "signed"
    req = AWSRequest(method="HEAD", url="http://h:8773/services/Walrus/b/a%20key")
    S3SigV4Auth(CREDS, "s3", "eucalyptus").add_auth(req)
    same_time = sign_request("HEAD", "/services/Walrus/b/a%20key", "", "h:8773", AK, SK, "eucalyptus", "s3",
                             now=_parse_amz_date(req.headers["X-Amz-Date"]))
    assert same_time["authorization"] == req.headers["Authorization"]
