"""What a network run created in the root namespace (``Created``), how to see what exists
(bridges, links, the processes in a set of namespaces) and how to delete exactly what a run
made (``teardown``). No Mininet here: ``eucalab cleanup`` finishes a killed run with this
alone, from the run's record."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from components.common.vlan import link_names


class NetworkError(RuntimeError):
    """The network could not be built (the message says why and what to do)."""


def run(cmd: list[str], stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
    """Run a root-namespace command; on failure raise NetworkError with its output."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(cmd[:3])} failed: {(proc.stderr or proc.stdout).strip()[:2000]}")
    return proc.stdout


def existing_links() -> set[str]:
    return link_names(run(["ip", "-o", "link", "show"], check=False))


def existing_bridges() -> set[str]:
    return set(run(["ovs-vsctl", "--timeout=10", "list-br"], check=False).split())


@dataclass
class Created:
    """What a network run made in the root namespace, for exact cleanup."""

    bridges: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)  # veth ends left in the root namespace
    shell_pids: list[int] = field(default_factory=list)
    netns: list[int] = field(default_factory=list)  # inode numbers of the hosts' namespaces
    # On the other servers of a deployment over several (topologies/cluster_network.py): per
    # server, how to reach it ("ssh": the command words), its bridges and switch ports, the
    # run's processes there as {pid: start time} and the run's directory there ("run_dir").
    remote: dict[str, dict] = field(default_factory=dict)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except OSError:
            return False


def kill_pids(pids: list[int], sig: int = signal.SIGKILL, wait_s: float = 5.0) -> list[int]:
    """Signal recorded PIDs and wait until they are gone; return any that survived."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if pid_alive(p)]
    return left


def root_netns() -> set[int]:
    """Namespaces never to empty: this driver's own and init's (when visible)."""
    inodes = {os.stat("/proc/self/ns/net").st_ino}
    try:
        inodes.add(os.stat("/proc/1/ns/net").st_ino)
    except OSError:
        pass
    return inodes


def namespace_pids(inodes: list[int]) -> list[int]:
    """PIDs of every process living in one of the given network namespaces."""
    # Never the namespace this driver or init lives in: that would be every process.
    wanted = set(inodes) - root_netns()
    if not wanted:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(f"/proc/{entry.name}/ns/net").st_ino in wanted:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def teardown(created: Created) -> list[str]:
    """Delete what a run created; returns the problems met (empty when clean)."""
    problems = []
    # Everything still running in the run's namespaces (host shells, their jobs, what
    # components started inside VM slots) goes; the namespaces and their veths die with it.
    left = kill_pids(created.shell_pids + namespace_pids(created.netns))
    if left:
        problems.append(f"processes still alive: {left}")
    bridges = existing_bridges() & set(created.bridges)
    if bridges:
        args = ["ovs-vsctl", "--timeout=60"]
        for br in sorted(bridges):
            args += ["--", "--if-exists", "del-br", br]
        try:
            run(args, timeout=120)
        except (NetworkError, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
    # Veth pairs whose other end sat in a namespace vanish when the kernel reaps
    # the namespace (in one batch, far faster than deleting them one by one). A
    # namespace can outlive its processes while a socket opened in it is still
    # open (e.g. a client's connection pool in the driver): such veths are deleted.
    deadline = time.monotonic() + 1.5
    present = existing_links() & set(created.root_links)
    while present and time.monotonic() < deadline:
        time.sleep(0.02)
        present = existing_links() & set(created.root_links)
    if present:
        run(["ip", "-force", "-batch", "-"], check=False,
            stdin="".join(f"link del dev {name}\n" for name in sorted(present)))
        present = existing_links() & set(created.root_links)
        if present:
            problems.append(f"interfaces left: {sorted(present)[:10]}")
    return problems


def remote_teardown_line(record: dict) -> str:
    """One shell line that deletes on another server exactly what a run recorded making
    there (``Created.remote[server]``): each recorded process killed with its process group
    only while its start time still matches (a reused PID is left alone), the bridges, the
    switch ports still present, and the run's directory there. It prints nothing when all
    went; run as root on that server (over ssh)."""
    parts = []
    for pid, start in sorted(record.get("pids", {}).items()):
        parts.append(f'[ "$(cut -d" " -f22 /proc/{int(pid)}/stat 2>/dev/null)" = "{int(start)}" ] '
                     f"&& kill -KILL -- -{int(pid)} {int(pid)} 2>/dev/null")
    bridges = [b for b in record.get("bridges", []) if _plain(b)]
    if bridges:
        parts.append("ovs-vsctl --timeout=60 " + " ".join(f"-- --if-exists del-br {b}" for b in bridges))
    for link in record.get("root_links", []):
        if _plain(link):
            parts.append(f"{{ ! [ -e /sys/class/net/{link} ] || ip link del dev {link}; }}")
    run_dir = record.get("run_dir")
    if run_dir and run_dir.startswith("/") and _plain(run_dir.replace("/", "")) and run_dir.count("/") >= 2 \
            and not {"", ".", ".."} & set(run_dir[1:].split("/")):  # below two plain directories, no way up
        parts.append(f"rm -rf -- {run_dir}")
    return " ; ".join(parts + ["true"])


def _plain(name: str) -> bool:
    """A name safe in a shell line as it is (bridge, interface and directory names are)."""
    return bool(name) and all(c.isalnum() or c in "-_.:" for c in name)
