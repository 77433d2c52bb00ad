"""Cloud-tier benchmark: boto3 from the user host against the CLC and Walrus, beside moto.

    eucalab bench cloud [--requests 300]

DescribeInstances (with every VM slot of the default deployment running an
instance) and GetObject of a 64 KiB object, one client, no retries, across the
emulated network; the same requests against moto's server (a popular AWS API
emulator) on loopback in the same run; memory of each service process.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

import boto3
import psutil
from botocore.config import Config

from topologies.spec import DeploymentSpec

from ..analysis.measures import percentile
from ..testbed.deployment import Deployment

CFG = Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})


def timed(fn, n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _bench_target(ec2, s3, n: int, instances: int, image_setup) -> dict:
    s3.create_bucket(Bucket="bench")
    s3.put_object(Bucket="bench", Key="64k", Body=os.urandom(64 * 1024))
    image_setup(ec2, s3, instances)
    describe = timed(lambda: ec2.describe_instances(), n)
    get = timed(lambda: s3.get_object(Bucket="bench", Key="64k")["Body"].read(), n)
    return {"describe": describe, "get": get}


def _eucalab_images(ec2, s3, instances: int) -> None:
    s3.create_bucket(Bucket="images")
    s3.put_object(Bucket="images", Key="bench.img", Body=os.urandom(1 << 20))
    emi = ec2.register_image(ImageLocation="images/bench.img", Name="bench")["ImageId"]
    per_zone = instances // 2
    ids = []
    for zone in ("cluster1", "cluster2"):
        ids += [i["InstanceId"] for i in ec2.run_instances(ImageId=emi, MinCount=per_zone, MaxCount=per_zone,
                                                           Placement={"AvailabilityZone": zone})["Instances"]]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        if states.count("running") == len(ids):
            return
        time.sleep(0.2)
    raise RuntimeError("instances did not all reach running")


def _moto_images(ec2, s3, instances: int) -> None:
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=ami, MinCount=instances, MaxCount=instances)


def run(n: int = 300) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(130, Console().width))
    results = {}
    spec = DeploymentSpec(name="bench-cloud")
    slots = spec.clusters * spec.ncs_per_cluster * spec.vm_slots_per_nc
    console.print(f"cloud benchmark: {n} requests each, boto3, one client, no retries; {slots} instances")
    with Deployment(spec) as dep:
        dep.start_services()
        c = dep.credentials
        kw = dict(aws_access_key_id=c.access_key, aws_secret_access_key=c.secret_key, region_name="eucalyptus",
                  config=CFG)
        ep = dep.plan.endpoints()
        with dep.in_host("user"):  # every socket of this block belongs to the user host
            ec2 = boto3.client("ec2", endpoint_url=ep["clc"], **kw)
            s3 = boto3.client("s3", endpoint_url=ep["walrus"], **kw)
            results["eucalab (user host -> VIPs, emulated network)"] = _bench_target(ec2, s3, n, slots,
                                                                                    _eucalab_images)
        mem = {}
        for (host, label), proc in dep.processes.items():
            try:
                mem[f"{label}@{host}"] = psutil.Process(proc.pid).memory_info().rss / 2**20
            except psutil.Error:
                pass
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if moto:
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([moto, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    import urllib.request

                    urllib.request.urlopen(url + "/moto-api/", timeout=0.5)
                    break
                except OSError:
                    time.sleep(0.1)
            kw = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                      config=CFG)
            ec2 = boto3.client("ec2", endpoint_url=url, **kw)
            s3 = boto3.client("s3", endpoint_url=url, **kw)
            results["moto_server (loopback)"] = _bench_target(ec2, s3, n, slots, _moto_images)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    table = Table(title="boto3 request latency (ms)")
    for col in ("target", "request", "p50", "p99", "max", "req/s"):
        table.add_column(col, justify="right" if col not in ("target", "request") else "left")
    for target, r in results.items():
        for name, key in (("DescribeInstances", "describe"), ("GetObject 64 KiB", "get")):
            v = r[key]
            table.add_row(target, name, f"{statistics.median(v):.2f}", f"{percentile(v, 99):.2f}",
                          f"{max(v):.2f}", f"{1000 / statistics.mean(v):.0f}")
    console.print(table)
    mt = Table(title="service memory (RSS, MiB)")
    mt.add_column("process")
    mt.add_column("MiB", justify="right")
    for k, v in sorted(mem.items()):
        mt.add_row(k, f"{v:.0f}")
    console.print(mt)
    return 0


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
