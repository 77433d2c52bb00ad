"""The switches, ports and hosts the controller owns, read from ``<run_dir>/topology.json``.

The deployment writes the file from ``Plan.switch_ports()`` before it builds the
network; nothing here imports the plan itself, so the controller and its tests only
need that JSON. Pure: no sockets, no os-ken.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


# Port kinds that lead to another switch: a trunk inside one network, or an uplink to
# another network's switch (an EDGE NC bridge's to the cloud network).
SWITCH_LINKS = ("trunk", "uplink")


@dataclass(frozen=True)
class HostPort:
    """A host's interface on a switch port."""

    switch: str
    port: int
    host: str
    kind: str  # slot nc cc sc clc walrus gateway user external
    mac: str
    ip: str | None
    cluster: int | None = None
    nc: str | None = None  # VM slots only


@dataclass
class Topology:
    mode: str
    switches: dict[str, dict]  # name -> {"dpid", "network", "tier", "ports": {port: entry}}
    pairs: list[dict] = field(default_factory=list)
    takeover: str = "garp"  # how HA pairs' cloud VIPs move: garp (by the hosts) or sdn (here)

    @classmethod
    def load(cls, path: str | Path) -> "Topology":
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Topology":
        return cls(mode=data["mode"], switches=data["switches"], pairs=data.get("pairs", []),
                   takeover=data.get("takeover", "garp"))

    # -- lookups --------------------------------------------------------------------------

    def dpid(self, switch: str) -> int:
        return int(self.switches[switch]["dpid"], 16)

    def switch_by_dpid(self) -> dict[int, str]:
        return {self.dpid(name): name for name in self.switches}

    def network_of(self, switch: str) -> str:
        return self.switches[switch]["network"]

    def host_ports(self, network: str | None = None) -> list[HostPort]:
        out = []
        for name, sw in self.switches.items():
            if network is not None and sw["network"] != network:
                continue
            for port, e in sw["ports"].items():
                if e["kind"] not in SWITCH_LINKS:
                    out.append(HostPort(name, int(port), e["peer"], e["kind"], e["mac"], e.get("ip"),
                                        e.get("cluster"), e.get("nc")))
        return out

    def host_port(self, host: str, network: str) -> HostPort:
        for hp in self.host_ports(network):
            if hp.host == host:
                return hp
        raise KeyError(f"{host} has no port on {network}")

    def trunk_ports(self, switch: str) -> dict[int, str]:
        """OpenFlow port -> the switch at the other end."""
        return {int(p): e["peer"] for p, e in self.switches[switch]["ports"].items() if e["kind"] == "trunk"}

    def uplinks(self, switch: str) -> dict[int, str]:
        """OpenFlow port -> the other network's switch it leads to (EDGE NC bridges)."""
        return {int(p): e["peer"] for p, e in self.switches[switch]["ports"].items() if e["kind"] == "uplink"}

    def cc_members(self, cluster: int) -> list[str]:
        for p in self.pairs:
            if p["kind"] == "cc" and p["cluster"] == cluster:
                return [m for m in (p["primary"], p.get("secondary")) if m]
        return []

    def clusters(self) -> list[int]:
        return sorted({p["cluster"] for p in self.pairs if p["kind"] == "cc"})

    def pair(self, kind: str, cluster: int | None = None) -> dict | None:
        return next((p for p in self.pairs if p["kind"] == kind and p.get("cluster") == cluster), None)

    @staticmethod
    def pair_name(pair: dict) -> str:
        """``clc``, ``walrus``, ``cc1``, ``sc2``: the name HA agents use for their pair."""
        return pair["kind"] if pair.get("cluster") is None else f"{pair['kind']}{pair['cluster']}"

    def redirected_pairs(self) -> dict[str, dict]:
        """The HA pairs whose cloud VIP the controller steers (takeover sdn), by name."""
        if self.takeover != "sdn":
            return {}
        return {self.pair_name(p): p for p in self.pairs if p.get("secondary")}

    @staticmethod
    def private_network(cluster: int) -> str:
        return f"priv{cluster}"

    def switches_of(self, network: str) -> list[str]:
        return sorted(n for n, sw in self.switches.items() if sw["network"] == network)

    def next_hops(self, network: str) -> dict[str, dict[str, int]]:
        """For each switch of a network and each other switch: the port leading towards it.

        The trunks of one network form a tree in the plan; a breadth-first search from
        each switch over the trunks gives the unique path (and a spanning tree if a
        future plan adds redundant trunks).
        """
        names = self.switches_of(network)
        hops: dict[str, dict[str, int]] = {}
        for src in names:
            first: dict[str, int] = {}
            queue = deque()
            for port, peer in sorted(self.trunk_ports(src).items()):
                if peer not in first and peer != src:
                    first[peer] = port
                    queue.append(peer)
            seen = {src, *first}
            while queue:
                node = queue.popleft()
                for _, peer in sorted(self.trunk_ports(node).items()):
                    if peer not in seen:
                        seen.add(peer)
                        first[peer] = first[node]
                        queue.append(peer)
            hops[src] = first
        return hops

    def tree_edges(self, network: str) -> set[tuple[str, int]]:
        """(switch, trunk port) pairs that belong to the spanning tree used for flooding."""
        names = self.switches_of(network)
        if not names:
            return set()
        root = names[0]
        used: set[tuple[str, int]] = set()
        seen = {root}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for port, peer in sorted(self.trunk_ports(node).items()):
                if peer in seen:
                    continue
                seen.add(peer)
                used.add((node, port))
                back = next(p for p, q in sorted(self.trunk_ports(peer).items()) if q == node)
                used.add((peer, back))
                queue.append(peer)
        return used
