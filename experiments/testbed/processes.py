"""The processes a deployment starts on its hosts: starting, waiting for their events,
signalling and stopping them (the one place that stops a process: SIGTERM, wait, SIGKILL)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from components.common.kinds import START_ORDER

from . import rundir as rd
from .errors import DeploymentError
from .timescale import scaled

if TYPE_CHECKING:
    from .deployment import Deployment
    from .remote import RemoteRef

log = logging.getLogger(__name__)

# Components in start order (components/common/kinds.py; a component's module may not exist: it is skipped).
COMPONENT_ORDER = START_ORDER


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def component_exists(component: str) -> bool:
    return _module_exists(f"components.{component}.__main__")


def controller_exists() -> bool:
    return _module_exists("controllers.__main__")


def child_env() -> dict:
    """Environment of started processes: the project importable, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(rd.REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# What a process on another server gets of this environment (it has its own there).
REMOTE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(rd.REPO_ROOT)}


KILL_WAIT_S = 5.0  # how long a SIGKILLed process may take to end


def send_signal(pid: int, sig: int) -> None:
    """Signal a process that may be gone already."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate(popens: list[subprocess.Popen], timeout: float = 5.0,
              send: Callable[[subprocess.Popen, int], None] | None = None) -> None:
    """SIGTERM each process, wait up to ``timeout`` for them all, then SIGKILL (and reap)
    any still running: how every process a deployment started is stopped. ``send(popen,
    sig)`` signals one (default: its pid here; a process on another server is signalled
    there, and its local ssh ends with it)."""
    send = send or (lambda popen, sig: send_signal(popen.pid, sig))
    for popen in popens:
        send(popen, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for popen in popens:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            send(popen, signal.SIGKILL)
            try:
                popen.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                # The SIGKILL did not arrive (a server that ssh no longer reaches): end what
                # stands for it here and go on to the others.
                log.warning("pid %d did not end after SIGKILL; ending it here", popen.pid)
                popen.kill()
                popen.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


@dataclass
class Process:
    """A process the deployment started on a host."""

    host: str
    label: str  # the component name, or another label for extra processes
    pid: int
    start_time: int | None
    dir: Path
    popen: subprocess.Popen = field(repr=False)
    config: dict = field(default_factory=dict, repr=False)
    events_offset: int = 0  # where this process's events start in a log a restart appends to
    _seen: list = field(default_factory=list, repr=False, compare=False)  # events parsed so far
    _read_to: int | None = field(default=None, repr=False, compare=False)  # log bytes parsed into _seen
    _reading: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # On another server (remote.py): ``popen`` is the local ssh standing for it, ``pid`` and
    # ``start_time`` are the process's there.
    remote: "RemoteRef | None" = field(default=None, repr=False, compare=False)

    def signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to this process (or its whole process group), wherever it runs."""
        if self.remote is not None:
            self.remote.signal(sig, group)
        elif group:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
        else:
            send_signal(self.pid, sig)

    @property
    def events_path(self) -> Path:
        return self.dir / "events.jsonl"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def events(self) -> list[dict]:
        """This process's events so far (the JSON-lines log it writes; a restarted component
        appends to its predecessor's log, whose events are not this process's).

        Each call parses only the lines completed since the last one: the harness polls
        this every 10 ms during a trial, and parsing a member's whole log each time (700
        lines by the end of a run) cost 2.3 ms of CPU a call against 0.015, in the same
        scheduling class as the userspace datapath the probes cross."""
        with self._reading:
            if self._read_to is None:
                self._read_to = self.events_offset
            try:
                with open(self.events_path, "rb") as f:
                    f.seek(self._read_to)
                    chunk = f.read()
            except FileNotFoundError:
                return list(self._seen)
            end = chunk.rfind(b"\n")  # a line being written right now waits for the next call
            for line in chunk[:end + 1].decode(errors="replace").splitlines():
                try:
                    self._seen.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # not an event: never one later either
            self._read_to += end + 1
            return list(self._seen)


class Processes:
    """Starts, finds, signals and stops the deployment's processes (``dep.processes``)."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep
        self.by_key: dict[tuple[str, str], Process] = {}
        self._main_label: dict[str, str] = {}

    def host_dir(self, host: str, label: str | None = None) -> Path:
        path = self.dep.run_dir / "hosts" / host
        if label:
            path = path / label
        (path / "data").mkdir(parents=True, exist_ok=True)
        return path

    def start(self, component: str, host: str, config: dict | None = None, *, label: str | None = None,
              argv: list[str] | None = None, wait: bool = True, timeout: float = 20.0) -> Process:
        """Start a process on a host and record it.

        With ``argv`` None this runs ``python -m components.<component> --config FILE``
        with the default config updated by ``config``; otherwise ``argv`` is run as is
        (``label`` names its directory). ``wait`` waits for its ``service.start`` event.
        """
        dep = self.dep
        label = label or component
        key = (host, label)
        if key in self.by_key and self.by_key[key].alive():
            raise DeploymentError(f"{label} already runs on {host} (pid {self.by_key[key].pid})")
        # A host's first component gets the plain layout hosts/<host>/{config,...};
        # any other process gets hosts/<host>/<label>/.
        main = argv is None and self._main_label.setdefault(host, label) == label
        pdir = self.host_dir(host) if main else self.host_dir(host, label)
        cfg: dict = {}
        if argv is None:
            if not component_exists(component):
                raise DeploymentError(f"no component {component!r} (components/{component}/__main__.py)")
            cfg = dep.component_config(component, host)
            cfg["data_dir"], cfg["events_path"] = str(pdir / "data"), str(pdir / "events.jsonl")
            cfg.update(dep.component_extra.get(component, {}))
            cfg.update(config or {})
            rd.write_json(pdir / "config", cfg)
            argv = [sys.executable, "-m", f"components.{component}", "--config", str(pdir / "config")]
        events_log = pdir / "events.jsonl"
        offset = events_log.stat().st_size if events_log.exists() else 0
        node, remote = dep.net[host], None
        with open(pdir / "stdout.log", "ab") as out:
            if getattr(node, "isRemote", False):  # a host on another server (remote.py)
                files = {"config": (pdir / "config").read_text()} if cfg else {}
                popen, remote = dep.remote.start(node, pdir, argv, REMOTE_ENV, files, out)
            else:
                popen = node.popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=child_env(), cwd=str(pdir))
        pid, start = (remote.pid, remote.start_time) if remote else (popen.pid, rd.process_start_time(popen.pid))
        proc = Process(host, label, pid, start, pdir, popen, cfg, offset, remote=remote)
        self.by_key[key] = proc
        (pdir / "pid").write_text(f"{pid}\n")
        dep.records.record(dep.network.created)
        dep.events.emit("process.start", host=host, label=label, pid=pid, argv=argv[:6],
                        **({"server": remote.server} if remote else {}))
        if wait and f"components.{component}" in argv:
            self.wait_event(proc, "service.start", timeout=timeout)
        return proc

    def wait_event(self, proc: Process, event: str, timeout: float = 20.0, **match) -> dict:
        """Wait until a process logs ``event`` (with fields equal to ``match``)."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            for ev in proc.events():
                if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                    return ev
            if not proc.alive():
                raise DeploymentError(
                    f"{proc.label} on {proc.host} exited with {proc.popen.returncode} before {event}; "
                    f"last output:\n{tail(proc.dir / 'stdout.log')}")
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{proc.label} on {proc.host} did not report {event} within {timeout:.0f} s; "
                    f"last output:\n{tail(proc.dir / 'stdout.log')}")
            time.sleep(0.02)

    def process(self, host: str, label: str | None = None) -> Process:
        if label is None:
            matches = [p for (h, _), p in self.by_key.items() if h == host]
            if not matches:
                raise KeyError(f"no process on {host}")
            return matches[0]
        return self.by_key[(host, label)]

    def _exited(self, proc: Process) -> None:
        if self.dep.events:
            self.dep.events.emit("process.exit", host=proc.host, label=proc.label, pid=proc.pid,
                                 returncode=proc.popen.returncode)

    def stop(self, host: str, label: str | None = None, timeout: float = 5.0) -> int | None:
        """SIGTERM a process, SIGKILL it after ``timeout``; returns its exit code."""
        proc = self.process(host, label)
        terminate([proc.popen], scaled(timeout), send=lambda _, sig: proc.signal(sig))
        self._exited(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        """Stop every process still running, all at once (the deployment's teardown)."""
        procs = [p for p in self.by_key.values() if p.alive()]
        by_popen = {id(p.popen): p for p in procs}
        terminate([p.popen for p in procs], send=lambda popen, sig: by_popen[id(popen)].signal(sig))
        for p in procs:
            self._exited(p)

    def kill(self, host: str, label: str | None = None, sig: int = signal.SIGKILL, group: bool = False) -> None:
        """Send a signal (default SIGKILL: a crash) to a process; returns at once.

        ``group`` signals its whole process group (a daemon and the children it forked:
        every process started here leads a session of its own).
        """
        proc = self.process(host, label)
        self.dep.events.emit("process.signal", host=proc.host, label=proc.label, pid=proc.pid, signal=int(sig),
                             group=group)
        proc.signal(sig, group)

    def start_services(self, kinds: tuple[str, ...] = COMPONENT_ORDER, timeout: float = 30.0) -> list[Process]:
        """Start every component that exists, on every member of its pair, in order."""
        dep = self.dep
        started = []
        for kind in kinds:
            if not component_exists(kind):
                log.info("component %s does not exist yet: skipped", kind)
                continue
            if kind == "nc":
                waves = [[h.name for h in dep.plan.hosts_by_role("nc")]]
            else:
                # Primaries first, elected before their secondaries start: the plan's
                # primary is then the ENABLED member, run after run.
                pairs = [p for p in dep.plan.pairs if p.kind == kind]
                waves = [[p.primary for p in pairs], [p.secondary for p in pairs if p.secondary]]
            for wave in waves:
                started.extend(self._start_wave(kind, wave, timeout))
                if kind != "nc":
                    # A member listens a detection window and an interval before it claims
                    # the pair alone: slow heartbeats (Eucalyptus 3.4's 10 s) need longer.
                    hb = dep.spec.heartbeat
                    dep.wait_for_primaries(kind, timeout=max(timeout, 3 * hb.interval_ms * (hb.misses + 2) / 1000))
        return started

    def _start_wave(self, kind: str, hosts: list[str], timeout: float) -> list[Process]:
        """Start ``kind`` on ``hosts``, at most ``start_window`` of them starting at once:
        256 NCs started together share the CPU so that none reports within its timeout,
        and those already running (heartbeats) starve meanwhile; a window keeps the
        throughput of the cores and each start short."""
        window = self.dep.start_window or max(4, 4 * (os.cpu_count() or 1))
        procs: list[Process] = []
        for i, h in enumerate(hosts):
            if i >= window:
                self.wait_event(procs[i - window], "service.start", timeout=timeout)
            procs.append(self.start(kind, h, wait=False))
        for proc in procs[-window:]:
            self.wait_event(proc, "service.start", timeout=timeout)
        return procs
