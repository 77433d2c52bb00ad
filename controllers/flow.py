"""The flow record and the OpenFlow vocabulary (tables, priorities, fields) the flow
computations share: ``flows`` (MANAGED networks, VIPs) and ``edge`` (EDGE's NC bridges)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

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


def _arp_reply(mac: str, ip: str) -> list:
    """Actions turning an ARP request for ``ip`` into the answer ``mac``, sent back where it came
    from (a proxy-ARP flow: the switch answers, whoever else is up)."""
    return [("move", "eth_src", "eth_dst"), ("set_field", "eth_src", mac), ("set_field", "arp_op", ARP_REPLY),
            ("move", "arp_sha", "arp_tha"), ("set_field", "arp_sha", mac),
            ("move", "arp_spa", "arp_tpa"), ("set_field", "arp_spa", ip), ("output", "in_port")]
