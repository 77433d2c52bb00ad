"""The other servers of a deployment spread over several (docs/cluster.md): processes
started on their hosts, their event logs collected into the run directory, each server's
clock offset, the SDN controller's control socket reachable there.

A component on a host of another server runs there, started over the host's own ssh
command (Mininet's ``RemoteMixin.sshcmd``, with the run's ssh configuration) inside the
host's namespace (``mnexec -a``), with its config written there at the same path as
here. The local ssh process stands for it: it lives exactly as long as the remote
process, its stdout is the process's output (``stdout.log`` here). The remote process is
told apart by the pid and start time it prints first, and it is signalled there by both
(``RemoteRef.signal``): signalling the local ssh would only cut the connection.

Its ``events.jsonl`` is copied line by line into the same place in the run directory
(``tail -F`` over ssh), so everything that reads events reads them here as on one
machine; the timestamps stay the server's own CLOCK_MONOTONIC, and ``servers.json`` in
the run directory gives each server's offset from this machine's and its resolution
(clocks.py). A component that talks to the SDN controller (the CC) finds the control
socket at its usual path there: ssh forwards that Unix socket to this machine's.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import shlex
import subprocess
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import rundir as rd
from .clocks import measure_clock_offset
from .errors import DeploymentError
from .timescale import scaled

if TYPE_CHECKING:
    from .deployment import Deployment

log = logging.getLogger(__name__)

PID_MARK = "eucalab-remote-pid"


@dataclasses.dataclass
class RemoteRef:
    """A process on another server: where, its pid and start time there."""

    server: str
    ssh: list[str]  # the command words that run a shell line on that server
    pid: int
    start_time: int

    def check_line(self, action: str) -> str:
        """``action`` on that server only while the pid still is this process."""
        return f'[ "$(cut -d" " -f22 /proc/{self.pid}/stat 2>/dev/null)" = "{self.start_time}" ] && {action}'

    def signal(self, sig: int, group: bool = False) -> None:
        """Signal it there; a server ssh does not reach in time is logged, not raised (a
        teardown goes on to the rest)."""
        target = f"-- -{self.pid}" if group else str(self.pid)
        try:
            subprocess.run(self.ssh + [self.check_line(f"kill -{int(sig)} {target}")], capture_output=True,
                           timeout=scaled(60))
        except subprocess.TimeoutExpired:
            log.warning("%s: signal %d to pid %d not delivered: ssh timed out", self.server, sig, self.pid)


def put_files(pdir: Path, files: dict[str, str]) -> tuple[str, bytes]:
    """The shell line that makes ``pdir`` (and its ``data``) on another server and writes
    ``files`` (name -> text) into it, and what it reads on its stdin: the texts travel as a
    tar stream, never on a command line (a config holds the pair's key and the role tokens,
    which ``ps`` shows to anyone on either machine), and everything is made readable by
    root only."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    where = shlex.quote(str(pdir))
    return f"umask 077 && mkdir -p {shlex.quote(str(pdir / 'data'))} && tar -x --no-same-owner -C {where}", \
        buf.getvalue()


def start_line(pdir: Path, ns_pid: int, argv: list[str], env: dict[str, str]) -> str:
    """The shell line that runs ``argv`` on another server in the namespace of its host's
    shell (``ns_pid``), in ``pdir``, after printing its pid and start time (``exec`` keeps
    the pid: the line's shell becomes the process)."""
    words = ["mnexec", "-a", str(ns_pid), "env"] + [f"{k}={v}" for k, v in env.items()] + argv
    return (f"cd {shlex.quote(str(pdir))} && echo {PID_MARK} $$ $(cut -d' ' -f22 /proc/$$/stat) && "
            f"exec {' '.join(shlex.quote(w) for w in words)}")


def parse_pid_line(text: str) -> tuple[int, int] | None:
    """(pid, start time) from the first line a remote start printed, None until it did."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == PID_MARK and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2])
    return None


class RemoteServers:
    """The deployment's other servers: clocks, directories, processes, event logs."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep
        self.clocks: dict[str, dict] = {}
        self._mirrors: dict[Path, subprocess.Popen] = {}
        self._mirror_server: dict[Path, str] = {}
        self._forwards: list[subprocess.Popen] = []

    @property
    def servers(self) -> list[str]:
        return list(self.dep.spec.servers[1:])

    def ssh(self, server: str) -> list[str]:
        from topologies.cluster_network import ssh_words

        return ssh_words(self.dep.ssh_config, server)

    def run(self, server: str, line: str, timeout: float = 120, stdin: bytes = b"") -> subprocess.CompletedProcess:
        done = subprocess.run(self.ssh(server) + [line], input=stdin, capture_output=True, timeout=scaled(timeout))
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))

    def open(self) -> None:
        """Before the network: each server's clock offset (``servers.json``), the run's
        directory made there, the control socket forwarded there."""
        from topologies.placement import place

        dep = self.dep
        for server in self.servers:
            made = self.run(server, f"mkdir -p {shlex.quote(str(dep.run_dir))}")
            if made.returncode != 0:
                raise DeploymentError(f"server {server}: cannot make the run directory there: "
                                      f"{(made.stderr or made.stdout).strip()[:300]} (`eucalab check --servers`)")
            clock = measure_clock_offset(self.ssh(server))
            self.clocks[server] = {**dataclasses.asdict(clock), "nodes": place(dep.plan).on(server)}
            dep.events.emit("server.clock", server=server, offset_s=clock.offset_s,
                            resolution_s=clock.resolution_s)
        rd.write_json(dep.run_dir / "servers.json", {
            "about": "each server's CLOCK_MONOTONIC minus this machine's (offset_s), from a ping exchange "
                     "over ssh; the far clock was read within resolution_s of the midpoint. Events of a "
                     "host on that server carry its own clock: subtract offset_s to compare with this "
                     "machine's.", "servers": self.clocks})

    def forward_control_socket(self) -> None:
        """The SDN controller's Unix socket at the same path on each server (ssh -R)."""
        sock = str(self.dep.control_socket)
        for server in self.servers:
            words = self.ssh(server)
            popen = subprocess.Popen(words[:-1] + ["-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{sock}:{sock}",
                                                   words[-1]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            self._forwards.append(popen)

    def start(self, node, pdir: Path, argv: list[str], env: dict[str, str], files: dict[str, str],
              stdout) -> tuple[subprocess.Popen, RemoteRef]:
        """Start ``argv`` on ``node`` (a host on another server); ``files`` (name -> text) are
        written into ``pdir`` there first. Returns the local ssh process and the remote ref."""
        server = node.server
        line, stdin = put_files(pdir, files)
        made = self.run(server, line, stdin=stdin)
        if made.returncode != 0:
            raise DeploymentError(f"{node.name} on {server}: cannot write its files: {made.stderr.strip()[:300]}")
        self._mirror(server, pdir / "events.jsonl")
        sshcmd = [w for w in node.sshcmd if w != "-tt"]  # Mininet's own ssh to that server
        offset = stdout.tell()
        popen = subprocess.Popen(sshcmd + [start_line(pdir, node.pid, argv, env)], stdout=stdout,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out_path = Path(stdout.name)
        deadline = time.monotonic() + scaled(60)
        while True:
            with open(out_path, "rb") as f:
                f.seek(offset)
                found = parse_pid_line(f.read().decode(errors="replace"))
            if found:
                break
            if popen.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"{argv[-3:]} on {node.name} ({server}) did not start: "
                                      f"{out_path.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        ref = RemoteRef(server, self.ssh(server), *found)
        dep = self.dep
        if dep.network is not None:
            dep.network.created.remote[server]["pids"][str(ref.pid)] = ref.start_time
        return popen, ref

    def _mirror(self, server: str, path: Path) -> None:
        """Copy a server's event log into the same path here as it grows (once per log:
        a restarted component appends to its predecessor's)."""
        if path in self._mirrors and self._mirrors[path].poll() is None:
            return
        with open(path, "ab") as out:
            self._mirrors[path] = subprocess.Popen(
                self.ssh(server) + [f"exec tail -n +1 -F -s 0.05 {shlex.quote(str(path))} 2>/dev/null"],
                stdout=out, stdin=subprocess.DEVNULL, start_new_session=True)
        self._mirror_server[path] = server

    def collect(self, timeout: float = 30.0) -> list[str]:
        """Wait until every copied event log is as long here as there (the processes have
        stopped), then end the copies; returns the logs that fell short."""
        short = []
        by_server: dict[str, list[Path]] = {}
        for path, server in self._mirror_server.items():
            by_server.setdefault(server, []).append(path)
        for server, paths in by_server.items():
            deadline = time.monotonic() + scaled(timeout)
            try:
                sizes = self.run(server, "; ".join(f"stat -c %s {shlex.quote(str(p))} 2>/dev/null || echo 0"
                                                   for p in paths)).stdout.split()
            except subprocess.TimeoutExpired:
                short += [str(p) for p in paths]
                continue
            for path, size in zip(paths, sizes):
                while (path.stat().st_size if path.exists() else 0) < int(size) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if (path.stat().st_size if path.exists() else 0) < int(size):
                    short.append(str(path))
        for popen in list(self._mirrors.values()) + self._forwards:
            _end(popen)
        self._mirrors.clear()
        self._forwards.clear()
        return short


def _end(popen: subprocess.Popen) -> None:
    """End a local ssh this manager started (by its pid) and reap it."""
    from .processes import terminate

    if popen.poll() is None:
        terminate([popen], timeout=5.0)
