"""Polling with a deadline and free ports: what most tests need (after ipmininet/tests/utils.py).

Wait for a condition, never sleep and hope: ``wait_until`` (threads and plain code) is
the testbed's own poller, ``until`` its twin on an asyncio event loop.
"""

from __future__ import annotations

import asyncio
import os

from experiments.testbed.loopback import free_port
from experiments.testbed.timescale import scaled, wait_until

__all__ = ["free_port", "instance_leaving", "until", "wait_until", "web_image"]


async def until(condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait for ``condition()`` on the event loop, failing the test after ``timeout`` (scaled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while not condition():
        assert loop.time() < deadline, f"{what} not met in time"
        await asyncio.sleep(0.002)


def instance_leaving(ec2, iid: str, leave: str = "pending", timeout: float = 20.0) -> dict:
    """An instance's EC2 description once its state is no longer ``leave`` (the last one
    read when ``timeout`` passes first: the caller's assertion says what it wanted)."""
    last: dict = {}

    def left() -> bool:
        last["inst"] = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        return last["inst"]["State"]["Name"] != leave

    wait_until(left, timeout, step=0.1)
    return last["inst"]


def web_image(ec2, s3, key: str, name: str, size: int = 2**20) -> tuple[str, str]:
    """What an instance serving HTTP needs, as a user sets it up: an image of ``size``
    random bytes put into Walrus (bucket ``images``) and registered, and the default
    security group open to TCP 80 from anywhere. Returns the image's id and the group's."""
    s3.create_bucket(Bucket="images")
    s3.put_object(Bucket="images", Key=key, Body=os.urandom(size))
    emi = ec2.register_image(ImageLocation=f"images/{key}", Name=name)["ImageId"]
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=default, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    return emi, default
