"""What the pinned botocore puts on the wire for Walrus, and that our SigV4 verification accepts it.

Walrus supports exactly the upload form botocore 1.44.5 sends to a plain-http
endpoint (see components/walrus/README.md). These tests capture the requests
before they leave the process (no network): if a botocore upgrade changes the
form, they say so here instead of as a mysterious 4xx from a running testbed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from components.common.sigv4 import SigV4Error, verify

AK, SK, ACCOUNT = "AKIAWIRE000000000001", "wiresecret00000000000000000000000000001", "000000000007"
ENDPOINT = "http://10.0.0.20:8773/services/Walrus"


class _Empty(io.BytesIO):
    def stream(self, **kwargs):
        yield self.read()


def capturing_client():
    """An S3 client whose requests are recorded and answered 200 with an empty body."""
    s3 = boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=AK, aws_secret_access_key=SK,
                      region_name="eucalyptus",
                      config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}))
    sent = []

    def answer(request, **kwargs):
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        # Header values may be bytes here; on the wire they are text.
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent.append((request.method, request.url, headers, body or b""))
        return AWSResponse(request.url, 200, {"ETag": '"0"'}, _Empty(b""))

    s3.meta.events.register("before-send.s3", answer)
    return s3, sent


def _verify(method, url, headers, body):
    parts = urlsplit(url)
    headers = {**headers, "Host": parts.netloc}  # urllib3 adds it on the wire
    return verify(method, parts.path, parts.query, headers, None,
                  lambda k: (SK, ACCOUNT) if k == AK else None, dialect="s3")


def _header(headers: dict, name: str) -> str:
    return next(v for k, v in headers.items() if k.lower() == name)


@pytest.mark.parametrize("upload", ["put_object", "upload_fileobj"])
def test_uploads_to_plain_http_are_a_signed_sha256_with_a_signed_crc32(upload):
    s3, sent = capturing_client()
    body = b"machine image bytes " * 1000
    if upload == "put_object":
        s3.put_object(Bucket="images", Key="emi/disk.img", Body=body)
    else:
        s3.upload_fileobj(io.BytesIO(body), "images", "emi/disk.img")
    [(method, url, headers, wire_body)] = [r for r in sent if r[0] == "PUT"]
    # The endpoint's path prefix is kept with path-style addressing (and signed below).
    assert urlsplit(url).path == "/services/Walrus/images/emi/disk.img"
    assert wire_body == body  # not aws-chunked
    assert _header(headers, "x-amz-content-sha256") == hashlib.sha256(body).hexdigest()
    assert _header(headers, "x-amz-checksum-crc32") == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    signed = _header(headers, "authorization").split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-content-sha256", "x-amz-checksum-crc32", "x-amz-date"} <= set(signed)
    assert not any(k.lower() == "x-amz-trailer" for k in headers)
    res = _verify(method, url, headers, wire_body)
    assert (res.access_key, res.account_id, res.payload_mode) == (AK, ACCOUNT, "signed")


def test_a_changed_checksum_header_breaks_the_signature():
    s3, sent = capturing_client()
    s3.put_object(Bucket="images", Key="k", Body=b"abc")
    method, url, headers, body = sent[0]
    headers = {k: ("AAAAAA==" if k.lower() == "x-amz-checksum-crc32" else v) for k, v in headers.items()}
    with pytest.raises(SigV4Error) as err:
        _verify(method, url, headers, body)
    assert err.value.code == "SignatureDoesNotMatch"


def test_gets_and_listings_sign_the_prefixed_path_and_encoded_query():
    s3, sent = capturing_client()
    s3.get_object(Bucket="images", Key="dir/a b+c €.img", Range="bytes=0-9")
    s3.list_objects_v2(Bucket="images", Prefix="dir/é ", Delimiter="/", StartAfter="dir/a&b=c")
    for method, url, headers, body in sent:
        assert urlsplit(url).path.startswith("/services/Walrus/images")
        assert _verify(method, url, headers, body).payload_mode == "signed"
    assert "/services/Walrus/images/dir/a%20b%2Bc%20%E2%82%AC.img" in sent[0][1]
