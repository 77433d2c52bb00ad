"""`aws s3 cp` of a large file through the Walrus VIP, beside moto's S3 server on loopback.

    eucalab bench s3cp [--mib 256] [--repeat 1]

The AWS CLI on the user host copies a file of random bytes up to Walrus through its
service VIP (multipart upload in 8 MiB parts, each replicated to the DISABLED peer
before its answer) and back down (ranged GETs), across the emulated network; then the
same CLI copies the same file up and down against moto's server on loopback in the same
run. Each download is checked byte for byte. Prints the seconds and MiB/s of each copy.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from topologies.spec import DeploymentSpec

from ..testbed.deployment import Deployment
from .cloud_walrus import moto_process

AWS = Path(sys.executable).parent / "aws"
MOTO_ENV = ("AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_CONFIG_FILE=/dev/null "
            "AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_DEFAULT_REGION=us-east-1")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cli_round_trip(run: Callable[[str], str], endpoint: str, env: str, src: Path, dst: Path,
                   bucket: str) -> tuple[float, float]:
    """``aws s3 cp`` of ``src`` up to ``bucket`` and back to ``dst`` with ``run`` (a shell on
    some host): (upload seconds, download seconds). Raises if a copy fails or the bytes differ."""
    base = f"{env} {AWS} --endpoint-url {endpoint} s3"

    def cli(args: str) -> float:
        t0 = time.perf_counter()
        out = run(f"{base} {args} 2>&1; echo exit=$?")
        took = time.perf_counter() - t0
        out, _, status = out.rstrip().rpartition("exit=")
        if status.strip() != "0":
            raise RuntimeError(f"aws s3 {args} failed: {out.strip()[-500:]}")
        return took

    cli(f"mb s3://{bucket}")
    up = cli(f"cp {shlex.quote(str(src))} s3://{bucket}/{src.name}")
    down = cli(f"cp s3://{bucket}/{src.name} {shlex.quote(str(dst))}")
    if _sha256(dst) != _sha256(src):
        raise RuntimeError(f"the copy downloaded from {endpoint} differs from the file uploaded")
    dst.unlink()
    return up, down


def local(cmd: str) -> str:
    """A shell command on this machine (not in any emulated host); its output."""
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout


def run(mib: int = 256, repeat: int = 1) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(110, Console().width))
    console.print(f"aws s3 cp of a {mib} MiB file up and back, {repeat} time(s) per target")
    results: dict[str, list[tuple[float, float]]] = {}
    with Deployment(DeploymentSpec(name="bench-s3cp")) as dep:
        dep.start_services()
        src, dst = dep.run_dir / "s3cp.bin", dep.run_dir / "s3cp.down"
        with open(src, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        env = f"AWS_SHARED_CREDENTIALS_FILE={shlex.quote(str(dep.run_dir / 'credentials'))} " \
              "AWS_CONFIG_FILE=/dev/null AWS_DEFAULT_REGION=eucalyptus"
        walrus = "eucalab Walrus (user host -> VIP, HA pair)"
        results[walrus] = [cli_round_trip(dep["user"].cmd, dep.plan.endpoints()["walrus"], env, src, dst,
                                          f"bench-{i}") for i in range(repeat)]
        with moto_process() as (url, _):
            results["moto_server 5.2.5 (loopback)"] = [cli_round_trip(local, url, MOTO_ENV, src, dst, f"bench-{i}")
                                                       for i in range(repeat)]
        src.unlink()
    table = Table(title=f"aws s3 cp of {mib} MiB (median of {repeat})")
    for col in ("target", "copy", "seconds", "MiB/s"):
        table.add_column(col, justify="left" if col in ("target", "copy") else "right")
    for target, runs in results.items():
        for i, name in enumerate(("upload (multipart)", "download")):
            secs = statistics.median(r[i] for r in runs)
            table.add_row(target, name, f"{secs:.2f}", f"{mib / secs:.1f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 256))
