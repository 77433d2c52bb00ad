"""Instance lifecycle benchmark: what the CLC and CC hold stays flat however many
instances have come and gone.

    eucalab bench lifecycle [--lifecycles 100000] [--batch 64] [--retention-s 5]

The CLC and the CC run as real processes on loopback (``python -m components.clc`` and
``components.cc``, in SYSTEM networking mode so the CC routes nothing); the CC's one NC
is a stand-in served by this process that runs an instance the moment it is handed over
(no image, no workload, no network). No Mininet and no root: what is measured is the
bookkeeping, not the datapath. One client drives lifecycles through the EC2 API with
boto3: RunInstances of ``batch`` instances, then TerminateInstances of them, again and
again. Terminated instances are retired after ``retention_s`` (components' config
``terminated_retention_s``; an hour by default, shortened here so the run reaches its
steady state in seconds).

At each checkpoint (1k, 10k, 100k lifecycles by default) it prints:

- the resident memory (RSS) of the CLC and the CC processes;
- the size of the view the CC replicates to its standby on every change (its snapshot,
  the same JSON it keeps in ``cluster.json``) and how many instances it holds;
- the instance rows the CLC holds;
- the event-loop stall p99 of each process since the previous checkpoint: a prober
  thread asks each process's ``GET /health`` every 10 ms over a kept-open connection;
  the answer waits for the process's event loop, so its latency is the stall a request
  meets (plus a loopback round trip, ~0.2 ms). The machine's 1-minute load average is
  printed beside it: on a shared machine the stalls follow the load.

Flat figures from 1k to 100k are the point; growing ones are a leak.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import psutil
from botocore.config import Config

from ..analysis.measures import percentile
from ..testbed.loopback import JsonHandler, StandIn, free_port
from ..testbed.loopback import stop as stop_process

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"account_id": "000000000001", "access_key": "AKIABENCHLIFECYCLE01",
         "secret_key": "bench-lifecycle-secret-0000000000000000a"}
TOKEN = "bench-lifecycle-token"
PROBE_S = 0.01


class StandInNC(StandIn):
    """An NC's API as the CC uses it (components/nc/service.py), holding records only."""

    def __init__(self):
        self.instances: dict[str, dict] = {}
        self.lock = threading.Lock()
        super().__init__()

    def _handler(self):
        nc = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with nc.lock:
                    listing = list(nc.instances.values())
                self._answer(200, {"instances": listing})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with nc.lock:
                    nc.instances[body["id"]] = {**body, "state": "running"}
                self._answer(200, {"id": body["id"], "state": "pending"})

            def do_DELETE(self):
                iid = self.path.rstrip("/").rsplit("/", 1)[-1]
                with nc.lock:
                    nc.instances.pop(iid, None)
                self._answer(200, {"id": iid, "state": "terminated"})

        return Handler


class Process:
    """One component process on loopback, stopped by its PID."""

    def __init__(self, name: str, root: Path, port: int | None = None, **config):
        self.port = port or free_port()
        self.dir = root / name
        self.dir.mkdir()
        self.config = {"host": f"{name}1", "component": name, "port": self.port, "listen_host": "127.0.0.1",
                       "data_dir": str(self.dir / "data"), "events_path": str(self.dir / "events.jsonl"),
                       "internal_token": TOKEN, "admin": ADMIN, **config}
        (self.dir / "config.json").write_text(json.dumps(self.config))
        self.log = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", f"components.{name}", "--config",
                                      str(self.dir / "config.json")], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {(self.dir / 'stdout.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def status(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        self.log.close()


class StallProber(threading.Thread):
    """GET /health of each process every PROBE_S on a kept-open connection; latencies in ms."""

    def __init__(self, processes: dict[str, Process]):
        super().__init__(daemon=True)
        self.processes = processes
        self.samples: dict[str, list[float]] = {name: [] for name in processes}
        self.stopped = threading.Event()

    def run(self) -> None:
        conns = {name: http.client.HTTPConnection("127.0.0.1", p.port, timeout=30) for name, p in
                 self.processes.items()}
        while not self.stopped.wait(PROBE_S):
            for name, conn in conns.items():
                t0 = time.perf_counter()
                try:
                    conn.request("GET", "/health")
                    conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    conn.close()  # reconnects on the next request
                    continue
                self.samples[name].append((time.perf_counter() - t0) * 1000)

    def take(self) -> dict[str, list[float]]:
        """The samples since the last take."""
        out = {}
        for name, values in self.samples.items():
            n = len(values)
            out[name], self.samples[name] = values[:n], values[n:]
        return out


def measure(lifecycles: int = 100_000, batch: int = 64, retention_s: float = 5.0,
            checkpoints: tuple[int, ...] = (1_000, 10_000, 100_000), progress=None,
            settle_s: float = 0.0) -> list[dict]:
    """Drive ``lifecycles`` instance lifecycles; one row of figures per checkpoint.

    ``settle_s``: before the last checkpoint's row, wait up to that long for the CLC and
    the CC to hold fewer instances than have come and gone (their retirement runs on its
    own clock, every 2 s on the CLC; a short run can end before its first pass)."""
    marks = sorted(c for c in checkpoints if c <= lifecycles) or [lifecycles]
    root = Path(tempfile.mkdtemp(prefix="eucalab-bench-lifecycle-"))
    rows: list[dict] = []
    procs: list[Process] = []
    try:
        with StandInNC() as nc:
            cc = Process("cc", root, cluster=1, mode="SYSTEM", terminated_retention_s=retention_s,
                         ncs={"c1n1": {"url": nc.url, "slots": [f"c1n1v{n}" for n in range(1, batch + 1)]}})
            procs.append(cc)
            # RegisterImage reads the image from Walrus as the caller: a Walrus holds it.
            clc_port, walrus_port = free_port(), free_port()
            ends = {"clc": f"http://127.0.0.1:{clc_port}/services/Eucalyptus",
                    "walrus": f"http://127.0.0.1:{walrus_port}/services/Walrus", "cc": {"cluster1": cc.url}}
            procs.append(Process("walrus", root, port=walrus_port, endpoints=ends))
            clc = Process("clc", root, port=clc_port, zones=["cluster1"], endpoints=ends,
                          terminated_retention_s=retention_s, quotas={"instances": batch})
            procs.append(clc)
            keys = dict(region_name="eucalyptus", aws_access_key_id=ADMIN["access_key"],
                        aws_secret_access_key=ADMIN["secret_key"])
            s3 = boto3.client("s3", endpoint_url=ends["walrus"], **keys,
                              config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}))
            s3.create_bucket(Bucket="images")
            s3.put_object(Bucket="images", Key="lifecycle.img", Body=b"lifecycle image\n")
            ec2 = boto3.client("ec2", endpoint_url=ends["clc"], **keys, config=Config(retries={"total_max_attempts": 1}))
            emi = ec2.register_image(ImageLocation="images/lifecycle.img", Name="lifecycle")["ImageId"]
            prober = StallProber({"clc": clc, "cc": cc})
            prober.start()
            done, t0 = 0, time.monotonic()
            try:
                for mark in marks:
                    while done < mark:
                        ids = [i["InstanceId"] for i in ec2.run_instances(
                            ImageId=emi, MinCount=1, MaxCount=min(batch, mark - done))["Instances"]]
                        ec2.terminate_instances(InstanceIds=ids)
                        done += len(ids)
                    if mark == marks[-1] and settle_s > 0:
                        deadline = time.monotonic() + settle_s
                        while time.monotonic() < deadline and not (
                                cc.status()["instances"] < done and _clc_rows(clc) < done):
                            time.sleep(0.1)
                    stalls = prober.take()
                    row = {"lifecycles": done, "seconds": round(time.monotonic() - t0, 1),
                           "clc_rss_mib": round(clc.rss_mib(), 1), "cc_rss_mib": round(cc.rss_mib(), 1),
                           "cc_view_bytes": (Path(cc.config["data_dir"]) / "cluster.json").stat().st_size,
                           "cc_instances": cc.status()["instances"], "clc_instances": _clc_rows(clc),
                           "load1": round(os.getloadavg()[0], 1),
                           **{f"{name}_stall_p99_ms": round(percentile(v, 99), 2) for name, v in stalls.items()},
                           **{f"{name}_probes": len(v) for name, v in stalls.items()}}
                    rows.append(row)
                    if progress is not None:
                        progress(row)
            finally:
                prober.stopped.set()
                prober.join()
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def run(lifecycles: int = 100_000, batch: int = 64, retention_s: float = 5.0,
        checkpoints: tuple[int, ...] = (1_000, 10_000, 100_000)) -> int:
    """``eucalab bench lifecycle``: ``measure`` with its figures printed as a table."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    rows = measure(lifecycles, batch, retention_s, checkpoints,
                   progress=lambda row: console.print(f"  {row['lifecycles']} lifecycles: {json.dumps(row)}",
                                                      style="dim"))
    table = Table(title=f"After N instance lifecycles (run + terminate, batches of {batch}; "
                        f"terminated retained {retention_s:g} s)")
    for col in ("lifecycles", "CLC RSS MiB", "CC RSS MiB", "CC view (replicated) bytes", "CC instances",
                "CLC instance rows", "CLC stall p99 ms", "CC stall p99 ms", "load (1 min)", "elapsed s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["lifecycles"]), f"{r['clc_rss_mib']:.1f}", f"{r['cc_rss_mib']:.1f}",
                      str(r["cc_view_bytes"]), str(r["cc_instances"]), str(r["clc_instances"]),
                      f"{r['clc_stall_p99_ms']:.2f}", f"{r['cc_stall_p99_ms']:.2f}", f"{r['load1']:.1f}",
                      f"{r['seconds']:.0f}")
    console.print(table)
    console.print("CLC and CC as processes on loopback, the NC a stand-in (no workload, no network); stall: "
                  "GET /health latency every 10 ms, p99 since the previous row (experiments/analysis/measures.py percentile)")
    return 0


def _clc_rows(clc: Process) -> int:
    """Instance rows in the CLC's database, read beside the running process (WAL lets readers in)."""
    db = sqlite3.connect(f"file:{Path(clc.config['data_dir']) / 'clc.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
