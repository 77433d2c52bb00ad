"""The CC router's configuration, rendered from the cluster intent (docs/intent.md).

Pure (unit-tested without root); components/cc/router.py applies it to the CC host. What
the primary CC holds, as Eucalyptus's CC did in MANAGED and MANAGED-NOVLAN modes:

* each security group's gateway address on the private interface (VNET_PRIVINTERFACE),
  or, with ``vlan_tagging: host``, on the group's VLAN sub-interface of it
  (``<interface>.<vlan>``, made when the group appears: components/common/vlan.py),
  each elastic IP on the public one (VNET_PUBINTERFACE), announced by gratuitous ARP
  when it arrives (EUCA-2281: a newly ENABLED CC announced nothing), and again a second
  and two seconds later;
* forwarding policy drop; established and related accepted; one accept per
  security-group ingress rule (protocol, port range, CIDR or source group); the
  cluster's infrastructure (NCs to Walrus and the SC) passes; instances may open
  connections beyond the cloud network and, on the cloud network, to the public
  services' VIPs (TCP 8773 of the CLC and Walrus) and to elastic IPs only: never to a
  member's own address, a heartbeat port, the SC or the CC and NC internal APIs;
* nothing from an instance to the CC host itself but ICMP (EUCA-INPUT): the CC's
  internal API and heartbeats are out of a tenant's reach;
* the connections it routes marked (``ROUTED_MARK``) and forgotten when it stops routing
  (``apply_router``): a connection-tracking entry left from an earlier term would meet a
  later connection of the same addresses and ports that opened through the peer, call its
  segments invalid and leave them untranslated (docs/ha.md, "Planned switchover");
* elastic IPs DNAT in and SNAT out; the metadata service 169.254.169.254:80 DNATed
  to the CLC's virtual IP port 8773 by exactly one rule (EUCA-3440 left rules pointing
  at both CLCs), without SNAT, so the CLC sees the instance's own address.

Eucalyptus wrote these rules with iptables; here they are the same netfilter rules as
one nftables table (``table ip eucalab``, chains EUCA-FORWARD, EUCA-PREROUTING and
EUCA-POSTROUTING, the names Eucalyptus's chains had, and EUCA-INPUT), the backend iptables itself uses
on Debian 12, loaded in process through libnftables: see ``nft list table ip eucalab``
on the CC host.

``render_router`` gives the ``RouterConfig`` (addresses, the nftables table, sysctls,
neighbour entries) that makes a host the router for an intent; ``withdraw_config`` the
empty router (no addresses, no rules, forwarding policy drop).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from components.common import vlan as vlans

TABLE = "eucalab"  # nftables table ip eucalab, on the CC host only
CHAIN_FWD = "EUCA-FORWARD"
CHAIN_DNAT = "EUCA-PREROUTING"
CHAIN_SNAT = "EUCA-POSTROUTING"
CHAIN_INPUT = "EUCA-INPUT"
METADATA_IP = "169.254.169.254"
PUBLIC_IP_POOL = "10.0.128.0/24"
CLOUD_NET = "10.0.0.0/16"
ROUTED_MARK = 0xEC  # the connection-tracking mark of connections the router translates or forwards


@dataclass
class RouterHost:
    """What the router needs to know about the CC host it runs on."""

    cluster: int
    private_interface: str  # on the cluster's private network
    public_interface: str  # on the cloud network
    clc_vip: str | None = None  # metadata DNAT target (the CLC pair's virtual IP)
    clc_port: int = 8773
    walrus_vip: str | None = None  # the object store instances may use
    walrus_port: int = 8773
    cloud_net: str = CLOUD_NET
    public_pool: str = PUBLIC_IP_POOL
    # host: each group's gateway on its VLAN sub-interface <private_interface>.<vlan>
    # (components/common/vlan.py); switch: on the private interface, Open vSwitch tags.
    vlan_tagging: str = "switch"

    @classmethod
    def from_cc_config(cls, config: dict) -> "RouterHost":
        """The router host of a CC, from the component config the deployment writes for it."""
        clc = urlsplit((config.get("endpoints") or {}).get("clc") or "")
        walrus = urlsplit((config.get("endpoints") or {}).get("walrus") or "")
        return cls(cluster=int(config.get("cluster") or 1), private_interface=config["private_interface"],
                   public_interface=config["public_interface"], clc_vip=clc.hostname,
                   clc_port=clc.port or cls.clc_port, walrus_vip=walrus.hostname,
                   walrus_port=walrus.port or cls.walrus_port, vlan_tagging=config.get("vlan_tagging", "switch"))

    @property
    def infra_net(self) -> str:
        """CC, SC and NC addresses of the cluster (10.(100+k).0.0/20, see topologies/plan.py)."""
        return f"10.{100 + self.cluster}.0.0/20"

    @property
    def vm_space(self) -> str:
        """Where the cluster's security-group subnets (and so the gateways) live."""
        return f"10.{100 + self.cluster}.16.0/20"


@dataclass
class RouterConfig:
    private_interface: str
    public_interface: str
    ruleset: str  # the nftables table, as nft(8) input replacing the one loaded before
    private_addresses: list[str] = field(default_factory=list)  # group gateways, "10.101.16.1/28"
    public_addresses: list[str] = field(default_factory=list)  # elastic IPs, "10.0.128.5/16"
    managed_private: str = ""  # addresses in this range on the private interface are ours
    managed_public: str = PUBLIC_IP_POOL
    sysctls: dict[str, str] = field(default_factory=dict)
    neighbours: dict[str, str] = field(default_factory=dict)  # instance IP -> MAC, on the private interface
    # Host tagging: per VLAN sub-interface of the private interface, {"vlan": id, "addresses":
    # [group gateway], "neighbours": {instance IP: MAC}}; empty with switch tagging.
    vlans: dict[str, dict] = field(default_factory=dict)
    vlan_tagging: str = "switch"  # host: sub-interfaces this config lacks (a group gone) hold nothing

    @property
    def gateways(self) -> list[str]:
        """Every group gateway address, on the private interface or its VLAN sub-interfaces."""
        return self.private_addresses + [a for v in self.vlans.values() for a in v["addresses"]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "RouterConfig":
        return cls(**json.loads(text))


def _rule_matches(rule: dict, groups: dict[str, dict]) -> list[str]:
    """nftables match fragments for one ingress rule (empty if it cannot match anything)."""
    proto = str(rule.get("protocol", "-1")).lower()
    proto = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
    if proto in ("tcp", "udp"):
        lo, hi = int(rule.get("from_port", 0)), int(rule.get("to_port", 65535))
        proto_part = f"{proto} dport {lo}" if lo == hi else f"{proto} dport {lo}-{hi}"
    elif proto == "icmp":
        icmp_type = int(rule.get("from_port", -1))
        proto_part = f"icmp type {icmp_type}" if icmp_type >= 0 else "ip protocol icmp"
    elif proto in ("-1", "all"):
        proto_part = ""
    else:
        return []
    if rule.get("cidr"):
        source = f"ip saddr {ipaddress.ip_network(rule['cidr'], strict=False)}"
    elif rule.get("source_group") in groups:
        source = f"ip saddr {groups[rule['source_group']]['subnet']}"
    else:
        return []  # a source group with no instances in this cluster: nothing to admit
    return [f"{source} {proto_part}".strip()]


def render_router(intent: dict, host: RouterHost) -> RouterConfig:
    """The addresses, rules and sysctls that make ``host`` the router for ``intent``."""
    priv, pub = host.private_interface, host.public_interface
    groups = {g["id"]: g for g in intent.get("groups", [])}
    public_prefix = ipaddress.ip_network(host.cloud_net).prefixlen
    # The cluster's infrastructure (NCs to Walrus) stays untagged on the private interface.
    fwd = ["ct state established,related counter accept",
           f'iifname "{priv}" ip saddr {host.infra_net} oifname "{pub}" counter accept']
    dnat, snat = [], []
    private_addresses = []
    group_vlans: dict[str, dict] = {}  # host tagging: sub-interface -> its VLAN, gateway, neighbours
    group_intf: dict[str, str] = {}  # group id -> the interface its instances arrive on
    for g in groups.values():
        net = ipaddress.ip_network(g["subnet"])
        gateway = f"{g['gateway']}/{net.prefixlen}"
        if host.vlan_tagging == "host":
            intf = vlans.vlan_interface(priv, g["vlan"])
            group_vlans[intf] = {"vlan": g["vlan"], "addresses": [gateway], "neighbours": {}}
        else:
            intf = priv
            private_addresses.append(gateway)
        group_intf[g["id"]] = intf
        # Beyond the cloud network (the site, the outside) and to elastic IPs; on the cloud
        # network itself only the public services below.
        fwd.append(f'iifname "{intf}" ip saddr {net} oifname "{pub}" ip daddr != {host.cloud_net} counter accept')
        fwd.append(f'iifname "{intf}" ip saddr {net} oifname "{pub}" ip daddr {host.public_pool} counter accept')
    # Where instances' packets arrive: the group sub-interfaces (host tagging), else the private interface.
    instances_in = ("{ " + ", ".join(f'"{i}"' for i in sorted(group_vlans)) + " }") if group_vlans \
        else f'"{priv}"'
    if host.clc_vip and groups:
        dnat.append(f"iifname {instances_in} ip daddr {METADATA_IP} tcp dport 80 counter "
                    f"dnat to {host.clc_vip}:{host.clc_port}")
        fwd.append(f"iifname {instances_in} ip daddr {host.clc_vip} tcp dport {host.clc_port} counter accept")
        # Before any SNAT: a metadata request leaves with the instance's own address, even
        # from an instance with an elastic IP (the CLC knows instances by private address).
        snat.append(f"ct original ip daddr {METADATA_IP} accept")
    if host.walrus_vip and groups:
        fwd.append(f'iifname {instances_in} ip daddr {host.walrus_vip} tcp dport {host.walrus_port} counter accept')
    for g in groups.values():
        for rule in g.get("rules", []):
            for match in _rule_matches(rule, groups):
                fwd.append(f"ip daddr {g['subnet']} {match} counter accept")
    public_addresses = []
    for inst in intent.get("instances", []):
        if inst.get("public_ip"):
            public_addresses.append(f"{inst['public_ip']}/{public_prefix}")
            dnat.append(f"ip daddr {inst['public_ip']} dnat to {inst['ip']}")
            snat.append(f'ip saddr {inst["ip"]} oifname "{pub}" snat to {inst["public_ip"]}')
            # An answer this member has no connection for (a SYN-ACK to a SYN the peer
            # forwarded, as neighbours move between the pair's members in a planned
            # switchover) gets no NAT: it would leave with the instance's private address
            # and the user would reset it. An elastic IP is one to one: translate it
            # without the connection's state. Right after established,related.
            fwd.insert(1, f'ct state invalid iifname {instances_in} ip saddr {inst["ip"]} oifname "{pub}" '
                          f'ip daddr != {host.cloud_net} ip saddr set {inst["public_ip"]} counter accept')
    if groups:
        # Instances without an elastic IP reach beyond the cloud network through the CC's address.
        snat.append(f'ip saddr {host.vm_space} ip daddr != {host.cloud_net} oifname "{pub}" masquerade')
        # Every connection this router translates or forwards carries ROUTED_MARK (a nat
        # chain sees a connection's first packet only), so that a member that stops routing
        # forgets them (components/cc/router.py, apply_router) and none is left to a later term.
        dnat[:0] = [f"ip daddr {host.public_pool} ct mark set {ROUTED_MARK:#x}",
                    f"iifname {instances_in} ip saddr {host.vm_space} ct mark set {ROUTED_MARK:#x}"]
    sysctls = {"net.ipv4.ip_forward": "1",
               # Routing between group subnets on one interface must not teach instances
               # a direct path (ICMP redirects) around the CC's forward rules.
               "net.ipv4.conf.all.send_redirects": "0",
               f"net.ipv4.conf.{priv}.send_redirects": "0"}
    neighbours = {}
    for inst in intent.get("instances", []):
        if inst.get("ip") and inst.get("mac"):
            intf = group_intf.get(inst.get("group"), priv)
            (group_vlans[intf]["neighbours"] if intf in group_vlans else neighbours)[inst["ip"]] = inst["mac"]
    # Instances reach the CC host itself (its gateway addresses, its public and heartbeat
    # addresses, its internal API) with ICMP only, on whichever interface they arrive.
    inp = ["ct state established,related accept",  # answers to the host's own connections
           f'iifname {instances_in} ip saddr {host.vm_space} ip protocol != icmp counter drop']
    return RouterConfig(priv, pub, _table(fwd, dnat, snat, inp), private_addresses, public_addresses,
                        host.vm_space, host.public_pool, sysctls, neighbours, group_vlans, host.vlan_tagging)


def _table(fwd: list[str], dnat: list[str], snat: list[str], inp: list[str] = ()) -> str:
    """The nftables input that leaves table ip eucalab holding exactly ``fwd``, ``dnat``, ``snat`` and ``inp``.

    One transaction: the chains are declared (created if missing, their policy set),
    flushed and filled, so the kernel switches from the old rules to the new ones at
    once (the first load of a process re-creates the table: ``_Kernel.load_rules``).
    The hooked chains themselves stay: deleting and re-adding the table made the kernel unregister and register its
    hooks on every change, which waits for other CPUs; with the two cores busy that
    took 5.3 ms at p99 (0.8 ms flushing) and up to 11 ms in a CC takeover.
    """
    chains = ((CHAIN_FWD, "filter hook forward priority filter", "drop", fwd),
              (CHAIN_DNAT, "nat hook prerouting priority dstnat", "accept", dnat),
              (CHAIN_SNAT, "nat hook postrouting priority srcnat", "accept", snat),
              (CHAIN_INPUT, "filter hook input priority filter", "accept", list(inp)))
    lines = [f"table ip {TABLE} {{"]
    lines += [f"  chain {name} {{ type {hook}; policy {policy}; }}" for name, hook, policy, _ in chains]
    lines.append("}")
    lines += [f"flush chain ip {TABLE} {name}" for name, *_ in chains]
    lines += [f"add rule ip {TABLE} {name} {rule}" for name, _, _, rules in chains for rule in rules]
    return "\n".join(lines) + "\n"


def withdraw_config(host: RouterHost) -> RouterConfig:
    """What ``host`` applies as a secondary: no intent, so no addresses and empty chains."""
    return render_router({"groups": [], "instances": []}, host)


def _empty() -> str:
    """A secondary's table: forwarding nothing (policy drop), translating nothing."""
    return _table([], [], [])
