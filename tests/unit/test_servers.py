"""``eucalab check --servers``: what a server's answer means, without ssh."""

from __future__ import annotations

import json
import subprocess

import pytest

from experiments.testbed import clocks, servers
from experiments.testbed.rundir import REPO_ROOT

pytestmark = pytest.mark.loopback  # starts processes (tests/conftest.py)

LOCAL = {"mininet": "2.3.0", "eucalab_commit": "abc123", "tunnels": ["vxlan"]}


def _answer(rc: int = 0, **got) -> subprocess.CompletedProcess:
    body = {"mininet": "2.3.0", "commit": "abc123", "mtu": 1500, "tunnels": ["gretap", "vxlan"], **got}
    return subprocess.CompletedProcess([], rc, json.dumps(body) + "\n", "")


def _by_name(found):
    return {f.name.split(": ")[1]: f for f in found}


def test_a_matching_server_is_ready_with_the_common_tunnel_type():
    found = _by_name(servers.findings("10.99.0.2", _answer(), LOCAL))
    assert all(f.ok for f in found.values()), found
    assert set(found) == {"ssh", "mininet", "eucalab", "tunnel", "MTU"}
    assert found["tunnel"].detail == "vxlan"  # gretap only there: vxlan is what both make


def test_every_mismatch_is_named_with_its_fix():
    found = _by_name(servers.findings("s2", _answer(mininet="2.3.1", commit="def456", mtu=1450,
                                                    tunnels=["gretap"]), LOCAL))
    assert not found["mininet"].ok and "2.3.1 (here 2.3.0)" in found["mininet"].detail
    assert not found["eucalab"].ok and str(REPO_ROOT) in found["eucalab"].fix
    assert not found["tunnel"].ok and "modprobe" in found["tunnel"].fix
    assert not found["MTU"].ok and "at least 1500" in found["MTU"].fix
    assert found["ssh"].ok


def test_ssh_failure_or_garbage_is_one_clear_finding():
    refused = subprocess.CompletedProcess([], 255, "", "root@s2: Permission denied (publickey).")
    [f] = servers.findings("s2", refused, LOCAL)
    assert not f.ok and "Permission denied" in f.detail and "ssh-copy-id" in f.fix
    # Logged in, but no eucalab there to answer: ssh is fine, eucalab is what is missing.
    for answer in (subprocess.CompletedProcess([], 127, "", ".venv/bin/python: not found"),
                   subprocess.CompletedProcess([], 0, "garbage", "")):
        ssh, f = servers.findings("s2", answer, LOCAL)
        assert ssh.ok and not f.ok and f.name == "s2: eucalab" and "make setup" in f.fix


def test_the_probe_line_runs_here_and_reports_this_machine():
    back = servers.local_address_towards("127.0.0.1") or "127.0.0.1"
    proc = subprocess.run(["sh", "-c", servers.probe_line(back)], capture_output=True, text=True)
    got = json.loads(proc.stdout)
    assert set(got) == {"mininet", "commit", "mtu", "tunnels"}
    assert got["mtu"] and got["mtu"] > 0
    # The same answers eucalab check compares against.
    from experiments.testbed.versions import versions
    here = versions()
    assert (got["mininet"], got["commit"]) == (here["mininet"], here["eucalab_commit"])


def test_clock_offset_takes_the_shortest_exchange_and_states_its_resolution():
    # The far clock runs 100 s behind; the second exchange has the shortest round trip.
    got = clocks.clock_offset([(10.0, -89.0, 12.0), (20.0, -79.9, 20.2), (30.0, -69.0, 30.5)])
    assert abs(got.offset_s - (-100.0)) < 1e-9 and abs(got.resolution_s - 0.1) < 1e-9
    assert got.samples == 3


def test_clock_offset_of_this_machine_against_itself_is_within_its_resolution():
    got = clocks.measure_clock_offset(["sh", "-c"], samples=10)
    assert abs(got.offset_s) <= got.resolution_s and got.samples == 10
