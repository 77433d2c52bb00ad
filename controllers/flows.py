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
(``edge_flows``, below); the rest of its cluster network runs NORMAL, as in SYSTEM.

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

import hashlib
import ipaddress
import struct
from dataclasses import dataclass, field

from components.cc.netalloc import NetworkAllocator
from components.common.modes import features

from .intent import PUBLIC_IP_POOL, staged_standby
from .topology import MANAGED_MODES, HostPort, Topology
from .vips import virtual_mac

TABLE_INGRESS = 0
TABLE_FORWARD = 1
TABLE_DELIVER = 2  # EDGE: what may reach one instance
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
BROADCAST = "ff:ff:ff:ff:ff:ff"
IPPROTO = {"icmp": 1, "tcp": 6, "udp": 17}
TCP_ACK = 0x010
# ICMP an instance takes from anyone: answers to what it sent (echo reply, unreachable,
# time exceeded), as a stateful filter's "related" would.
ICMP_ANSWERS = (0, 3, 11)
METADATA_IP = "169.254.169.254"
# The cloud's own networks (cloud, clusters, heartbeat links): an EDGE instance reaches
# there only what _edge_cloud_reach lists.
SITE_PRIVATE = "10.0.0.0/8"
PUBLIC_SERVICES = ("clc", "walrus")  # the pairs whose VIP an instance reaches (its port), as users do
MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")
ANY_TAG = (OFPVID_PRESENT, OFPVID_PRESENT)

# Priorities, highest first.
PRIO_VIP_ARP_REPLY = 40
PRIO_VIP_SENDER = 35
PRIO_DROP_TAGGED = 30
PRIO_ARP_PROXY = 26
PRIO_METADATA = 25
PRIO_CLOUD_ALLOWED = 24
PRIO_CLOUD_DENIED = 23
PRIO_CLASSIFY = 20
PRIO_HOST = 10
PRIO_FORWARD = 10
PRIO_FLOOD = 5
PRIO_MISS = 0
ARP_REQUEST, ARP_REPLY = 1, 2
CLOUD = "cloud"


@dataclass(frozen=True)
class Flow:
    """One flow entry as plain data.

    ``match``: sorted (field, value) pairs with OpenFlow 1.3 field names; a value is
    exact or a (value, mask) pair. ``actions``: ("push_vlan", vid) ("pop_vlan",)
    ("output", port) ("output", "in_port") ("normal",) ("goto", table)
    ("set_field", field, value) ("move", src_field, dst_field) (a whole-field copy,
    Open vSwitch's move), applied in order; no action drops.
    """

    table: int
    priority: int
    match: tuple = ()
    actions: tuple = ()
    cookie: int = field(default=0, compare=False)

    @classmethod
    def make(cls, table: int, priority: int, match: dict, actions: list | tuple) -> "Flow":
        m = tuple(sorted(match.items()))
        a = tuple(tuple(x) for x in actions)
        digest = hashlib.blake2b(repr((table, priority, m, a)).encode(), digest_size=8).digest()
        # The top bit stays clear: 0xffff_ffff_ffff_ffff is reserved by OpenFlow.
        cookie = int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
        return cls(table, priority, m, a, cookie)

    @property
    def match_dict(self) -> dict:
        return dict(self.match)


def _vid(vlan: int | None) -> int:
    return OFPVID_NONE if vlan is None else OFPVID_PRESENT | vlan


def _net(subnet: str) -> tuple[str, str]:
    n = ipaddress.ip_network(subnet)
    return str(n.network_address), str(n.netmask)


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


def _arp_reply(mac: str, ip: str) -> list:
    """Actions turning an ARP request for ``ip`` into the answer ``mac``, sent back where it came
    from (a proxy-ARP flow: the switch answers, whoever else is up)."""
    return [("move", "eth_src", "eth_dst"), ("set_field", "eth_src", mac), ("set_field", "arp_op", ARP_REPLY),
            ("move", "arp_sha", "arp_tha"), ("set_field", "arp_sha", mac),
            ("move", "arp_spa", "arp_tpa"), ("set_field", "arp_spa", ip), ("output", "in_port")]


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


# -- EDGE: the groups on each NC's bridge -------------------------------------------------------

def edge_bridges(topo: Topology, cluster: int) -> list[str]:
    """The NC bridges of a cluster that enforce its groups (EDGE: those with an uplink)."""
    net = topo.private_network(cluster)
    return [s for s in topo.switches_of(net) if topo.uplinks(s)]


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """A port range as the fewest (value, mask) matches that cover exactly it."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _ip_match(cidr: str) -> dict:
    net = ipaddress.ip_network(cidr)
    if net.prefixlen == 0:
        return {}
    return {"ipv4_src": str(net.network_address) if net.prefixlen == 32 else _net(cidr)}


def _rule_matches(rule: dict, sources: list[dict]) -> list[dict]:
    """The matches (without in/out ports) one ingress rule admits, one per source and port block."""
    proto = rule["protocol"]
    base: dict = {"eth_type": ETH_IPV4}
    blocks: list[dict] = [{}]
    if proto in ("tcp", "udp"):
        base["ip_proto"] = IPPROTO[proto]
        blocks = [{} if m == 0 else {f"{proto}_dst": v if m == 0xFFFF else (v, m)}
                  for v, m in port_masks(rule["from_port"], rule["to_port"])]
    elif proto == "icmp":
        base["ip_proto"] = IPPROTO["icmp"]
        if rule.get("from_port", -1) != -1:
            base["icmpv4_type"] = rule["from_port"]
            if rule.get("to_port", -1) != -1:
                base["icmpv4_code"] = rule["to_port"]
    return [dict(base, **src, **b) for src in sources for b in blocks]


def _admits(group: dict, ip: str, group_of: dict[str, str]) -> bool:
    """Whether one of ``group``'s rules admits anything from the instance at ``ip``."""
    for rule in group["rules"]:
        if rule.get("source_group") is not None and group_of.get(ip) == rule["source_group"]:
            return True
        if rule.get("cidr") is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(rule["cidr"]):
            return True
    return False


def edge_flows(topo: Topology, cluster: int, intent: dict | None) -> dict[str, list[Flow]]:
    """Every EDGE NC bridge of a cluster: its instances' security groups, anti-spoofing, elastic
    IPs and the metadata service, all on the bridge of the NC that hosts them.

    Table 0, what enters the bridge:

    * from a VM slot holding an instance: IPv4 from its own MAC and IP, ARP whose sender
      fields are its own (anti-spoofing), never a tagged frame. TCP to 169.254.169.254:80
      goes to the NC itself (its metadata proxy). Inside the cloud's networks an instance
      reaches what the MANAGED CC lets it reach (``_edge_cloud_reach``): the CLC's and
      Walrus's VIPs on their port, elastic IPs, the instances' ranges of every cluster,
      ICMP to its router; never an NC, the CC, the SC or any member's own address, and it
      ARPs for nothing else. With an elastic IP, IPv4 that leaves the instances'
      segment (to the services' VIPs, elastic IPs, beyond the cloud) leaves by the uplink
      with the elastic IP as source, towards the site gateway's cloud-side MAC (stateless
      one-to-one NAT), so whatever it talks to answers the elastic IP;
    * from the uplink (the cloud network): ARP requests for an elastic IP hosted here are
      answered by the bridge with the instance's MAC; IPv4 to such an address gets the
      instance's IP and MAC as destination and goes to table 2; nothing else crosses;
    * from the NC and the cluster trunk: everything, to table 1.

    ARP about instances is answered by the bridges themselves (``_edge_arp_proxy``): an
    instance's request for a peer (its group, or a group admitting it or admitted by it)
    is answered with the peer's MAC, the site's and the NC's requests for an instance of
    this bridge with its MAC; no instance ever receives another's ARP.

    Table 1, where it goes: to an instance of this bridge (its MAC, or an ARP request
    for its IP) through table 2; to the NC's MAC to the NC; broadcasts to the trunk and
    the NC only (an instance never sees another's broadcasts); any other unicast to the
    trunk.

    Table 2, what may reach an instance: from its own NC anything (the metadata answers);
    from its own group anything; what its group's rules admit (protocol, port range as
    masked matches, CIDR or the source group's instances); answers to what it sent
    (TCP segments with ACK set, ICMP echo reply, unreachable, time exceeded); ARP from
    its router and its NC. Everything else is dropped.

    Stateless on purpose: the flows are the same whichever CC is primary and whether a
    controller runs at all, so no failover touches an instance's traffic. The price is
    that of any stateless filter: a TCP segment with ACK set passes to any instance (its
    kernel answers a reset), and UDP answers reach an instance only where a rule admits
    them.
    """
    bridges = edge_bridges(topo, cluster)
    if not bridges:
        return {}
    net = topo.private_network(cluster)
    host_ports = topo.host_ports(net)
    gw_cluster = next((hp for hp in host_ports if hp.kind == "gateway"), None)
    gw_cloud = next((hp for hp in topo.host_ports(CLOUD) if hp.kind == "gateway"), None)
    groups = {g["id"]: g for g in (intent or {}).get("groups", [])}
    instances = [i for i in (intent or {}).get("instances", []) if i.get("slot")]
    group_of = {i["ip"]: i["group"] for i in instances}
    members: dict[str, list[str]] = {}
    for i in instances:
        members.setdefault(i["group"], []).append(i["ip"])
    by_slot = {i["slot"]: i for i in instances}
    reach = _edge_cloud_reach(topo, cluster, gw_cluster)
    out: dict[str, list[Flow]] = {}
    for s in bridges:
        uplink = min(topo.uplinks(s))
        trunks = sorted(topo.trunk_ports(s))
        ports = [hp for hp in host_ports if hp.switch == s]
        nc = next(hp for hp in ports if hp.kind == "nc")
        onward = [("output", p) for p in trunks]
        f = [Flow.make(TABLE_INGRESS, PRIO_MISS, {}, []), Flow.make(TABLE_FORWARD, PRIO_MISS, {}, onward),
             Flow.make(TABLE_DELIVER, PRIO_MISS, {}, [])]
        for port in trunks + [nc.port]:
            f.append(Flow.make(TABLE_INGRESS, PRIO_DROP_TAGGED, {"in_port": port, "vlan_vid": ANY_TAG}, []))
            f.append(Flow.make(TABLE_INGRESS, PRIO_HOST, {"in_port": port}, [("goto", TABLE_FORWARD)]))
        f.append(Flow.make(TABLE_FORWARD, PRIO_FLOOD, {"eth_dst": MULTICAST}, onward + [("output", nc.port)]))
        f.append(Flow.make(TABLE_FORWARD, PRIO_FORWARD, {"eth_dst": nc.mac}, [("output", nc.port)]))
        for hp in ports:
            inst = by_slot.get(hp.host) if hp.kind == "slot" else None
            if inst is None:
                continue
            group = groups[inst["group"]]
            f += _edge_slot_ingress(hp, inst, nc, uplink, gw_cloud, reach)
            f += _edge_uplink(uplink, inst)
            f.append(Flow.make(TABLE_FORWARD, PRIO_FORWARD, {"eth_dst": inst["mac"]}, [("goto", TABLE_DELIVER)]))
            f.append(Flow.make(TABLE_FORWARD, PRIO_FORWARD,
                               {"eth_dst": BROADCAST, "eth_type": ETH_ARP, "arp_tpa": inst["ip"]},
                               [("goto", TABLE_DELIVER)]))
            f += _edge_deliver(hp, inst, group, members, nc, gw_cluster)
            f += _edge_arp_proxy(hp, inst, instances, groups, group_of, trunks + [nc.port])
        out[s] = list(dict.fromkeys(f))  # two rules may admit the same thing: one flow
    return out


@dataclass(frozen=True)
class _Reach:
    """What an EDGE instance may reach inside the cloud's networks (``_edge_cloud_reach``)."""

    segment: list  # IPv4 matches it reaches from its own address: instances, ICMP to its router
    services: list  # IPv4 matches it reaches as its elastic IP if it has one: VIPs, elastic IPs
    arp: list  # the addresses its ARP may reach (its router)


def _edge_arp_proxy(hp: HostPort, inst: dict, instances: list[dict], groups: dict[str, dict],
                    group_of: dict[str, str], infra_ports: list[int]) -> list[Flow]:
    """The bridge answers ARP about instances itself, so no instance ever receives another's ARP:
    a request from this instance for a peer (its group, or a group that admits it or that it
    admits: either may need the other's MAC) gets the peer's MAC; a request from the site
    (the trunk) or the NC for this instance gets this instance's MAC. Others go unanswered."""
    ip, group = inst["ip"], groups[inst["group"]]
    asker = {"in_port": hp.port, "eth_src": inst["mac"], "eth_type": ETH_ARP, "arp_op": ARP_REQUEST,
             "arp_sha": inst["mac"], "arp_spa": ip}
    f = []
    for peer in instances:
        p = peer["ip"]
        if p != ip and (peer["group"] == inst["group"] or _admits(group, p, group_of)
                        or _admits(groups[peer["group"]], ip, group_of)):
            f.append(Flow.make(TABLE_INGRESS, PRIO_ARP_PROXY, dict(asker, arp_tpa=p), _arp_reply(peer["mac"], p)))
    for port in infra_ports:
        f.append(Flow.make(TABLE_INGRESS, PRIO_ARP_PROXY,
                           {"in_port": port, "eth_type": ETH_ARP, "arp_op": ARP_REQUEST, "arp_tpa": ip},
                           _arp_reply(inst["mac"], ip)))
    return f


def _edge_cloud_reach(topo: Topology, cluster: int, router: HostPort | None) -> _Reach:
    """What an EDGE instance may reach inside the cloud's networks, as in MANAGED the CC's
    forward rules let it (components/cc/router.py)."""
    segment = [{"ipv4_dst": _net(str(NetworkAllocator("EDGE", k).flat_space))} for k in topo.clusters()]
    services = [{"ipv4_dst": _net(str(PUBLIC_IP_POOL))}]
    services += [{"ipv4_dst": p["vip"], "ip_proto": IPPROTO["tcp"], "tcp_dst": p["port"]}
                 for p in topo.pairs if p["kind"] in PUBLIC_SERVICES]
    arp: list = []  # other instances: answered by the bridge itself (_edge_arp_proxy)
    if router is not None and router.ip:
        segment.append({"ipv4_dst": router.ip, "ip_proto": IPPROTO["icmp"]})
        arp.append(router.ip)
    return _Reach(segment, services, arp)


def _edge_slot_ingress(hp: HostPort, inst: dict, nc: HostPort, uplink: int, gw_cloud: HostPort | None,
                       reach: _Reach) -> list[Flow]:
    port, mac, ip = hp.port, inst["mac"], inst["ip"]
    own = {"in_port": port, "eth_src": mac}
    arp = dict(own, eth_type=ETH_ARP, arp_sha=mac, arp_spa=ip)
    f = [Flow.make(TABLE_INGRESS, PRIO_DROP_TAGGED, {"in_port": port, "vlan_vid": ANY_TAG}, []),
         Flow.make(TABLE_INGRESS, PRIO_CLASSIFY, dict(arp, arp_tpa=_net(SITE_PRIVATE)), []),
         Flow.make(TABLE_INGRESS, PRIO_METADATA,
                   dict(own, eth_type=ETH_IPV4, ipv4_src=ip, ipv4_dst=METADATA_IP, ip_proto=6, tcp_dst=80),
                   [("set_field", "eth_dst", nc.mac), ("output", nc.port)])]
    ipv4 = dict(own, eth_type=ETH_IPV4, ipv4_src=ip)
    onward = [("goto", TABLE_FORWARD)]
    # With an elastic IP, what leaves the instances' segment speaks as that address (as the
    # MANAGED CC's SNAT had it): by the uplink, straight to the site gateway's cloud side.
    out = onward
    if inst.get("public_ip") and gw_cloud is not None:
        out = [("set_field", "ipv4_src", inst["public_ip"]), ("set_field", "eth_dst", gw_cloud.mac),
               ("output", uplink)]
    f += [Flow.make(TABLE_INGRESS, PRIO_CLOUD_ALLOWED, dict(arp, arp_tpa=t), onward)
          for t in reach.arp + [nc.ip, METADATA_IP] if t]
    f += [Flow.make(TABLE_INGRESS, PRIO_CLOUD_ALLOWED, dict(ipv4, **m), onward) for m in reach.segment]
    f += [Flow.make(TABLE_INGRESS, PRIO_CLOUD_ALLOWED, dict(ipv4, **m), out) for m in reach.services]
    f.append(Flow.make(TABLE_INGRESS, PRIO_CLOUD_DENIED, dict(ipv4, ipv4_dst=_net(SITE_PRIVATE)), []))
    f.append(Flow.make(TABLE_INGRESS, PRIO_CLASSIFY, ipv4, out))
    return f


def _edge_uplink(uplink: int, inst: dict) -> list[Flow]:
    pub = inst.get("public_ip")
    if not pub:
        return []
    return [Flow.make(TABLE_INGRESS, PRIO_VIP_ARP_REPLY,
                      {"in_port": uplink, "eth_type": ETH_ARP, "arp_op": ARP_REQUEST, "arp_tpa": pub},
                      _arp_reply(inst["mac"], pub)),
            Flow.make(TABLE_INGRESS, PRIO_CLASSIFY, {"in_port": uplink, "eth_type": ETH_IPV4, "ipv4_dst": pub},
                      [("set_field", "ipv4_dst", inst["ip"]), ("set_field", "eth_dst", inst["mac"]),
                       ("goto", TABLE_DELIVER)])]


def _edge_deliver(hp: HostPort, inst: dict, group: dict, members: dict[str, list[str]], nc: HostPort,
                  gw: HostPort | None) -> list[Flow]:
    """Table 2 for one instance: what may reach it."""
    port, mac, ip = hp.port, inst["mac"], inst["ip"]
    out = [("output", port)]
    to_ip = {"eth_dst": mac, "eth_type": ETH_IPV4, "ipv4_dst": ip}
    arp = {"eth_type": ETH_ARP, "arp_tpa": ip}
    f = [Flow.make(TABLE_DELIVER, PRIO_HOST, {"in_port": nc.port, "eth_dst": mac}, out),
         Flow.make(TABLE_DELIVER, PRIO_HOST, dict(arp, in_port=nc.port), out)]
    # ARP reaches an instance from its router (answers to its requests) and its NC only:
    # the bridges answer every request for an instance themselves (``_edge_arp_proxy``).
    if gw is not None and gw.ip:
        f.append(Flow.make(TABLE_DELIVER, PRIO_FORWARD, dict(arp, arp_spa=gw.ip), out))
    # IPv4: its own group, its rules, answers to what it sent.
    for p in members.get(inst["group"], []):
        if p != ip:
            f.append(Flow.make(TABLE_DELIVER, PRIO_FORWARD, dict(to_ip, ipv4_src=p), out))
    for rule in group["rules"]:
        if rule.get("source_group") is not None:
            sources = [{"ipv4_src": p} for p in members.get(rule["source_group"], []) if p != ip]
        else:
            sources = [_ip_match(rule["cidr"])]
        for m in _rule_matches(rule, sources):
            f.append(Flow.make(TABLE_DELIVER, PRIO_FORWARD, dict(to_ip, **m), out))
    f.append(Flow.make(TABLE_DELIVER, PRIO_FLOOD, dict(to_ip, ip_proto=6, tcp_flags=(TCP_ACK, TCP_ACK)), out))
    for t in ICMP_ANSWERS:
        f.append(Flow.make(TABLE_DELIVER, PRIO_FLOOD, dict(to_ip, ip_proto=1, icmpv4_type=t), out))
    return f
