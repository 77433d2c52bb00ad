"""``eucalab check``: what this machine can do, what is missing, and how to fix it.

``datapath()``, ``has_netem()`` and ``ovs_problem()`` are also what the network
builder asks before it builds: the first two are cached, and this module imports
only the standard library (rich is imported inside ``render``).

Every probe takes the command runner as a parameter, so the logic that turns
command results into findings is unit-tested with injected results, without root.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from .timescale import scaled

SETUP_FIX = "run `make setup` (as root)"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
OVS_START_FIX = f"run `make setup`, or `{OVS_CTL} start --system-id=random`"
NETNS_PREFIX = "eucalab-probe-"

Runner = Callable[[list[str]], tuple[int, str]]
"""Runs a command; returns (exit code, stdout+stderr). 127: not found, 124: timed out."""


@dataclass
class Finding:
    """One line of ``eucalab check``: a capability, whether it is there, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a missing optional capability is reported, not fatal


def run_command(cmd: list[str], timeout: float = 5.0) -> tuple[int, str]:
    """Run ``cmd`` without a shell; never raises for a missing or hanging command. The
    timeout is stretched on a slow machine (experiments.testbed.timescale)."""
    timeout = scaled(timeout)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return proc.returncode, (proc.stdout + proc.stderr).strip()
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd)}: no answer within {timeout:g} s"


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_fix(package: str) -> str:
    return f"apt-get install -y --no-install-recommends {package}, or {SETUP_FIX}"


# --- probes the network builder uses --------------------------------------------------

def probe_datapath(run: Runner = run_command, present: Callable[[str], bool] = os.path.isdir,
                   is_root: Callable[[], bool] = _is_root) -> str:
    """'kernel' where the openvswitch kernel module is present or loadable, else 'user'."""
    if present("/sys/module/openvswitch"):
        return "kernel"
    if run(["modprobe", "-n", "openvswitch"])[0] != 0:
        return "user"
    # Loadable but not loaded: ovs-vswitchd does not load it when a bridge is added.
    if is_root() and run(["modprobe", "openvswitch"])[0] != 0:
        return "user"
    return "kernel"


def probe_netem(run: Runner = run_command, present: Callable[[str], bool] = os.path.isdir,
                is_root: Callable[[], bool] = _is_root, pid: int | None = None) -> bool:
    """Whether this kernel can emulate delay and loss: a netem qdisc is really added, on a
    veth in a throw-away network namespace (as root), else ``modprobe -n sch_netem``."""
    if present("/sys/module/sch_netem"):
        return True
    modprobe_says = lambda: run(["modprobe", "-n", "sch_netem"])[0] == 0  # noqa: E731
    if not is_root():
        return modprobe_says()
    ns = f"{NETNS_PREFIX}{os.getpid() if pid is None else pid}"
    if run(["ip", "netns", "add", ns])[0] != 0:
        return modprobe_says()
    try:
        if run(["ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])[0] != 0:
            return modprobe_says()
        return run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "probe0", "root",
                    "netem", "delay", "1ms"])[0] == 0
    finally:
        run(["ip", "netns", "del", ns])  # takes the veth pair with it


def probe_8021q(run: Runner = run_command, present: Callable[[str], bool] = os.path.isdir) -> bool:
    """Whether hosts could have VLAN sub-interfaces (the 8021q module)."""
    return present("/sys/module/8021q") or run(["modprobe", "-n", "8021q"])[0] == 0


def missing_kernel_features() -> list[str]:
    """What the kernel lane (tests/kernel) needs that this kernel lacks: the Open vSwitch
    kernel datapath, netem and 802.1Q (empty when it has all three)."""
    missing = []
    if datapath() != "kernel":
        missing.append("openvswitch (the OVS kernel datapath)")
    if not has_netem():
        missing.append("sch_netem")
    if not probe_8021q():
        missing.append("8021q")
    return missing


@functools.lru_cache(maxsize=None)
def datapath() -> str:
    """'kernel' or 'user': the Open vSwitch datapath this machine supports (cached)."""
    return probe_datapath()


@functools.lru_cache(maxsize=None)
def has_netem() -> bool:
    """Whether link delay, jitter and netem loss can be emulated here (cached)."""
    return probe_netem()


DATAPATH_NAMES = {"user": "netdev@ovs-netdev", "kernel": "system@ovs-system"}


def datapath_ports(kind: str, run: Runner = run_command) -> int | None:
    """Ports on the machine's Open vSwitch datapath of ``kind`` ("user" or "kernel"), from
    ``ovs-appctl dpctl/show``: every bridge of that type shares the one datapath, each
    bridge's own local port included. On the userspace datapath the main thread polls
    every one of them each time it wakes, so a packet's delay through a bridge grows with
    the count (docs/results.md). None when it cannot be read."""
    code, out = run(["ovs-appctl", "--timeout=5", "dpctl/show"])
    if code != 0:
        return None
    return count_datapath_ports(out, DATAPATH_NAMES[kind])


def count_datapath_ports(dpctl_show: str, name: str) -> int | None:
    """The ``port N:`` lines of datapath ``name`` in ``ovs-appctl dpctl/show`` output;
    None when that datapath is not listed."""
    count, inside = None, False
    for line in dpctl_show.splitlines():
        if not line.startswith((" ", "\t")):  # a datapath's header line
            inside = line.rstrip().rstrip(":") == name
            if inside:
                count = 0
        elif inside and line.strip().startswith("port ") and ":" in line:
            count += 1
    return count


def ovs_problem(run: Runner = run_command, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """None when Open vSwitch answers (database and switch daemon), else what is wrong and the fix."""
    if not which("ovs-vsctl"):
        return f"Open vSwitch is not installed: {_apt_fix('openvswitch-switch')}"
    code, out = run(["ovs-vsctl", "--timeout=5", "show"])
    if code != 0:
        first = out.splitlines()[0] if out else "no answer"
        return f"Open vSwitch is not running (ovs-vsctl show: {first}): {OVS_START_FIX}"
    # Without ovs-vswitchd the database still answers, but adding a bridge hangs.
    code, out = run(["ovs-appctl", "--timeout=5", "-t", "ovs-vswitchd", "version"])
    if code != 0:
        first = out.splitlines()[0] if out else "no answer"
        return f"ovs-vswitchd is not running ({first}): {OVS_START_FIX}"
    return None


# --- findings ---------------------------------------------------------------------------

def check_root(euid: int) -> Finding:
    return Finding("root", euid == 0, f"uid {euid}",
                   "run as root: make run / make test re-run themselves with sudo where it exists")


def check_python(version: tuple[int, ...], text: str) -> Finding:
    return Finding("python", tuple(version[:2]) >= (3, 11), text, "Python 3.11 or newer: /usr/bin/python3 on Debian bookworm")


def check_ovs(run: Runner = run_command, which: Callable[[str], str | None] = shutil.which) -> Finding:
    problem = ovs_problem(run, which)
    if problem is not None:
        return Finding("open vswitch", False, problem.split(":")[0], problem)
    code, out = run(["ovs-vsctl", "--version"])
    # "ovs-vsctl (Open vSwitch) 3.1.0": the version is the last word of the first line.
    version = out.splitlines()[0].split()[-1] if code == 0 and out else "unknown version"
    return Finding("open vswitch", True, f"running, {version}")


def check_datapath(kind: str) -> Finding:
    detail = ("kernel (openvswitch module)" if kind == "kernel" else
              "userspace (netdev): no openvswitch kernel module; the builder turns tx checksum "
              "offload off on every host interface so TCP works")
    return Finding("ovs datapath", True, detail, required=False)


def check_netem(ok: bool) -> Finding:
    return Finding("netem", ok,
                   "link delay, jitter and loss can be emulated" if ok
                   else "absent: link delay, jitter and netem loss cannot be emulated here",
                   "a kernel with sch_netem (a standard Ubuntu VM has it); loss alone can use "
                   "iptables' statistic match", required=False)


def check_8021q(ok: bool) -> Finding:
    return Finding("802.1Q", ok, "module present" if ok else
                   "absent: hosts cannot have VLAN sub-interfaces; Open vSwitch does all tagging",
                   "only for vlan_tagging: host (a kernel with 8021q; `eucalab vm` runs one); the "
                   "default, vlan_tagging: switch, tags in Open vSwitch", required=False)


# Run in a child interpreter: it proves the import works, and keeps os_ken imports
# in controllers/ only, as everywhere else in the project.
_VERSION_PROBES = {
    "mininet": ("from mininet.net import VERSION; print(VERSION)", "mininet"),
    "nftables": ("import nftables; print('libnftables', nftables.Nftables().cmd('list tables')[0] == 0 and 'usable')",
                 "python3-nftables"),
    "os-ken": ("import importlib.metadata as m, os_ken; "
               "print(getattr(os_ken, '__version__', None) or m.version('os-ken'))", None),
}


def check_python_module(name: str, run: Runner = run_command, python: str = sys.executable) -> Finding:
    """Whether ``name`` (mininet, nftables or os-ken) imports in this interpreter, with its version."""
    code, package = _VERSION_PROBES[name]
    rc, out = run([python, "-c", code])
    if rc == 0 and out:
        return Finding(name, True, out.splitlines()[-1])
    last = out.splitlines()[-1] if out else "not importable"
    fix = _apt_fix(package) if package else SETUP_FIX
    return Finding(name, False, f"not importable ({last})", fix)


TOOLS = (("mnexec", "mininet"), ("ethtool", "ethtool"), ("arping", "iputils-arping"),
         ("ping", "iputils-ping"), ("tcpdump", "tcpdump"), ("iperf3", "iperf3"),
         ("keepalived", "keepalived"), ("iptables", "iptables"), ("nft", "nftables"), ("tc", "iproute2"),
         ("curl", "curl"), ("socat", "socat"))
"""Binaries used on emulated hosts, with the Debian package that has each."""


def find_tool(tool: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories a normal user's PATH lacks."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def check_tool(tool: str, package: str, which: Callable[[str], str | None] = find_tool) -> Finding:
    path = which(tool)
    return Finding(tool, path is not None, path or "not found", _apt_fix(package))


def run_checks() -> list[Finding]:
    """Every check, in the order a newcomer would fix them."""
    findings = [check_root(os.geteuid()),
                check_python(tuple(sys.version_info), platform.python_version()),
                check_ovs(),
                check_datapath(datapath()),
                check_netem(has_netem()),
                check_8021q(probe_8021q()),
                check_python_module("mininet"),
                check_python_module("nftables"),
                check_python_module("os-ken")]
    findings += [check_tool(tool, package) for tool, package in TOOLS]
    return findings


def problems(findings: list[Finding]) -> list[Finding]:
    """The findings that stop eucalab from running (missing optional ones do not)."""
    return [f for f in findings if not f.ok and f.required]


def render(findings: list[Finding], console=None) -> None:
    """Print the findings as a table; every problem shows its fix."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="eucalab check")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail / fix")
    for f in findings:
        status = "[green]ok[/]" if f.ok else ("[red]MISSING[/]" if f.required else "[yellow]absent[/]")
        detail = escape(f.detail)
        if not f.ok and f.fix:
            detail += f"\n[bold]fix:[/] {escape(f.fix)}"
        table.add_row(f.name, status, detail)
    console = console or Console(width=max(120, Console().width))
    console.print(table)
    bad = problems(findings)
    console.print("[green]ready[/]" if not bad else f"[red]{len(bad)} problem(s)[/]: fix them and run again")
