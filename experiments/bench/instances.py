"""Instance boot benchmark: RunInstances to a reachable workload, cold and warm image cache.

    eucalab bench instances [--boots 100]

Spec: 2 clusters x 4 NCs x 4 VM slots (32 slots), a 16 MiB image. Each round runs
as many instances as there are slots, measures for each the time from the
RunInstances call to its workload answering TCP from its cluster's CC, then
terminates them. Cold rounds empty every NC's image cache first. The rate is
instances started per minute with every slot cycling.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time

import boto3
from botocore.config import Config

from topologies.spec import DeploymentSpec

from ..analysis.measures import percentile
from ..testbed.deployment import Deployment

IMAGE_BYTES = 16 * 2**20


def _reachable(dep, cc_host: str, ip: str) -> bool:
    with dep.in_host(cc_host):
        try:
            with socket.create_connection((ip, 80), timeout=0.05):
                return True
        except OSError:
            return False


def run(boots: int = 100) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    spec = DeploymentSpec(name="bench-instances", clusters=2, ncs_per_cluster=4, vm_slots_per_nc=4)
    results: dict[str, list[float]] = {"cold": [], "warm": []}
    failed = {"cold": 0, "warm": 0}
    started, t_cycle = 0, 0.0
    with Deployment(spec) as dep:
        # Every slot at once: beyond the account's default instance quota (20).
        dep.component_extra["clc"] = {"quotas": {"instances": 2 * spec.clusters * spec.ncs_per_cluster
                                                 * spec.vm_slots_per_nc}}
        dep.start_services()
        c = dep.credentials
        kw = dict(aws_access_key_id=c.access_key, aws_secret_access_key=c.secret_key, region_name="eucalyptus",
                  config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}))
        ep = dep.plan.endpoints()
        with dep.in_host("user"):
            ec2 = boto3.client("ec2", endpoint_url=ep["clc"], **kw)
            s3 = boto3.client("s3", endpoint_url=ep["walrus"], **kw)
            s3.create_bucket(Bucket="images")
            s3.put_object(Bucket="images", Key="bench16.img", Body=os.urandom(IMAGE_BYTES))
            emi = ec2.register_image(ImageLocation="images/bench16.img", Name="bench16")["ImageId"]
        per_zone = spec.ncs_per_cluster * spec.vm_slots_per_nc
        for kind in ("cold", "warm"):
            while len(results[kind]) + failed[kind] < boots:
                if kind == "cold":
                    for nc in dep.plan.hosts_by_role("nc"):
                        for f in (dep.run_dir / "hosts" / nc.name / "data" / "images").glob("*"):
                            f.unlink()
                t_round = time.monotonic()
                pending = {}
                with dep.in_host("user"):
                    for k in (1, 2):
                        t0 = time.monotonic()
                        res = ec2.run_instances(ImageId=emi, MinCount=per_zone, MaxCount=per_zone,
                                                Placement={"AvailabilityZone": f"cluster{k}"})
                        for inst in res["Instances"]:
                            pending[inst["InstanceId"]] = (t0, f"c{k}cc1", inst.get("PrivateIpAddress"))
                ids = list(pending)
                deadline = time.monotonic() + 120
                last_check = 0.0
                while pending and time.monotonic() < deadline:
                    for iid, (t0, cc, ip) in list(pending.items()):
                        if ip and _reachable(dep, cc, ip):
                            results[kind].append(time.monotonic() - t0)
                            del pending[iid]
                    if pending and time.monotonic() - last_check > 1.0:
                        last_check = time.monotonic()
                        with dep.in_host("user"):
                            gone = [i["InstanceId"] for r in ec2.describe_instances(InstanceIds=list(pending))
                                    ["Reservations"] for i in r["Instances"] if i["State"]["Name"] == "terminated"]
                        for iid in gone:  # a failed boot: counted, not waited for
                            failed[kind] += 1
                            del pending[iid]
                    time.sleep(0.005)
                failed[kind] += len(pending)
                with dep.in_host("user"):
                    ec2.terminate_instances(InstanceIds=ids)
                    while True:
                        states = [i["State"]["Name"] for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                                  for i in r["Instances"]]
                        if all(s == "terminated" for s in states):
                            break
                        time.sleep(0.05)
                started += len(ids)
                t_cycle += time.monotonic() - t_round
                console.print(f"  {kind}: {len(results[kind])}/{boots} boots", style="dim")
    table = Table(title=f"RunInstances -> reachable workload, {IMAGE_BYTES >> 20} MiB image, 32 slots (seconds)")
    for col in ("image cache", "boots", "failed", "p50", "p99", "max"):
        table.add_column(col, justify="right")
    for kind, v in results.items():
        table.add_row(kind, str(len(v)), str(failed[kind]), f"{statistics.median(v):.3f}", f"{percentile(v, 99):.3f}",
                      f"{max(v):.3f}")
    console.print(table)
    console.print(f"instances started per minute with all slots cycling: {started / t_cycle * 60:.0f} "
                  f"({started} instances in {t_cycle:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
