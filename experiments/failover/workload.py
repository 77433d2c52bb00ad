"""The workload trials probe: an instance with an elastic IP (the CC), a volume attached to
it (the SC), an object (Walrus) and a signed EC2 request (the CLC); what a user requests
of each target, and the acknowledged writes made before a fault and checked after it."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from components.common.modes import features

from ..testbed.deployment import Deployment, wait_until
from .probes import user_http

PROBE_BLOCK = b"eucalab probe block\n" * 16


def retry(fn, attempts: int = 5):
    """A client's pooled connection to the old primary fails once after a failover:
    like any user, retry (the probes themselves never retry)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.2)


@dataclass
class Workload:
    """What one deployment's trials probe, made once before the first trial."""

    dep: Deployment
    presigned: str  # a presigned GET of Walrus's probe object
    disk: str  # the probe volume's blocks, through the instance (the SC's path)
    iid: str  # the probe instance
    eip: str  # the address users reach it on (its elastic IP, or its own in SYSTEM and STATIC)
    ec2: object = None  # clients from the user host, new for every trial (fresh_clients)
    s3: object = None

    @classmethod
    def prepare(cls, dep: Deployment) -> "Workload":
        ec2, s3 = dep.aws_client("ec2"), dep.aws_client("s3")  # every call from the user host
        s3.create_bucket(Bucket="probe")
        s3.put_object(Bucket="probe", Key="object", Body=b"eucalab probe object\n")
        s3.put_object(Bucket="probe", Key="image.img", Body=os.urandom(1 << 20))
        presigned = s3.generate_presigned_url("get_object", Params={"Bucket": "probe", "Key": "object"},
                                              ExpiresIn=6 * 3600)
        emi = ec2.register_image(ImageLocation="probe/image.img", Name="probe-image")["ImageId"]
        if features(dep.spec.mode.value).security_groups:  # SYSTEM and STATIC have none
            gid = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
        if not wait_until(lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                          ["State"]["Name"] == "running", 30, 0.1):
            raise RuntimeError("the probe instance did not reach running")
        if features(dep.spec.mode.value).elastic_ips:
            eip = ec2.allocate_address()["PublicIp"]  # users reach it through the CC's NAT
            ec2.associate_address(InstanceId=iid, PublicIp=eip)
        else:  # SYSTEM and STATIC: the site routes VMs, users reach an instance's own address
            eip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
        # A volume attached to the instance: the SC is probed by block reads through it (the
        # instance's virtio disk channel to its NC, the NC's block session to the SC VIP).
        vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
        ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
        disk = f"http://{eip}/volumes/{vol}/blocks"
        if not wait_until(lambda: user_http(dep, "PUT", disk + "?offset=0", PROBE_BLOCK)[0] == 200, 30, 0.2):
            raise RuntimeError("the probe volume did not take a block write through the instance")
        w = cls(dep=dep, presigned=presigned, disk=disk, iid=iid, eip=eip)
        w.fresh_clients()
        return w

    def fresh_clients(self) -> None:
        """New clients (new connection pools): pooled connections to a crashed primary would
        each fail once, which says nothing about the data."""
        short = dict(connect_timeout=2, read_timeout=5)  # a request stuck on a dead primary must not stall a trial
        self.ec2, self.s3 = self.dep.aws_client("ec2", **short), self.dep.aws_client("s3", **short)

    def describe_request(self) -> tuple[str, dict]:
        """A DescribeInstances GET signed once per trial (signing per probe would cost more than it measures)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        creds = self.dep.credentials
        url = self.dep.plan.endpoints()["clc"] + "?Action=DescribeInstances&Version=2016-11-15"
        req = AWSRequest(method="GET", url=url)
        SigV4Auth(Credentials(creds.access_key, creds.secret_key), "ec2", "eucalyptus").add_auth(req)
        headers = dict(req.prepare().headers)
        headers["Host"] = urlsplit(url).netloc
        return url, headers

    def marker_write(self, target: str, n: int, rng: random.Random) -> str | None:
        """An acknowledged write just before the fault; checked after it (lost writes)."""
        from botocore.exceptions import ClientError

        if target == "clc":
            name = f"marker-{n}-{rng.randrange(1 << 30)}"

            def create():
                try:
                    self.ec2.create_security_group(GroupName=name, Description="written before a fault")
                except ClientError as exc:  # an earlier attempt did get through
                    if exc.response["Error"]["Code"] != "InvalidGroup.Duplicate":
                        raise
            retry(create)
            return name
        if target == "walrus":
            key = f"marker-{n}-{rng.randrange(1 << 30)}"
            retry(lambda: self.s3.put_object(Bucket="probe", Key=key, Body=key.encode()))
            return key
        if target == "sc":  # a block of its own, written through the instance's volume
            offset = 4096 * rng.randrange(1, 256)
            body = f"marker-{n}-{rng.randrange(1 << 30)}".encode()

            def put():
                status, answer = user_http(self.dep, "PUT", f"{self.disk}?offset={offset}", body)
                if status != 200:
                    raise RuntimeError(f"block write answered {status}: {answer[:200]!r}")
            retry(put)
            return f"{offset}:{body.decode()}"
        return None

    def lost_writes(self, target: str, markers: list[str | None]) -> tuple[int, str | None]:
        """How many acknowledged writes are gone, and the error of the last check that failed."""
        lost, error = 0, None
        for marker in markers:
            if marker is None:
                continue
            try:
                present = self._marker_present(target, marker)
            except Exception as exc:
                present, error = False, repr(exc)
            lost += not present
        return lost, error

    def _marker_present(self, target: str, marker: str) -> bool:
        self.fresh_clients()
        if target == "clc":
            groups = retry(lambda: self.ec2.describe_security_groups()["SecurityGroups"])
            return marker in [g["GroupName"] for g in groups]
        if target == "sc":
            offset, body = marker.split(":", 1)

            def get():
                status, data = user_http(self.dep, "GET", f"{self.disk}?offset={offset}&length={len(body)}")
                if status != 200:
                    raise RuntimeError(f"block read answered {status}")
                return data
            return retry(get) == body.encode()
        return retry(lambda: self.s3.get_object(Bucket="probe", Key=marker)["Body"].read()) == marker.encode()


def probe_for(target: str, w: Workload) -> tuple[str, dict, tuple[str, bytes]]:
    """The URL a user requests of ``target``, its headers, and what a success returns
    (experiments/failover/prober.py: equals, contains or stripped, and the bytes)."""
    if target == "clc":
        url, headers = w.describe_request()
        return url, headers, ("contains", b"DescribeInstancesResponse")
    if target == "walrus":
        return w.presigned, {}, ("equals", b"eucalab probe object\n")
    if target == "sc":
        return f"{w.disk}?offset=0&length={len(PROBE_BLOCK)}", {}, ("equals", PROBE_BLOCK)
    return f"http://{w.eip}/", {}, ("stripped", w.iid.encode())
