"""Invariants of the addressing plan and its graph, over several specs."""

from __future__ import annotations

import ipaddress

import networkx as nx
import pytest

from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, HASpec, NetworkMode

SPECS = {
    "default": DeploymentSpec(),
    "system": DeploymentSpec(mode=NetworkMode.SYSTEM),
    "static": DeploymentSpec(mode=NetworkMode.STATIC, clusters=1),
    "novlan": DeploymentSpec(mode=NetworkMode.MANAGED_NOVLAN, vlan_clean=False),
    "no-ha": DeploymentSpec(ha=HASpec(False, False, False, False)),
    "3x5x3": DeploymentSpec(clusters=3, ncs_per_cluster=5, vm_slots_per_nc=3),
    "tagged": DeploymentSpec(clusters=2, ncs_per_cluster=3),
}


@pytest.fixture(params=list(SPECS), scope="module")
def plan(request):
    return build_plan(SPECS[request.param], tag="zz" if request.param == "tagged" else "")


def test_every_l2_network_is_a_tree(plan):
    for name in plan.networks:
        g = plan.network_graph(name)
        assert nx.is_tree(g), f"{name} has a loop or is disconnected"


def test_addresses_unique_and_inside_their_subnets(plan):
    seen = set()
    for host in plan.hosts.values():
        for intf in host.interfaces:
            if intf.ip is None:
                assert host.role == "slot"
                continue
            addr = ipaddress.ip_interface(intf.ip)
            assert addr.ip not in seen, f"{addr.ip} assigned twice"
            seen.add(addr.ip)
            assert addr.ip in ipaddress.ip_network(plan.networks[intf.network].subnet)
    vips = [p.vip for p in plan.pairs] + [p.private_vip for p in plan.pairs if p.private_vip]
    assert len(vips) == len(set(vips))
    assert not {ipaddress.ip_address(v) for v in vips} & seen or plan.spec.mode in (
        NetworkMode.SYSTEM, NetworkMode.STATIC)  # the gateway holds the router address there


def test_macs_dpids_and_interface_names(plan):
    macs = [i.mac for h in plan.hosts.values() for i in h.interfaces]
    assert len(macs) == len(set(macs))
    dpids = [s.dpid for s in plan.switches.values()]
    assert len(dpids) == len(set(dpids))
    names = [n for link in plan.links for n in (link.a_intf, link.b_intf)]
    assert len(names) == len(set(names))
    assert max(len(n) for n in names) <= 15
    assert all(s.startswith(plan.tag) for s in plan.switches)


def test_ha_members_on_different_access_switches_sharing_a_heartbeat_link(plan):
    g = plan.graph()
    for pair in plan.pairs:
        if pair.secondary is None:
            assert pair.heartbeat_network is None
            continue
        a_sw = {n for n in g.neighbors(pair.primary) if n in plan.switches}
        b_sw = {n for n in g.neighbors(pair.secondary) if n in plan.switches}
        assert a_sw and b_sw and not a_sw & b_sw
        assert g.has_edge(pair.primary, pair.secondary)
        assert g.edges[pair.primary, pair.secondary]["network"] == pair.heartbeat_network


def test_cutting_a_primary_uplink_isolates_it_from_users_but_not_from_its_peer(plan):
    g = plan.graph()
    for pair in plan.pairs:
        if pair.secondary is None:
            continue
        cut = g.copy()
        cut.remove_edges_from([(pair.primary, sw) for sw in g.neighbors(pair.primary) if sw in plan.switches])
        assert not nx.has_path(cut, pair.primary, "gw") or nx.shortest_path(
            cut, pair.primary, "gw")[1] == pair.secondary  # only through its peer
        assert cut.has_edge(pair.primary, pair.secondary)


def test_private_modes_keep_ncs_behind_the_cc(plan):
    g = plan.graph()
    ncs = plan.hosts_by_role("nc") + plan.hosts_by_role("slot")
    if plan.spec.mode.private_cluster_network:
        for host in ncs:
            for sw in g.neighbors(host.name):
                assert plan.switches[sw].network != "cloud"
        gw = plan.hosts["gw"]
        assert {i.network for i in gw.interfaces} == {"user", "external", "cloud"}
        # Without the CC and SC hosts (the dual-homed ones) no NC connects to the gateway.
        g2 = g.copy()
        g2.remove_nodes_from(h.name for h in plan.hosts.values() if h.role in ("cc", "sc"))
        for host in ncs:
            assert not nx.has_path(g2, host.name, "gw")
        for nc in plan.hosts_by_role("nc"):
            assert nc.default_route == plan.pair("cc", nc.cluster).private_vip
        for h in plan.hosts_by_role("clc") + plan.hosts_by_role("walrus"):
            assert {d for d, _ in h.routes} == {plan.networks[f"priv{k}"].subnet
                                               for k in range(1, plan.spec.clusters + 1)}
    else:
        gw = plan.hosts["gw"]
        for k in range(1, plan.spec.clusters + 1):
            assert gw.ip_on(f"priv{k}") == plan.networks[f"priv{k}"].router
        for nc in plan.hosts_by_role("nc"):
            assert nc.default_route == plan.networks[f"priv{nc.cluster}"].router
            assert plan.pair("cc", nc.cluster).private_vip is None


def test_arbitrators_per_ha_member_only(plan):
    per_host = plan.spec.arbitrators.per_host
    ha_members = {m for p in plan.pairs if p.secondary for m in p.members}
    hosts = [a.host for a in plan.arbitrators]
    assert set(hosts) == ha_members
    assert all(hosts.count(h) == per_host for h in ha_members)
    assert {a.target_ip for a in plan.arbitrators} <= {"10.0.0.1", "203.0.113.10"}


def test_endpoints_use_the_vips(plan):
    ep = plan.endpoints()
    assert ep["clc"] == f"http://{plan.pair('clc').vip}:8773/services/Eucalyptus"
    assert ep["walrus"] == f"http://{plan.pair('walrus').vip}:8773/services/Walrus"
    assert set(ep["cc"]) == {f"cluster{k}" for k in range(1, plan.spec.clusters + 1)}


def test_switch_ports_map_slots_and_ofports(plan):
    ports = plan.switch_ports()
    slots = {(e["peer"]) for sw in ports.values() for e in sw["ports"].values() if e["kind"] == "slot"}
    assert slots == {h.name for h in plan.hosts_by_role("slot")}
    for name, sw in ports.items():
        for no, entry in sw["ports"].items():
            assert entry["name"] == f"{name}-eth{int(no) - 1}"


def test_counts_of_the_default():
    plan = build_plan(DeploymentSpec())
    assert (len(plan.hosts), len(plan.switches), len(plan.links)) == (27, 15, 53)
    assert [p.name for p in plan.pairs] == ["clc", "walrus", "cc1", "sc1", "cc2", "sc2"]
    assert len(plan.arbitrators) == 24


def test_bad_tag_refused():
    with pytest.raises(ValueError):
        build_plan(DeploymentSpec(), tag="a-b")
    with pytest.raises(ValueError):
        build_plan(DeploymentSpec(), tag="abc")


def test_largest_spec_fits_interface_names():
    plan = build_plan(DeploymentSpec(clusters=32, ncs_per_cluster=99, vm_slots_per_nc=16), tag="zz")
    assert max(len(n) for link in plan.links for n in (link.a_intf, link.b_intf)) <= 15
