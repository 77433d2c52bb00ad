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


def test_aws_cli_lists_buckets_from_the_user_host(deployment, s3):
    s3.create_bucket(Bucket="cli-test")
    aws = Path(sys.executable).parent / "aws"
    creds = deployment.run_dir / "credentials"
    env = f"AWS_SHARED_CREDENTIALS_FILE={shlex.quote(str(creds))} AWS_CONFIG_FILE=/dev/null"
    out = deployment["user"].cmd(f"{env} {aws} --endpoint-url {deployment.plan.endpoints()['walrus']} "
                                 f"--region eucalyptus s3 ls 2>&1")
    assert "cli-test" in out, out


def test_secondaries_do_not_serve(deployment):
    # The DISABLED member of each pair answers its API with 503 (its peer serves); asked
    # from the site's own router, since users reach only the public VIPs.
    out = deployment["gw"].cmd("curl -s -o /dev/null -w '%{http_code}' "
                                 "'http://10.0.0.12:8773/services/Eucalyptus?Action=DescribeInstances'")
    assert out.strip() == "503"
    status = deployment["gw"].cmd("curl -s http://10.0.0.22:8773/status")
    assert '"state": "DISABLED"' in status
