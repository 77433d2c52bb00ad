"""The controller launcher as a process: starts without switches, serves the API, exits 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, HASpec, NetworkMode

from tests.support.util import free_port

from .test_sdn_flows import intent
from .test_sdn_intent import request

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]


def _events(run: Path) -> list[dict]:
    path = run / "controller" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _start(run: Path) -> subprocess.Popen:
    starts = sum(e["event"] == "controller.start" for e in _events(run))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "controllers", "--run-dir", str(run), "--port", str(free_port())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while sum(e["event"] == "controller.start" for e in _events(run)) == starts:
        assert proc.poll() is None and time.monotonic() < deadline, "controller did not start"
        time.sleep(0.02)
    return proc


@pytest.fixture
def run(tmp_path):
    spec = DeploymentSpec(name="t", clusters=1, ncs_per_cluster=2, vm_slots_per_nc=2, mode=NetworkMode.MANAGED,
                          ha=HASpec(clc=False, walrus=False, cc=True, sc=False))
    spec.arbitrators.per_host = 0
    (tmp_path / "topology.json").write_text(json.dumps(build_plan(spec).controller_topology()))
    (tmp_path / "control.sock").write_text("")  # left behind by a killed controller
    return tmp_path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_it_cleanly(run, sig):
    proc = _start(run)
    try:
        status, body = request(run, "GET", "/health")
        assert status == 200 and body["synced"] == 0
        it = intent()
        it["epoch"] = 4
        status, body = request(run, "PUT", "/intent/clusters/1", it)
        assert status == 200 and body["installed"] is True  # no switch connected: nothing to wait for
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _events(run)[-1]["event"] == "controller.stop"
    assert not (run / "control.sock").exists()
    # The next controller starts from the stored intent: the old epoch is refused.
    proc = _start(run)
    try:
        it["epoch"] = 3
        assert request(run, "PUT", "/intent/clusters/1", it)[0] == 409
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
