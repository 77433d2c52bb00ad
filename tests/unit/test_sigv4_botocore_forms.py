"""Every SigV4 form botocore produces for EC2 and S3, signed by botocore itself (real boto3
clients, requests captured before they leave the process), checked by our verification as
the CLC and Walrus call it.

botocore's forms: the Authorization header with the body's SHA-256 (EC2's form POSTs, S3
over http), the header with ``UNSIGNED-PAYLOAD`` (S3 over https, where botocore does not
hash bodies), and the presigned query (``generate_presigned_url``: S3 signs UNSIGNED-PAYLOAD,
EC2 the empty body's hash), and aws-chunked uploads with a trailing checksum
(``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, which it sends over https only). The signed-chunk
form (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``) comes from other SDKs, never from botocore;
it is checked, with chunks signed as the AWS reference says, in test_sigv4.py.
"""

from __future__ import annotations

import hashlib
import io
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from components.common.sigv4 import SigV4Error, verify

AK, SK, ACCOUNT = "AKIAFORMS00000000001", "formssecret000000000000000000000000000001", "000000000009"
EC2_XML = (b'<DescribeAvailabilityZonesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
           b"<availabilityZoneInfo/></DescribeAvailabilityZonesResponse>")


class _Body(io.BytesIO):
    def stream(self, **kwargs):
        yield self.read()


def capturing(service: str, scheme: str = "http", s3: dict | None = None, keys=(AK, SK), **config):
    """A boto3 client whose requests are recorded as they would go on the wire, answered 200."""
    path = "/services/Eucalyptus" if service == "ec2" else "/services/Walrus"
    client = boto3.client(service, endpoint_url=f"{scheme}://10.0.0.10:8773{path}", aws_access_key_id=keys[0],
                          aws_secret_access_key=keys[1], region_name="eucalyptus",
                          config=Config(retries={"total_max_attempts": 1},
                                        s3={"addressing_style": "path", **(s3 or {})}, **config))
    sent = []

    def answer(request, **kwargs):
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        elif body is not None and not isinstance(body, (bytes, str)):
            body = b"".join(body)
        body = body.encode() if isinstance(body, str) else (body or b"")
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent.append((request.method, request.url, headers, body))
        return AWSResponse(request.url, 200, {"ETag": '"0"'}, _Body(EC2_XML if service == "ec2" else b""))

    client.meta.events.register(f"before-send.{service}", answer)
    return client, sent


def check(method, url, headers, body, service):
    """Our verification, called as the CLC (EC2: with the body's hash) or Walrus (S3) call it."""
    parts = urlsplit(url)
    headers = {**headers, "Host": parts.netloc}  # the HTTP layer adds it on the wire
    payload = hashlib.sha256(body).hexdigest() if service == "ec2" else None
    return verify(method, parts.path, parts.query, headers, payload, lambda k: (SK, ACCOUNT) if k == AK else None,
                  dialect=service, service=service, region="eucalyptus")


def test_ec2_header_form():
    ec2, sent = capturing("ec2")
    ec2.describe_availability_zones(ZoneNames=["cluster1"])
    ec2.run_instances(ImageId="emi-12345678", MinCount=1, MaxCount=1, UserData="#!/bin/sh\necho hi\n")
    for method, url, headers, body in sent:
        assert method == "POST" and headers["Authorization"].startswith("AWS4-HMAC-SHA256")
        res = check(method, url, headers, body, "ec2")
        assert res.payload_mode == "signed" and res.account_id == ACCOUNT
    method, url, headers, body = sent[0]
    with pytest.raises(SigV4Error):
        check(method, url, headers, body.replace(b"cluster1", b"cluster2"), "ec2")


@pytest.mark.parametrize("operation, params", [
    ("describe_availability_zones", {}),
    ("describe_instances", {"InstanceIds": ["i-12345678"]}),
])
def test_ec2_presigned_query(operation, params):
    """botocore signs an EC2 presigned URL for POST (the operation's method); users open it
    with GET (boto3's ec2.generate_presigned_url was refused with AuthFailure)."""
    ec2, _ = capturing("ec2")
    for method in (None, "GET"):
        url = ec2.generate_presigned_url(operation, Params=params, ExpiresIn=300,
                                         **({"HttpMethod": method} if method else {}))
        assert "X-Amz-Signature=" in url and "X-Amz-Content-Sha256" not in url
        for used in ("GET", "POST"):
            assert check(used, url, {}, b"", "ec2").payload_mode == "signed"
        with pytest.raises(SigV4Error):
            check("GET", url.replace("Action=Describe", "Action=Xescribe"), {}, b"", "ec2")
        with pytest.raises(SigV4Error):
            check("PUT", url, {}, b"", "ec2")


def test_s3_header_form_with_the_body_hash_over_http():
    s3, sent = capturing("s3")
    s3.put_object(Bucket="chunky", Key="a key", Body=b"hello")
    s3.get_object(Bucket="chunky", Key="a key")
    s3.list_objects_v2(Bucket="chunky", Prefix="a/")
    for method, url, headers, body in sent:
        declared = headers["X-Amz-Content-SHA256"]
        assert declared == hashlib.sha256(body).hexdigest()
        assert check(method, url, headers, body, "s3").payload_mode == "signed"


def test_s3_header_form_with_unsigned_payload_over_https():
    s3, sent = capturing("s3", "https", s3={"payload_signing_enabled": False},
                         request_checksum_calculation="when_required")
    s3.put_object(Bucket="chunky", Key="k", Body=b"hello")
    s3.get_object(Bucket="chunky", Key="k")
    for method, url, headers, body in sent:
        assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
        assert check(method, url, headers, body, "s3").payload_mode == "unsigned"


@pytest.mark.parametrize("operation", ["get_object", "put_object", "head_object", "delete_object"])
def test_s3_presigned_query(operation):
    s3, _ = capturing("s3")
    url = s3.generate_presigned_url(operation, Params={"Bucket": "b", "Key": "dir/a b+c"}, ExpiresIn=300)
    method = {"get_object": "GET", "put_object": "PUT", "head_object": "HEAD", "delete_object": "DELETE"}[operation]
    assert check(method, url, {}, b"", "s3").payload_mode == "unsigned"
    with pytest.raises(SigV4Error):
        check("GET" if method != "GET" else "PUT", url, {}, b"", "s3")


def test_botocore_s_aws_chunked_upload_with_a_trailing_checksum_is_decoded_and_checked():
    """Over https botocore uploads aws-chunked: unsigned chunks, then a trailer with the body's
    CRC32 (STREAMING-UNSIGNED-PAYLOAD-TRAILER)."""
    import base64
    import zlib

    from components.common.sigv4 import ChunkedDecoder

    s3, sent = capturing("s3", "https")
    data = bytes(range(256)) * 300
    s3.put_object(Bucket="chunky", Key="k", Body=data)
    method, url, headers, body = sent[0]
    assert headers["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert "aws-chunked" in headers["Content-Encoding"] and headers["X-Amz-Trailer"] == "x-amz-checksum-crc32"
    assert check(method, url, headers, body, "s3").payload_mode == "trailer"
    decoder = ChunkedDecoder(None, trailer=True)
    got = b"".join(decoder.feed(body[i:i + 7]) for i in range(0, len(body), 7))  # any split of the stream
    assert got == data and decoder.finished and headers["X-Amz-Decoded-Content-Length"] == str(len(data))
    assert decoder.trailers["x-amz-checksum-crc32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    with pytest.raises(SigV4Error):
        ChunkedDecoder(None, trailer=True).feed(body + b"more")
    with pytest.raises(SigV4Error):  # a signed-chunk header where unsigned chunks were signed for
        ChunkedDecoder(None, trailer=True).feed(b"3;chunk-signature=" + b"0" * 64 + b"\r\nabc\r\n")


@pytest.mark.loopback  # starts a Walrus on 127.0.0.1
def test_walrus_stores_botocore_s_aws_chunked_uploads_and_refuses_a_wrong_trailer(tmp_path):
    """The https form sent to a real Walrus (as a TLS terminator in front of it would pass it
    on): PutObject and a multipart part, with HTTP chunked transfer, as botocore sends them."""
    import http.client

    from tests.support.clc_client import s3_client
    from tests.support.processes import ADMIN, component

    data = bytes(range(256)) * 40000  # 10 MB
    with component("walrus", tmp_path) as (base, _, _):
        s3_client(base).create_bucket(Bucket="chunky")
        port = int(base.rsplit(":", 1)[1])

        def send(method, url, headers, body):
            parts = urlsplit(url)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {k: v for k, v in headers.items() if k.lower() != "transfer-encoding"}
            conn.request(method, f"{parts.path}?{parts.query}" if parts.query else parts.path,
                         body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                         headers={**headers, "Host": parts.netloc}, encode_chunked=True)
            r = conn.getresponse()
            return r.status, r.read()

        client, sent = capturing("s3", "https", keys=(ADMIN["access_key"], ADMIN["secret_key"]))
        client.put_object(Bucket="chunky", Key="whole", Body=data)
        client.upload_part(Bucket="chunky", Key="parts", UploadId="U", PartNumber=1, Body=data)
        status, answer = send(*sent[0])
        assert status == 200, answer
        assert s3_client(base).get_object(Bucket="chunky", Key="whole")["Body"].read() == data
        upload = s3_client(base).create_multipart_upload(Bucket="chunky", Key="parts")["UploadId"]
        method, url, headers, body = sent[1]
        status, answer = send(method, url.replace("uploadId=U", f"uploadId={upload}"), headers, body)
        assert status == 403  # the upload id is signed: botocore signed "U"
        client.upload_part(Bucket="chunky", Key="parts", UploadId=upload, PartNumber=1, Body=data)
        status, answer = send(*sent[2])
        assert status == 200, answer
        s3 = s3_client(base)
        s3.complete_multipart_upload(Bucket="chunky", Key="parts", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": s3.list_parts(Bucket="chunky", Key="parts", UploadId=upload)["Parts"][0]["ETag"]}]})
        assert s3.get_object(Bucket="chunky", Key="parts")["Body"].read() == data

        client.put_object(Bucket="chunky", Key="bad", Body=data)
        method, url, headers, body = sent[3]
        trailer = body.rindex(b"x-amz-checksum-crc32:")
        wrong = body[:trailer] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n"
        status, answer = send(method, url, headers, wrong)
        assert status == 400 and b"BadDigest" in answer
        assert "Contents" not in s3.list_objects_v2(Bucket="chunky", Prefix="bad")  # nothing stored
