"""What the CLC tests share: boto3 and raw signed clients, and a stand-in CC on loopback."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from components.common.groups import digest as group_digest
from experiments.testbed.loopback import JsonHandler, StandIn

from .processes import ADMIN, TOKEN

CFG = Config(retries={"total_max_attempts": 1})
S3_CFG = Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})


def ec2_client(base: str, ak: str = ADMIN["access_key"], sk: str = ADMIN["secret_key"],
               path: str = "/services/Eucalyptus"):
    return boto3.client("ec2", endpoint_url=f"{base}{path}", aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="eucalyptus", config=CFG)


def s3_client(base: str, ak: str = ADMIN["access_key"], sk: str = ADMIN["secret_key"]):
    return boto3.client("s3", endpoint_url=f"{base}/services/Walrus", aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="eucalyptus", config=S3_CFG)


def upload_image(walrus: str, location: str, ak: str = ADMIN["access_key"], sk: str = ADMIN["secret_key"],
                 body: bytes = b"image bytes\n") -> str:
    """Put an image object at ``bucket/key`` as the account of ``ak`` (its bucket made if
    needed); returns the location, for RegisterImage."""
    from botocore.exceptions import ClientError

    bucket, _, key = location.partition("/")
    s3 = s3_client(walrus, ak, sk)
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if code_of(exc) != "BucketAlreadyOwnedByYou":
            raise
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return location


def raw_call(base: str, params: dict, ak: str = ADMIN["access_key"], sk: str = ADMIN["secret_key"],
             body: bytes | None = None, path: str = "/services/Eucalyptus") -> tuple[int, str]:
    """A signed EC2 Query POST outside boto3's model (CreateAccount, malformed input)."""
    data = body if body is not None else urlencode(params).encode()
    req = AWSRequest(method="POST", url=f"{base}{path}", data=data,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials(ak, sk), "ec2", "eucalyptus").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def create_account(base: str, name: str, ak: str = ADMIN["access_key"],
                   sk: str = ADMIN["secret_key"]) -> tuple[str, str, str]:
    """A new account made by the admin (``ak``, ``sk``): (account id, access key, secret key)."""
    import re

    status, text = raw_call(base, {"Action": "CreateAccount", "AccountName": name, "Version": "2016-11-15"},
                            ak, sk)
    assert status == 200, text
    return tuple(re.search(f"<{tag}>(.*?)</{tag}>", text).group(1)
                 for tag in ("accountId", "accessKeyId", "secretAccessKey"))


def signed_s3(base: str, method: str, path: str, headers: dict | None = None, body: bytes = b"",
              ak: str = ADMIN["access_key"], sk: str = ADMIN["secret_key"], region: str = "eucalyptus",
              content_sha256: bool = True) -> tuple[int, dict, bytes]:
    """One S3 request outside boto3's model (names it refuses to send), signed in the
    Authorization header; ``content_sha256=False`` leaves x-amz-content-sha256 out.
    ``path`` is sent as given (percent-encode it yourself)."""
    from botocore.auth import S3SigV4Auth

    req = AWSRequest(method=method, url=f"{base}/services/Walrus{path}", data=body, headers=headers or {})
    (S3SigV4Auth if content_sha256 else SigV4Auth)(Credentials(ak, sk), "s3", region).add_auth(req)
    return send(base, method, f"/services/Walrus{path}", dict(req.headers), body)


def send(base: str, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """A request exactly as given (http.client: no quoting, no retries); (status, headers, body)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def get_from(base: str, path: str, source: str) -> tuple[int, str]:
    """GET with a chosen loopback source address (the metadata service identifies callers by it)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def code_of(exc) -> str:
    return exc.response["Error"]["Code"]


class FakeCC(StandIn):
    """A CC's internal API (components/cc/service.py) reduced to bookkeeping.

    Placed instances get private addresses from ``addresses`` (loopback ones, so a test can
    call the metadata service as that instance) and report ``running`` at once.
    """

    def __init__(self, addresses: list[str], free: int = 8):
        self.addresses, self.free = list(addresses), free
        self.instances: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.elastic: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.nc_refuses = False  # placements come back terminated, as when their NC refused them
        self.answer_after = 0.0  # seconds a run's answer takes (placed first, as the CC does)
        self.garbled_listings = 0  # this many GET /cluster/instances answer instances without a state
        super().__init__()

    def _handler(self):
        cc = self

        class Handler(JsonHandler):
            def _route(self) -> None:
                cc.calls.append((self.command, self.path))
                if self.headers.get("X-Eucalab-Internal-Token") != TOKEN:
                    return self._answer(403, {"error": "Forbidden"})
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else {}
                parts = self.path.strip("/").split("/")
                if (self.command, parts) == ("GET", ["cluster", "capacity"]):
                    return self._answer(200, {"free": cc.free})
                if (self.command, parts) == ("GET", ["cluster", "instances"]):
                    if cc.garbled_listings:
                        cc.garbled_listings -= 1
                        return self._answer(200, {"instances": [{"id": i} for i in cc.instances]})
                    return self._answer(200, {"instances": list(cc.instances.values())})
                if (self.command, parts) == ("POST", ["cluster", "instances"]):
                    placements = []
                    for w in body["instances"]:
                        rec = {"id": w["id"], "ip": cc.addresses.pop(0), "nc": "nc1", "slot": f"s{len(cc.instances)}",
                               "state": "running", "reason": "", "group": w["group"]["id"]}
                        if cc.nc_refuses:
                            rec.update(state="terminated", reason="boot request failed: nc1 refused: SlotBusy")
                        cc.instances[w["id"]] = rec
                        placements.append(rec)
                    cc.free -= len(placements)
                    time.sleep(cc.answer_after)
                    return self._answer(200, {"placements": placements})
                if self.command == "DELETE" and parts[:2] == ["cluster", "instances"] and len(parts) == 3:
                    cc.instances[parts[2]]["state"] = "terminated"
                    return self._answer(200, cc.instances[parts[2]])
                if (self.command, parts) == ("GET", ["cluster", "groups"]):
                    return self._answer(200, {"groups": {gid: group_digest(g) for gid, g in cc.groups.items()}})
                if self.command == "PUT" and parts[:2] == ["cluster", "groups"]:
                    cc.groups[parts[2]] = body
                    return self._answer(200, body)
                if parts[:2] == ["cluster", "addresses"]:
                    # As the CC: an address is on one instance, an instance has one address.
                    for ip in [ip for ip, i in cc.elastic.items() if ip == parts[2] or i == body.get("instance")]:
                        cc.instances[cc.elastic.pop(ip)]["public_ip"] = None
                    if self.command == "PUT":
                        cc.elastic[parts[2]] = body["instance"]
                        cc.instances[body["instance"]]["public_ip"] = parts[2]
                    return self._answer(200, {"public_ip": parts[2]})
                return self._answer(404, {"error": "NotFound", "message": self.path})

            do_GET = do_POST = do_PUT = do_DELETE = _route

        return Handler
