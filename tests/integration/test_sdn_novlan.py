"""MANAGED-NOVLAN on a real network: one subnet per group, no VLANs, isolation at layer 3 only.

The same groups, instances and rules as test_sdn_managed.py. The CC's FORWARD
rules still decide what crosses groups, but the segment is shared: an instance
sees another group's broadcasts and can ARP-spoof another group's instance, the
weakness Eucalyptus documented for this mode; the same attacks fail in MANAGED
(test_sdn_managed.py::test_attacks_fail).
"""

from __future__ import annotations

import time

import pytest
from scapy.layers.l2 import ARP, Ether

from experiments.bench.sdn import (apply_router, boot, capture, group, instance, put_intent, sdn_spec, send_frames,
                                   start_listener, tcp_answer)
from experiments.testbed.deployment import Deployment
from topologies.spec import NetworkMode

MODE = NetworkMode.MANAGED_NOVLAN
GA = group("sg-a", 0, MODE, [{"protocol": "icmp", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0"}])
GB = group("sg-b", 1, MODE, [{"protocol": "tcp", "from_port": 8080, "to_port": 8090, "source_group": "sg-a"}])
GC = group("sg-c", 2, MODE, [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "0.0.0.0/0"}])
A1 = instance("i-a1", GA, 1, "c1n1v1")
A2 = instance("i-a2", GA, 2, "c1n2v1")
B1 = instance("i-b1", GB, 1, "c1n1v2")
C1 = instance("i-c1", GC, 1, "c1n2v2", public_ip="10.0.128.5")
GROUPS = {"sg-a": GA, "sg-b": GB, "sg-c": GC}
INSTANCES = {"a1": A1, "a2": A2, "b1": B1, "c1": C1}


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with Deployment(sdn_spec(MODE, name="test-sdn-novlan"), run_dir=tmp_path_factory.mktemp("sdn-novlan"),
                    sdn=True) as d:
        for inst in INSTANCES.values():
            boot(d, inst, GROUPS[inst["group"]])
        intent = {"cluster": 1, "epoch": 1, "mode": MODE.value, "primary_cc": "c1cc1", "groups": [GA, GB, GC],
                  "instances": list(INSTANCES.values())}
        status, answer = put_intent(d, intent)
        assert status == 200, answer
        apply_router(d, intent)
        for name, inst in INSTANCES.items():
            start_listener(d, inst["slot"], 8080, f"l8080-{name}", reply=name)
        start_listener(d, C1["slot"], 80, "l80-c1", reply="c1")
        yield d


def test_group_rules_still_decide_what_crosses_groups(dep):
    assert tcp_answer(dep, A1["slot"], A2["ip"], 8080) == "a2"
    assert tcp_answer(dep, A1["slot"], B1["ip"], 8080) == "b1"
    with capture(dep, A1["slot"], f"host {B1['ip']} and tcp", "cap-b1-a1") as cap:
        assert tcp_answer(dep, B1["slot"], A1["ip"], 8080, timeout=0.5) == ""
    assert cap["count"] == 0, cap["lines"]
    assert tcp_answer(dep, "user", C1["public_ip"], 80) == "c1"


def test_another_groups_broadcasts_are_seen(dep):
    intf = dep.plan.hosts[A1["slot"]].interfaces[0].name
    with capture(dep, B1["slot"], "arp", "cap-sniff") as cap:
        dep[A1["slot"]].cmd(f"arping -c 2 -w 1 -I {intf} {A2['ip']}")
    assert [line for line in cap["lines"] if A1["mac"] in line], cap["lines"]


def test_another_groups_instance_can_be_arp_spoofed(dep):
    gw = GA["gateway"]
    a1 = dep[A1["slot"]]
    a1.cmd(f"ping -c 1 -W 1 {gw}")
    assert B1["mac"] not in a1.cmd(f"ip neigh show {gw}")
    time.sleep(1.1)  # past the ARP locktime
    forged = bytes(Ether(src=B1["mac"], dst=A1["mac"]) / ARP(op=2, hwsrc=B1["mac"], psrc=gw,
                                                             hwdst=A1["mac"], pdst=A1["ip"]))
    send_frames(dep, B1["slot"], [forged])
    assert B1["mac"] in a1.cmd(f"ip neigh show {gw}")  # a1's traffic to its gateway now goes to b1
