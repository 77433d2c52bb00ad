"""Walrus under crashes and concurrency: no torn object is ever seen.

Real Walrus processes on 127.0.0.1, stopped (or killed -9) by PID.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support.processes import ADMIN, component
from tests.support.util import wait_until

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

CFG = Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})
CREDS = Credentials(ADMIN["access_key"], ADMIN["secret_key"])


def s3_client(base):
    return boto3.client("s3", endpoint_url=f"{base}/services/Walrus", aws_access_key_id=ADMIN["access_key"],
                        aws_secret_access_key=ADMIN["secret_key"], region_name="eucalyptus", config=CFG)


def _signed(method: str, url: str, body: bytes) -> dict:
    req = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(CREDS, "s3", "eucalyptus").add_auth(req)
    return dict(req.prepare().headers)


def _start_partial_put(base: str, path: str, body: bytes, sent: int) -> http.client.HTTPConnection:
    """Send a correctly signed PutObject's headers and only the first ``sent`` bytes of its body."""
    headers = _signed("PUT", f"{base}{path}", body)
    headers.pop("Content-Length", None)
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.putrequest("PUT", path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:sent])
    return conn


def _object_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "objects").iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
def test_kill_9_mid_upload_never_shows_a_torn_object(tmp_path, overwrite):
    data_dir = tmp_path / "data"
    old = os.urandom(300_000)
    new = os.urandom(4 * 2**20)
    with component("walrus", tmp_path / "run1", data_dir=str(data_dir)) as (base, _, proc):
        s3 = s3_client(base)
        s3.create_bucket(Bucket="crash")
        if overwrite:
            s3.put_object(Bucket="crash", Key="obj", Body=old)
        conn = _start_partial_put(base, "/services/Walrus/crash/obj", new, 2 * 2**20)
        # The server has started streaming this body to disk when a temporary file grows.
        assert wait_until(lambda: any(p.name.endswith(".part") and p.stat().st_size > 0
                                      for p in (data_dir / "objects").iterdir())), "the upload never reached the disk"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        conn.close()
    with component("walrus", tmp_path / "run2", data_dir=str(data_dir)) as (base, _, proc):
        s3 = s3_client(base)
        if overwrite:
            got = s3.get_object(Bucket="crash", Key="obj")
            assert got["Body"].read() == old and got["ETag"] == '"%s"' % hashlib.md5(old).hexdigest()
            assert len(_object_files(data_dir)) == 1  # the old object's file only
        else:
            with pytest.raises(ClientError) as err:
                s3.get_object(Bucket="crash", Key="obj")
            assert err.value.response["Error"]["Code"] == "NoSuchKey"
            assert _object_files(data_dir) == []
        assert not any(n.endswith(".part") for n in _object_files(data_dir))
        # And the store still takes the same upload afterwards.
        s3.put_object(Bucket="crash", Key="obj", Body=new)
        assert s3.get_object(Bucket="crash", Key="obj")["Body"].read() == new


def test_readers_during_overwrites_see_whole_objects(tmp_path):
    versions = [bytes([65 + i]) * (256 * 1024 + i) for i in range(4)]
    etags = {'"%s"' % hashlib.md5(v).hexdigest(): v for v in versions}
    with component("walrus", tmp_path) as (base, _, _):
        s3 = s3_client(base)
        s3.create_bucket(Bucket="race")
        s3.put_object(Bucket="race", Key="k", Body=versions[0])
        stop, problems, reads = threading.Event(), [], [0]

        def reader():
            client = s3_client(base)
            while not stop.is_set():
                got = client.get_object(Bucket="race", Key="k")
                body = got["Body"].read()
                if etags.get(got["ETag"]) != body:
                    problems.append((got["ETag"], len(body), body[:1], body[-1:]))
                reads[0] += 1

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(40):
                s3.put_object(Bucket="race", Key="k", Body=versions[i % len(versions)])
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=20)
        assert reads[0] > 10 and problems == []
        # Every overwritten version's file is gone: one object, one file.
        assert len(_object_files(tmp_path / "data")) == 1
