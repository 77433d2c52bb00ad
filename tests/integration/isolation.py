"""The isolation checks and crafted-packet attacks every mode with isolation must withstand
(MANAGED's VLANs, tests/integration/test_sdn_managed.py; EDGE's NC bridges,
tests/integration/test_sdn_edge.py), written once.

Instances are intent dicts (``id``, ``mac``, ``ip``, ``slot``). Isolation is shown both
ways: a denied pair fails AND a capture on the far side sees none of its packets.
"""

from __future__ import annotations

import time

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from experiments.bench.sdn import capture, send_frames, tcp_answer
from experiments.testbed.deployment import Deployment


def icmp(src: dict, dst: dict, **over) -> bytes:
    """An ICMP echo frame from ``src`` to ``dst``; ``eth_src``/``ip_src`` forge the sender."""
    eth_src = over.pop("eth_src", src["mac"])
    ip_src = over.pop("ip_src", src["ip"])
    return bytes(Ether(src=eth_src, dst=dst["mac"]) / IP(src=ip_src, dst=dst["ip"]) / ICMP(id=0x4242))


def assert_denied(dep: Deployment, s: dict, d: dict, port: int, icmp_too: bool) -> None:
    """``s`` gets no TCP answer from ``d``'s ``port`` (and no ping answer with ``icmp_too``), and
    a capture on ``d`` sees none of ``s``'s packets."""
    with capture(dep, d["slot"], f"host {s['ip']} or ether host {s['mac']}", f"cap-{s['id']}-{d['id']}") as cap:
        assert tcp_answer(dep, s["slot"], d["ip"], port, timeout=0.5) == ""
        if icmp_too:
            assert "100% packet loss" in dep[s["slot"]].cmd(f"ping -c 3 -i 0.2 -W 1 {d['ip']}")
    assert cap["count"] == 0, cap["lines"]


def assert_attacks_fail(dep: Deployment, a1: dict, a2: dict, b1: dict, spoofed: dict, gw: str,
                        vlans: tuple[int, int]) -> None:
    """a1 and a2 share a group, b1 (on a1's NC) is in another: MAC and IP spoofing from a2, ARP
    poisoning of a1's gateway entry from a2 and from b1, frames tagged for ``vlans`` (single
    and double) and a broadcast from a1: none reaches its victim, a1 keeps its gateway's MAC.
    ``spoofed``: an instance whose address a2 forges."""
    dep[a1["slot"]].cmd(f"ping -c 1 -W 1 {gw}")  # a1 knows its gateway's MAC
    gw_mac = dep[a1["slot"]].cmd(f"ip neigh show {gw}").split("lladdr ")[1].split()[0]
    # Control: a correct frame from a2 reaches a1.
    with capture(dep, a1["slot"], "icmp", "cap-control") as cap:
        send_frames(dep, a2["slot"], [icmp(a2, a1)])
    assert cap["count"] > 0
    time.sleep(1.1)  # past the kernel's ARP locktime: a forged reply would be taken now
    with capture(dep, a1["slot"], f"ether src {a2['mac']} or ether src {b1['mac']}", "cap-spoof") as cap:
        send_frames(dep, a2["slot"], [
            icmp(a2, a1, eth_src=b1["mac"]),  # MAC spoof
            icmp(a2, a1, ip_src=spoofed["ip"]),  # IP spoof
            bytes(Ether(src=a2["mac"], dst=a1["mac"]) / ARP(op=2, hwsrc=a2["mac"], psrc=gw,
                                                              hwdst=a1["mac"], pdst=a1["ip"])),  # ARP poisoning
        ])
    assert cap["count"] == 0, cap["lines"]
    assert gw_mac in dep[a1["slot"]].cmd(f"ip neigh show {gw}")
    # ARP spoofing from another group (succeeds in MANAGED-NOVLAN: test_sdn_novlan.py).
    send_frames(dep, b1["slot"], [bytes(Ether(src=b1["mac"], dst=a1["mac"]) / ARP(
        op=2, hwsrc=b1["mac"], psrc=gw, hwdst=a1["mac"], pdst=a1["ip"]))])
    assert gw_mac in dep[a1["slot"]].cmd(f"ip neigh show {gw}")
    # VLAN hopping from a1 towards b1 (single and double tag) and a broadcast b1 must not see.
    outer, inner = vlans
    with capture(dep, b1["slot"], "", "cap-hop") as cap:
        send_frames(dep, a1["slot"], [
            bytes(Ether(src=a1["mac"], dst=b1["mac"]) / Dot1Q(vlan=inner) / IP(src=a1["ip"], dst=b1["ip"]) / ICMP()),
            bytes(Ether(src=a1["mac"], dst=b1["mac"]) / Dot1Q(vlan=outer) / Dot1Q(vlan=inner)
                  / IP(src=a1["ip"], dst=b1["ip"]) / ICMP()),
            bytes(Ether(src=a1["mac"], dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=a1["mac"], psrc=a1["ip"],
                                                                       pdst=a2["ip"])),  # broadcast
        ])
    assert not [line for line in cap["lines"] if a1["mac"] in line], cap["lines"]


def assert_broadcast_stays_inside_the_group(dep: Deployment, a1: dict, a2: dict, b1: dict,
                                            bridge_answers: bool = False) -> None:
    """a1's ARP broadcast for a2 is answered and never reaches b1 (another group, on a1's NC).
    It reaches a2 (MANAGED: the group's VLAN), or a1's NC bridge answers it (EDGE)."""
    with capture(dep, b1["slot"], "arp or ether broadcast", "cap-bcast-b1") as other, \
            capture(dep, a2["slot"], "arp", "cap-bcast-a2") as same:
        out = dep[a1["slot"]].cmd(f"arping -c 2 -w 1 -I {dep.plan.hosts[a1['slot']].interfaces[0].name} {a2['ip']}")
    assert f"reply from {a2['ip']} [{a2['mac'].upper()}]" in out, out
    if not bridge_answers:
        assert same["count"] > 0
    assert not [line for line in other["lines"] if a1["mac"] in line], other["lines"]
