"""The controller launcher as a process: starts without switches, serves the API, exits 0 on
SIGTERM/SIGINT and 1 when its API thread dies; the deployment's manager of it (experiments/
testbed/controller.py) reports a controller that exited on its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
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


# The launcher with an API thread that answers one request and then dies (as an unexpected
# exception in its serving loop would end it).
_DYING_API = """
import sys
from controllers import api
def serve_once_then_die(self, poll_interval=0.5):
    self.handle_request()
    raise RuntimeError("the serving loop broke")
api._Server.serve_forever = serve_once_then_die
from controllers.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _start(run: Path, launcher: list[str] = ("-m", "controllers"), stdout=subprocess.DEVNULL) -> subprocess.Popen:
    starts = sum(e["event"] == "controller.start" for e in _events(run))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, *launcher, "--run-dir", str(run), "--port", str(free_port())],
                            env=env, stdout=stdout, stderr=subprocess.STDOUT)
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


def test_a_dead_api_thread_ends_the_controller_with_code_1(run):
    (run / "controller").mkdir(exist_ok=True)
    with open(run / "controller" / "stdout.log", "wb") as out:
        proc = _start(run, ["-c", _DYING_API], stdout=out)
    try:
        with socket.socket(socket.AF_UNIX) as sock:  # its one request (unread: the process may end first)
            sock.connect(str(run / "control.sock"))
            # The connection is what ends the serving loop: the server may have taken it and
            # closed it before the request goes out (seen on a loaded machine), so a refused
            # send is no failure.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: controller\r\n\r\n")
            assert proc.wait(timeout=10) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = _events(run)[-1]
    assert last["event"] == "controller.api_died" and "the serving loop broke" in last["error"], last
    assert "the intent API thread died" in (run / "controller" / "stdout.log").read_text()
    assert not (run / "control.sock").exists()


class _Driver:
    """What the controller's manager uses of a deployment."""

    def __init__(self, run: Path):
        spec = DeploymentSpec(name="t", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=1, mode=NetworkMode.MANAGED)
        spec.arbitrators.per_host = 0
        self.run_dir, self.plan, self.network, self.emitted = run, build_plan(spec), None, []
        self.events = self

    def emit(self, event: str, **fields) -> None:
        self.emitted.append(event)


def test_the_deployment_reports_a_controller_that_exited_on_its_own(run):
    from experiments.testbed.controller import Controller
    from experiments.testbed.errors import DeploymentError
    from experiments.testbed.timescale import wait_until

    ctl = Controller(_Driver(run))
    ctl.start()
    try:
        assert wait_until(lambda: _answers(ctl), 20)
        os.kill(ctl.popen.pid, signal.SIGKILL)  # not the deployment's doing (a crash fault is: below)
        ctl.popen.wait(timeout=10)
        with pytest.raises(DeploymentError, match="SDN controller .* exited on its own with code -9"):
            ctl.request("GET", "/health")
        assert "exited on its own with code -9" in ctl.stop()
        # A crash fault is the deployment's own doing: not reported.
        ctl.start()
        assert wait_until(lambda: _answers(ctl), 20)
        ctl.crash()
        assert ctl.exited() is None and ctl.stop() is None
    finally:
        if ctl.popen is not None and ctl.popen.poll() is None:
            ctl.popen.kill()
            ctl.popen.wait()


def test_the_teardown_reports_a_controller_that_exited_on_its_own(run, monkeypatch):
    from experiments.testbed import vswitchd
    from experiments.testbed.deployment import Deployment, DeploymentError

    monkeypatch.setattr(vswitchd, "release", lambda exclude=None: None)  # no datapath of this run to put back
    dep = Deployment(DeploymentSpec(name="t", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=1), sdn=True)
    dep.run_dir = run
    (run / "controller").mkdir(exist_ok=True)
    (run / "controller" / "stdout.log").write_text("the intent API thread died\n")
    dep.controller_process.popen = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    dep.controller_process.popen.wait(timeout=10)
    with pytest.raises(DeploymentError, match="exited on its own with code 1;(.|\n)*the intent API thread died"):
        dep.down()
    assert dep.controller is None  # torn down before it said so


def _answers(ctl) -> bool:
    try:
        return ctl.request("GET", "/health", timeout=1.0)[0] == 200
    except OSError:
        return False


def test_a_relative_run_directory_is_taken_from_where_the_command_ran(tmp_path, monkeypatch):
    # The SDN controller runs in a directory of its own: handed a relative run directory, it
    # looked for the topology under its own and exited ("no .../controller/results/...").
    from experiments.testbed.deployment import Deployment

    monkeypatch.chdir(tmp_path)
    dep = Deployment(DeploymentSpec(name="t", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=1),
                     run_dir="results/x-run")
    assert dep._run_dir_arg == tmp_path / "results" / "x-run"
