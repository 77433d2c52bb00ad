"""``eucalab check``: what this machine can do, what is missing, and how to fix it.

``datapath()``, ``has_netem()`` and ``ovs_problem()`` are also what the network
builder asks before it builds; they are cached and import nothing heavy.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

SETUP_FIX = "run `make setup` (as root)"


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a missing optional capability is reported, not fatal


def _run(cmd: list[str], timeout: float = 5.0) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, (proc.stdout + proc.stderr).strip()
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd)}: no answer within {timeout:.0f} s"


@functools.lru_cache(maxsize=None)
def datapath() -> str:
    """'kernel' where the openvswitch kernel module is loaded or loadable, else 'user'."""
    if os.path.isdir("/sys/module/openvswitch"):
        return "kernel"
    if shutil.which("modprobe"):
        code, _ = _run(["modprobe", "openvswitch"])
        if code == 0 and os.path.isdir("/sys/module/openvswitch"):
            return "kernel"
    return "user"


@functools.lru_cache(maxsize=None)
def has_netem() -> bool:
    """Whether this kernel can emulate delay and loss (sch_netem), tried for real."""
    if os.path.isdir("/sys/module/sch_netem"):
        return True
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        code, _ = _run(["modprobe", "-n", "sch_netem"])
        return code == 0
    ns = f"eucalab-probe-{os.getpid()}"
    if _run(["ip", "netns", "add", ns])[0] != 0:
        return False
    try:
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        code, _ = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                        "delay", "1ms"])
        return code == 0
    finally:
        _run(["ip", "netns", "del", ns])


def ovs_problem() -> str | None:
    """None when Open vSwitch answers, else what is wrong and how to fix it."""
    if not shutil.which("ovs-vsctl"):
        return "Open vSwitch is not installed: " + SETUP_FIX
    code, out = _run(["ovs-vsctl", "--timeout=5", "show"], timeout=8)
    if code != 0:
        return (f"Open vSwitch is not running ({out.splitlines()[0] if out else 'no answer'}): "
                "run `make setup`, or `/usr/share/openvswitch/scripts/ovs-ctl start --system-id=random`")
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_checks() -> list[Finding]:
    """Every check, in the order a newcomer would fix them."""
    f: list[Finding] = []
    f.append(Finding("root", os.geteuid() == 0, f"uid {os.geteuid()}",
                     "run as root (make run / make test re-run themselves with sudo)"))
    py_ok = sys.version_info >= (3, 11)
    f.append(Finding("python", py_ok, platform.python_version(), "Python 3.11 or newer is needed"))
    problem = ovs_problem()
    if problem is None:
        _, ver = _run(["ovs-vsctl", "--version"])
        f.append(Finding("open vswitch", True, ver.splitlines()[0] if ver else "running"))
    else:
        f.append(Finding("open vswitch", False, problem.split(":")[0], problem))
    dp = datapath()
    f.append(Finding("ovs datapath", True,
                     "kernel (openvswitch module)" if dp == "kernel"
                     else "userspace (netdev): no openvswitch kernel module; TCP needs tx offload off, "
                          "which the builder does", required=False))
    netem = has_netem()
    f.append(Finding("netem", netem, "link delay/loss can be emulated" if netem
                     else "absent: link delay, jitter and netem loss cannot be emulated here",
                     "a kernel with sch_netem (e.g. a standard Ubuntu VM)", required=False))
    vlan = os.path.isdir("/sys/module/8021q") or _run(["modprobe", "-n", "8021q"])[0] == 0
    f.append(Finding("802.1Q", vlan, "present" if vlan else
                     "absent: hosts cannot have VLAN sub-interfaces; OVS does all tagging",
                     "not needed: eucalab tags VLANs in Open vSwitch", required=False))
    try:
        from mininet.net import VERSION as mn_version
        f.append(Finding("mininet", True, mn_version))
    except ImportError:
        f.append(Finding("mininet", False, "not importable", "apt-get install mininet; " + SETUP_FIX))
    osken = _version("os-ken")
    f.append(Finding("os-ken", osken is not None, osken or "not installed", SETUP_FIX))
    for tool, pkg in (("mnexec", "mininet"), ("ethtool", "ethtool"), ("arping", "iputils-arping"),
                      ("ping", "iputils-ping"), ("tcpdump", "tcpdump"), ("iperf3", "iperf3"),
                      ("keepalived", "keepalived"), ("iptables", "iptables"), ("curl", "curl")):
        path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
        f.append(Finding(tool, path is not None, path or "not found", f"apt-get install {pkg}; {SETUP_FIX}"))
    return f


def render(findings: list[Finding]) -> None:
    """Print the findings as a table, problems with their fix."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="eucalab check")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    for x in findings:
        status = "[green]ok[/]" if x.ok else ("[red]MISSING[/]" if x.required else "[yellow]absent[/]")
        detail = x.detail if x.ok else f"{x.detail}\nfix: {x.fix}" if x.fix else x.detail
        table.add_row(x.name, status, detail)
    console = Console(width=max(120, Console().width))
    console.print(table)
    bad = [x for x in findings if not x.ok and x.required]
    console.print("[green]ready[/]" if not bad else f"[red]{len(bad)} problem(s)[/]: fix them and run again")
