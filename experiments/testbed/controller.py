"""The run's SDN controller (controllers/__main__.py) in the root namespace: started on a
free loopback port before the network is built, waited for through its API until it has
synchronised every switch, crashed and restarted as a fault, stopped at teardown.

A controller that exits on its own (its API thread died, or anything killed it) is an
error the deployment reports: a request to it then says so, and so does the teardown.
``wait_ready`` is also what tests that start a controller of their own wait with."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from components.common import control

from . import rundir as rd
from .errors import DeploymentError
from .processes import child_env, send_signal, tail, terminate
from .timescale import scaled

if TYPE_CHECKING:
    from .deployment import Deployment


class Controller:
    """The deployment's SDN controller process and its API on the run's control socket."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep
        self.popen: subprocess.Popen | None = None
        self.port: int | None = None
        self.start_time: int | None = None
        self.address = "127.0.0.1"
        self._crashed = False  # killed by a fault (crash), not gone on its own

    @property
    def socket(self) -> Path:
        """The run's local control channel (a Unix socket every host can reach)."""
        return control.socket_path(self.dep.run_dir)

    @property
    def dir(self) -> Path:
        return self.dep.run_dir / "controller"

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, dict]:
        """One request to the SDN controller's API on the run's control socket (docs/intent.md);
        a DeploymentError saying so if the controller has exited on its own."""
        try:
            return control.call_blocking(self.socket, method, path, body, timeout)
        except OSError:
            died = self.exited()
            if died:
                raise DeploymentError(died) from None
            raise

    def start(self, address: str = "127.0.0.1") -> str:
        """Start it on a free port of ``address`` (loopback, or this machine's address
        towards the other servers of a deployment over several); returns the switches'
        controller URL."""
        self.address = address
        with socket.socket() as sock:  # a free port for OpenFlow
            sock.bind((address, 0))
            self.port = sock.getsockname()[1]
        self.dir.mkdir(parents=True, exist_ok=True)
        rd.write_json(self.dep.run_dir / "topology.json", self.dep.plan.controller_topology())
        self._spawn()
        return f"tcp:{address}:{self.port}"

    def _spawn(self) -> None:
        dep = self.dep
        argv = [sys.executable, "-m", "controllers", "--run-dir", str(dep.run_dir), "--port", str(self.port),
                "--host", self.address]
        with open(self.dir / "stdout.log", "ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=child_env(), cwd=str(self.dir), start_new_session=True)
        self.start_time = rd.process_start_time(self.popen.pid)
        self._crashed = False
        if dep.network is not None:
            dep.records.record(dep.network.created)
        dep.events.emit("controller.start", pid=self.popen.pid, port=self.port)

    def synced(self) -> bool:
        """Whether this controller answers on its API and has synchronised every switch."""
        return synced(self.socket)

    def wait_ready(self, timeout: float = 60.0, what: str = "the SDN controller") -> None:
        """Wait until the controller has synchronised every switch, or fail with its output."""
        wait_ready(self.popen, self.socket, self.dir / "stdout.log", timeout, what)

    def exited(self) -> str | None:
        """Why the controller this deployment runs is gone, if it exited on its own (not
        crashed by a fault nor stopped here); None while it runs."""
        proc = self.popen
        if proc is None or self._crashed or proc.poll() is None:
            return None
        return (f"the SDN controller (pid {proc.pid}) exited on its own with code {proc.returncode}; "
                f"last output:\n{tail(self.dir / 'stdout.log')}")

    def crash(self, sig: int = signal.SIGKILL) -> None:
        """Kill the SDN controller (a fault); the switches keep their flows (fail-secure)."""
        self.dep.events.emit("controller.signal", pid=self.popen.pid, signal=int(sig))
        self._crashed = True
        send_signal(self.popen.pid, sig)
        self.popen.wait(timeout=10)

    def restart(self, timeout: float = 60.0) -> None:
        """Start the controller again on the same port; it resynchronises from the intent."""
        if self.popen is not None and self.popen.poll() is None:
            self.stop()
        self._spawn()
        self.wait_ready(timeout, what="the restarted SDN controller")

    def stop(self) -> str | None:
        """Stop it; returns why it was gone already if it had exited on its own (``exited``)."""
        proc, died = self.popen, self.exited()
        if proc.poll() is None:
            terminate([proc])
        if self.dep.events:
            self.dep.events.emit("controller.exit", pid=proc.pid, returncode=proc.returncode,
                                 **({"died": True} if died else {}))
        self.popen = None
        return died

    def record_entry(self) -> list[dict]:
        """Its line in the run's record of processes (none when it is not running)."""
        if self.popen is None:
            return []
        return [{"host": None, "label": "controller", "pid": self.popen.pid, "start_time": self.start_time}]


def synced(sock: Path) -> bool:
    """Whether the controller on the control socket ``sock`` answers and has synchronised
    every switch (its ``GET /health``: the condition on which it logs ``controller.ready``)."""
    try:
        status, health = control.call_blocking(sock, "GET", "/health", timeout=1.0)
    except (OSError, ValueError):  # not listening yet, or a predecessor's socket file
        return False
    return status == 200 and health.get("synced", -1) >= health.get("switches", 0) > 0


def wait_ready(popen: subprocess.Popen, sock: Path, output: Path, timeout: float = 60.0,
               what: str = "the SDN controller") -> None:
    """Wait until the controller process ``popen`` serving on ``sock`` has synchronised every
    switch (``timeout`` scaled); a DeploymentError with its exit code and the tail of its
    ``output`` if it exits or the time passes first."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            break
        if synced(sock):
            return
        time.sleep(0.02)
    raise DeploymentError(
        f"{what} did not report ready within {timeout:.0f} s (exit code {popen.poll()}); "
        f"last output:\n{tail(output)}")
