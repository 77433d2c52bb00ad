"""Which server each host and switch of a plan runs on, for a deployment over machines.

A spec with more than one entry in ``servers`` spreads its deployment with Mininet's own
cluster support (``mininet.examples.cluster``, "Mininet Cluster Edition"): nodes carry a
``server``, and a link whose ends are on different servers becomes a tunnel between the
two machines. ``place(plan)`` is pure (no root, no Mininet, no ssh): it says where every
node goes and which links cross; ``topologies/cluster.py`` hands that to Mininet.

``placement: by-cluster`` (DeploymentSpec.server_index):

* the border gateway, the user's and the external site's hosts, the CLC and Walrus, and
  every switch of the user, external and cloud networks run on the first server
  (``localhost``, where the SDN controller runs too);
* cluster k (its CC, SC, NCs, VM slots and private switches) runs on ``servers[k mod S]``;
* with ``split_pairs``, each HA pair's secondary runs on the server after its
  primary's, so its heartbeat link and its links to the access switches cross.

Each crossing link gets a tunnel key of its own (1, 2, ...), in the plan's link order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import Link, Plan

# Tunnelled links carry an outer IPv4 and GRE (or VXLAN) header: 1500 on the wire
# between servers leaves 1450 for the emulated hosts' frames (as Mininet's RemoteGRELink sets).
TUNNEL_MTU = 1450


@dataclass
class Tunnel:
    """A link of the plan whose ends run on different servers."""

    link: Link
    key: int  # GRE key / VXLAN network identifier, unique in the deployment
    servers: tuple[str, str]  # of link.a, of link.b


@dataclass
class Placement:
    servers: list[str]
    server_of: dict[str, str] = field(default_factory=dict)  # host or switch name -> server
    tunnels: list[Tunnel] = field(default_factory=list)

    def on(self, server: str) -> list[str]:
        """The nodes placed on ``server``, in plan order."""
        return [name for name, where in self.server_of.items() if where == server]

    @property
    def distributed(self) -> bool:
        return len(self.servers) > 1


def place(plan: Plan) -> Placement:
    """Place every host and switch of ``plan`` on one of its spec's servers."""
    spec = plan.spec
    servers = spec.servers
    out = Placement(servers=list(servers))
    for host in plan.hosts.values():
        cluster = host.cluster
        if host.nc is not None:  # a VM slot goes where its NC is
            cluster = plan.hosts[host.nc].cluster
        out.server_of[host.name] = servers[spec.server_index(cluster, host.ha_role == "secondary")]
    for switch in plan.switches.values():
        network = plan.networks[switch.network]
        out.server_of[switch.name] = servers[spec.server_index(network.cluster)]
    for link in plan.links:
        ends = (out.server_of[link.a], out.server_of[link.b])
        if ends[0] != ends[1]:
            out.tunnels.append(Tunnel(link, len(out.tunnels) + 1, ends))
    return out
