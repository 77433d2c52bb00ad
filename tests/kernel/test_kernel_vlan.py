"""MANAGED mode with ``vlan_tagging: host``: the NCs and the CC tag, as Eucalyptus did.

One deployment for the module (1 cluster, 2 NCs x 2 VM slots, a CC pair, standalone
VLAN-clean switches, no SDN controller). Two groups, sharing NC c1n1:

  a  10.101.16.0/28   VLAN 10  a1 c1n1v1, a2 c1n2v1   admits nothing from other groups
  b  10.101.16.16/28  VLAN 11  b1 c1n1v2              admits tcp 8080 from group a

Each NC bridges a booted slot's port into eucabr<vlan> with <private interface>.<vlan>
as uplink (the bench helpers run the NC's own commands, components/common/vlan.py), and
the primary CC holds each group's gateway on its sub-interface of the same VLAN. On the
wire between NC and switch, and at the CC's switch port, frames carry the group's
802.1Q tag; a slot of another group on the same NC sees none of them.
"""

from __future__ import annotations

import pytest

from components.common import vlan as vlans
from experiments.bench.sdn import (apply_router, boot, capture, forwarded_packets, group, instance, run_ip,
                                   sdn_spec, start_listener, tcp_answer)
from experiments.testbed.deployment import Deployment
from topologies.spec import NetworkMode

MODE = NetworkMode.MANAGED
GA = group("sg-a", 0, MODE, [])
GB = group("sg-b", 1, MODE, [{"protocol": "tcp", "from_port": 8080, "to_port": 8080, "source_group": "sg-a"}])
A1 = instance("i-a1", GA, 1, "c1n1v1")
A2 = instance("i-a2", GA, 2, "c1n2v1")
B1 = instance("i-b1", GB, 1, "c1n1v2")
INSTANCES = {"a1": (A1, GA), "a2": (A2, GA), "b1": (B1, GB)}
INTENT = {"cluster": 1, "epoch": 1, "mode": MODE.value, "primary_cc": "c1cc1", "groups": [GA, GB],
          "instances": [A1, A2, B1]}


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    spec = sdn_spec(MODE, name="k-vlan-host", vlan_tagging="host")
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("vlan-host") / "run") as d:
        assert not d.sdn and d.network.datapath == "kernel"
        for name, (inst, grp) in INSTANCES.items():
            boot(d, inst, grp)
            start_listener(d, inst["slot"], 8080, f"l8080-{name}", reply=name)
        apply_router(d, INTENT)
        yield d


def private(dep, host: str) -> str:
    return dep.plan.hosts[host].intf("priv1").name


def bridged(dep, host: str, vlan: int) -> set[str]:
    """The interfaces enslaved to ``host``'s bridge of ``vlan``."""
    return vlans.link_names(dep[host].cmd(f"ip -o link show master {vlans.vlan_bridge(vlan)}"))


def addresses(dep, host: str) -> set[tuple[str, str]]:
    """(interface, address/prefix) of every IPv4 address ``host`` holds."""
    return {(line.split()[1], line.split()[3]) for line in dep[host].cmd("ip -o -4 addr show").splitlines()
            if " inet " in line}


def test_the_nc_tags_each_group_on_a_sub_interface_bridged_with_its_slots(dep):
    nc = dep["c1n1"]
    for vlan, port in ((10, dep.plan.nc_port("c1n1v1")), (11, dep.plan.nc_port("c1n1v2"))):
        sub = f"{private(dep, 'c1n1')}.{vlan}"
        assert f"vlan protocol 802.1Q id {vlan} " in nc.cmd(f"ip -d link show dev {sub}")
        assert bridged(dep, "c1n1", vlan) == {sub, port}
    # The NC's own address stays on the untagged interface, and reaches its CC untagged.
    assert (private(dep, "c1n1"), "10.101.1.1/16") in addresses(dep, "c1n1")
    assert " 0% packet loss" in nc.cmd("ping -c 1 -W 2 10.101.0.11")


def test_same_group_across_ncs_crosses_the_trunk_tagged_with_its_vlan(dep):
    with capture(dep, "c1n1", f"vlan and host {A2['ip']}", "cap-trunk-a") as cap:
        assert tcp_answer(dep, A1["slot"], A2["ip"], 8080, timeout=3) == "a2"
        assert tcp_answer(dep, A2["slot"], A1["ip"], 8080, timeout=3) == "a1"
    assert cap["count"] > 0
    assert all("vlan 10," in line for line in cap["lines"]), cap["lines"]


def test_another_groups_slot_on_the_same_nc_sees_none_of_its_frames(dep):
    a_frames = " or ".join(f"ether host {i['mac']} or host {i['ip']}" for i in (A1, A2))
    slot_intf = dep.plan.hosts[A1["slot"]].interfaces[0].name
    with capture(dep, B1["slot"], a_frames, "cap-b1-sees-a") as other:
        assert tcp_answer(dep, A1["slot"], A2["ip"], 8080, timeout=3) == "a2"
        dep[A1["slot"]].cmd(f"arping -c 2 -w 2 -I {slot_intf} {A2['ip']}")  # broadcast in VLAN 10
    assert other["count"] == 0, other["lines"]
    # And group a admits nothing from b: the CC drops it, a1 sees none of it.
    with capture(dep, A1["slot"], f"host {B1['ip']} or ether host {B1['mac']}", "cap-a1-denied") as denied:
        assert tcp_answer(dep, B1["slot"], A1["ip"], 8080, timeout=1) == ""
    assert denied["count"] == 0, denied["lines"]


def test_an_allowed_rule_is_routed_through_the_cc_between_its_vlan_sub_interfaces(dep):
    cc_priv = private(dep, "c1cc1")
    gateways = {a for a in addresses(dep, "c1cc1") if a[1].startswith("10.101.16.")}
    assert gateways == {(f"{cc_priv}.10", f"{GA['gateway']}/28"), (f"{cc_priv}.11", f"{GB['gateway']}/28")}
    assert not [a for a in addresses(dep, "c1cc2") if a[1].startswith("10.101.16.")]  # the secondary: none
    before = forwarded_packets(dep, "c1cc1")
    with capture(dep, "c1cc1", "vlan and tcp port 8080", "cap-cc-routed", intf=cc_priv) as cap:
        assert tcp_answer(dep, A1["slot"], B1["ip"], 8080, timeout=3) == "b1"
    assert forwarded_packets(dep, "c1cc1") > before
    seen = {vlan for vlan in (10, 11) if any(f"vlan {vlan}," in line for line in cap["lines"])}
    assert seen == {10, 11}, cap["lines"]


def test_a_released_port_leaves_its_slot_in_no_vlan(dep):
    """What the NC does when an instance ends (last: it takes b1 off its VLAN)."""
    port = dep.plan.nc_port(B1["slot"])
    assert " 0% packet loss" in dep[B1["slot"]].cmd(f"ping -c 1 -W 2 {GB['gateway']}")
    run_ip(dep, "c1n1", vlans.release_commands(port))
    assert bridged(dep, "c1n1", 11) == {f"{private(dep, 'c1n1')}.11"}  # the uplink stays
    assert "100% packet loss" in dep[B1["slot"]].cmd(f"ping -c 2 -i 0.3 -W 1 {GB['gateway']}")
