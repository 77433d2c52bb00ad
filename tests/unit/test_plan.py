"""Invariants of the addressing plan and its graph, over several specs."""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path

import networkx as nx
import pytest

from topologies.plan import Plan, build_plan
from topologies.spec import ArbitratorSpec, DeploymentSpec, HASpec, NetworkMode, load_spec

SPECS_DIR = Path(__file__).resolve().parents[2] / "topologies" / "specs"

SPECS = {
    "default": DeploymentSpec(),
    "system": DeploymentSpec(name="system", mode=NetworkMode.SYSTEM),
    "static": DeploymentSpec(name="static", mode=NetworkMode.STATIC, clusters=1),
    "novlan": DeploymentSpec(name="novlan", mode=NetworkMode.MANAGED_NOVLAN, vlan_clean=False),
    "no-ha": DeploymentSpec(name="noha", ha=HASpec(False, False, False, False)),
    "cc-ha-only": DeploymentSpec(name="ccha", ha=HASpec(clc=False, walrus=False, cc=True, sc=False),
                                 arbitrators=ArbitratorSpec(per_host=3)),
    "3x5x3": DeploymentSpec(name="big", clusters=3, ncs_per_cluster=5, vm_slots_per_nc=3),
    "no-slots": DeploymentSpec(name="empty", vm_slots_per_nc=0),
    "tagged": DeploymentSpec(name="tagged", clusters=2, ncs_per_cluster=3),
    "minimal.yaml": load_spec(SPECS_DIR / "minimal.yaml"),
    "host-tagging": DeploymentSpec(name="hosttag", sdn=False, vlan_tagging="host"),
}


PRIVATE = [n for n, s in SPECS.items() if s.mode.private_cluster_network]
SITE_ROUTED = [n for n, s in SPECS.items() if not s.mode.private_cluster_network]


@functools.cache
def _plan(name: str) -> Plan:
    return build_plan(SPECS[name], tag="zz" if name == "tagged" else "")


@pytest.fixture(params=list(SPECS))
def plan(request) -> Plan:
    return _plan(request.param)


def _addresses(plan: Plan) -> dict[ipaddress.IPv4Address, str]:
    """Every address assigned to an interface, with the interface holding it."""
    out = {}
    for host in plan.hosts.values():
        for intf in host.interfaces:
            if intf.ip:
                out[ipaddress.ip_interface(intf.ip).ip] = intf.name
    return out


def _forwarding_graph(plan: Plan, endpoints: set[str]) -> nx.Graph:
    """The plan graph where only switches and forwarding hosts carry transit traffic.

    A dual-homed host that does not forward (an SC) joins two networks at layer 2 in
    the graph, but no packet crosses it; keeping it would show paths that do not exist.
    """
    g = plan.graph()
    # With host tagging an NC bridges its slots' frames (layer 2): it carries transit traffic.
    bridging = {h.nc for h in plan.hosts_by_role("slot") if plan.nc_port(h.name)}
    g.remove_nodes_from([h.name for h in plan.hosts.values()
                         if not h.forwarding and h.name not in endpoints | bridging])
    return g


# -- layer 2 -----------------------------------------------------------------------------

def test_every_l2_network_is_a_tree(plan):
    for name in plan.networks:
        g = plan.network_graph(name)
        assert g.number_of_nodes() >= 2, f"{name} has no links"
        assert nx.is_tree(g), f"{name} has a loop or is disconnected"


def test_every_link_belongs_to_a_known_network_and_every_switch_to_its_network(plan):
    for link in plan.links:
        assert link.network in plan.networks
        for end in (link.a, link.b):
            assert end in plan.hosts or end in plan.switches
            if end in plan.switches:
                assert plan.switches[end].network == link.network
    for name, sw in plan.switches.items():
        assert name in plan.network_graph(sw.network)


# -- addressing --------------------------------------------------------------------------

def test_addresses_unique_and_inside_their_subnets(plan):
    seen: set = set()
    for host in plan.hosts.values():
        for intf in host.interfaces:
            if intf.ip is None:
                # A slot, or (host tagging) the NC's end of a slot's link.
                assert host.role == "slot" or plan.hosts[intf.peer].role == "slot", f"{intf.name} is unaddressed"
                continue
            addr = ipaddress.ip_interface(intf.ip)
            subnet = ipaddress.ip_network(plan.networks[intf.network].subnet)
            assert addr.ip not in seen, f"{addr.ip} assigned twice"
            seen.add(addr.ip)
            assert addr.network == subnet, f"{intf.name} {intf.ip} is not in {subnet}"
            assert addr.ip not in (subnet.network_address, subnet.broadcast_address)


def test_routers_and_routes_point_at_real_addresses(plan):
    addrs = _addresses(plan)
    vips = {ipaddress.ip_address(v) for p in plan.pairs for v in (p.vip, p.private_vip) if v}
    for net in plan.networks.values():
        if net.router:
            assert ipaddress.ip_address(net.router) in ipaddress.ip_network(net.subnet)
            assert ipaddress.ip_address(net.router) in addrs or ipaddress.ip_address(net.router) in vips
    for host in plan.hosts.values():
        for dest, via in host.routes + ([("default", host.default_route)] if host.default_route else []):
            via_ip = ipaddress.ip_address(via)
            assert via_ip in addrs or via_ip in vips, f"{host.name}: {dest} via {via} leads nowhere"
            # The next hop is on a network the host is attached to.
            assert any(via_ip in ipaddress.ip_interface(i.ip).network for i in host.interfaces if i.ip)


def test_macs_unique_and_locally_administered(plan):
    macs = [i.mac for h in plan.hosts.values() for i in h.interfaces]
    assert len(macs) == len(set(macs))
    for mac in macs:
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
        first = int(mac[:2], 16)
        assert first & 0b10 and not first & 0b01, f"{mac} is not a locally administered unicast address"


def test_interface_names_fit_linux_and_are_unique(plan):
    names = [n for link in plan.links for n in (link.a_intf, link.b_intf)]
    assert len(names) == len(set(names))
    assert max(len(n) for n in names) <= 15
    for host in plan.hosts.values():
        assert all(i.name.startswith(f"{host.name}-eth") for i in host.interfaces)


def test_switch_dpids_unique_and_switch_names_tagged(plan):
    dpids = [s.dpid for s in plan.switches.values()]
    assert len(dpids) == len(set(dpids))
    assert all(re.fullmatch(r"[0-9a-f]{16}", d) for d in dpids)
    assert all(s.startswith(plan.tag) for s in plan.switches)


# -- networking modes ----------------------------------------------------------------------

def test_nodes_never_touch_the_cloud_network(plan):
    g = plan.graph()
    for host in plan.hosts_by_role("nc") + plan.hosts_by_role("slot"):
        neighbours = list(g.neighbors(host.name))
        # Host tagging wires a slot to its NC: neither touches anything else.
        wired = {n for n in neighbours if n in plan.hosts and (n == host.nc or plan.hosts[n].nc == host.name)}
        switches = [n for n in neighbours if n not in wired]
        assert switches or host.role == "slot"
        assert neighbours and all(n in plan.switches for n in switches)
        assert all(plan.switches[n].network == f"priv{host.cluster}" for n in switches)


@pytest.mark.parametrize("name", PRIVATE)
def test_private_modes_put_the_cc_in_every_path_to_the_nodes(name):
    plan = _plan(name)
    gw = plan.hosts["gw"]
    # The gateway has no interface on, and no route to, any private network.
    assert {i.network for i in gw.interfaces} == {"user", "external", "cloud"}
    assert gw.routes == []
    ccs = {h.name for h in plan.hosts_by_role("cc")}
    assert all(plan.hosts[c].forwarding for c in ccs)
    assert not any(h.forwarding for h in plan.hosts_by_role("sc"))
    for host in plan.hosts_by_role("nc") + plan.hosts_by_role("slot"):
        g = _forwarding_graph(plan, {"user", host.name})
        path = nx.shortest_path(g, "user", host.name)
        assert set(path) & ccs, path
        g.remove_nodes_from(ccs)
        assert not nx.has_path(g, "user", host.name), f"{host.name} reachable around the CC"
        assert not nx.has_path(g, "gw", host.name)
    for nc in plan.hosts_by_role("nc"):
        assert nc.default_route == plan.pair("cc", nc.cluster).private_vip == plan.networks[f"priv{nc.cluster}"].router
    # Cloud hosts reach each private network through that cluster's CC service VIP.
    cc_vip = {f"10.{100 + p.cluster}.0.0/16": p.vip for p in plan.pairs if p.kind == "cc"}
    for h in plan.hosts_by_role("clc") + plan.hosts_by_role("walrus"):
        assert dict(h.routes) == cc_vip
    for h in plan.hosts_by_role("sc"):
        assert dict(h.routes) == {d: v for d, v in cc_vip.items() if d != plan.networks[f"priv{h.cluster}"].subnet}


@pytest.mark.parametrize("name", SITE_ROUTED)
def test_system_and_static_route_the_cluster_networks_at_the_gateway(name):
    plan = _plan(name)
    gw = plan.hosts["gw"]
    for k in range(1, plan.spec.clusters + 1):
        net = plan.networks[f"priv{k}"]
        assert gw.ip_on(f"priv{k}") == net.router
    for nc in plan.hosts_by_role("nc"):
        assert nc.default_route == gw.ip_on(f"priv{nc.cluster}")
        assert plan.pair("cc", nc.cluster).private_vip is None
    assert not any(h.forwarding for h in plan.hosts_by_role("cc"))
    # The CC is not in the data path: nodes stay reachable without it.
    ccs = {h.name for h in plan.hosts_by_role("cc")}
    for host in plan.hosts_by_role("nc"):
        g = _forwarding_graph(plan, {"user", host.name})
        g.remove_nodes_from(ccs)
        assert nx.has_path(g, "user", host.name)


# -- HA --------------------------------------------------------------------------------------

def test_ha_members_on_different_access_switches_sharing_a_heartbeat_link(plan):
    g = plan.graph()
    heartbeat_networks = []
    for pair in plan.pairs:
        assert (pair.secondary is not None) == plan.spec.ha.enabled(pair.kind)
        assert plan.hosts[pair.primary].ha_role == ("primary" if pair.secondary else "single")
        if pair.secondary is None:
            assert pair.heartbeat_network is None
            continue
        assert plan.hosts[pair.secondary].ha_role == "secondary"
        a_sw = {n for n in g.neighbors(pair.primary) if n in plan.switches}
        b_sw = {n for n in g.neighbors(pair.secondary) if n in plan.switches}
        assert a_sw and b_sw and not a_sw & b_sw
        assert all(plan.switches[s].tier == "access" for s in a_sw | b_sw)
        # On every network they share, each member has its own access switch.
        assert {plan.switches[s].network for s in a_sw} == {plan.switches[s].network for s in b_sw}
        hb = plan.networks[pair.heartbeat_network]
        assert hb.kind == "heartbeat"
        assert set(plan.network_graph(hb.name).nodes) == {pair.primary, pair.secondary}
        assert g.edges[pair.primary, pair.secondary]["network"] == hb.name
        heartbeat_networks.append(hb.name)
    assert len(heartbeat_networks) == len(set(heartbeat_networks))
    assert set(heartbeat_networks) == {n.name for n in plan.networks.values() if n.kind == "heartbeat"}


def test_cutting_a_primary_uplink_leaves_it_alone_with_its_peer(plan):
    g = plan.graph()
    for pair in plan.pairs:
        if pair.secondary is None:
            continue
        cut = g.copy()
        cut.remove_edges_from([(pair.primary, sw) for sw in g.neighbors(pair.primary) if sw in plan.switches])
        assert list(cut.neighbors(pair.primary)) == [pair.secondary]


def test_service_vips_unique_and_held_by_no_interface(plan):
    addrs = _addresses(plan)
    vips = [p.vip for p in plan.pairs]
    private_vips = [p.private_vip for p in plan.pairs if p.private_vip]
    assert len(vips + private_vips) == len(set(vips + private_vips))
    cloud = ipaddress.ip_network(plan.networks["cloud"].subnet)
    for pair in plan.pairs:
        vip = ipaddress.ip_address(pair.vip)
        assert vip in cloud
        assert vip not in addrs, f"{pair.name} VIP {vip} is {addrs.get(vip)}'s address"
        if pair.private_vip:
            assert pair.kind == "cc"
            private = ipaddress.ip_address(pair.private_vip)
            assert private in ipaddress.ip_network(plan.networks[f"priv{pair.cluster}"].subnet)
            assert private not in addrs, f"{pair.name} private VIP {private} is {addrs.get(private)}'s address"


def test_arbitrators_per_ha_member_only(plan):
    arb = plan.spec.arbitrators
    ha_members = {m for p in plan.pairs if p.secondary for m in p.members}
    single = {p.primary for p in plan.pairs if not p.secondary}
    hosts = [a.host for a in plan.arbitrators]
    assert set(hosts) == (ha_members if arb.per_host else set())
    assert not set(hosts) & single
    assert all(hosts.count(h) == arb.per_host for h in ha_members)
    targets = {"gateway": "10.0.0.1", "external": "203.0.113.10"}
    for a in plan.arbitrators:
        index = int(a.name.rsplit("arb", 1)[1]) - 1
        assert a.name.startswith(f"{a.host}-arb")
        assert a.target == arb.targets[index % len(arb.targets)]
        assert a.target_ip == targets[a.target] and ipaddress.ip_address(a.target_ip) in _addresses(plan)
    assert len({a.name for a in plan.arbitrators}) == len(plan.arbitrators)


def test_endpoints_use_the_vips(plan):
    ep = plan.endpoints()
    assert ep["clc"] == f"http://{plan.pair('clc').vip}:8773/services/Eucalyptus"
    assert ep["walrus"] == f"http://{plan.pair('walrus').vip}:8773/services/Walrus"
    for kind, port in (("cc", 8774), ("sc", 8773)):
        assert ep[kind] == {f"cluster{k}": f"http://{plan.pair(kind, k).vip}:{port}"
                            for k in range(1, plan.spec.clusters + 1)}
    member_ips = {plan.hosts[m].main_ip for p in plan.pairs for m in p.members}
    assert not any(f"//{ip}:" in url for ip in member_ips for url in [ep["clc"], ep["walrus"]])


# -- what the controller and the builder read ---------------------------------------------

def test_switch_ports_map_slots_and_ofports(plan):
    ports = plan.switch_ports()
    slots = {e["peer"] for sw in ports.values() for e in sw["ports"].values() if e["kind"] == "slot"}
    # Host tagging wires the slots to their NCs, not to a switch.
    assert slots == {h.name for h in plan.hosts_by_role("slot") if plan.nc_port(h.name) is None}
    for name, sw in ports.items():
        assert sw["dpid"] == plan.switches[name].dpid
        for no, entry in sw["ports"].items():
            assert entry["name"] == f"{name}-eth{int(no) - 1}"


def test_counts_match_the_spec(plan):
    spec = plan.spec
    ncs = spec.clusters * spec.ncs_per_cluster
    assert len(plan.hosts_by_role("nc")) == ncs
    assert len(plan.hosts_by_role("slot")) == ncs * spec.vm_slots_per_nc
    assert len(plan.pairs) == 2 + 2 * spec.clusters
    members = sum(len(p.members) for p in plan.pairs)
    assert len(plan.hosts) == 3 + members + ncs * (1 + spec.vm_slots_per_nc)
    for nc in plan.hosts_by_role("nc"):
        assert [s.slot for s in plan.slots_of(nc.name)] == list(range(1, spec.vm_slots_per_nc + 1))


def test_counts_of_the_default():
    plan = build_plan(DeploymentSpec())
    assert (len(plan.hosts), len(plan.switches), len(plan.links)) == (27, 15, 53)
    assert [p.name for p in plan.pairs] == ["clc", "walrus", "cc1", "sc1", "cc2", "sc2"]
    assert len(plan.arbitrators) == 24


def test_plan_is_deterministic():
    a, b = build_plan(DeploymentSpec()), build_plan(DeploymentSpec())
    assert a.hosts == b.hosts and a.links == b.links and a.switches == b.switches


def test_bad_tag_refused():
    with pytest.raises(ValueError):
        build_plan(DeploymentSpec(), tag="a-b")
    with pytest.raises(ValueError):
        build_plan(DeploymentSpec(), tag="abc")


def test_largest_spec_fits_interface_names():
    plan = build_plan(DeploymentSpec(clusters=32, ncs_per_cluster=99, vm_slots_per_nc=16), tag="zz")
    assert max(len(n) for link in plan.links for n in (link.a_intf, link.b_intf)) <= 15
    assert len({s.dpid for s in plan.switches.values()}) == len(plan.switches)


def test_host_tagging_wires_each_slot_to_its_nc_host():
    plan = _plan("host-tagging")
    for nc in plan.hosts_by_role("nc"):
        bridge = plan.hosts[nc.name].interfaces[0]
        assert bridge.peer in plan.switches and bridge.ip  # the NC's own address stays untagged
        assert nc.intf(f"priv{nc.cluster}") is bridge  # what the NC tags on: its private interface
        for slot in plan.slots_of(nc.name):
            port = plan.nc_port(slot.name)
            link = next(l for l in plan.links if slot.name in (l.a, l.b))
            assert {link.a, link.b} == {slot.name, nc.name}
            assert port == (link.b_intf if link.b == nc.name else link.a_intf)
            assert nc.intf(f"priv{nc.cluster}").name != port
            assert [i.ip for i in nc.interfaces if i.name == port] == [None]
    # No slot hangs off a switch; the NC bridges still trunk the NCs to the cluster core.
    slots = {h.name for h in plan.hosts_by_role("slot")}
    assert not any(l.a in plan.switches or l.b in plan.switches for l in plan.links if {l.a, l.b} & slots)
    assert plan.nc_port("c1n1v1") == "c1n1-eth1" and plan.nc_port("c1n1v2") == "c1n1-eth2"
    assert _plan("default").nc_port("c1n1v1") is None


def test_largest_host_tagging_spec_fits_the_vlan_sub_interfaces():
    from components.common.vlan import vlan_interface
    from topologies.spec import MAX_CLUSTERS_HOST_TAGGING

    spec = DeploymentSpec(clusters=MAX_CLUSTERS_HOST_TAGGING, ncs_per_cluster=99, vm_slots_per_nc=16,
                          sdn=False, vlan_tagging="host")
    plan = build_plan(spec, tag="zz")
    for host in plan.hosts_by_role("nc") + plan.hosts_by_role("cc"):
        vlan_interface(host.intf(f"priv{host.cluster}").name, 4094)  # raises if too long
