"""The SDN flow computation, executed by a fake flow table (no OVS, no root).

Isolation is tested both ways: what must arrive arrives, and what must not reach a
host reaches it nowhere (the fake fabric follows every copy of a frame).
"""

from __future__ import annotations

import copy

import pytest

from tests.support.fakeoftable import FakeFabric
from controllers.flows import cluster_flows, compute_flows
from controllers.topology import Topology
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, HASpec, NetworkMode

GW_A, GW_B, GW_C = "10.101.16.1", "10.101.16.17", "10.101.16.33"
BCAST = "ff:ff:ff:ff:ff:ff"


def topology(mode: NetworkMode = NetworkMode.MANAGED, clusters: int = 1) -> Topology:
    spec = DeploymentSpec(name="t", clusters=clusters, ncs_per_cluster=2, vm_slots_per_nc=2, mode=mode,
                          ha=HASpec(clc=False, walrus=False, cc=True, sc=False))
    spec.arbitrators.per_host = 0
    return Topology.from_dict(build_plan(spec).controller_topology())


def intent(mode: str = "MANAGED", primary: str = "c1cc1") -> dict:
    vlan = (lambda v: v) if mode == "MANAGED" else (lambda v: None)
    return {
        "cluster": 1, "epoch": 1, "mode": mode, "primary_cc": primary,
        "groups": [
            {"id": "sg-a", "name": "a", "account": "123456789012", "vlan": vlan(10), "subnet": "10.101.16.0/28",
             "gateway": GW_A, "rules": [{"protocol": "icmp", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0"}]},
            {"id": "sg-b", "name": "b", "account": "123456789012", "vlan": vlan(11), "subnet": "10.101.16.16/28",
             "gateway": GW_B, "rules": [{"protocol": "tcp", "from_port": 8080, "to_port": 8080,
                                         "source_group": "sg-a"}]},
            {"id": "sg-c", "name": "c", "account": "123456789012", "vlan": vlan(12), "subnet": "10.101.16.32/28",
             "gateway": GW_C, "rules": []},
        ],
        "instances": [
            {"id": "i-a1", "mac": "d0:0d:0a:65:10:02", "ip": "10.101.16.2", "nc": "c1n1", "slot": "c1n1v1",
             "group": "sg-a", "public_ip": None},
            {"id": "i-a2", "mac": "d0:0d:0a:65:10:03", "ip": "10.101.16.3", "nc": "c1n2", "slot": "c1n2v1",
             "group": "sg-a", "public_ip": None},
            {"id": "i-b1", "mac": "d0:0d:0a:65:10:12", "ip": "10.101.16.18", "nc": "c1n1", "slot": "c1n1v2",
             "group": "sg-b", "public_ip": None},
            {"id": "i-c1", "mac": "d0:0d:0a:65:10:22", "ip": "10.101.16.34", "nc": "c1n2", "slot": "c1n2v2",
             "group": "sg-c", "public_ip": "10.0.128.5"},
        ],
    }


INST = {i["slot"]: i for i in intent()["instances"]}


def ip_pkt(src_slot: str, dst_mac: str, dst_ip: str, **over) -> dict:
    i = INST[src_slot]
    return dict({"eth_src": i["mac"], "eth_dst": dst_mac, "eth_type": 0x0800,
                 "ipv4_src": i["ip"], "ipv4_dst": dst_ip}, **over)


def arp(src_slot: str, tpa: str, sha: str | None = None, spa: str | None = None, eth_src=None) -> dict:
    i = INST[src_slot]
    return {"eth_src": eth_src or i["mac"], "eth_dst": BCAST, "eth_type": 0x0806,
            "arp_sha": sha or i["mac"], "arp_spa": spa or i["ip"], "arp_tpa": tpa}


@pytest.fixture(scope="module")
def topo():
    return topology()


@pytest.fixture(scope="module")
def fabric(topo):
    return FakeFabric(topo, compute_flows(topo, {1: intent()}))


def cc_mac(topo, host="c1cc1"):
    return topo.host_port(host, "priv1").mac


def test_same_group_reaches_across_ncs_untagged(fabric):
    a2 = INST["c1n2v1"]
    assert fabric.reached("c1n1v1", ip_pkt("c1n1v1", a2["mac"], a2["ip"])) == {"c1n2v1"}
    assert fabric.reached("c1n2v1", ip_pkt("c1n2v1", INST["c1n1v1"]["mac"], INST["c1n1v1"]["ip"])) == {"c1n1v1"}


def test_other_group_unreachable_at_l2_even_on_the_same_nc(fabric):
    b1, c1 = INST["c1n1v2"], INST["c1n2v2"]
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", b1["mac"], b1["ip"])) == []
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", c1["mac"], c1["ip"])) == []


def test_broadcast_stays_in_the_group_and_reaches_the_primary_cc_only(fabric):
    assert fabric.reached("c1n1v1", arp("c1n1v1", GW_A)) == {"c1n2v1", "c1cc1"}
    assert fabric.reached("c1n1v2", arp("c1n1v2", GW_B)) == {"c1cc1"}


def test_routed_traffic_goes_to_the_primary_cc_and_comes_back_tagged_for_the_destination(fabric, topo):
    b1 = INST["c1n1v2"]
    assert fabric.reached("c1n1v1", ip_pkt("c1n1v1", cc_mac(topo), b1["ip"])) == {"c1cc1"}
    back = {"eth_src": cc_mac(topo), "eth_dst": b1["mac"], "eth_type": 0x0800,
            "ipv4_src": "10.101.16.2", "ipv4_dst": b1["ip"]}
    assert fabric.reached("c1cc1", back, "priv1") == {"c1n1v2"}
    # The CC cannot put a frame for group b into group a (classification by destination IP).
    wrong = dict(back, eth_dst=INST["c1n1v1"]["mac"])
    assert fabric.send("c1cc1", wrong, "priv1") == []


def test_cc_arp_for_an_instance_lands_in_its_group_only(fabric, topo):
    pkt = {"eth_src": cc_mac(topo), "eth_dst": BCAST, "eth_type": 0x0806, "arp_sha": cc_mac(topo),
           "arp_spa": GW_B, "arp_tpa": INST["c1n1v2"]["ip"]}
    assert fabric.reached("c1cc1", pkt, "priv1") == {"c1n1v2"}


def test_secondary_cc_is_outside_every_group(fabric, topo):
    mac = cc_mac(topo, "c1cc2")
    pkt = {"eth_src": mac, "eth_dst": INST["c1n1v1"]["mac"], "eth_type": 0x0800,
           "ipv4_src": GW_A, "ipv4_dst": INST["c1n1v1"]["ip"]}
    assert fabric.send("c1cc2", pkt, "priv1") == []
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", mac, "8.8.8.8")) == []


def test_anti_spoofing(fabric):
    a2, b1 = INST["c1n2v1"], INST["c1n1v2"]
    # MAC spoof, IP spoof, ARP poisoning (claiming the gateway or another instance)
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", a2["mac"], a2["ip"], eth_src=b1["mac"])) == []
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", a2["mac"], a2["ip"], ipv4_src=b1["ip"])) == []
    assert fabric.send("c1n1v1", arp("c1n1v1", a2["ip"], spa=GW_A)) == []
    assert fabric.send("c1n1v1", arp("c1n1v1", a2["ip"], sha=b1["mac"])) == []
    # Tagged and double-tagged frames (VLAN hopping into group b)
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", b1["mac"], b1["ip"], vlans=[11])) == []
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", b1["mac"], b1["ip"], vlans=[10, 11])) == []
    # Anything but IPv4 and ARP
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", a2["mac"], a2["ip"], eth_type=0x86DD)) == []


def test_idle_slot_sends_nothing(topo):
    one = intent()
    one["instances"] = one["instances"][:1]
    fab = FakeFabric(topo, compute_flows(topo, {1: one}))
    pkt = {"eth_src": "02:00:00:00:00:01", "eth_dst": BCAST, "eth_type": 0x0806,
           "arp_sha": "02:00:00:00:00:01", "arp_spa": "10.101.16.3", "arp_tpa": GW_A}
    assert fab.send("c1n2v1", pkt) == []


def test_cluster_infrastructure_stays_untagged_and_reachable(fabric, topo):
    nc = topo.host_port("c1n1", "priv1")
    sc = topo.host_port("c1sc1", "priv1")
    pkt = {"eth_src": nc.mac, "eth_dst": cc_mac(topo), "eth_type": 0x0800, "ipv4_src": nc.ip,
           "ipv4_dst": "10.0.0.20"}
    assert fabric.reached("c1n1", pkt, "priv1") == {"c1cc1"}
    assert fabric.reached("c1n1", dict(pkt, eth_dst=sc.mac, ipv4_dst=sc.ip), "priv1") == {"c1sc1"}
    bcast = {"eth_src": nc.mac, "eth_dst": BCAST, "eth_type": 0x0806, "arp_sha": nc.mac, "arp_spa": nc.ip,
             "arp_tpa": "10.101.0.1"}
    assert fabric.reached("c1n1", bcast, "priv1") == {"c1cc1", "c1cc2", "c1sc1", "c1n2"}
    # An NC cannot reach into a group, nor an instance reach an NC.
    assert fabric.send("c1n1", dict(pkt, eth_dst=INST["c1n1v1"]["mac"]), "priv1") == []
    assert fabric.send("c1n1v1", ip_pkt("c1n1v1", nc.mac, nc.ip)) == []


def test_primary_change_moves_the_group_vlans_to_the_new_cc(topo):
    fab = FakeFabric(topo, compute_flows(topo, {1: intent(primary="c1cc2")}))
    assert fab.reached("c1n1v1", arp("c1n1v1", GW_A)) == {"c1n2v1", "c1cc2"}
    assert fab.reached("c1n1v1", ip_pkt("c1n1v1", cc_mac(topo, "c1cc2"), "10.0.0.10")) == {"c1cc2"}
    assert fab.send("c1n1v1", ip_pkt("c1n1v1", cc_mac(topo, "c1cc1"), "10.0.0.10")) == []


def test_novlan_is_flat_the_documented_weakness():
    topo = topology(NetworkMode.MANAGED_NOVLAN)
    fab = FakeFabric(topo, compute_flows(topo, {1: intent("MANAGED-NOVLAN")}))
    # Another group's broadcast is seen, and a forged ARP reply gets through.
    assert "c1n1v2" in fab.reached("c1n1v1", arp("c1n1v1", GW_A))
    forged = arp("c1n1v2", INST["c1n1v1"]["ip"], spa=GW_A)
    assert "c1n1v1" in fab.reached("c1n1v2", forged)


def test_flows_grow_linearly_with_instances(topo):
    def count(n):
        it = copy.deepcopy(intent())
        it["instances"] = []
        slots = [hp.host for hp in topo.host_ports("priv1") if hp.kind == "slot"]
        for j in range(n):
            it["instances"].append({"id": f"i-{j}", "mac": f"d0:0d:00:00:00:{j + 2:02x}", "ip": f"10.101.16.{j + 2}",
                                    "nc": None, "slot": slots[j], "group": "sg-a", "public_ip": None})
        return sum(len(f) for f in compute_flows(topo, {1: it}).values())

    counts = [count(n) for n in range(5)]
    steps = {b - a for a, b in zip(counts, counts[1:])}
    assert len(steps) == 1, counts  # each instance adds the same number of flows


def test_cookies_are_stable_and_distinct(topo):
    a = compute_flows(topo, {1: intent()})
    b = compute_flows(topo, {1: copy.deepcopy(intent())})
    for s in a:
        assert [f.cookie for f in a[s]] == [f.cookie for f in b[s]]
        assert len({f.cookie for f in a[s]}) == len(a[s])


def test_system_mode_is_flat_normal_everywhere():
    from controllers.intent import validate

    topo = topology(NetworkMode.SYSTEM)
    flat = intent("SYSTEM")
    for g in flat["groups"]:  # every group shares the cluster's flat range behind the site router
        g.update(subnet="10.101.2.0/23", gateway="10.101.0.1")
    for n, inst in enumerate(flat["instances"]):
        inst["ip"] = f"10.101.2.{n + 2}"
    validate(flat, 1, topo)
    flows = compute_flows(topo, {1: flat})
    assert all(len(f) == 1 and f[0].actions == (("normal",),) for f in flows.values())


def test_an_intent_changes_only_its_own_clusters_switches():
    """The controller recomputes only the cluster an intent is for: that must be all that
    the intent changes in the whole deployment's flows."""
    topo = topology(clusters=2)
    before = compute_flows(topo, {1: intent(), 2: None})
    changed = intent(primary="c1cc2")
    after = compute_flows(topo, {1: changed, 2: None})
    part = cluster_flows(topo, 1, changed)
    assert set(part) == set(topo.switches_of(topo.private_network(1)))
    assert {s: after[s] for s in part} == part
    assert {s for s in after if after[s] != before[s]} <= set(part)
    assert {s for s in after if after[s] != before[s]}  # the takeover did change something


# -- the staged standby CC ------------------------------------------------------------------

def gw_garp(topo, host: str, gateway: str) -> dict:
    """The gratuitous ARP a CC's kernel sends when it takes a group gateway."""
    mac = cc_mac(topo, host)
    return {"eth_src": mac, "eth_dst": BCAST, "eth_type": 0x0806, "arp_sha": mac, "arp_spa": gateway,
            "arp_tpa": gateway}


def test_a_staged_standby_routes_without_any_flow_change(topo):
    """The secondary reported itself withdrawn at the intent's epoch: the switches carry its
    frames into the groups' VLANs already, so when it takes the gateways it routes at once."""
    standby = {"host": "c1cc2", "epoch": 1}
    flows = compute_flows(topo, {1: intent()}, standbys={1: standby})
    fab = FakeFabric(topo, flows)
    assert fab.reached("c1cc2", gw_garp(topo, "c1cc2", GW_A), "priv1") == {"c1n1v1", "c1n2v1", "c1cc1"}
    assert fab.reached("c1n1v1", ip_pkt("c1n1v1", cc_mac(topo, "c1cc2"), "10.0.0.10")) == {"c1cc2"}
    back = {"eth_src": cc_mac(topo, "c1cc2"), "eth_dst": INST["c1n1v2"]["mac"], "eth_type": 0x0800,
            "ipv4_src": "10.0.0.10", "ipv4_dst": INST["c1n1v2"]["ip"]}
    assert fab.reached("c1cc2", back, "priv1") == {"c1n1v2"}
    # Its promotion's intent changes nothing the traffic needs: the primary's flows stay.
    promoted = dict(intent(primary="c1cc2"), epoch=2)
    after = compute_flows(topo, {1: promoted}, standbys={1: standby})
    before = {f.cookie for fs in flows.values() for f in fs}
    assert FakeFabric(topo, after).reached("c1cc2", back, "priv1") == {"c1n1v2"}
    needed = {f.cookie for s, fs in after.items() for f in fs if f.match_dict.get("in_port") ==
              topo.host_port("c1cc2", "priv1").port or f.match_dict.get("eth_dst") == cc_mac(topo, "c1cc2")}
    assert needed and needed <= before


def test_a_new_primarys_intent_fences_the_old_one_until_it_reports_again(topo):
    """c1cc2 promoted (epoch 2): c1cc1, maybe only frozen with the gateways still on it,
    is out of every group's VLAN, whatever it reported before; its report under the new
    epoch, sent once withdrawn, stages it again."""
    promoted = dict(intent(primary="c1cc2"), epoch=2)
    old_garp = gw_garp(topo, "c1cc1", GW_A)
    for earlier in (None, {"host": "c1cc2", "epoch": 1}, {"host": "c1cc1", "epoch": 1}, {"host": "c1cc1", "epoch": 5}):
        fab = FakeFabric(topo, compute_flows(topo, {1: promoted}, standbys={1: earlier} if earlier else {}))
        # It reaches the cluster's untagged infrastructure only, no instance.
        assert not any(h in INST for h in fab.reached("c1cc1", old_garp, "priv1"))
        assert fab.send("c1n1v1", ip_pkt("c1n1v1", cc_mac(topo, "c1cc1"), "10.0.0.10")) == []
        assert fab.reached("c1n1v1", arp("c1n1v1", GW_A)) == {"c1n2v1", "c1cc2"}
    fab = FakeFabric(topo, compute_flows(topo, {1: promoted}, standbys={1: {"host": "c1cc1", "epoch": 2}}))
    assert {"c1n1v1", "c1n2v1"} <= fab.reached("c1cc1", old_garp, "priv1")


def test_the_standby_changes_only_its_own_ports_flows(topo):
    flows = compute_flows(topo, {1: intent()})
    staged = compute_flows(topo, {1: intent()}, standbys={1: {"host": "c1cc2", "epoch": 1}})
    before = {f.cookie for fs in flows.values() for f in fs}
    after = {f.cookie for fs in staged.values() for f in fs}
    # Only the VLANs' flood flows change (one more member); nothing is lost for anyone else.
    assert before - after
    assert all(f.priority == 5 for fs in flows.values() for f in fs if f.cookie not in after)
    # What comes in is the standby's: its port's classification and its MAC's forwarding,
    # and the new flood flows.
    port, mac = topo.host_port("c1cc2", "priv1").port, cc_mac(topo, "c1cc2")
    added = [f for fs in staged.values() for f in fs if f.cookie not in before]
    assert added and all(f.match_dict.get("in_port") == port or f.match_dict.get("eth_dst") == mac
                         or f.priority == 5 for f in added)
    assert any(f.match_dict.get("in_port") == port for f in added)
