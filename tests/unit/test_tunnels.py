"""Which tunnel the servers of a deployment get: Mininet's gretap, else VXLAN."""

from __future__ import annotations

import subprocess

import pytest

from topologies import cluster as cl


def _runner(can: dict[str, set[str]]):
    calls = []

    def run(server: str, line: str) -> subprocess.CompletedProcess:
        calls.append((server, line))
        kind = "gretap" if "type gretap" in line else "vxlan"
        return subprocess.CompletedProcess(line, 0 if kind in can[server] else 2, "", "")
    return run, calls


def test_gretap_when_every_server_makes_one():
    run, calls = _runner({"localhost": {"gretap", "vxlan"}, "s2": {"gretap", "vxlan"}})
    assert cl.tunnel_kind(["localhost", "s2"], run) == "gretap"
    assert all("type gretap" in line for _, line in calls)


def test_vxlan_when_one_kernel_lacks_gretap():
    run, _ = _runner({"localhost": {"vxlan"}, "s2": {"gretap", "vxlan"}})
    assert cl.tunnel_kind(["localhost", "s2"], run) == "vxlan"


def test_no_common_tunnel_names_the_servers_and_modules():
    run, _ = _runner({"localhost": {"vxlan"}, "s2": {"gretap"}})
    with pytest.raises(cl.ClusterError, match=r"gretap missing on localhost \(module ip_gre\), "
                                              r"vxlan missing on s2 \(module vxlan\)"):
        cl.tunnel_kind(["localhost", "s2"], run)


def test_the_probe_makes_and_deletes_one_device_on_a_documentation_network():
    for kind in cl.TUNNEL_KINDS:
        line = cl.probe_command(kind)
        assert f"type {kind}" in line and line.endswith("ip link del euclprobe0")
        assert "192.0.2." in line  # TEST-NET-1: the device is never up, nothing is sent
        # Not a key a tunnel uses: a VXLAN probe with the identifier of a live tunnel is
        # refused, and the check then said "no tunnel" while one was running.
        assert " 1 " not in line and "16777215" in line


def test_ssh_goes_through_the_runs_configuration_only():
    assert cl._ssh_base("/run/x/ssh/config")[-2:] == ["-F", "/run/x/ssh/config"]
    assert "-F" not in cl._ssh_base(None)


def test_mininets_placer_places_as_the_plan_says():
    from topologies.placement import place
    from topologies.plan import build_plan
    from topologies.spec import spec_from_dict

    placement = place(build_plan(spec_from_dict({"servers": ["localhost", "10.99.0.2"], "clusters": 1})))
    placer = cl.placer_for(placement)(servers=placement.servers, nodes=list(placement.server_of))
    assert placer.place("clc1") == "localhost" and placer.place("c1n1") == "10.99.0.2"
    with pytest.raises(cl.ClusterError, match="h9 is not in the deployment's plan"):
        placer.place("h9")


def test_a_link_within_a_server_has_the_tunnels_mtu_at_both_ends():
    """A frame from a host whose link took the default 1500 bytes is dropped, unanswered,
    by the 1450-byte tunnel on its way to another server: large transfers stall while
    small requests pass."""
    from topologies.cluster_network import TUNNEL_MTU, link_within_server
    from topologies.network import veth_line

    ends = [("walrus1-eth0", "02:ec:00:00:00:0a", 4242), ("swcla-eth3", None, None)]
    assert link_within_server(ends) == (
        f"link add name walrus1-eth0 address 02:ec:00:00:00:0a mtu {TUNNEL_MTU} netns 4242 "
        f"type veth peer name swcla-eth3 mtu {TUNNEL_MTU}")
    # On one machine the kernel's own 1500.
    assert veth_line(ends) == ("link add name walrus1-eth0 address 02:ec:00:00:00:0a netns 4242 "
                               "type veth peer name swcla-eth3")
