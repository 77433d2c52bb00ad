"""Start a real component process on loopback for a test, and stop it by PID."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from components.common.events import read_events
from experiments.testbed.loopback import stop

from .util import free_port

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"account_id": "000000000001", "access_key": "AKIAADMIN0000000TEST",
         "secret_key": "adminsecret0000000000000000000000000000a"}
TOKEN = "internal-test-token"
HA_SECRET = "5e" * 32  # an HA pair's heartbeat key (hex)


@contextlib.contextmanager
def component(name: str, tmp: Path, **extra):
    """Run ``python -m components.<name>`` on 127.0.0.1; yield (base URL, config, process)."""
    port = extra.pop("port", None) or free_port()
    cfg = {"host": f"{name}1", "component": name, "role": "single", "listen_host": "127.0.0.1",
           "port": port, "data_dir": str(tmp / "data"), "events_path": str(tmp / "events.jsonl"),
           "state": "ENABLED", "region": "eucalyptus", "admin": ADMIN, "internal_token": TOKEN,
           "endpoints": {}, "zones": ["cluster1", "cluster2"], "public_ips": "10.0.128.0/28"}
    cfg.update(extra)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config").write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp / "stdout.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", f"components.{name}", "--config", str(tmp / "config")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 15
        # This process's start: a restarted component appends to the same event log.
        while not any(e["event"] == "service.start" and e.get("pid") == proc.pid
                      for e in read_events(tmp / "events.jsonl")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{(tmp / 'stdout.log').read_text()[-2000:]}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", cfg, proc
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def clc_and_walrus(tmp: Path, endpoints: dict | None = None, **clc_extra):
    """A CLC (in ``tmp``) and a Walrus (in ``tmp/walrus``) on loopback that know each other:
    Walrus asks the CLC about accounts, the CLC reads image objects from Walrus as the
    registering account. Yields (CLC base URL, Walrus base URL, CLC process)."""
    clc_port, walrus_port = free_port(), free_port()
    ends = {"clc": f"http://127.0.0.1:{clc_port}/services/Eucalyptus",
            "walrus": f"http://127.0.0.1:{walrus_port}/services/Walrus", **(endpoints or {})}
    with component("walrus", tmp / "walrus", port=walrus_port, endpoints=ends) as (walrus, _, _), \
            component("clc", tmp, port=clc_port, endpoints=ends, **clc_extra) as (clc, _, proc):
        yield clc, walrus, proc

