"""The addressing plan: every host, switch, link, address and HA pair of a deployment.

``build_plan(spec)`` is pure (no root, no Mininet): the network builder, the
``describe`` command and the tests all read the same plan.

Layout (cluster k = 1..N, see docs/architecture.md for the picture):

  user 198.51.100.10 --- gw --- ext 203.0.113.10           (border gateway, external site)
                          |
                 cloud network 10.0.0.0/16                  (core switch + two access switches)
        CLC, Walrus: 10.0.0.x1 primary, x2 secondary, x0 service virtual IP
        cluster k:   CC 10.0.k.1x, SC 10.0.k.2x (public sides)
                          |
        cluster k private network 10.(100+k).0.0/16
            router .0.1 (primary CC in MANAGED*, the gateway in SYSTEM/STATIC/EDGE)
            CC .0.1x, SC .0.2x (private sides), NC j at .1.j
            VM slots behind each NC on the NC's bridge (addressed when an instance boots);
            with vlan_tagging host, wired to the NC host itself, which tags for them;
            in EDGE each NC bridge also has an uplink to cloud access switch A, where
            the elastic IPs of the instances behind it arrive (translated by its flows)
        heartbeat links 10.254.p.0/24 between the two members of HA pair p

Primaries hang off access switch A, secondaries off access switch B, so cutting one
member's uplink leaves it alone with its peer on the heartbeat link.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

import networkx as nx

from .spec import ARBITRATOR_TARGETS, DeploymentSpec

USER_NET = ipaddress.ip_network("198.51.100.0/24")
EXTERNAL_NET = ipaddress.ip_network("203.0.113.0/24")
CLOUD_NET = ipaddress.ip_network("10.0.0.0/16")
# Elastic (public) addresses handed out by the CLC, inside the cloud network.
PUBLIC_IP_POOL = ipaddress.ip_network("10.0.128.0/24")

# Linux interface names hold at most 15 characters; switch names carry a run tag.
IFNAMSIZ = 16
MAX_TAG = 2

# Real Eucalyptus ports.
PORTS = {"clc": 8773, "walrus": 8773, "cc": 8774, "sc": 8773, "nc": 8775}


def private_net(cluster: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.{100 + cluster}.0.0/16")


def heartbeat_net(pair_index: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.254.{pair_index}.0/24")


@dataclass
class Interface:
    name: str  # Linux interface name, e.g. clc1-eth0
    network: str  # Network.name
    ip: str | None  # "10.0.0.11/16", None for an unaddressed interface (idle VM slot)
    mac: str
    peer: str  # switch or host at the other end


@dataclass
class Host:
    name: str
    role: str  # clc walrus cc sc nc slot gateway user external
    cluster: int | None = None
    ha_role: str | None = None  # primary secondary single (component hosts only)
    interfaces: list[Interface] = field(default_factory=list)
    default_route: str | None = None
    routes: list[tuple[str, str]] = field(default_factory=list)  # (destination, via)
    forwarding: bool = False  # IPv4 forwarding on (routers)
    nc: str | None = None  # for a VM slot: the NC host it belongs to
    slot: int | None = None  # for a VM slot: its index on that NC

    def intf(self, network: str) -> Interface:
        for intf in self.interfaces:
            if intf.network == network:
                return intf
        raise KeyError(f"{self.name} has no interface on {network}")

    def ip_on(self, network: str) -> str | None:
        ip = self.intf(network).ip
        return ip.split("/")[0] if ip else None

    @property
    def main_ip(self) -> str | None:
        """The address other components use to reach this host."""
        for intf in self.interfaces:
            if intf.ip:
                return intf.ip.split("/")[0]
        return None


@dataclass
class Switch:
    name: str
    network: str
    dpid: str  # 16 hex digits, explicit: Mininet's name-derived ids collide (br1n12 / br11n2)
    tier: str  # core access ncbridge


@dataclass
class Link:
    a: str
    b: str
    a_intf: str
    b_intf: str
    network: str
    shaped: bool = True  # host links carry the spec's link parameters; trunks between switches don't


@dataclass
class Network:
    name: str
    kind: str  # user external cloud private heartbeat
    subnet: str
    cluster: int | None = None
    router: str | None = None  # default gateway address of hosts on it


@dataclass
class ServicePair:
    """A component with its members; HA pairs have a secondary."""

    kind: str  # clc walrus cc sc
    cluster: int | None
    primary: str
    secondary: str | None
    port: int
    vip: str  # service virtual IP on the cloud network (users and other components use it)
    private_vip: str | None = None  # CC only: the cluster router address on the private network
    heartbeat_network: str | None = None

    @property
    def name(self) -> str:
        return self.kind if self.cluster is None else f"{self.kind}{self.cluster}"

    @property
    def members(self) -> list[str]:
        return [self.primary] + ([self.secondary] if self.secondary else [])


@dataclass
class Arbitrator:
    name: str
    host: str
    target: str  # gateway | external
    target_ip: str


@dataclass
class Plan:
    spec: DeploymentSpec
    tag: str = ""  # prefix of every switch name in this plan
    hosts: dict[str, Host] = field(default_factory=dict)
    switches: dict[str, Switch] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    networks: dict[str, Network] = field(default_factory=dict)
    pairs: list[ServicePair] = field(default_factory=list)
    arbitrators: list[Arbitrator] = field(default_factory=list)

    def hosts_by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts.values() if h.role == role]

    def pair(self, kind: str, cluster: int | None = None) -> ServicePair:
        for pair in self.pairs:
            if pair.kind == kind and pair.cluster == cluster:
                return pair
        raise KeyError(f"no {kind} for cluster {cluster}")

    def host_for(self, kind: str, member: str = "primary", cluster: int | None = None) -> Host:
        """The host of a component: ``host_for('cc', 'secondary', cluster=1)``."""
        pair = self.pair(kind, cluster)
        name = pair.primary if member == "primary" else pair.secondary
        if name is None:
            raise KeyError(f"{pair.name} has no {member} (HA off for {kind})")
        return self.hosts[name]

    def slots_of(self, nc: str) -> list[Host]:
        return sorted((h for h in self.hosts.values() if h.nc == nc), key=lambda h: h.slot or 0)

    def nc_port(self, slot: str) -> str | None:
        """Host tagging: the NC's own interface wired to VM slot ``slot`` (its tap); None
        where the slot sits on the NC's Open vSwitch bridge."""
        intf = self.hosts[slot].interfaces[0]
        peer = self.hosts.get(intf.peer)
        if peer is None:
            return None
        return next(i.name for i in peer.interfaces if i.peer == slot)

    def endpoints(self) -> dict:
        """Service URLs through their virtual IPs, as written to endpoints.json."""
        out: dict = {"clc": None, "walrus": None, "cc": {}, "sc": {}}
        for pair in self.pairs:
            if pair.kind == "clc":
                out["clc"] = f"http://{pair.vip}:{pair.port}/services/Eucalyptus"
            elif pair.kind == "walrus":
                out["walrus"] = f"http://{pair.vip}:{pair.port}/services/Walrus"
            else:
                out[pair.kind][f"cluster{pair.cluster}"] = f"http://{pair.vip}:{pair.port}"
        return out

    def controller_topology(self) -> dict:
        """What the SDN controller owns, as it reads it from ``RUN/topology.json``
        (controllers/topology.py): the mode, every switch's ports, the HA pairs and how
        their VIPs move."""
        return {"mode": self.spec.mode.value, "switches": self.switch_ports(),
                "pairs": [asdict(p) for p in self.pairs], "takeover": self.spec.ha.takeover}

    def switch_ports(self) -> dict:
        """Per switch: datapath id and every port with what sits behind it.

        The SDN controller reads this (as topology.json) to know which OpenFlow port
        leads to which VM slot, NC, CC or trunk. Switch port ``X-ethN`` is OpenFlow
        port N+1 (the builder requests it).
        """
        out = {name: {"dpid": sw.dpid, "network": sw.network, "tier": sw.tier, "ports": {}}
               for name, sw in self.switches.items()}
        for link in self.links:
            for (node, intf), (peer, peer_intf) in (((link.a, link.a_intf), (link.b, link.b_intf)),
                                                    ((link.b, link.b_intf), (link.a, link.a_intf))):
                if node not in self.switches:
                    continue
                entry = {"name": intf, "peer": peer, "peer_intf": peer_intf}
                if peer in self.switches:
                    # A link to another network's switch (an EDGE NC bridge's uplink) is no
                    # trunk of either network: the controller's flows decide what crosses it.
                    same = self.switches[peer].network == self.switches[node].network
                    entry["kind"] = "trunk" if same else "uplink"
                else:
                    host = self.hosts[peer]
                    entry["kind"] = host.role
                    entry["mac"] = host.intf(link.network).mac
                    ip = host.intf(link.network).ip
                    entry["ip"] = ip.split("/")[0] if ip else None
                    if host.role == "slot":
                        entry["nc"], entry["slot"] = host.nc, host.slot
                    if host.ha_role:
                        entry["ha_role"] = host.ha_role
                    if host.cluster is not None:
                        entry["cluster"] = host.cluster
                out[node]["ports"][str(int(intf.rsplit("eth", 1)[1]) + 1)] = entry
        return out

    def graph(self) -> nx.Graph:
        """Hosts and switches as nodes, links as edges (attributes carry the plan)."""
        g = nx.Graph()
        for h in self.hosts.values():
            g.add_node(h.name, kind="host", role=h.role, cluster=h.cluster, ha_role=h.ha_role)
        for s in self.switches.values():
            g.add_node(s.name, kind="switch", role=s.tier, network=s.network)
        for link in self.links:
            g.add_edge(link.a, link.b, network=link.network)
        return g

    def network_graph(self, network: str) -> nx.Graph:
        """The layer-2 segment of one network: its links and their end points."""
        g = nx.Graph()
        for link in self.links:
            if link.network == network:
                g.add_edge(link.a, link.b)
        return g


class _Macs:
    """Deterministic, locally administered MAC addresses."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        n = self.n
        return f"02:ec:00:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


class _Builder:
    def __init__(self, spec: DeploymentSpec, tag: str):
        self.plan = Plan(spec=spec, tag=tag)
        self.tag = tag
        self.macs = _Macs()
        self.dpid = 0
        self.ports: dict[str, int] = {}

    def network(self, name: str, kind: str, subnet, cluster=None, router=None) -> Network:
        net = Network(name, kind, str(subnet), cluster, router)
        self.plan.networks[name] = net
        return net

    def switch(self, name: str, network: str, tier: str) -> Switch:
        name = self.tag + name
        self.dpid += 1
        sw = Switch(name, network, f"{0xEC000000 + self.dpid:016x}", tier)
        self.plan.switches[name] = sw
        return sw

    def host(self, name: str, role: str, **kw) -> Host:
        host = Host(name, role, **kw)
        self.plan.hosts[name] = host
        return host

    def _port(self, node: str) -> str:
        n = self.ports.get(node, -1) + 1
        self.ports[node] = n
        return f"{node}-eth{n}"

    def attach(self, host: Host, switch: Switch, ip, prefix: int | None = None) -> Interface:
        """A host link: host interface (addressed) to a switch port."""
        a_intf = self._port(host.name)
        b_intf = self._port(switch.name)
        addr = None if ip is None else f"{ip}/{prefix}"
        intf = Interface(a_intf, switch.network, addr, self.macs.next(), switch.name)
        host.interfaces.append(intf)
        self.plan.links.append(Link(host.name, switch.name, a_intf, b_intf, switch.network))
        return intf

    def trunk(self, a: Switch, b: Switch) -> None:
        """A link between two switches; ``a``'s network names it (an EDGE uplink joins an NC
        bridge to the cloud network: ``a`` is the cloud switch)."""
        self.plan.links.append(
            Link(a.name, b.name, self._port(a.name), self._port(b.name), a.network, shaped=False)
        )

    def wire(self, slot: Host, nc: Host, network: str) -> None:
        """A VM slot's link straight to its NC host (host tagging), unaddressed at both ends."""
        a_intf, b_intf = self._port(slot.name), self._port(nc.name)
        slot.interfaces.append(Interface(a_intf, network, None, self.macs.next(), nc.name))
        nc.interfaces.append(Interface(b_intf, network, None, self.macs.next(), slot.name))
        self.plan.links.append(Link(slot.name, nc.name, a_intf, b_intf, network))

    def p2p(self, a: Host, b: Host, network: Network, ip_a, ip_b, prefix: int) -> None:
        a_intf, b_intf = self._port(a.name), self._port(b.name)
        a.interfaces.append(Interface(a_intf, network.name, f"{ip_a}/{prefix}", self.macs.next(), b.name))
        b.interfaces.append(Interface(b_intf, network.name, f"{ip_b}/{prefix}", self.macs.next(), a.name))
        self.plan.links.append(Link(a.name, b.name, a_intf, b_intf, network.name))


def build_plan(spec: DeploymentSpec, tag: str = "") -> Plan:
    """Lay out hosts, switches, links and addresses for a validated spec.

    ``tag`` prefixes every switch name (and so every switch port name): bridges and
    their ports live in the root namespace, so two deployments on one machine need
    distinct names there. Host names and host interfaces live in each host's own
    namespace and need no tag.
    """
    spec.validate()
    if len(tag) > MAX_TAG or not all(c.isalnum() for c in tag):
        raise ValueError(f"a tag is at most {MAX_TAG} letters or digits, not {tag!r}")
    b = _Builder(spec, tag)
    plan = b.plan
    mode = spec.mode
    cloud_pfx = CLOUD_NET.prefixlen

    # Border gateway with the user network and the external site behind it.
    b.network("user", "user", USER_NET, router=str(USER_NET[1]))
    b.network("external", "external", EXTERNAL_NET, router=str(EXTERNAL_NET[1]))
    b.network("cloud", "cloud", CLOUD_NET, router=str(CLOUD_NET[1]))
    gw = b.host("gw", "gateway", forwarding=True)
    user = b.host("user", "user", default_route=str(USER_NET[1]))
    ext = b.host("ext", "external", default_route=str(EXTERNAL_NET[1]))
    sw_user = b.switch("swusr", "user", "core")
    sw_ext = b.switch("swext", "external", "core")
    b.attach(gw, sw_user, USER_NET[1], USER_NET.prefixlen)
    b.attach(user, sw_user, USER_NET[10], USER_NET.prefixlen)
    b.attach(gw, sw_ext, EXTERNAL_NET[1], EXTERNAL_NET.prefixlen)
    b.attach(ext, sw_ext, EXTERNAL_NET[10], EXTERNAL_NET.prefixlen)

    # Cloud network: a core switch under the gateway, two access switches below it.
    cloud_core = b.switch("swcl0", "cloud", "core")
    cloud_access = {"primary": b.switch("swcla", "cloud", "access"),
                    "secondary": b.switch("swclb", "cloud", "access")}
    b.attach(gw, cloud_core, CLOUD_NET[1], cloud_pfx)
    b.trunk(cloud_core, cloud_access["primary"])
    b.trunk(cloud_core, cloud_access["secondary"])

    def members(kind: str, base: str) -> list[tuple[str, str]]:
        if spec.ha.enabled(kind):
            return [(f"{base}1", "primary"), (f"{base}2", "secondary")]
        return [(f"{base}1", "single")]

    def cloud_ip(cluster: int, last: int) -> ipaddress.IPv4Address:
        return ipaddress.ip_address(f"10.0.{cluster}.{last}")

    pair_index = 0

    def make_pair(kind: str, cluster: int | None, hosts: list[Host], vip: str,
                  private_vip: str | None = None) -> ServicePair:
        nonlocal pair_index
        pair = ServicePair(kind, cluster, hosts[0].name, hosts[1].name if len(hosts) > 1 else None,
                           PORTS[kind], vip, private_vip)
        if len(hosts) > 1:
            pair_index += 1
            hb = b.network(f"hb{pair_index}", "heartbeat", heartbeat_net(pair_index))
            b.p2p(hosts[0], hosts[1], hb, heartbeat_net(pair_index)[1], heartbeat_net(pair_index)[2],
                  heartbeat_net(pair_index).prefixlen)
            pair.heartbeat_network = hb.name
        plan.pairs.append(pair)
        return pair

    # Cloud tier: CLC (x1) and Walrus (x2) in 10.0.0.0/24.
    for kind, base, tens in (("clc", "clc", 10), ("walrus", "walrus", 20)):
        hosts = []
        for i, (name, ha_role) in enumerate(members(kind, base), start=1):
            h = b.host(name, kind, ha_role=ha_role, default_route=str(CLOUD_NET[1]))
            access = cloud_access["secondary" if ha_role == "secondary" else "primary"]
            b.attach(h, access, cloud_ip(0, tens + i), cloud_pfx)
            hosts.append(h)
        make_pair(kind, None, hosts, str(cloud_ip(0, tens)))

    # Cluster tier and node tier.
    for k in range(1, spec.clusters + 1):
        pnet = private_net(k)
        router = str(pnet[1])
        b.network(f"priv{k}", "private", pnet, cluster=k, router=router)
        core = b.switch(f"swc{k}", f"priv{k}", "core")
        access = {"primary": b.switch(f"swc{k}a", f"priv{k}", "access"),
                  "secondary": b.switch(f"swc{k}b", f"priv{k}", "access")}
        b.trunk(core, access["primary"])
        b.trunk(core, access["secondary"])
        if not mode.private_cluster_network:
            # SYSTEM/STATIC: the site router serves the cluster network directly.
            b.attach(gw, core, router, pnet.prefixlen)
        for kind, base, tens in (("cc", f"c{k}cc", 10), ("sc", f"c{k}sc", 20)):
            hosts = []
            for i, (name, ha_role) in enumerate(members(kind, base), start=1):
                h = b.host(name, kind, cluster=k, ha_role=ha_role, default_route=str(CLOUD_NET[1]))
                side = "secondary" if ha_role == "secondary" else "primary"
                b.attach(h, cloud_access[side], cloud_ip(k, tens + i), cloud_pfx)
                b.attach(h, access[side], pnet[tens + i], pnet.prefixlen)
                if kind == "cc" and mode.private_cluster_network:
                    h.forwarding = True  # the CC is the cluster's software router
                hosts.append(h)
            private_vip = router if kind == "cc" and mode.private_cluster_network else None
            make_pair(kind, k, hosts, str(cloud_ip(k, tens)), private_vip)
        for j in range(1, spec.ncs_per_cluster + 1):
            nc = b.host(f"c{k}n{j}", "nc", cluster=k, default_route=router)
            bridge = b.switch(f"br{k}n{j}", f"priv{k}", "ncbridge")
            b.trunk(core, bridge)
            b.attach(nc, bridge, ipaddress.ip_address(f"10.{100 + k}.1.{j}"), pnet.prefixlen)
            if mode.nc_enforced:
                # EDGE: the NC's public side (Eucalyptus's EDGE NCs had one), for the elastic
                # IPs of its instances; only what the controller's flows admit crosses it.
                b.trunk(cloud_access["primary"], bridge)
            for s in range(1, spec.vm_slots_per_nc + 1):
                slot = b.host(f"c{k}n{j}v{s}", "slot", cluster=k, nc=nc.name, slot=s)
                if spec.vlan_tagging == "host":
                    # As a VM's tap: an interface of the NC, which bridges it into the
                    # Linux bridge of the instance's VLAN when the instance boots.
                    b.wire(slot, nc, f"priv{k}")
                else:
                    b.attach(slot, bridge, None)

    # Routes towards the private networks: in MANAGED modes via the cluster's CC.
    if mode.private_cluster_network:
        cloud_routes = [(str(private_net(p.cluster)), p.vip) for p in plan.pairs if p.kind == "cc"]
        for h in plan.hosts.values():
            if h.role in ("clc", "walrus", "sc"):
                h.routes.extend(r for r in cloud_routes
                                if not (h.role == "sc" and r[0] == str(private_net(h.cluster))))
    # The gateway knows only its connected networks: in MANAGED modes users cannot
    # reach a cluster's private network at all.

    # Arbitrators: per HA host, cycling over the targets.
    targets = {"gateway": str(CLOUD_NET[1]), "external": str(EXTERNAL_NET[10])}
    assert set(targets) == set(ARBITRATOR_TARGETS)
    for pair in plan.pairs:
        if pair.secondary is None:
            continue
        for host in pair.members:
            for i in range(spec.arbitrators.per_host):
                target = spec.arbitrators.targets[i % len(spec.arbitrators.targets)]
                plan.arbitrators.append(Arbitrator(f"{host}-arb{i + 1}", host, target, targets[target]))
    too_long = [n for l in plan.links for n in (l.a_intf, l.b_intf) if len(n) > IFNAMSIZ - 1]
    if too_long:
        raise ValueError(f"interface names longer than {IFNAMSIZ - 1} characters: {too_long[:3]}")
    return plan
