"""A fake OpenFlow fabric: where would this packet go, given these flows? (after Faucet's fakeoftable)

Packets are dicts with eth_src, eth_dst, eth_type, vlans (outermost first) and, for
IPv4, ipv4_src/ipv4_dst, for ARP arp_op/arp_sha/arp_spa/arp_tha/arp_tpa. ``FakeFabric.send`` injects
one at a host's switch port and follows it across trunks (patch ports) until it
reaches host ports or is dropped. NORMAL is modelled as flooding (every port but
the one it came in on), an over-approximation of MAC learning that is exact for
"could this frame ever reach that host".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from controllers.flow import OFPVID_NONE, OFPVID_PRESENT, Flow
from controllers.topology import SWITCH_LINKS, Topology


@dataclass(frozen=True)
class Delivery:
    host: str
    switch: str
    port: int
    packet: tuple  # sorted items of the packet as it left the port


def _mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def _field_value(pkt: dict, name: str):
    if name == "vlan_vid":
        return OFPVID_PRESENT | pkt["vlans"][0] if pkt.get("vlans") else OFPVID_NONE
    return pkt.get(name)


def _matches(flow: Flow, pkt: dict, in_port: int) -> bool:
    for name, want in flow.match:
        if name == "in_port":
            if in_port != want:
                return False
            continue
        have = _field_value(pkt, name)
        if have is None:
            return False
        if name in ("eth_src", "eth_dst", "arp_sha", "arp_tha"):
            have_i = _mac_int(have)
            value, mask = (want if isinstance(want, tuple) else (want, "ff:ff:ff:ff:ff:ff"))
            if have_i & _mac_int(mask) != _mac_int(value) & _mac_int(mask):
                return False
        elif name in ("ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"):
            have_i = int(ipaddress.ip_address(have))
            value, mask = (want if isinstance(want, tuple) else (want, "255.255.255.255"))
            m = int(ipaddress.ip_address(mask))
            if have_i & m != int(ipaddress.ip_address(value)) & m:
                return False
        elif isinstance(want, tuple):
            if have & want[1] != want[0] & want[1]:
                return False
        elif have != want:
            return False
    return True


class FakeFabric:
    """The switches of a topology, each with a flow table."""

    def __init__(self, topo: Topology, flows: dict[str, list[Flow]]):
        self.topo = topo
        self.tables = {s: sorted(f, key=lambda fl: -fl.priority) for s, f in flows.items()}

    def lookup(self, switch: str, table: int, pkt: dict, in_port: int) -> Flow | None:
        for flow in self.tables.get(switch, []):
            if flow.table == table and _matches(flow, pkt, in_port):
                return flow
        return None

    def send(self, host: str, pkt: dict, network: str | None = None) -> list[Delivery]:
        """Inject ``pkt`` from ``host``'s port; returns every host port it leaves by."""
        hps = [hp for hp in self.topo.host_ports(network) if hp.host == host]
        if len(hps) != 1:
            raise ValueError(f"{host} has {len(hps)} ports{'' if network else ' (name the network)'}")
        out: list[Delivery] = []
        self._process(hps[0].switch, hps[0].port, dict(pkt, vlans=list(pkt.get("vlans", []))), out, 0)
        return out

    def reached(self, host: str, pkt: dict, network: str | None = None) -> set[str]:
        """The hosts a packet reaches (untagged at their port: hosts see no tags)."""
        return {d.host for d in self.send(host, pkt, network) if not dict(d.packet).get("vlans")}

    def _process(self, switch: str, in_port: int, pkt: dict, out: list[Delivery], depth: int) -> None:
        if depth > 32:
            raise RuntimeError("forwarding loop")
        ports = self.topo.switches[switch]["ports"]
        table = 0
        while True:
            flow = self.lookup(switch, table, pkt, in_port)
            if flow is None:
                return
            goto = None
            for action in flow.actions:
                kind = action[0]
                if kind == "push_vlan":
                    pkt["vlans"].insert(0, action[1])
                elif kind == "pop_vlan":
                    pkt["vlans"].pop(0)
                elif kind == "set_field":
                    pkt[action[1]] = action[2]
                elif kind == "move":
                    pkt[action[2]] = pkt.get(action[1])
                elif kind == "output":
                    if action[1] == "in_port":
                        self._emit(switch, in_port, pkt, out, depth)
                    elif action[1] != in_port:
                        self._emit(switch, action[1], pkt, out, depth)
                elif kind == "normal":
                    for p in sorted(int(x) for x in ports):
                        if p != in_port:
                            self._emit(switch, p, pkt, out, depth)
                elif kind == "goto":
                    goto = action[1]
            if goto is None:
                return
            table = goto

    def _emit(self, switch: str, port: int, pkt: dict, out: list[Delivery], depth: int) -> None:
        entry = self.topo.switches[switch]["ports"][str(port)]
        copy = dict(pkt, vlans=list(pkt["vlans"]))
        if entry["kind"] in SWITCH_LINKS:
            peer_port = int(entry["peer_intf"].rsplit("eth", 1)[1]) + 1
            self._process(entry["peer"], peer_port, copy, out, depth + 1)
        else:
            out.append(Delivery(entry["peer"], switch, port,
                                tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                             for k, v in copy.items()))))
