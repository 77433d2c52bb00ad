"""Walrus's S3 API beyond single objects, driven by boto3 and the AWS CLI on loopback:
multipart upload, DeleteObjects, CopyObject, conditional requests, versioning, ACLs."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.processes import ADMIN, component

from .test_walrus import OTHER, FakeCLC, _raw_code, _xml_code, code_of, s3_client

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

MiB = 2**20


@pytest.fixture(scope="module")
def walrus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walrus-s3")
    clc = FakeCLC()  # knows a second account, OTHER
    try:
        with component("walrus", tmp, max_object_bytes=12 * MiB, endpoints={"clc": clc.url}) as (base, cfg, proc):
            yield base, tmp, proc
    finally:
        clc.close()


def stored_files(tmp: Path) -> set[str]:
    return {p.name for p in (tmp / "data" / "objects").iterdir()}


def s3_etag(parts: list[bytes]) -> str:
    """The ETag S3 gives a multipart object, computed here from the parts' bytes."""
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def test_multipart_upload_parts_copy_list_and_complete(walrus):
    base, tmp, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="multi")
    initial = stored_files(tmp)
    source = os.urandom(3 * MiB)
    s3.put_object(Bucket="multi", Key="source", Body=source)
    upload = s3.create_multipart_upload(Bucket="multi", Key="dir/big", ContentType="application/x-image",
                                        Metadata={"kind": "image"})["UploadId"]
    listed = s3.list_multipart_uploads(Bucket="multi")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("dir/big", upload)]
    first, last = os.urandom(5 * MiB), os.urandom(1000)
    p1 = s3.upload_part(Bucket="multi", Key="dir/big", UploadId=upload, PartNumber=1, Body=os.urandom(5 * MiB))
    p1 = s3.upload_part(Bucket="multi", Key="dir/big", UploadId=upload, PartNumber=1, Body=first)  # replaced
    assert p1["ETag"] == '"%s"' % hashlib.md5(first).hexdigest()
    copied = s3.upload_part_copy(Bucket="multi", Key="dir/big", UploadId=upload, PartNumber=2,
                                 CopySource={"Bucket": "multi", "Key": "source"}, CopySourceRange="bytes=1-1048576")
    assert copied["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(source[1:1048577]).hexdigest()
    p3 = s3.upload_part(Bucket="multi", Key="dir/big", UploadId=upload, PartNumber=3, Body=last)
    parts = s3.list_parts(Bucket="multi", Key="dir/big", UploadId=upload)
    assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 5 * MiB), (2, MiB), (3, 1000)]
    page = s3.list_parts(Bucket="multi", Key="dir/big", UploadId=upload, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    rest = s3.list_parts(Bucket="multi", Key="dir/big", UploadId=upload, PartNumberMarker=2)
    assert [p["PartNumber"] for p in rest["Parts"]] == [3] and not rest["IsTruncated"]
    # The second part is below S3's 5 MiB minimum: only the last part may be that small.
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(Bucket="multi", Key="dir/big", UploadId=upload, MultipartUpload={"Parts": [
            {"PartNumber": n, "ETag": e} for n, e in
            ((1, p1["ETag"]), (2, copied["CopyPartResult"]["ETag"]), (3, p3["ETag"]))]})
    assert code_of(err.value) == "EntityTooSmall"
    done = s3.complete_multipart_upload(Bucket="multi", Key="dir/big", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 3, "ETag": p3["ETag"]}]})
    assert done["ETag"] == s3_etag([first, last])
    got = s3.get_object(Bucket="multi", Key="dir/big")
    assert got["Body"].read() == first + last
    assert (got["ETag"], got["ContentType"], got["Metadata"]) == (s3_etag([first, last]), "application/x-image",
                                                                   {"kind": "image"})
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="multi")
    # Every part's file is gone (the unused part 2 too): only the two objects' files are left.
    assert len(stored_files(tmp) - initial) == 2


def test_bad_multipart_requests_get_s3_errors_and_change_nothing(walrus):
    base, tmp, proc = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="badmulti")
    s3.put_object(Bucket="badmulti", Key="src", Body=b"ten bytes!")
    initial = stored_files(tmp)
    upload = s3.create_multipart_upload(Bucket="badmulti", Key="k")["UploadId"]
    big = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(5 * MiB)]
    etags = [s3.upload_part(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=n + 1, Body=b)["ETag"]
             for n, b in enumerate(big[:2])]
    before = (stored_files(tmp), s3.list_parts(Bucket="badmulti", Key="k", UploadId=upload)["Parts"])

    def complete(parts):
        return s3.complete_multipart_upload(Bucket="badmulti", Key="k", UploadId=upload,
                                            MultipartUpload={"Parts": parts})

    cases = [
        (lambda: complete([{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]),
         "InvalidPartOrder"),
        (lambda: complete([{"PartNumber": 1, "ETag": etags[1]}]), "InvalidPart"),
        (lambda: complete([{"PartNumber": 1, "ETag": etags[0]}, {"PartNumber": 7, "ETag": etags[1]}]),
         "InvalidPart"),
        (lambda: s3.upload_part(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=10001, Body=b"x"),
         "InvalidArgument"),
        (lambda: s3.upload_part(Bucket="badmulti", Key="other", UploadId=upload, PartNumber=1, Body=b"x"),
         "NoSuchUpload"),
        (lambda: s3.upload_part(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=3, Body=big[2],
                                ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg=="), "BadDigest"),
        (lambda: s3.upload_part_copy(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=3,
                                     CopySource="badmulti/missing"), "NoSuchKey"),
        (lambda: s3.upload_part_copy(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=3,
                                     CopySource="badmulti/src", CopySourceRange="bytes=3-1"), "InvalidArgument"),
        (lambda: s3.upload_part_copy(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=3,
                                     CopySource="badmulti/src", CopySourceRange="bytes=0-99"), "InvalidArgument"),
        (lambda: s3.list_parts(Bucket="badmulti", Key="k", UploadId=upload, MaxParts=-1), "InvalidArgument"),
    ]
    for action, code in cases:
        with pytest.raises(ClientError) as err:
            action()
        assert code_of(err.value) == code
    assert proc.poll() is None
    assert (stored_files(tmp), s3.list_parts(Bucket="badmulti", Key="k", UploadId=upload)["Parts"]) == before
    # Three parts of 5 MiB are above this Walrus's 12 MiB max_object_bytes.
    etags.append(s3.upload_part(Bucket="badmulti", Key="k", UploadId=upload, PartNumber=3, Body=big[2])["ETag"])
    with pytest.raises(ClientError) as err:
        complete([{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)])
    assert code_of(err.value) == "EntityTooLarge"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="badmulti", Key="k")
    assert code_of(err.value) == "NoSuchKey"
    # Abort removes the upload and its parts' files; the upload is gone for good.
    s3.abort_multipart_upload(Bucket="badmulti", Key="k", UploadId=upload)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="badmulti")
    assert stored_files(tmp) == initial
    with pytest.raises(ClientError) as err:
        complete([{"PartNumber": 1, "ETag": etags[0]}])
    assert code_of(err.value) == "NoSuchUpload"


def test_list_multipart_uploads_prefix_delimiter_and_pages(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="uploads")
    ids = {}
    for key in ("a/1", "a/2", "b", "b", "c/x/y"):
        ids.setdefault(key, []).append(s3.create_multipart_upload(Bucket="uploads", Key=key)["UploadId"])
    listed = s3.list_multipart_uploads(Bucket="uploads")["Uploads"]
    assert [u["Key"] for u in listed] == ["a/1", "a/2", "b", "b", "c/x/y"]
    assert [u["UploadId"] for u in listed if u["Key"] == "b"] == ids["b"]
    page = s3.list_multipart_uploads(Bucket="uploads", Delimiter="/")
    assert [u["Key"] for u in page["Uploads"]] == ["b", "b"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "c/"]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket="uploads", Prefix="a/")["Uploads"]] == ["a/1", "a/2"]
    seen, kw = [], {}
    while True:
        page = s3.list_multipart_uploads(Bucket="uploads", MaxUploads=2, **kw)
        seen += [(u["Key"], u["UploadId"]) for u in page["Uploads"]]
        if not page["IsTruncated"]:
            break
        kw = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    assert seen == [(u["Key"], u["UploadId"]) for u in listed]
    # Deleting the bucket ends its uploads.
    for u in listed:
        s3.abort_multipart_upload(Bucket="uploads", Key=u["Key"], UploadId=u["UploadId"])
    s3.delete_bucket(Bucket="uploads")


def aws_s3(base: str, *args: str) -> str:
    """``aws s3 ARGS`` against a Walrus on loopback; its output (a failure fails the test)."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ADMIN["access_key"], AWS_SECRET_ACCESS_KEY=ADMIN["secret_key"],
               AWS_DEFAULT_REGION="eucalyptus", AWS_CONFIG_FILE="/dev/null")
    aws = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", f"{base}/services/Walrus", "s3"]
    out = subprocess.run(aws + list(args), capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_aws_cli_copies_a_multipart_file_up_and_back(tmp_path):
    """The AWS CLI switches to multipart above 8 MiB (upload and download)."""
    with component("walrus", tmp_path / "w") as (base, cfg, proc):
        s3_client(base).create_bucket(Bucket="cli-multi")
        data = os.urandom(20 * MiB + 12345)
        (tmp_path / "up.bin").write_bytes(data)
        aws_s3(base, "cp", str(tmp_path / "up.bin"), "s3://cli-multi/up.bin")
        aws_s3(base, "cp", "s3://cli-multi/up.bin", str(tmp_path / "down.bin"))
        assert (tmp_path / "down.bin").read_bytes() == data
        head = s3_client(base).head_object(Bucket="cli-multi", Key="up.bin")
        assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')


def _keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_delete_objects_verbose_quiet_and_per_key_errors(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="multidel")
    for k in ("a", "b", "c", "d", "e"):
        s3.put_object(Bucket="multidel", Key=k, Body=k.encode())
    out = s3.delete_objects(Bucket="multidel", Delete={"Objects": [
        {"Key": "a"}, {"Key": "b"}, {"Key": "never-there"}, {"Key": "c", "VersionId": "3sL4kqtJlcpXroDTDmJ"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["a", "b", "never-there"]
    assert [(e["Key"], e["Code"]) for e in out["Errors"]] == [("c", "NoSuchVersion")]
    assert _keys(s3, "multidel") == ["c", "d", "e"]
    out = s3.delete_objects(Bucket="multidel", Delete={"Objects": [{"Key": "c"}, {"Key": "d"}], "Quiet": True})
    assert "Deleted" not in out and "Errors" not in out and _keys(s3, "multidel") == ["e"]
    # More than 1,000 keys, none at all, or no digest of the body: refused, nothing deleted.
    with pytest.raises(ClientError) as err:
        s3.delete_objects(Bucket="multidel", Delete={"Objects": [{"Key": f"k{i}"} for i in range(1001)] + [
            {"Key": "e"}]})
    assert code_of(err.value) == "MalformedXML"
    assert _raw_code(base, "POST", "/multidel", b"<Delete></Delete>", {"Content-MD5": _md5(b"<Delete></Delete>")},
                     query="delete") == (400, "MalformedXML")
    body = b"<Delete><Object><Key>e</Key></Object></Delete>"
    assert _raw_code(base, "POST", "/multidel", body, query="delete") == (400, "InvalidRequest")
    assert _raw_code(base, "POST", "/multidel", body, {"Content-MD5": _md5(b"other")}, query="delete") == \
        (400, "BadDigest")
    assert _keys(s3, "multidel") == ["e"]
    # boto3's collection delete uses DeleteObjects.
    import boto3

    bucket = boto3.resource("s3", endpoint_url=f"{base}/services/Walrus", aws_access_key_id=ADMIN["access_key"],
                            aws_secret_access_key=ADMIN["secret_key"], region_name="eucalyptus",
                            config=s3.meta.config).Bucket("multidel")
    for i in range(30):
        s3.put_object(Bucket="multidel", Key=f"many/{i}", Body=b"x")
    bucket.objects.delete()
    assert _keys(s3, "multidel") == []


def _md5(body: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(body).digest()).decode()


def test_copy_object_directives_and_conditions(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    for b in ("copysrc", "copydst"):
        s3.create_bucket(Bucket=b)
    data = os.urandom(2 * MiB + 1)
    etag = s3.put_object(Bucket="copysrc", Key="src", Body=data, ContentType="text/x-src",
                         Metadata={"origin": "src"})["ETag"]
    out = s3.copy_object(Bucket="copydst", Key="same", CopySource={"Bucket": "copysrc", "Key": "src"})
    assert out["CopyObjectResult"]["ETag"] == etag
    got = s3.get_object(Bucket="copydst", Key="same")
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == (data, "text/x-src", {"origin": "src"})
    s3.copy_object(Bucket="copysrc", Key="replaced", CopySource="copysrc/src", MetadataDirective="REPLACE",
                   ContentType="text/x-new", Metadata={"fresh": "yes"})
    head = s3.head_object(Bucket="copysrc", Key="replaced")
    assert (head["ContentType"], head["Metadata"], head["ETag"]) == ("text/x-new", {"fresh": "yes"}, etag)
    # Onto itself: only with new metadata.
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket="copysrc", Key="src", CopySource="copysrc/src")
    assert code_of(err.value) == "InvalidRequest"
    s3.copy_object(Bucket="copysrc", Key="src", CopySource="copysrc/src", MetadataDirective="REPLACE",
                   Metadata={"origin": "itself"})
    assert s3.head_object(Bucket="copysrc", Key="src")["Metadata"] == {"origin": "itself"}
    modified = s3.head_object(Bucket="copysrc", Key="src")["LastModified"]
    refused = [{"CopySourceIfMatch": '"0123"'}, {"CopySourceIfNoneMatch": etag},
               {"CopySourceIfModifiedSince": modified},
               {"CopySourceIfUnmodifiedSince": modified - dt.timedelta(seconds=5)},
               {"MetadataDirective": "SOMETIMES"}]
    for extra in refused:
        with pytest.raises(ClientError) as err:
            s3.copy_object(Bucket="copydst", Key="cond", CopySource="copysrc/src", **extra)
        assert code_of(err.value) == ("InvalidArgument" if "MetadataDirective" in extra else "PreconditionFailed")
    for bad, code in (("copysrc/missing", "NoSuchKey"), ("nosuchbucket/src", "NoSuchBucket"),
                      ("copysrc", "InvalidArgument"), ("copysrc/src?versionId=abc", "NoSuchVersion")):
        with pytest.raises(ClientError) as err:
            s3.copy_object(Bucket="copydst", Key="cond", CopySource=bad)
        assert code_of(err.value) == code
    assert "cond" not in _keys(s3, "copydst")
    s3.copy_object(Bucket="copydst", Key="cond", CopySource="copysrc/src", CopySourceIfMatch=etag,
                   CopySourceIfUnmodifiedSince=modified - dt.timedelta(seconds=5))  # If-Match wins
    assert s3.get_object(Bucket="copydst", Key="cond")["Body"].read() == data


def test_conditional_get_and_head(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="conditional")
    etag = s3.put_object(Bucket="conditional", Key="k", Body=b"conditional body")["ETag"]
    modified = s3.head_object(Bucket="conditional", Key="k")["LastModified"]
    before, after = modified - dt.timedelta(seconds=1), modified + dt.timedelta(seconds=1)
    cases = [
        ({"IfMatch": etag}, 200), ({"IfMatch": f'"x", {etag}'}, 200), ({"IfMatch": "*"}, 200),
        ({"IfMatch": '"0000"'}, 412), ({"IfUnmodifiedSince": before}, 412), ({"IfUnmodifiedSince": modified}, 200),
        ({"IfNoneMatch": etag}, 304), ({"IfNoneMatch": '"0000"'}, 200), ({"IfModifiedSince": modified}, 304),
        ({"IfModifiedSince": before}, 200),
        # S3's combinations: If-Match that holds beats If-Unmodified-Since; If-None-Match that
        # fails beats If-Modified-Since.
        ({"IfMatch": etag, "IfUnmodifiedSince": before}, 200),
        ({"IfNoneMatch": '"0000"', "IfModifiedSince": after}, 200),
        ({"IfNoneMatch": etag, "IfModifiedSince": before}, 304),
    ]
    for headers, status in cases:
        for call in (s3.get_object, s3.head_object):
            try:
                got = call(Bucket="conditional", Key="k", **headers)
                assert (status, got["ETag"]) == (200, etag), headers
                if call is s3.get_object:
                    assert got["Body"].read() == b"conditional body"
            except ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == status, (headers, call)
                if status == 412 and call is s3.get_object:
                    assert code_of(exc) == "PreconditionFailed"
                if status == 304:
                    assert exc.response["ResponseMetadata"]["HTTPHeaders"]["etag"] == etag


def test_aws_cli_sync_and_recursive_rm(walrus, tmp_path):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="synced")
    s3.create_bucket(Bucket="synced-copy")
    src = tmp_path / "src"
    files = {"a.txt": b"alpha", "dir/b.bin": os.urandom(100_000), "dir/sub/c": b"gamma", "big.img": os.urandom(9 * MiB)}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
        # Older than the upload by more than LastModified's one-second resolution: sync
        # re-uploads a file whose mtime is newer than the object's.
        os.utime(src / name, (time.time() - 60, time.time() - 60))
    out = aws_s3(base, "sync", str(src), "s3://synced/")
    assert out.count("upload:") == 4
    assert sorted(_keys(s3, "synced")) == sorted(files)
    (src / "a.txt").write_bytes(b"alpha, changed")
    files["a.txt"] = b"alpha, changed"
    out = aws_s3(base, "sync", str(src), "s3://synced/")
    assert out.count("upload:") == 1 and "a.txt" in out  # only what changed
    out = aws_s3(base, "sync", "s3://synced/", "s3://synced-copy/")  # bucket to bucket: CopyObject
    assert out.count("copy:") == 4
    aws_s3(base, "sync", "s3://synced-copy/", str(tmp_path / "down"))
    assert {n: (tmp_path / "down" / n).read_bytes() for n in files} == files
    aws_s3(base, "rm", "--recursive", "s3://synced-copy/")
    assert _keys(s3, "synced-copy") == []


def _history(s3, bucket: str) -> list[tuple]:
    """(key, version id, is latest) of the versions as listed, then ("marker", key, id, is latest)
    of the delete markers (boto3 parses the two apart)."""
    out = s3.list_object_versions(Bucket=bucket)
    return [(v["Key"], v["VersionId"], v["IsLatest"]) for v in out.get("Versions", [])] + \
        [("marker", m["Key"], m["VersionId"], m["IsLatest"]) for m in out.get("DeleteMarkers", [])]


def test_versioning_history_markers_and_suspension(walrus):
    base, tmp, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="versioned")
    initial = stored_files(tmp)
    s3.put_object(Bucket="versioned", Key="k", Body=b"v0")
    assert "Status" not in s3.get_bucket_versioning(Bucket="versioned")
    assert _history(s3, "versioned") == [("k", "null", True)]  # never versioned: the null version
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket="versioned")["Status"] == "Enabled"
    v1 = s3.put_object(Bucket="versioned", Key="k", Body=b"v1")["VersionId"]
    v2 = s3.put_object(Bucket="versioned", Key="k", Body=b"v2")["VersionId"]
    assert len({v1, v2, "null"}) == 3
    assert _history(s3, "versioned") == [("k", v2, True), ("k", v1, False), ("k", "null", False)]
    got = s3.get_object(Bucket="versioned", Key="k")
    assert (got["Body"].read(), got["VersionId"]) == (b"v2", v2)
    assert s3.get_object(Bucket="versioned", Key="k", VersionId=v1)["Body"].read() == b"v1"
    assert s3.get_object(Bucket="versioned", Key="k", VersionId="null")["Body"].read() == b"v0"
    assert s3.head_object(Bucket="versioned", Key="k", VersionId=v1)["ContentLength"] == 2
    # A delete without a version id leaves a marker: the key is gone from view, its versions stay.
    gone = s3.delete_object(Bucket="versioned", Key="k")
    marker = gone["VersionId"]
    assert gone["DeleteMarker"] is True
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="versioned", Key="k")
    assert code_of(err.value) == "NoSuchKey"
    assert err.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="versioned", Key="k", VersionId=marker)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 405
    assert "Contents" not in s3.list_objects_v2(Bucket="versioned")
    assert _history(s3, "versioned") == [("k", v2, False), ("k", v1, False), ("k", "null", False),
                                         ("marker", "k", marker, True)]
    # Removing the marker brings v2 back; removing v2 makes v1 current.
    s3.delete_object(Bucket="versioned", Key="k", VersionId=marker)
    assert s3.get_object(Bucket="versioned", Key="k")["Body"].read() == b"v2"
    s3.delete_object(Bucket="versioned", Key="k", VersionId=v2)
    assert s3.get_object(Bucket="versioned", Key="k")["Body"].read() == b"v1"
    for bad in (lambda: s3.get_object(Bucket="versioned", Key="k", VersionId="0123456789abcdef"),
                lambda: s3.delete_object(Bucket="versioned", Key="k", VersionId="0123456789abcdef")):
        with pytest.raises(ClientError) as err:
            bad()
        assert code_of(err.value) in ("NoSuchVersion", "404")
    s3.copy_object(Bucket="versioned", Key="from-null", CopySource={"Bucket": "versioned", "Key": "k",
                                                                     "VersionId": "null"})
    assert s3.get_object(Bucket="versioned", Key="from-null")["Body"].read() == b"v0"
    # Suspended: a new write is the "null" version, replacing the earlier one (and its bytes).
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Suspended"})
    assert s3.put_object(Bucket="versioned", Key="k", Body=b"s1").get("VersionId") == "null"
    assert [h for h in _history(s3, "versioned") if h[0] == "k"] == [("k", "null", True), ("k", v1, False)]
    assert s3.get_object(Bucket="versioned", Key="k", VersionId="null")["Body"].read() == b"s1"
    # A bucket with versions left is not empty; deleting every version empties it, files too.
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket="versioned")
    assert code_of(err.value) == "BucketNotEmpty"
    out = s3.list_object_versions(Bucket="versioned")
    s3.delete_objects(Bucket="versioned", Delete={"Objects": [
        {"Key": v["Key"], "VersionId": v["VersionId"]} for v in out.get("Versions", []) + out.get("DeleteMarkers", [])]})
    assert stored_files(tmp) == initial
    s3.delete_bucket(Bucket="versioned")
    s3.create_bucket(Bucket="vconf")
    bad = b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>"
    assert _raw_code(base, "PUT", "/vconf", bad, query="versioning") == (400, "MalformedXML")
    assert "Status" not in s3.get_bucket_versioning(Bucket="vconf")


def test_list_object_versions_pages(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="vpages")
    s3.put_bucket_versioning(Bucket="vpages", VersioningConfiguration={"Status": "Enabled"})
    for key in ("a", "b/x", "b/y", "c"):
        for i in range(2):
            s3.put_object(Bucket="vpages", Key=key, Body=str(i).encode())
    s3.delete_object(Bucket="vpages", Key="c")
    full = s3.list_object_versions(Bucket="vpages")
    every = sorted((v["Key"], v["VersionId"]) for v in full["Versions"] + full["DeleteMarkers"])
    seen, kw = [], {}
    while True:
        page = s3.list_object_versions(Bucket="vpages", MaxKeys=2, **kw)
        seen += [(v["Key"], v["VersionId"]) for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if not page["IsTruncated"]:
            break
        kw = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    assert sorted(seen) == every and len(seen) == len(every) == 9
    page = s3.list_object_versions(Bucket="vpages", Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/"]
    assert {v["Key"] for v in page["Versions"]} == {"a", "c"}


def anonymous(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """An unsigned request, as a browser or curl sends it: (status, body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{base}/services/Walrus{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _grants(acl: dict) -> set[tuple]:
    return {(g["Grantee"]["Type"], g["Grantee"].get("ID") or g["Grantee"].get("URI"), g["Permission"])
            for g in acl["Grants"]}


ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def test_canned_acls_and_anonymous_access(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    me = "000000000001"
    s3.create_bucket(Bucket="acls")
    s3.put_object(Bucket="acls", Key="public", Body=b"for everyone", ACL="public-read")
    s3.put_object(Bucket="acls", Key="private", Body=b"mine")
    assert _grants(s3.get_object_acl(Bucket="acls", Key="public")) == {
        ("CanonicalUser", me, "FULL_CONTROL"), ("Group", ALL_USERS, "READ")}
    assert _grants(s3.get_bucket_acl(Bucket="acls")) == {("CanonicalUser", me, "FULL_CONTROL")}
    assert anonymous(base, "GET", "/acls/public") == (200, b"for everyone")
    for method, path in (("GET", "/acls/private"), ("GET", "/acls"), ("GET", "/acls/missing"),
                         ("PUT", "/acls/new"), ("GET", "/acls?acl"), ("GET", "")):
        status, body = anonymous(base, method, path, b"x" if method == "PUT" else None)
        assert (status, _xml_code(body)) == (403, "AccessDenied"), (method, path)
    # A public-read bucket lists to anyone, and says 404 for a key it lacks.
    s3.put_bucket_acl(Bucket="acls", ACL="public-read")
    assert anonymous(base, "GET", "/acls")[0] == 200
    status, body = anonymous(base, "GET", "/acls/missing")
    assert (status, _xml_code(body)) == (404, "NoSuchKey")
    assert anonymous(base, "GET", "/acls/private")[0] == 403  # the object's own ACL still rules
    s3.put_bucket_acl(Bucket="acls", ACL="public-read-write")
    assert anonymous(base, "PUT", "/acls/dropped", b"anonymous bytes")[0] == 200
    assert s3.get_object(Bucket="acls", Key="dropped")["Body"].read() == b"anonymous bytes"
    s3.put_bucket_acl(Bucket="acls", ACL="private")
    assert anonymous(base, "GET", "/acls")[0] == 403
    # A new PUT of a key resets its ACL (private unless the request says otherwise).
    s3.put_object(Bucket="acls", Key="public", Body=b"not any more")
    assert anonymous(base, "GET", "/acls/public")[0] == 403
    # A bucket that is gone is 404 NoSuchBucket to anyone, as S3 says (it used to be 403).
    s3.create_bucket(Bucket="gone")
    s3.put_object(Bucket="gone", Key="k", Body=b"x", ACL="public-read")
    s3.delete_object(Bucket="gone", Key="k")
    s3.delete_bucket(Bucket="gone")
    status, body = anonymous(base, "GET", "/gone/k")
    assert (status, _xml_code(body)) == (404, "NoSuchBucket")


def test_acl_grants_to_other_accounts(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    other = s3_client(base, ak=OTHER["access_key"], sk=OTHER["secret_key"])
    s3.create_bucket(Bucket="granted")
    s3.put_object(Bucket="granted", Key="shared", Body=b"shared", GrantRead=f'id="{OTHER["account_id"]}"')
    s3.put_object(Bucket="granted", Key="authenticated", Body=b"any account", ACL="authenticated-read")
    s3.put_object(Bucket="granted", Key="secret", Body=b"secret")
    assert other.get_object(Bucket="granted", Key="shared")["Body"].read() == b"shared"
    assert other.get_object(Bucket="granted", Key="authenticated")["Body"].read() == b"any account"
    assert anonymous(base, "GET", "/granted/authenticated")[0] == 403
    for action in (lambda: other.get_object(Bucket="granted", Key="secret"),
                   lambda: other.get_object_acl(Bucket="granted", Key="shared"),
                   lambda: other.list_objects_v2(Bucket="granted"),
                   lambda: other.put_object(Bucket="granted", Key="x", Body=b"x"),
                   lambda: other.delete_bucket(Bucket="granted")):
        with pytest.raises(ClientError) as err:
            action()
        assert code_of(err.value) == "AccessDenied"
    # An AccessControlPolicy document: READ for the other account, READ_ACP for everyone.
    owner = s3.get_object_acl(Bucket="granted", Key="secret")["Owner"]
    s3.put_object_acl(Bucket="granted", Key="secret", AccessControlPolicy={"Owner": owner, "Grants": [
        {"Grantee": {"Type": "CanonicalUser", "ID": owner["ID"]}, "Permission": "FULL_CONTROL"},
        {"Grantee": {"Type": "CanonicalUser", "ID": OTHER["account_id"]}, "Permission": "READ"},
        {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ_ACP"}]})
    assert other.get_object(Bucket="granted", Key="secret")["Body"].read() == b"secret"
    assert anonymous(base, "GET", "/granted/secret?acl")[0] == 200
    assert anonymous(base, "GET", "/granted/secret")[0] == 403
    # WRITE on the bucket lets the other account add objects it owns.
    s3.put_bucket_acl(Bucket="granted", GrantWrite=f'id="{OTHER["account_id"]}"',
                      GrantFullControl=f'id="{owner["ID"]}"')
    other.put_object(Bucket="granted", Key="theirs", Body=b"from the other account")
    assert s3.get_object_acl(Bucket="granted", Key="theirs")["Owner"]["ID"] == OTHER["account_id"]
    assert s3.get_object(Bucket="granted", Key="theirs")["Body"].read() == b"from the other account"
    before = _grants(s3.get_object_acl(Bucket="granted", Key="secret"))
    bad = b"<AccessControlPolicy><AccessControlList><Grant><Permission>ALL</Permission></Grant>" \
          b"</AccessControlList></AccessControlPolicy>"
    assert _raw_code(base, "PUT", "/granted/secret", bad, query="acl") == (400, "MalformedACLError")
    assert _grants(s3.get_object_acl(Bucket="granted", Key="secret")) == before
    # Bucket policies are not implemented (see the README): a clear 501.
    with pytest.raises(ClientError) as err:
        s3.put_bucket_policy(Bucket="granted", Policy='{"Version": "2012-10-17", "Statement": []}')
    assert code_of(err.value) == "NotImplemented"


def test_object_tagging(walrus):
    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="tagged")
    s3.put_object(Bucket="tagged", Key="k", Body=b"x", Tagging="project=eucalab&stage=test%20run")

    def tags(key):
        return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="tagged", Key=key)["TagSet"]}

    assert tags("k") == {"project": "eucalab", "stage": "test run"}
    assert s3.head_object(Bucket="tagged", Key="k")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    s3.put_object_tagging(Bucket="tagged", Key="k", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    assert tags("k") == {"only": "one"}
    # Copies keep the source's tags unless told to replace them; multipart uploads take them too.
    s3.copy_object(Bucket="tagged", Key="copy", CopySource="tagged/k")
    assert tags("copy") == {"only": "one"}
    s3.copy_object(Bucket="tagged", Key="copy2", CopySource="tagged/k", TaggingDirective="REPLACE", Tagging="a=b")
    assert tags("copy2") == {"a": "b"}
    upload = s3.create_multipart_upload(Bucket="tagged", Key="multi", Tagging="from=upload")["UploadId"]
    etag = s3.upload_part(Bucket="tagged", Key="multi", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(Bucket="tagged", Key="multi", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert tags("multi") == {"from": "upload"}
    # Bad tag sets change nothing.
    for bad, code in ((lambda: s3.put_object_tagging(Bucket="tagged", Key="k", Tagging={"TagSet": [
                          {"Key": f"k{i}", "Value": "v"} for i in range(11)]}), "BadRequest"),
                      (lambda: s3.put_object_tagging(Bucket="tagged", Key="k", Tagging={"TagSet": [
                          {"Key": "x" * 129, "Value": "v"}]}), "InvalidTag"),
                      (lambda: s3.put_object_tagging(Bucket="tagged", Key="k", Tagging={"TagSet": [
                          {"Key": "d", "Value": "1"}, {"Key": "d", "Value": "2"}]}), "InvalidTag"),
                      (lambda: s3.put_object(Bucket="tagged", Key="k", Body=b"y", Tagging="a=" + "v" * 257),
                       "InvalidTag"),
                      (lambda: s3.put_object_tagging(Bucket="tagged", Key="missing", Tagging={"TagSet": []}),
                       "NoSuchKey"),
                      (lambda: s3.put_bucket_tagging(Bucket="tagged", Tagging={"TagSet": []}), "NotImplemented")):
        with pytest.raises(ClientError) as err:
            bad()
        assert code_of(err.value) == code
    assert tags("k") == {"only": "one"}
    assert s3.get_object(Bucket="tagged", Key="k")["Body"].read() == b"x"
    s3.delete_object_tagging(Bucket="tagged", Key="k")
    assert tags("k") == {}
    assert "x-amz-tagging-count" not in s3.head_object(Bucket="tagged", Key="k")["ResponseMetadata"]["HTTPHeaders"]
    # Deleting the object ends its tags: a new object of that key starts with none.
    s3.delete_object(Bucket="tagged", Key="copy")
    s3.put_object(Bucket="tagged", Key="copy", Body=b"new")
    assert tags("copy") == {}


def _post(post: dict, data: bytes, extra: dict | None = None, drop: str | None = None) -> tuple[int, bytes]:
    """Send a browser-form POST (multipart/form-data, the file last) as boto3's
    generate_presigned_post describes it: (status, body)."""
    import urllib.error
    import urllib.request
    import uuid

    fields = {k: v for k, v in {**post["fields"], **(extra or {})}.items() if k != drop}
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items())
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="local name.txt"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(post["url"], data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_browser_form_post_uploads(walrus):
    import base64
    import json

    base, _, _ = walrus
    s3 = s3_client(base)
    s3.create_bucket(Bucket="forms")

    def presign(key="uploads/${filename}", conditions=(), fields=None, expires=300):
        return s3.generate_presigned_post(
            "forms", key, Fields=fields, ExpiresIn=expires,
            Conditions=[["starts-with", "$key", "uploads/"], ["content-length-range", 1, 1000], *conditions])

    post = presign(fields={"acl": "public-read", "Content-Type": "text/plain", "success_action_status": "201",
                           "x-amz-meta-origin": "form"},
                   conditions=[{"acl": "public-read"}, {"Content-Type": "text/plain"},
                               {"success_action_status": "201"}, {"x-amz-meta-origin": "form"}])
    status, body = _post(post, b"posted from a form")
    assert status == 201 and b"<Key>uploads/local name.txt</Key>" in body, body
    got = s3.get_object(Bucket="forms", Key="uploads/local name.txt")
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == (b"posted from a form", "text/plain",
                                                                          {"origin": "form"})
    assert anonymous(base, "GET", "/forms/uploads/local%20name.txt") == (200, b"posted from a form")
    assert _post(presign(key="uploads/plain"), b"204 by default")[0] == 204
    before = _keys(s3, "forms")
    # What the policy does not allow, or a policy not signed by a key we know, stores nothing.
    tampered = presign()
    policy = json.loads(base64.b64decode(tampered["fields"]["policy"]))
    policy["conditions"][1] = ["content-length-range", 1, 10**9]
    bad_policy = base64.b64encode(json.dumps(policy).encode()).decode()
    cases = [
        (_post(tampered, b"x", {"policy": bad_policy}), 403, "SignatureDoesNotMatch"),
        (_post(presign(), b"x" * 1001), 400, "EntityTooLarge"),
        (_post(presign(key="elsewhere/x"), b"x"), 403, "AccessDenied"),
        (_post(presign(), b"x", {"x-amz-meta-sneaky": "1"}), 403, "AccessDenied"),
        (_post(presign(expires=-10), b"x"), 403, "AccessDenied"),
        (_post(presign(), b"x", drop="key"), 400, "InvalidArgument"),
        (_post(presign(), b"x", {"x-amz-credential": "AKIANOBODY/" +
                                 presign()["fields"]["x-amz-credential"].split("/", 1)[1]}), 403,
         "InvalidAccessKeyId"),
    ]
    for (got, body), status, code in cases:
        assert (got, _xml_code(body)) == (status, code), body
    # Unsigned: only a bucket whose ACL lets anyone write takes it.
    got, body = _post({"url": f"{base}/services/Walrus/forms", "fields": {"key": "anon"}}, b"anonymous")
    assert (got, _xml_code(body)) == (403, "AccessDenied")
    s3.put_bucket_acl(Bucket="forms", ACL="public-read-write")
    assert _post({"url": f"{base}/services/Walrus/forms", "fields": {"key": "anon"}}, b"anonymous")[0] == 204
    assert s3.get_object(Bucket="forms", Key="anon")["Body"].read() == b"anonymous"
    s3.delete_object(Bucket="forms", Key="anon")
    assert _keys(s3, "forms") == before
