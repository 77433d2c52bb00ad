"""Preflight: command results become findings, each problem carries its fix, and the
probes the network builder uses clean up after themselves. No root needed: every probe
gets its command results injected."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from experiments.testbed import preflight
from experiments.testbed.preflight import Finding

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


class FakeRunner:
    """Answers commands by their leading words; records every call. Unknown: exit 1."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]]):
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> tuple[int, str]:
        self.calls.append(cmd)
        for prefix, answer in sorted(self.answers.items(), key=lambda kv: -len(kv[0])):
            if tuple(cmd[:len(prefix)]) == prefix:
                return answer
        return 1, f"{cmd[0]}: unexpected in this test"


def nothing_present(path: str) -> bool:
    return False


def root() -> bool:
    return True


def not_root() -> bool:
    return False


# --- datapath ---------------------------------------------------------------------------

def test_datapath_kernel_when_module_loaded_without_running_anything():
    run = FakeRunner({})
    assert preflight.probe_datapath(run, present=lambda p: p == "/sys/module/openvswitch") == "kernel"
    assert run.calls == []


def test_datapath_user_when_module_not_loadable():
    run = FakeRunner({("modprobe", "-n", "openvswitch"): (1, "Module openvswitch not found")})
    assert preflight.probe_datapath(run, present=nothing_present, is_root=root) == "user"


def test_datapath_user_when_modprobe_is_missing():
    run = FakeRunner({("modprobe",): (127, "modprobe: not found")})
    assert preflight.probe_datapath(run, present=nothing_present, is_root=root) == "user"


def test_datapath_loadable_module_is_loaded_as_root():
    run = FakeRunner({("modprobe", "-n", "openvswitch"): (0, ""), ("modprobe", "openvswitch"): (0, "")})
    assert preflight.probe_datapath(run, present=nothing_present, is_root=root) == "kernel"
    assert ["modprobe", "openvswitch"] in run.calls


def test_datapath_user_when_loadable_module_fails_to_load():
    run = FakeRunner({("modprobe", "-n", "openvswitch"): (0, ""), ("modprobe", "openvswitch"): (1, "denied")})
    assert preflight.probe_datapath(run, present=nothing_present, is_root=root) == "user"


# --- netem ------------------------------------------------------------------------------

NETNS_OK = {("ip", "netns", "add"): (0, ""), ("ip", "-n"): (0, ""), ("ip", "netns", "del"): (0, "")}


def test_netem_tried_on_a_veth_in_a_throwaway_namespace_which_is_deleted():
    run = FakeRunner({**NETNS_OK, ("ip", "netns", "exec"): (0, "")})
    assert preflight.probe_netem(run, present=nothing_present, is_root=root, pid=42) is True
    ns = "eucalab-probe-42"
    assert run.calls[0] == ["ip", "netns", "add", ns]
    assert run.calls[1][:4] == ["ip", "-n", ns, "link"] and "veth" in run.calls[1]
    assert run.calls[2][:4] == ["ip", "netns", "exec", ns] and run.calls[2][-3:] == ["netem", "delay", "1ms"]
    assert run.calls[-1] == ["ip", "netns", "del", ns]


def test_netem_absent_when_the_qdisc_is_refused_and_namespace_still_deleted():
    run = FakeRunner({**NETNS_OK, ("ip", "netns", "exec"): (2, "Error: Specified qdisc kind is unknown.")})
    assert preflight.probe_netem(run, present=nothing_present, is_root=root, pid=7) is False
    assert run.calls[-1] == ["ip", "netns", "del", "eucalab-probe-7"]


def test_netem_namespace_deleted_even_when_the_probe_raises():
    class Boom(Exception):
        pass

    calls = []

    def run(cmd):
        calls.append(cmd)
        if cmd[:3] == ["ip", "netns", "exec"]:
            raise Boom
        return 0, ""

    try:
        preflight.probe_netem(run, present=nothing_present, is_root=root, pid=9)
    except Boom:
        pass
    assert calls[-1] == ["ip", "netns", "del", "eucalab-probe-9"]


def test_netem_without_root_asks_modprobe_only():
    run = FakeRunner({("modprobe", "-n", "sch_netem"): (0, "insmod sch_netem.ko")})
    assert preflight.probe_netem(run, present=nothing_present, is_root=not_root) is True
    assert all(cmd[0] == "modprobe" for cmd in run.calls)


def test_netem_falls_back_to_modprobe_when_no_namespace_can_be_made():
    run = FakeRunner({("ip", "netns", "add"): (1, "Permission denied"),
                      ("modprobe", "-n", "sch_netem"): (1, "not found")})
    assert preflight.probe_netem(run, present=nothing_present, is_root=root) is False
    assert not any(cmd[:3] == ["ip", "netns", "del"] for cmd in run.calls)


def test_netem_loaded_module_is_enough():
    run = FakeRunner({})
    assert preflight.probe_netem(run, present=lambda p: p == "/sys/module/sch_netem", is_root=root)
    assert run.calls == []


def test_builder_probes_are_cached():
    assert preflight.datapath() in ("kernel", "user")
    preflight.datapath()
    preflight.has_netem()
    preflight.has_netem()
    assert preflight.datapath.cache_info().hits >= 1
    assert preflight.has_netem.cache_info().hits >= 1


def test_builder_probes_import_nothing_heavy():
    code = ("import sys, experiments.testbed.preflight; "
            "heavy = [m for m in ('rich', 'mininet', 'os_ken') if m in sys.modules]; "
            "sys.exit('imported: ' + ' '.join(heavy) if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- Open vSwitch -------------------------------------------------------------------------

OVS_UP = {("ovs-vsctl", "--timeout=5", "show"): (0, "abc\n    ovs_version: \"3.1.0\""),
          ("ovs-appctl",): (0, "ovs-vswitchd (Open vSwitch) 3.1.0"),
          ("ovs-vsctl", "--version"): (0, "ovs-vsctl (Open vSwitch) 3.1.0\nDB Schema 8.3.1")}


def installed(tool: str) -> str:
    return f"/usr/bin/{tool}"


def test_ovs_running_reports_its_version():
    f = preflight.check_ovs(FakeRunner(OVS_UP), which=installed)
    assert f.ok and f.detail == "running, 3.1.0"


def test_ovs_not_installed_names_the_package():
    problem = preflight.ovs_problem(FakeRunner({}), which=lambda tool: None)
    assert "openvswitch-switch" in problem and "make setup" in problem


def test_ovs_not_running_names_ovs_ctl():
    run = FakeRunner({("ovs-vsctl",): (1, "ovs-vsctl: unix:/var/run/openvswitch/db.sock: "
                                          "database connection failed (No such file or directory)")})
    f = preflight.check_ovs(run, which=installed)
    assert not f.ok and f.required
    assert "ovs-ctl start --system-id=random" in f.fix and "make setup" in f.fix
    assert "database connection failed" in f.fix


def test_ovs_database_up_but_switch_daemon_down_is_a_problem():
    run = FakeRunner({**OVS_UP, ("ovs-appctl",): (1, "cannot connect to ovs-vswitchd.ctl")})
    problem = preflight.ovs_problem(run, which=installed)
    assert problem.startswith("ovs-vswitchd is not running") and "ovs-ctl start" in problem


# --- other findings -----------------------------------------------------------------------

def test_root_finding():
    assert preflight.check_root(0).ok
    f = preflight.check_root(1000)
    assert not f.ok and "root" in f.fix and f.detail == "uid 1000"


def test_python_finding():
    assert preflight.check_python((3, 11, 2), "3.11.2").ok
    assert not preflight.check_python((3, 9, 18), "3.9.18").ok


def test_missing_tool_names_its_debian_package():
    f = preflight.check_tool("arping", "iputils-arping", which=lambda tool: None)
    assert not f.ok and f.fix.startswith("apt-get install -y --no-install-recommends iputils-arping")
    assert preflight.check_tool("arping", "iputils-arping", which=installed).detail == "/usr/bin/arping"


def test_every_tool_the_hosts_use_is_checked():
    names = {tool for tool, _ in preflight.TOOLS}
    assert {"mnexec", "ethtool", "arping", "tcpdump", "iperf3", "keepalived"} <= names


def test_python_module_versions_from_a_child_interpreter():
    run = FakeRunner({("python",): (0, "2.3.0")})
    f = preflight.check_python_module("mininet", run, python="python")
    assert f.ok and f.detail == "2.3.0"
    assert "from mininet.net import VERSION" in run.calls[0][2]


def test_python_module_missing_gives_the_fix():
    run = FakeRunner({("python",): (1, "Traceback ...\nModuleNotFoundError: No module named 'os_ken'")})
    f = preflight.check_python_module("os-ken", run, python="python")
    assert not f.ok and "No module named 'os_ken'" in f.detail and "make setup" in f.fix
    mn = preflight.check_python_module("mininet", FakeRunner({("python",): (1, "")}), python="python")
    assert not mn.ok and "apt-get install -y --no-install-recommends mininet" in mn.fix


def test_missing_optional_capabilities_are_not_problems():
    findings = [preflight.check_netem(False), preflight.check_8021q(False), preflight.check_datapath("user")]
    assert preflight.problems(findings) == []
    assert "userspace (netdev)" in preflight.check_datapath("user").detail
    assert preflight.check_datapath("kernel").detail.startswith("kernel")


def test_run_checks_on_this_machine_gives_a_fix_for_every_failure():
    findings = preflight.run_checks()
    names = {f.name for f in findings}
    assert {"root", "python", "open vswitch", "ovs datapath", "netem", "802.1Q", "mininet", "os-ken",
            "mnexec", "keepalived"} <= names
    for f in findings:
        assert f.ok or f.fix, f"{f.name} fails without a fix"


# --- rendering ------------------------------------------------------------------------------

def rendered(findings: list[Finding]) -> str:
    buf = io.StringIO()
    preflight.render(findings, console=Console(file=buf, width=200, color_system=None))
    return buf.getvalue()


def test_render_shows_problems_with_their_fixes():
    text = rendered([Finding("open vswitch", False, "not running", "run `make setup`"),
                     Finding("netem", False, "absent", "a kernel with sch_netem", required=False),
                     Finding("root", True, "uid 0")])
    assert "MISSING" in text and "fix: run `make setup`" in text
    assert "absent" in text and "fix: a kernel with sch_netem" in text
    assert "1 problem(s)" in text and "ready" not in text


def test_render_ready_when_only_optional_things_are_absent():
    text = rendered([Finding("root", True, "uid 0"),
                     Finding("netem", False, "absent", "a kernel with sch_netem", required=False)])
    assert text.rstrip().endswith("ready")


def test_render_keeps_brackets_in_details_literal():
    text = rendered([Finding("mininet", False, "not importable ([Errno 2] No such file)",
                             "apt-get install [x]")])
    assert "[Errno 2]" in text and "apt-get install [x]" in text


def test_datapath_ports_counts_the_ports_of_the_named_datapath_only():
    out = ("netdev@ovs-netdev:\n  lookups: hit:1 missed:2 lost:0\n  flows: 3\n  port 0: ovs-netdev (tap)\n"
           "  port 1: coswc1 (tap)\n  port 2: cobr1n2-eth2\nsystem@ovs-system:\n  lookups: hit:0 missed:0 lost:0\n"
           "  flows: 0\n  port 0: ovs-system (internal)\n")
    assert preflight.count_datapath_ports(out, "netdev@ovs-netdev") == 3
    assert preflight.count_datapath_ports(out, "system@ovs-system") == 1
    assert preflight.count_datapath_ports("", "netdev@ovs-netdev") is None
    assert preflight.datapath_ports("user", run=lambda cmd: (0, out)) == 3
    assert preflight.datapath_ports("kernel", run=lambda cmd: (1, "ovs-vswitchd is not running")) is None
