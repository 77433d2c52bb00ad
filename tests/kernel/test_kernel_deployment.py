"""A small deployment with its services on the kernel datapath with netem on every link:
it boots, answers boto3 through its virtual IPs, and the CLC fails over once.

Functional, not timing: under emulation the machine is 10-40 times slower, so the
heartbeat is relaxed to 500 ms x 3 and no outage is measured here.
"""

from __future__ import annotations

from experiments.testbed.deployment import Deployment, wait_until
from experiments.testbed.linkcheck import ping
from topologies.spec import spec_from_dict

SPEC = {"name": "k-small", "clusters": 1, "ncs_per_cluster": 1, "vm_slots_per_nc": 1,
        "ha": {"clc": True, "walrus": False, "cc": False, "sc": False},
        "arbitrators": {"per_host": 1, "targets": ["gateway"]},
        "heartbeat": {"interval_ms": 500, "misses": 3}, "links": {"delay_ms": 2}}


def test_small_deployment_answers_and_the_clc_fails_over(tmp_path):
    spec = spec_from_dict(SPEC, netem=True)
    with Deployment(spec, run_dir=tmp_path / "run") as dep:
        assert dep.network.datapath == "kernel"
        # The cloud tier is what this test needs: each process takes 10-20 s to start
        # under emulation, and the cluster tier is the isolation module's business.
        dep.start_services(kinds=("clc", "walrus"))
        ec2, s3 = dep.aws_client("ec2"), dep.aws_client("s3")
        zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
        assert zones == ["cluster1"]
        s3.create_bucket(Bucket="kernel-lane")
        s3.put_object(Bucket="kernel-lane", Key="k", Body=b"on the kernel datapath")
        # user -> gw -> CLC VIP: two links each way, delay at both ends of each.
        assert min(ping(dep["user"], "10.0.0.10", count=5, interval_s=0.2).rtts_ms) >= 8 * 2
        pair = next(p for p in dep.plan.pairs if p.kind == "clc")
        primary = next(m for m in pair.members if dep.member_state(m) == "ENABLED")
        gid = ec2.create_security_group(GroupName="before-failover", Description="x")["GroupId"]
        dep.kill(primary)
        other = next(m for m in pair.members if m != primary)
        assert wait_until(lambda: dep.member_state(other) == "ENABLED", timeout=20), dep.member_state(other)
        assert wait_until(lambda: _answers(ec2), timeout=20)
        assert gid in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]
        assert s3.get_object(Bucket="kernel-lane", Key="k")["Body"].read() == b"on the kernel datapath"


def _answers(ec2) -> bool:
    try:
        return bool(ec2.describe_availability_zones()["AvailabilityZones"])
    except Exception:  # noqa: BLE001 (the VIP is moving: any error means not yet)
        return False
