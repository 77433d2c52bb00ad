"""The cloud tier on the real network: boto3 and the AWS CLI from the user host, through
the border gateway, to the CLC and Walrus service VIPs."""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from .conftest import aws_client


def test_ec2_basics_from_the_user_host(ec2):
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    assert zones == ["cluster1", "cluster2"]
    gid = ec2.create_security_group(GroupName="cloud-test", Description="from the user host")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}])
    rules = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissions"]
    assert rules[0]["IpRanges"][0]["CidrIp"] == "198.51.100.0/24"
    ip = ec2.allocate_address()["PublicIp"]
    assert ip in [a["PublicIp"] for a in ec2.describe_addresses()["Addresses"]]
    ec2.release_address(PublicIp=ip)
    ec2.delete_security_group(GroupId=gid)


def test_walrus_objects_from_the_user_host(s3):
    s3.create_bucket(Bucket="cloud-test")
    data = os.urandom(6 * 2**20 + 3)
    s3.put_object(Bucket="cloud-test", Key="big/object.bin", Body=data)
    for k in ("a", "b", "big/other"):
        s3.put_object(Bucket="cloud-test", Key=k, Body=k.encode())
    listing = s3.list_objects_v2(Bucket="cloud-test", Delimiter="/")
    assert [c["Key"] for c in listing["Contents"]] == ["a", "b"]
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["big/"]
    part = s3.get_object(Bucket="cloud-test", Key="big/object.bin", Range="bytes=1000-1999")["Body"].read()
    assert part == data[1000:2000]
    got = s3.get_object(Bucket="cloud-test", Key="big/object.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_wrong_secret_is_refused(deployment):
    bad_ec2 = aws_client(deployment, "ec2", secret_key="wrong" * 8)
    with pytest.raises(ClientError) as err:
        bad_ec2.describe_instances()
    assert err.value.response["Error"]["Code"] == "AuthFailure"
    bad_s3 = aws_client(deployment, "s3", secret_key="wrong" * 8)
    with pytest.raises(ClientError) as err:
        bad_s3.list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def aws_s3(deployment, *args: str) -> tuple[int, str]:
    """``aws s3 ARGS`` on the user host with the run's credentials: (exit status, output)."""
    aws = Path(sys.executable).parent / "aws"
    creds = deployment.run_dir / "credentials"
    env = f"AWS_SHARED_CREDENTIALS_FILE={shlex.quote(str(creds))} AWS_CONFIG_FILE=/dev/null"
    out = deployment["user"].cmd(f"{env} {aws} --endpoint-url {deployment.plan.endpoints()['walrus']} "
                                 f"--region eucalyptus s3 {' '.join(shlex.quote(a) for a in args)} 2>&1; "
                                 "echo exit=$?")
    out, _, status = out.rstrip().rpartition("exit=")
    return int(status), out


def test_aws_cli_lists_buckets_from_the_user_host(deployment, s3):
    s3.create_bucket(Bucket="cli-test")
    status, out = aws_s3(deployment, "ls")
    assert status == 0 and "cli-test" in out, out


def test_aws_cli_copies_a_64_mib_file_up_and_back(deployment, s3):
    """Above 8 MiB the CLI uploads in parts (8 of 8 MiB) and downloads in ranges."""
    s3.create_bucket(Bucket="cli-multipart")
    up, down = deployment.run_dir / "cli-up.bin", deployment.run_dir / "cli-down.bin"
    data = os.urandom(64 * 2**20)
    up.write_bytes(data)
    try:
        status, out = aws_s3(deployment, "cp", str(up), "s3://cli-multipart/image.img")
        assert status == 0, out
        head = s3.head_object(Bucket="cli-multipart", Key="image.img")
        assert head["ContentLength"] == len(data) and head["ETag"].endswith('-8"'), head
        status, out = aws_s3(deployment, "cp", "s3://cli-multipart/image.img", str(down))
        assert status == 0, out
        assert hashlib.sha256(down.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert "Uploads" not in s3.list_multipart_uploads(Bucket="cli-multipart")
    finally:
        up.unlink(missing_ok=True)
        down.unlink(missing_ok=True)


def test_secondaries_do_not_serve(deployment):
    # The DISABLED member of each pair answers its API with 503 (its peer serves); asked
    # from the site's own router, since users reach only the public VIPs.
    out = deployment["gw"].cmd("curl -s -o /dev/null -w '%{http_code}' "
                                 "'http://10.0.0.12:8773/services/Eucalyptus?Action=DescribeInstances'")
    assert out.strip() == "503"
    status = deployment["gw"].cmd("curl -s http://10.0.0.22:8773/status")
    assert '"state": "DISABLED"' in status


def test_aws_cli_sync_and_recursive_rm_from_the_user_host(deployment, s3):
    """sync (PutObject, then CopyObject bucket to bucket), rm --recursive, DeleteObjects."""
    for b in ("cli-sync", "cli-sync-copy"):
        s3.create_bucket(Bucket=b)
    src = deployment.run_dir / "sync-src"
    files = {"a.txt": b"alpha", "dir/b.bin": os.urandom(300_000), "dir/sub/c": b"gamma"}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    for args in (("sync", str(src), "s3://cli-sync/"), ("sync", "s3://cli-sync/", "s3://cli-sync-copy/")):
        status, out = aws_s3(deployment, *args)
        assert status == 0, out
    copied = s3.list_objects_v2(Bucket="cli-sync-copy")["Contents"]
    assert sorted(o["Key"] for o in copied) == sorted(files)
    assert s3.get_object(Bucket="cli-sync-copy", Key="dir/b.bin")["Body"].read() == files["dir/b.bin"]
    status, out = aws_s3(deployment, "rm", "--recursive", "s3://cli-sync-copy/")
    assert status == 0 and "Contents" not in s3.list_objects_v2(Bucket="cli-sync-copy"), out
    gone = s3.delete_objects(Bucket="cli-sync", Delete={"Objects": [{"Key": k} for k in files]})
    assert sorted(d["Key"] for d in gone["Deleted"]) == sorted(files)
    assert "Contents" not in s3.list_objects_v2(Bucket="cli-sync")


def test_versioned_bucket_history_from_the_user_host(s3):
    s3.create_bucket(Bucket="cloud-versions")
    s3.put_object(Bucket="cloud-versions", Key="doc", Body=b"before versioning")
    s3.put_bucket_versioning(Bucket="cloud-versions", VersioningConfiguration={"Status": "Enabled"})
    ids = [s3.put_object(Bucket="cloud-versions", Key="doc", Body=f"edit {i}".encode())["VersionId"]
           for i in range(3)]
    marker = s3.delete_object(Bucket="cloud-versions", Key="doc")["VersionId"]
    out = s3.list_object_versions(Bucket="cloud-versions")
    assert [v["VersionId"] for v in out["Versions"]] == ids[::-1] + ["null"]
    assert [(m["VersionId"], m["IsLatest"]) for m in out["DeleteMarkers"]] == [(marker, True)]
    for i, vid in enumerate(ids):
        assert s3.get_object(Bucket="cloud-versions", Key="doc", VersionId=vid)["Body"].read() == f"edit {i}".encode()
    s3.delete_object(Bucket="cloud-versions", Key="doc", VersionId=marker)
    assert s3.get_object(Bucket="cloud-versions", Key="doc")["Body"].read() == b"edit 2"


def test_public_read_object_fetched_without_credentials(deployment, s3):
    s3.create_bucket(Bucket="cloud-public")
    s3.put_object(Bucket="cloud-public", Key="index.html", Body=b"<p>public</p>", ACL="public-read")
    s3.put_object(Bucket="cloud-public", Key="private.txt", Body=b"private")
    base = f"{deployment.plan.endpoints()['walrus']}/cloud-public"

    def curl(key: str) -> str:
        return deployment["user"].cmd(f"curl -s -m 5 -w ' %{{http_code}}' {base}/{key}").strip()

    assert curl("index.html") == "<p>public</p> 200"
    denied = curl("private.txt")
    assert denied.endswith(" 403") and "<Code>AccessDenied</Code>" in denied, denied
