"""What a trial watches with: the user's prober (experiments/failover/prober.py, a process
of its own on the user host), one plain HTTP request from the user host, and the packet
capture and flow dumps kept for a trial that went wrong."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..analysis.measures import Probe
from ..testbed.configs import REALTIME_PRIORITY
from ..testbed.deployment import Deployment
from ..testbed.processes import child_env
from ..testbed.rundir import REPO_ROOT


def mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Prober:
    """The user's requests during a trial (experiments/failover/prober.py), in a process of its own on
    the user host, so that nothing the harness does meanwhile (restarting a member, reading
    event logs) can delay them; each completed request arrives as a line on its stdout."""

    def __init__(self, dep: Deployment, url: str, headers: dict, interval: float, timeout: float,
                 expect: tuple[str, bytes]):
        self.dep, self.url, self.headers = dep, url, headers
        self.interval, self.timeout, self.expect = interval, timeout, expect
        self.probes: list[Probe] = []
        self.overhead: dict | None = None  # the prober's own cost, its last line (experiments/failover/prober.py)
        self._lock = threading.Lock()
        self._popen = None
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> "Prober":
        kind, want = self.expect
        argv = [sys.executable, "-m", "experiments.failover.prober", "--url", self.url, "--interval", str(self.interval),
                "--timeout", str(self.timeout), "--expect", kind, "--body-hex", want.hex()]
        if self.dep.realtime:
            # The members it measures run at this priority: the prober must not queue behind them.
            argv += ["--realtime-priority", str(REALTIME_PRIORITY)]
        for name, value in self.headers.items():
            argv += ["--header", f"{name}:{value}"]
        self._popen = self.dep["user"].popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, cwd=str(REPO_ROOT), env=child_env())
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._popen.stdout:
            if line.startswith(b"#"):
                self.overhead = json.loads(line[1:])
                continue
            sent, done, ok = line.split()
            with self._lock:
                self.probes.append(Probe(float(sent), float(done), ok == b"1"))

    def snapshot(self) -> list[Probe]:
        with self._lock:
            return list(self.probes)

    def stop(self) -> list[Probe]:
        """End the prober (its requests in flight finish first, within the timeout)."""
        if self._popen is not None:
            try:
                self._popen.stdin.close()  # the prober's signal to stop
            except OSError:
                pass
            try:
                self._popen.wait(timeout=self.timeout + 5)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
            self._reader.join(timeout=5)
            self._popen.stdout.close()
        return sorted(self.snapshot(), key=lambda p: p.sent)


def user_http(dep: Deployment, method: str, url: str, body: bytes | None = None,
               timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes]:
    """One plain HTTP request from the user host (no retries); (0, error) when it fails."""
    u = urlsplit(url)
    with dep.in_host("user"):  # this thread's sockets belong to the user host
        try:
            c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
            c.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
            r = c.getresponse()
            out = r.status, r.read()
            c.close()
            return out
        except (OSError, http.client.HTTPException) as exc:
            return 0, repr(exc).encode()


class Capture:
    """What the user host's interface carried during one trial (tcpdump), kept with the
    switches' flow tables only for a trial that went wrong."""

    def __init__(self, dep: Deployment, path: Path):
        self.dep, self.path, self.kept, self.done = dep, path, False, False
        # Written to memory (/dev/shm) while the trial runs, moved to the run directory only
        # when kept: a pcap per trial written to disk competes with the components' own files.
        self.tmp = Path(tempfile.mkdtemp(prefix="eucalab-capture-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                         else None)) / "trial.pcap"
        intf = dep.plan.hosts["user"].interfaces[0].name
        self.proc = dep.start("tcpdump", "user", label="tcpdump", wait=False, argv=[
            "tcpdump", "-i", intf, "-n", "-s", "256", "-U", "--immediate-mode", "-w", str(self.tmp)])

    def finish(self, keep: bool) -> None:
        self.done = True
        self.dep.stop("user", "tcpdump")
        if keep:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.tmp.exists():
                shutil.move(str(self.tmp), self.path.with_suffix(".pcap"))
        shutil.rmtree(self.tmp.parent, ignore_errors=True)
        if not keep:
            return
        self.kept = True
        dumps = []
        for sw in self.dep.plan.switches:
            try:
                out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw],
                                     capture_output=True, text=True, timeout=10)
                dumps.append(f"# {sw}\n{out.stdout}{out.stderr}")
            except (OSError, subprocess.TimeoutExpired) as exc:  # the record matters more than the dump
                dumps.append(f"# {sw}\n{exc!r}")
        self.path.with_suffix(".flows.txt").write_text("\n".join(dumps))

