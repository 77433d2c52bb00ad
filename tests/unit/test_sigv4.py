"""SigV4 verification against signatures made by botocore's own signer."""

from __future__ import annotations

import datetime as dt
import hashlib
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from components.common.sigv4 import ChunkedDecoder, SigV4Error, verify

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
