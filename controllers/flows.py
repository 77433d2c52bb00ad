"""Flow computation: (topology, accepted intents) -> the flows every switch should hold.

Pure Python data in, pure Python data out; ``oskit`` turns a ``Flow`` into an
OpenFlow 1.3 FlowMod; the tests' fake fabric (tests/support/fakeoftable.py) executes
flows without a switch.

MANAGED private networks (one per cluster) get proactive flows, two tables:

* table 0, ingress: what a port may send. A VM slot holding an instance may send
  only IPv4 from the instance's MAC and IP and ARP whose sender fields are the
  instance's own (anti-spoofing); the frame gets its security group's VLAN tag.
  Any tagged frame from a host port is dropped (double tagging). NCs, SCs and CCs
  send untagged infrastructure traffic from their own MAC; the primary CC's frames
  for a group's subnet (IPv4 destination or ARP target) get that group's tag, which
  is how routed traffic re-enters a group. Trunks pass everything on. Anything else
  is dropped.
* table 1, forwarding: per VLAN (and untagged for the cluster infrastructure) a
  flow per known destination MAC towards its port, popping the tag at the host
  port, plus one flood flow for broadcast and multicast over the members of that
  VLAN only. Unknown destinations are dropped, never flooded. Only the primary CC is
  a member of the groups' VLANs: that is the steering of routed traffic. The staged
  standby CC (``intent.staged_standby``: a secondary that reported its router
  withdrawn) is a member too, and its frames are classified like the primary's, so
  that it routes the moment it takes over, before the controller hears of it; holding
  no gateway address until then, it answers nobody.

EDGE has no CC in the path and no VLANs: the groups are enforced on each NC's bridge
(``edge_flows``, controllers/edge.py); the rest of its cluster network runs NORMAL, as in SYSTEM.

Every other switch (cloud, user, external networks; private networks in SYSTEM,
STATIC and MANAGED-NOVLAN, where isolation is the CC's iptables only, the weakness
Eucalyptus documented) runs the switch's own NORMAL L2 forwarding.

With ``ha.takeover: sdn`` the cloud switches also steer each HA pair's service VIP
(``vip_flows``): they answer ARP for it with the pair's fixed virtual MAC, send
frames for that MAC to the current primary (rewritten to its own MAC), and let only
the primary's ARP speak for the VIP, rewritten to the virtual MAC. A takeover moves
one flow per switch; nobody's ARP cache changes.

Each flow's cookie is a hash of the flow itself: a switch's flows are diffed against
the wanted set by cookie, so a resynchronisation or an intent update touches only
what changed and never disturbs a flow that stays.
"""

from __future__ import annotations

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from components.common.modes import MANAGED_MODES, features

from .edge import edge_bridges, edge_flows
from .flow import (ANY_TAG, ARP_REQUEST, CLOUD, ETH_ARP, ETH_IPV4, MULTICAST, PRIO_CLASSIFY,
                   PRIO_DROP_TAGGED, PRIO_FLOOD, PRIO_FORWARD, PRIO_HOST, PRIO_MISS, PRIO_VIP_ARP_REPLY,
                   PRIO_VIP_SENDER, TABLE_FORWARD, TABLE_INGRESS, Flow, _arp_reply, _net, _vid)
from .intent import staged_standby
from .topology import HostPort, Topology
from .vips import virtual_mac


@dataclass
class _Member:
    switch: str
    port: int
    mac: str


def compute_flows(topo: Topology, intents: dict[int, dict], vips: dict[str, dict] | None = None,
                  standbys: dict[int, dict] | None = None) -> dict[str, list[Flow]]:
    """Every switch's wanted flows, by switch name (``vips``: accepted redirects by pair;
    ``standbys``: the standby CCs' reports by cluster)."""
    out: dict[str, list[Flow]] = {}
    managed_nets = {}
    if features(topo.mode).l2_isolation:
        managed_nets = {topo.private_network(k): k for k in topo.clusters()}
    edge = {s: k for k in topo.clusters() for s in edge_bridges(topo, k)}
    for name in topo.switches:
        if topo.network_of(name) not in managed_nets and name not in edge:
            out[name] = [Flow.make(TABLE_INGRESS, PRIO_MISS, {}, [("normal",)])]
    for k in sorted(set(edge.values())):
        out.update(edge_flows(topo, k, intents.get(k)))
    for k in managed_nets.values():
        out.update(cluster_flows(topo, k, intents.get(k), (standbys or {}).get(k)))
    for name, flows in vip_flows(topo, vips or {}).items():
        out[name] = out.get(name, []) + flows
    return out


def cluster_flows(topo: Topology, cluster: int, intent: dict | None, standby: dict | None = None
                  ) -> dict[str, list[Flow]]:
    """The flows of one cluster's private network for its intent and standby report: all
    that either changes (empty unless MANAGED or EDGE: the other modes' switches run NORMAL)."""
    if edge_bridges(topo, cluster):
        return edge_flows(topo, cluster, intent)
    if not features(topo.mode).l2_isolation:
        return {}
    return _managed_network(topo, topo.private_network(cluster), intent, staged_standby(intent, standby))


def vip_flows(topo: Topology, vips: dict[str, dict]) -> dict[str, list[Flow]]:
    """The cloud switches' flows for every pair whose VIP the controller steers (takeover sdn).

    Per pair, on every cloud switch, above NORMAL:

    * an ARP request for the VIP, from anyone, is answered by the switch itself with
      the virtual MAC (a proxy-ARP flow: it works with no primary and no controller);
    * ARP from a member's port that speaks for the VIP: the current primary's gets the
      virtual MAC as sender (so a neighbour that learns from it learns the virtual
      MAC), anyone else's is dropped (a resumed ex-primary still holding the VIP);
    * a frame for the virtual MAC goes towards the primary's switch and leaves there
      with the primary's own MAC as destination (hosts see plain untagged frames and
      accept them). No primary named yet: dropped.
    """
    pairs = topo.redirected_pairs()
    if not pairs:
        return {}
    switches = topo.switches_of(CLOUD)
    hops = topo.next_hops(CLOUD)
    ports = {hp.host: hp for hp in topo.host_ports(CLOUD)}
    out: dict[str, list[Flow]] = {s: [] for s in switches}
    for name, pair in sorted(pairs.items()):
        vip, vmac = pair["vip"], virtual_mac(pair["vip"])
        accepted = vips.get(name)
        primary = ports.get(accepted["primary"]) if accepted else None
        reply = _arp_reply(vmac, vip)
        for s in switches:
            f = out[s]
            f.append(Flow.make(TABLE_INGRESS, PRIO_VIP_ARP_REPLY,
                               {"eth_type": ETH_ARP, "arp_op": ARP_REQUEST, "arp_tpa": vip}, reply))
            for member in (pair["primary"], pair["secondary"]):
                hp = ports.get(member)
                if hp is None or hp.switch != s:
                    continue
                speaks = ([("set_field", "eth_src", vmac), ("set_field", "arp_sha", vmac), ("normal",)]
                          if hp is primary else [])
                f.append(Flow.make(TABLE_INGRESS, PRIO_VIP_SENDER,
                                   {"in_port": hp.port, "eth_type": ETH_ARP, "arp_spa": vip}, speaks))
            if primary is None:
                towards = []
            elif primary.switch == s:
                towards = [("set_field", "eth_dst", primary.mac), ("output", primary.port)]
            else:
                towards = [("output", hops[s][primary.switch])]
            f.append(Flow.make(TABLE_INGRESS, PRIO_FORWARD, {"eth_dst": vmac}, towards))
    return out




def _managed_network(topo: Topology, net: str, intent: dict | None, standby: str | None
                     ) -> dict[str, list[Flow]]:
    hops = topo.next_hops(net)
    tree = topo.tree_edges(net)
    host_ports = topo.host_ports(net)
    infra = [hp for hp in host_ports if hp.kind != "slot"]
    slot_ports = {hp.host: hp for hp in host_ports if hp.kind == "slot"}
    groups = {g["id"]: g for g in (intent or {}).get("groups", [])}
    # The CCs in the groups' VLANs: the primary, and the staged standby beside it.
    routers = [hp for name in ((intent or {}).get("primary_cc"), standby) for hp in infra if hp.host == name]

    # Broadcast domains: None is the untagged cluster infrastructure, a VLAN is a group.
    members: dict[int | None, list[_Member]] = {None: [_Member(hp.switch, hp.port, hp.mac) for hp in infra]}
    placed: dict[str, tuple[dict, dict]] = {}  # slot -> (instance, group)
    for g in groups.values():
        members[g["vlan"]] = [_Member(hp.switch, hp.port, hp.mac) for hp in routers]
    for inst in (intent or {}).get("instances", []):
        hp = slot_ports.get(inst.get("slot") or "")
        if hp is None:
            continue
        group = groups[inst["group"]]
        placed[hp.host] = (inst, group)
        members[group["vlan"]].append(_Member(hp.switch, hp.port, inst["mac"]))

    flows: dict[str, list[Flow]] = {}
    for s in topo.switches_of(net):
        f = [Flow.make(TABLE_INGRESS, PRIO_MISS, {}, []), Flow.make(TABLE_FORWARD, PRIO_MISS, {}, [])]
        for port in topo.trunk_ports(s):
            if (s, port) in tree:
                f.append(Flow.make(TABLE_INGRESS, PRIO_HOST, {"in_port": port}, [("goto", TABLE_FORWARD)]))
        for hp in host_ports:
            if hp.switch != s:
                continue
            f.extend(_ingress(hp, placed.get(hp.host), groups if hp in routers else {}))
        for vlan, mems in members.items():
            f.extend(_forwarding(s, vlan, mems, hops[s], tree, topo))
        flows[s] = f
    return flows


def _ingress(hp: HostPort, placed: tuple[dict, dict] | None, routed_groups: dict) -> list[Flow]:
    """Table 0 for one host port."""
    port = hp.port
    if hp.kind == "slot" and placed is None:
        return []  # an idle slot sends nothing anywhere (table miss drops)
    f = [Flow.make(TABLE_INGRESS, PRIO_DROP_TAGGED, {"in_port": port, "vlan_vid": ANY_TAG}, [])]
    if hp.kind == "slot":
        inst, group = placed
        tag = [("push_vlan", group["vlan"]), ("goto", TABLE_FORWARD)]
        mac, ip = inst["mac"], inst["ip"]
        f.append(Flow.make(TABLE_INGRESS, PRIO_CLASSIFY,
                           {"in_port": port, "eth_src": mac, "eth_type": ETH_IPV4, "ipv4_src": ip}, tag))
        f.append(Flow.make(TABLE_INGRESS, PRIO_CLASSIFY,
                           {"in_port": port, "eth_src": mac, "eth_type": ETH_ARP, "arp_sha": mac, "arp_spa": ip},
                           tag))
        return f
    for g in routed_groups.values():
        tag = [("push_vlan", g["vlan"]), ("goto", TABLE_FORWARD)]
        subnet = _net(g["subnet"])
        f.append(Flow.make(TABLE_INGRESS, PRIO_CLASSIFY,
                           {"in_port": port, "eth_src": hp.mac, "eth_type": ETH_IPV4, "ipv4_dst": subnet}, tag))
        f.append(Flow.make(TABLE_INGRESS, PRIO_CLASSIFY,
                           {"in_port": port, "eth_src": hp.mac, "eth_type": ETH_ARP, "arp_tpa": subnet}, tag))
    f.append(Flow.make(TABLE_INGRESS, PRIO_HOST, {"in_port": port, "eth_src": hp.mac},
                       [("goto", TABLE_FORWARD)]))
    return f


def _forwarding(s: str, vlan: int | None, mems: list[_Member], hops: dict[str, int],
                tree: set[tuple[str, int]], topo: Topology) -> list[Flow]:
    """Table 1 of switch ``s`` for one broadcast domain."""
    vid = _vid(vlan)
    pop = [("pop_vlan",)] if vlan is not None else []
    f = []
    for m in mems:
        if m.switch == s:
            actions = pop + [("output", m.port)]
        else:
            actions = [("output", hops[m.switch])]
        f.append(Flow.make(TABLE_FORWARD, PRIO_FORWARD, {"vlan_vid": vid, "eth_dst": m.mac}, actions))
    # Flood over the tree, only towards switches with members of this domain.
    trunks = sorted({hops[m.switch] for m in mems if m.switch != s and (s, hops[m.switch]) in tree})
    local = sorted({m.port for m in mems if m.switch == s})
    actions = [("output", p) for p in trunks] + (pop + [("output", p) for p in local] if local else [])
    if actions:
        f.append(Flow.make(TABLE_FORWARD, PRIO_FLOOD, {"vlan_vid": vid, "eth_dst": MULTICAST}, actions))
    return f


# -- gateway announcements ---------------------------------------------------------------------

def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def garp(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request (sender = target = ip) from ``mac``, untagged."""
    ip_b = ipaddress.ip_address(ip).packed
    return (b"\xff" * 6 + _mac_bytes(mac) + struct.pack("!H", ETH_ARP)
            + struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, 1) + _mac_bytes(mac) + ip_b + b"\x00" * 6 + ip_b)


def announcements(topo: Topology, intent: dict, previous: dict | None) -> list[tuple[str, int, bytes]]:
    """Gratuitous ARPs for the group gateways when the primary CC changed.

    Returned as (switch, in_port, frame): the frame is injected through the pipeline
    as if the new primary had sent it, so it lands in each group's VLAN (or, without
    VLANs, on the segment). Instances then route through the new primary at once,
    whatever the CC host itself announced (EUCA-2281: a new CC announced nothing).
    """
    if previous is not None and previous.get("primary_cc") == intent["primary_cc"]:
        return []
    if intent["mode"] not in MANAGED_MODES:
        return []
    try:
        hp = topo.host_port(intent["primary_cc"], topo.private_network(intent["cluster"]))
    except KeyError:
        return []
    return [(hp.switch, hp.port, garp(hp.mac, g["gateway"])) for g in intent["groups"]]
