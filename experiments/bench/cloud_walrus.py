"""Walrus beside moto's S3 server on loopback: boto3 GetObject latency of one small object.

    eucalab bench cloud-walrus [--requests 300] [--size 65536] [--json FILE]
    (or python -m experiments.bench.cloud_walrus)

Both servers run as processes started here on 127.0.0.1 and stopped by PID. One
boto3 client per server (path-style, no retries); requests alternate between the
two servers, so both see the same machine load. Needs no root and no network
namespace: it measures the Walrus process itself, not the emulated network
(``eucalab bench cloud`` does that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

from ..analysis.measures import percentile
from ..testbed.loopback import free_port, stop

CFG = Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})
ADMIN = {"account_id": "000000000001", "access_key": "AKIABENCHWALRUS00001",
         "secret_key": "benchsecret000000000000000000000000000001"}
REGION = "eucalyptus"


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def walrus_process(workdir: Path):
    """A Walrus on 127.0.0.1 started as the testbed starts it; yields its S3 endpoint URL."""
    port = free_port()
    cfg = {"host": "walrus-bench", "component": "walrus", "role": "single", "listen_host": "127.0.0.1",
           "port": port, "data_dir": str(workdir / "data"), "events_path": str(workdir / "events.jsonl"),
           "state": "ENABLED", "region": REGION, "admin": ADMIN, "internal_token": "bench", "endpoints": {}}
    (workdir / "walrus.json").write_text(json.dumps(cfg))
    with open(workdir / "walrus.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "components.walrus", "--config", str(workdir / "walrus.json")],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", proc)
            yield f"http://127.0.0.1:{port}/services/Walrus", proc.pid
        finally:
            stop(proc)


@contextlib.contextmanager
def moto_process():
    """moto's standalone server on 127.0.0.1; yields its endpoint URL."""
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if moto is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]' into this venv")
    port = free_port()
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/moto-api/", proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)


def run(requests: int = 300, size: int = 64 * 1024, warmup: int = 30) -> dict:
    """Measure both servers; returns {target: {"ms": [...], "pid": int}}."""
    body = os.urandom(size)
    with tempfile.TemporaryDirectory(prefix="bench-walrus-") as tmp, \
            walrus_process(Path(tmp)) as (walrus_url, walrus_pid), moto_process() as (moto_url, moto_pid):
        clients = {
            "eucalab Walrus": (boto3.client("s3", endpoint_url=walrus_url, aws_access_key_id=ADMIN["access_key"],
                                            aws_secret_access_key=ADMIN["secret_key"], region_name=REGION,
                                            config=CFG), walrus_pid),
            "moto_server 5.2.5": (boto3.client("s3", endpoint_url=moto_url, aws_access_key_id="testing",
                                               aws_secret_access_key="testing", region_name="us-east-1",
                                               config=CFG), moto_pid),
        }
        results = {name: {"ms": [], "pid": pid} for name, (_, pid) in clients.items()}
        for s3, _ in clients.values():
            s3.create_bucket(Bucket="bench")
            s3.put_object(Bucket="bench", Key="object", Body=body)
            for _ in range(warmup):
                s3.get_object(Bucket="bench", Key="object")["Body"].read()
        for _ in range(requests):
            for name, (s3, _) in clients.items():  # alternate: both servers see the same load
                t0 = time.perf_counter()
                got = s3.get_object(Bucket="bench", Key="object")["Body"].read()
                results[name]["ms"].append((time.perf_counter() - t0) * 1000)
                if len(got) != size:
                    raise RuntimeError(f"{name} returned {len(got)} bytes, not {size}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.cloud_walrus", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--size", type=int, default=64 * 1024, help="object size in bytes")
    parser.add_argument("--json", type=Path, help="also write the raw latencies here")
    args = parser.parse_args(argv)
    return report(args.requests, args.size, args.json)


def report(requests: int, size: int, json_path: Path | None = None) -> int:
    """Measure both servers, print the percentiles; the raw latencies to ``json_path`` if given."""
    results = run(requests, size)
    print(f"GetObject of a {size // 1024} KiB object, boto3, loopback, {requests} requests each, "
          f"alternating\n")
    print(f"{'target':<20} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>7}")
    for name, r in results.items():
        v = r["ms"]
        print(f"{name:<20} {statistics.median(v):>8.3f} {percentile(v, 90):>8.3f} {percentile(v, 99):>8.3f} "
              f"{max(v):>8.3f} {1000 / statistics.mean(v):>7.0f}")
    (walrus, moto) = (results["eucalab Walrus"]["ms"], results["moto_server 5.2.5"]["ms"])
    print(f"\nWalrus - moto: p50 {statistics.median(walrus) - statistics.median(moto):+.3f} ms, "
          f"p99 {percentile(walrus, 99) - percentile(moto, 99):+.3f} ms")
    if json_path:
        json_path.write_text(json.dumps({"requests": requests, "size": size, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
