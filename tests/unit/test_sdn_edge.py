"""EDGE's flows on each NC's bridge, executed by the fake flow table (no OVS, no root).

The same groups as MANAGED's tests (tests/unit/test_sdn_flows.py), on EDGE's flat
cluster network: isolation both ways, the crafted frames of MANAGED's attacks,
elastic IPs translated on the hosting NC's bridge, the metadata service steered to
the NC, and flows that do not depend on which CC is primary.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict

import pytest

from tests.support.fakeoftable import FakeFabric
from controllers.edge import edge_bridges, edge_flows, port_masks
from controllers.flows import compute_flows
from controllers.intent import validate
from controllers.topology import Topology
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, HASpec, NetworkMode, SpecError

GW = "10.101.0.1"
BCAST = "ff:ff:ff:ff:ff:ff"
EIP = "10.0.128.5"
USER = "198.51.100.10"
SYN, ACK = 0x002, 0x010


def topology(clusters: int = 1) -> Topology:
    spec = DeploymentSpec(name="t", clusters=clusters, ncs_per_cluster=2, vm_slots_per_nc=2, mode=NetworkMode.EDGE,
                          ha=HASpec(clc=False, walrus=False, cc=True, sc=False))
    spec.arbitrators.per_host = 0
    plan = build_plan(spec)
    return Topology.from_dict({"mode": "EDGE", "switches": plan.switch_ports(),
                               "pairs": [asdict(p) for p in plan.pairs]})


def _inst(iid: str, n: int, slot: str, group: str, public_ip: str | None = None) -> dict:
    ip = f"10.101.2.{n}"
    mac = "d0:0d:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed)
    return {"id": iid, "mac": mac, "ip": ip, "nc": slot[:4], "slot": slot, "group": group, "public_ip": public_ip}


def _group(gid: str, rules: list[dict]) -> dict:
    return {"id": gid, "name": gid[3:], "account": "123456789012", "vlan": None, "subnet": "10.101.2.0/23",
            "gateway": GW, "rules": rules}


def intent(primary: str = "c1cc1", epoch: int = 1) -> dict:
    return {"cluster": 1, "epoch": epoch, "mode": "EDGE", "primary_cc": primary,
            "groups": [_group("sg-a", [{"protocol": "icmp", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0"}]),
                       _group("sg-b", [{"protocol": "tcp", "from_port": 8080, "to_port": 8090,
                                        "source_group": "sg-a"}]),
                       _group("sg-c", [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "0.0.0.0/0"}])],
            "instances": [_inst("i-a1", 2, "c1n1v1", "sg-a"), _inst("i-a2", 3, "c1n2v1", "sg-a"),
                          _inst("i-b1", 4, "c1n1v2", "sg-b"), _inst("i-c1", 5, "c1n2v2", "sg-c", EIP)]}


INST = {i["id"][2:]: i for i in intent()["instances"]}
SLOT = {name: i["slot"] for name, i in INST.items()}
SLOTS = {f"c1n{j}v{s}" for j in (1, 2) for s in (1, 2)}


def slots_reached(fabric: FakeFabric, host: str, pkt: dict, network: str | None = None) -> set[str]:
    """The VM slots a frame reaches (the fake fabric floods where a switch runs NORMAL, so the
    cluster's infrastructure hosts see every frame that leaves an NC bridge)."""
    return fabric.reached(host, pkt, network) & SLOTS


@pytest.fixture(scope="module")
def topo():
    return topology()


@pytest.fixture(scope="module")
def fabric(topo):
    return FakeFabric(topo, compute_flows(topo, {1: validate(intent(), 1, topo)}))


def ip(src: str, dst: str, proto: int = 1, dport: int | None = None, flags: int = SYN, **over) -> dict:
    s, d = INST[src], INST[dst]
    pkt = {"eth_src": s["mac"], "eth_dst": d["mac"], "eth_type": 0x0800, "ipv4_src": s["ip"], "ipv4_dst": d["ip"],
           "ip_proto": proto}
    if proto == 1:
        pkt["icmpv4_type"] = 8
    else:
        pkt.update(tcp_dst=dport, tcp_src=40000, tcp_flags=flags)
    return dict(pkt, **over)


def arp(src: str, tpa: str, **over) -> dict:
    s = INST[src]
    return dict({"eth_src": s["mac"], "eth_dst": BCAST, "eth_type": 0x0806, "arp_op": 1, "arp_sha": s["mac"],
                 "arp_spa": s["ip"], "arp_tpa": tpa}, **over)


def test_only_the_nc_bridges_enforce_and_the_rest_runs_normal(topo):
    flows = compute_flows(topo, {1: intent()})
    assert sorted(edge_bridges(topo, 1)) == ["br1n1", "br1n2"]
    for name in ("swc1", "swc1a", "swcl0", "swcla"):
        assert [f.actions for f in flows[name]] == [(("normal",),)]
    assert all(topo.uplinks(b) for b in ("br1n1", "br1n2"))
    assert not [hp for hp in topo.host_ports() if hp.kind == "uplink"]  # an uplink leads to a switch


# -- the isolation matrix -----------------------------------------------------------------------

@pytest.mark.parametrize("src,dst,proto,port,reaches", [
    ("a1", "a2", 6, 22, True),  # same group, across NCs: anything
    ("a1", "b1", 6, 8080, True),  # b admits tcp 8080-8090 from group a (same NC)
    ("a1", "b1", 6, 8091, False),
    ("a1", "b1", 1, None, False),
    ("b1", "a1", 1, None, True),  # a admits icmp from anywhere
    ("b1", "a1", 6, 8080, False),
    ("c1", "b1", 6, 8080, False),  # c is not group a
    ("a2", "c1", 6, 80, True),  # c admits tcp 80 from anywhere
    ("a2", "c1", 6, 8080, False),
    ("c1", "a2", 6, 22, False),
])
def test_isolation_matrix(fabric, src, dst, proto, port, reaches):
    assert slots_reached(fabric, SLOT[src], ip(src, dst, proto, port)) == ({SLOT[dst]} if reaches else set())


def test_answers_to_what_an_instance_sent_reach_it(fabric):
    # a1 opened a connection to b1's 8080: b1's segments (ACK set) come back; a new one does not.
    assert fabric.reached(SLOT["b1"], ip("b1", "a1", 6, 40000, flags=SYN | ACK)) == {SLOT["a1"]}
    assert fabric.reached(SLOT["b1"], ip("b1", "a1", 6, 40000, flags=SYN)) == set()
    assert fabric.reached(SLOT["a1"], ip("a1", "b1", 1, icmpv4_type=0)) == {SLOT["b1"]}
    assert fabric.reached(SLOT["a1"], ip("a1", "b1", 1, icmpv4_type=8)) == set()


# -- the crafted frames of MANAGED's attacks ----------------------------------------------------

def test_spoofed_and_tagged_frames_go_nowhere(fabric):
    b1, c1 = INST["b1"], INST["c1"]
    assert fabric.send(SLOT["a2"], ip("a2", "a1", eth_src=b1["mac"])) == []  # MAC spoof
    assert fabric.send(SLOT["a2"], ip("a2", "a1", ipv4_src=c1["ip"])) == []  # IP spoof
    assert fabric.send(SLOT["a2"], arp("a2", INST["a1"]["ip"], arp_spa=GW, arp_op=2)) == []  # ARP poisoning
    assert fabric.send(SLOT["a2"], arp("a2", INST["a1"]["ip"], arp_sha=b1["mac"])) == []
    assert fabric.send(SLOT["a1"], dict(ip("a1", "b1", 6, 8080), vlans=[11])) == []  # tagged
    assert fabric.send(SLOT["a1"], dict(ip("a1", "b1", 6, 8080), vlans=[10, 11])) == []  # double-tagged


def test_broadcasts_reach_no_other_instance(fabric):
    # ARP for the gateway: the site (trunk) and the NC, never another slot.
    assert fabric.reached(SLOT["a1"], arp("a1", GW)) >= {"gw", "c1n1"}
    assert slots_reached(fabric, SLOT["a1"], arp("a1", GW)) == set()
    # ARP for a peer (b admits group a; a admits ICMP from all) is answered by the bridge itself.
    for src, dst in (("a1", "b1"), ("b1", "a2"), ("a2", "b1")):
        got = [dict(d.packet) for d in fabric.send(SLOT[src], arp(src, INST[dst]["ip"]))]
        assert [(d["arp_op"], d["arp_sha"], d["arp_spa"]) for d in got] == [(2, INST[dst]["mac"], INST[dst]["ip"])]
        assert {d.host for d in fabric.send(SLOT[src], arp(src, INST[dst]["ip"]))} == {SLOT[src]}
    # Broadcast IPv4 (a sniffer's bait) leaves for the site and the NC only.
    bcast = dict(ip("a1", "b1", 1), eth_dst=BCAST, ipv4_dst="10.101.3.255")
    assert slots_reached(fabric, SLOT["a1"], bcast) == set() and "c1n1" in fabric.reached(SLOT["a1"], bcast)


def test_groups_that_admit_nothing_of_each_other_do_not_even_learn_each_others_macs(topo):
    closed = intent()
    closed["groups"][0]["rules"] = [{"protocol": "icmp", "from_port": -1, "to_port": -1, "source_group": "sg-a"}]
    closed["groups"][2]["rules"] = []
    fab = FakeFabric(topo, compute_flows(topo, {1: closed}))
    for src, dst in (("c1", "b1"), ("c1", "a2"), ("b1", "c1")):
        assert fab.send(SLOT[src], arp(src, INST[dst]["ip"])) == [], (src, dst)
        assert slots_reached(fab, SLOT[src], ip(src, dst, 6, 80)) == set(), (src, dst)
    assert fab.reached(SLOT["a1"], arp("a1", INST["b1"]["ip"])) == {SLOT["a1"]}  # b admits group a: answered


def test_the_gateway_and_the_nc_learn_an_instances_mac_from_its_bridge(fabric, topo):
    for host, spa in (("gw", GW), ("c1n1", "169.254.169.254")):
        mac = topo.host_port(host, "priv1").mac
        pkt = {"eth_src": mac, "eth_dst": BCAST, "eth_type": 0x0806, "arp_op": 1, "arp_sha": mac,
               "arp_spa": spa, "arp_tpa": INST["b1"]["ip"]}
        got = [dict(d.packet) for d in fabric.send(host, pkt, "priv1") if d.host == host]
        assert [(d["arp_op"], d["arp_sha"]) for d in got] == [(2, INST["b1"]["mac"])], host
        assert slots_reached(fabric, host, pkt, "priv1") == set()


# -- elastic IPs and the metadata service -------------------------------------------------------

def test_elastic_ip_is_answered_and_translated_on_the_hosting_nc(fabric, topo):
    gw_mac = topo.host_port("gw", "cloud").mac
    who_has = {"eth_src": gw_mac, "eth_dst": BCAST, "eth_type": 0x0806, "arp_op": 1, "arp_sha": gw_mac,
               "arp_spa": "10.0.0.1", "arp_tpa": EIP}
    answers = [dict(d.packet) for d in fabric.send("gw", who_has, "cloud") if d.host == "gw"]
    assert [(a["arp_op"], a["arp_sha"], a["arp_spa"]) for a in answers] == [(2, INST["c1"]["mac"], EIP)]
    syn = {"eth_src": gw_mac, "eth_dst": INST["c1"]["mac"], "eth_type": 0x0800, "ipv4_src": USER,
           "ipv4_dst": EIP, "ip_proto": 6, "tcp_dst": 80, "tcp_flags": SYN}
    got = [dict(d.packet) for d in fabric.send("gw", syn, "cloud") if d.host == SLOT["c1"]]
    assert [(p["ipv4_dst"], p["eth_dst"]) for p in got] == [(INST["c1"]["ip"], INST["c1"]["mac"])]
    assert slots_reached(fabric, "gw", dict(syn, tcp_dst=8080), "cloud") == set()  # group c admits 80 only
    # Nothing else crosses the uplink: ARP for another address, IPv4 to a private address.
    for pkt in (dict(who_has, arp_tpa="10.0.0.10"), dict(syn, ipv4_dst=INST["c1"]["ip"])):
        assert not fabric.reached("gw", pkt, "cloud") & (SLOTS | {"c1n1", "c1n2"})


def test_elastic_ip_is_the_source_beyond_the_cloud(fabric, topo):
    c1 = INST["c1"]
    out = {"eth_src": c1["mac"], "eth_dst": topo.host_port("gw", "priv1").mac, "eth_type": 0x0800,
           "ipv4_src": c1["ip"], "ipv4_dst": USER, "ip_proto": 6, "tcp_dst": 40000, "tcp_flags": ACK}
    sent = [dict(d.packet) for d in fabric.send(SLOT["c1"], out) if d.host == "gw"]
    assert [(d["ipv4_src"], d["eth_dst"]) for d in sent] == [(EIP, topo.host_port("gw", "cloud").mac)]
    assert "c1n2" not in fabric.reached(SLOT["c1"], out)  # it left by the uplink, not the cluster network
    # The cloud's services see the elastic IP too (they answer it: the bridge translates back);
    # other instances see its own address.
    api = [dict(d.packet) for d in fabric.send(SLOT["c1"], dict(out, ipv4_dst="10.0.0.10", tcp_dst=8773))
           if d.host == "gw"]
    assert [(d["ipv4_src"], d["eth_dst"]) for d in api] == [(EIP, topo.host_port("gw", "cloud").mac)]
    a2 = INST["a2"]
    peer = [dict(d.packet) for d in fabric.send(SLOT["c1"], dict(out, eth_dst=a2["mac"], ipv4_dst=a2["ip"]))
            if d.host == SLOT["a2"]]
    assert [(d["ipv4_src"], d["ipv4_dst"]) for d in peer] == [(c1["ip"], a2["ip"])]


@pytest.mark.parametrize("dst,proto,port,reaches", [
    ("10.0.0.10", 6, 8773, True),  # the CLC's VIP, the EC2 API
    ("10.0.0.20", 6, 8773, True),  # Walrus's VIP
    ("10.0.0.10", 6, 7800, False),
    ("10.0.0.11", 6, 8773, False),  # a member's own address
    ("10.0.1.10", 6, 8774, False),  # the CC's API
    ("10.101.0.21", 6, 3260, False),  # the SC's block protocol, on the cluster network
    ("10.101.1.1", 6, 8775, False),  # an NC's API
    ("10.101.0.1", 1, None, True),  # ICMP to its router
    ("10.101.0.1", 6, 22, False),
    ("10.102.2.9", 6, 80, True),  # another cluster's instances (their NC bridges decide)
    ("10.0.128.9", 6, 80, True),  # an elastic IP
    ("203.0.113.10", 6, 80, True),  # beyond the cloud
])
def test_inside_the_cloud_an_instance_reaches_what_the_managed_cc_allowed(topo, dst, proto, port, reaches):
    fab = FakeFabric(topology(clusters=2), compute_flows(topology(clusters=2), {1: intent()}))
    a1 = INST["a1"]
    pkt = {"eth_src": a1["mac"], "eth_dst": topo.host_port("gw", "priv1").mac, "eth_type": 0x0800,
           "ipv4_src": a1["ip"], "ipv4_dst": dst, "ip_proto": proto}
    pkt.update({"icmpv4_type": 8} if proto == 1 else {"tcp_dst": port, "tcp_flags": SYN})
    assert bool(fab.send(SLOT["a1"], pkt)) is reaches
    who_has = arp("a1", dst)
    assert bool(fab.send(SLOT["a1"], who_has)) is (dst in (GW, "10.101.1.1"))  # its router, its NC


def test_metadata_goes_to_the_instances_nc(fabric):
    a1 = INST["a1"]
    pkt = {"eth_src": a1["mac"], "eth_dst": "02:00:00:00:00:01", "eth_type": 0x0800, "ipv4_src": a1["ip"],
           "ipv4_dst": "169.254.169.254", "ip_proto": 6, "tcp_dst": 80, "tcp_flags": SYN}
    assert fabric.reached(SLOT["a1"], pkt) == {"c1n1"}
    assert fabric.reached(SLOT["a2"], dict(pkt, eth_src=INST["a2"]["mac"], ipv4_src=INST["a2"]["ip"])) == {"c1n2"}


# -- CC failover, and the pieces ------------------------------------------------------------------

def test_flows_are_the_same_whichever_cc_is_primary(topo):
    before = edge_flows(topo, 1, intent("c1cc1", 1))
    after = edge_flows(topo, 1, intent("c1cc2", 2))
    assert {s: sorted(f.cookie for f in fl) for s, fl in before.items()} == \
        {s: sorted(f.cookie for f in fl) for s, fl in after.items()}


@pytest.mark.parametrize("lo,hi", [(0, 65535), (80, 80), (8080, 8090), (1, 1023), (1024, 65535), (0, 0),
                                   (65535, 65535), (3, 17)])
def test_port_masks_cover_exactly_the_range(lo, hi):
    masks = port_masks(lo, hi)
    covered = {p for p in range(65536) if any(p & m == v for v, m in masks)}
    assert covered == set(range(lo, hi + 1))
    assert len(masks) <= 32


def test_edge_needs_the_controller():
    with pytest.raises(SpecError, match="sdn: true"):
        DeploymentSpec(mode=NetworkMode.EDGE, sdn=False).validate()
    plan = build_plan(DeploymentSpec(mode=NetworkMode.EDGE))
    uplinks = [l for l in plan.links if l.a.endswith("swcla") and "br" in l.b]
    assert len(uplinks) == 4  # one per NC bridge of the default deployment
    gw = plan.hosts["gw"]
    assert {i.network for i in gw.interfaces} >= {"priv1", "priv2"}  # the site routes the cluster networks


def test_every_flow_encodes_as_an_openflow_13_flowmod():
    """Masked ports, TCP flags, ICMP types and the rewrites as os-ken encodes them for the switch."""
    from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

    from controllers import oskit

    class Datapath:  # what os-ken's FlowMod reads of a connected switch
        ofproto, ofproto_parser, id, xid = ofproto_v1_3, ofproto_v1_3_parser, 1, 0

        def set_xid(self, msg):
            self.xid += 1
            msg.set_xid(self.xid)

    topo = topology(clusters=2)
    dp = Datapath()
    flows = edge_flows(topo, 1, validate(intent(), 1, topo))
    assert sum(len(f) for f in flows.values()) > 50
    for fl in flows.values():
        for flow in fl:
            msg = oskit.flow_add(dp, flow)
            msg.serialize()  # raises on a field or action os-ken cannot encode
            back = ofproto_v1_3_parser.OFPFlowMod.parser(dp, msg.version, msg.msg_type, msg.msg_len, msg.xid,
                                                         msg.buf)
            assert back.cookie == flow.cookie and dict(back.match.items()) == dict(flow.match), flow
