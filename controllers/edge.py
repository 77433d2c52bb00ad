"""EDGE: each cluster's security groups enforced on its NCs' bridges (no CC in the path, no
VLANs): per instance, what it may send (anti-spoofing, the cloud's services it may reach) and
what may reach it (its group's ingress rules). The overview is in controllers/flows.py."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from components.cc.netalloc import NetworkAllocator

from .flow import (ANY_TAG, ARP_REQUEST, BROADCAST, CLOUD, ETH_ARP, ETH_IPV4, ICMP_ANSWERS, IPPROTO, METADATA_IP,
                   MULTICAST, PRIO_ARP_PROXY, PRIO_CLASSIFY, PRIO_CLOUD_ALLOWED, PRIO_CLOUD_DENIED,
                   PRIO_DROP_TAGGED, PRIO_FLOOD, PRIO_FORWARD, PRIO_HOST, PRIO_METADATA, PRIO_MISS,
                   PRIO_VIP_ARP_REPLY, PUBLIC_SERVICES, SITE_PRIVATE, TABLE_DELIVER, TABLE_FORWARD, TABLE_INGRESS,
                   TCP_ACK, Flow, _arp_reply, _net)
from .intent import PUBLIC_IP_POOL
from .topology import HostPort, Topology

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
