"""EDGE mode on a real network: the groups enforced on each NC's bridge, no CC in the path.

One deployment for the module: 1 cluster, 2 NCs x 2 VM slots, a CC pair, the SDN
controller, the cluster network routed by the site's gateway. MANAGED's three groups
(tests/integration/test_sdn_managed.py), on EDGE's flat range:

  a  a1 c1n1v1 10.101.2.2, a2 c1n2v1 10.101.2.3   admits icmp from anywhere
  b  b1 c1n1v2 10.101.2.4                         admits tcp 8080-8090 from group a
  c  c1 c1n2v2 10.101.2.5 (10.0.128.5)            admits tcp 80 from anywhere

a1 and b1 share an NC bridge and a subnet: only the bridge's flows keep them apart (and
the bridges answer ARP about instances themselves: no instance receives another's). The
isolation checks and crafted-packet attacks are MANAGED's (tests/integration/isolation.py).
The metadata service through the NC and the API's side are test_modes.py's; a CC host
failure with HTTP to an elastic IP is test_experiment.py's EDGE trial set.
"""

from __future__ import annotations

import ipaddress

import pytest

from experiments.bench.sdn import boot, capture, intent_request, put_intent, sdn_spec, start_listener, tcp_answer
from experiments.testbed.deployment import Deployment
from topologies.spec import NetworkMode

from .isolation import assert_attacks_fail, assert_broadcast_stays_inside_the_group, assert_denied

MODE = NetworkMode.EDGE
ROUTER = "10.101.0.1"  # the site gateway
USER = "198.51.100.10"


def group(gid: str, rules: list[dict]) -> dict:
    return {"id": gid, "name": gid[3:], "account": "123456789012", "vlan": None, "subnet": "10.101.0.0/16",
            "gateway": ROUTER, "rules": rules}


def instance(iid: str, last: int, slot: str, g: dict, public_ip: str | None = None) -> dict:
    ip = f"10.101.2.{last}"
    return {"id": iid, "mac": "d0:0d:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed), "ip": ip,
            "nc": slot.rsplit("v", 1)[0], "slot": slot, "group": g["id"], "public_ip": public_ip}


GA = group("sg-a", [{"protocol": "icmp", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0"}])
GB = group("sg-b", [{"protocol": "tcp", "from_port": 8080, "to_port": 8090, "source_group": "sg-a"}])
GC = group("sg-c", [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "0.0.0.0/0"}])
A1 = instance("i-a1", 2, "c1n1v1", GA)
A2 = instance("i-a2", 3, "c1n2v1", GA)
B1 = instance("i-b1", 4, "c1n1v2", GB)
C1 = instance("i-c1", 5, "c1n2v2", GC, public_ip="10.0.128.5")
GROUPS = {"sg-a": GA, "sg-b": GB, "sg-c": GC}
INSTANCES = {"a1": A1, "a2": A2, "b1": B1, "c1": C1}


def cluster_intent(epoch: int = 1, primary: str = "c1cc1") -> dict:
    return {"cluster": 1, "epoch": epoch, "mode": MODE.value, "primary_cc": primary,
            "groups": [GA, GB, GC], "instances": [A1, A2, B1, C1]}


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with Deployment(sdn_spec(MODE, name="test-sdn-edge"), run_dir=tmp_path_factory.mktemp("sdn-edge"),
                    sdn=True) as d:
        for inst in INSTANCES.values():
            boot(d, inst, GROUPS[inst["group"]])
        status, answer = put_intent(d, cluster_intent())
        assert status == 200 and answer["installed"], answer
        for name, inst in INSTANCES.items():
            start_listener(d, inst["slot"], 8080, f"l8080-{name}", reply=name)
        start_listener(d, C1["slot"], 80, "l80-c1", reply="c1")
        yield d


def test_allowed_pairs_answer_on_the_segment_without_a_cc(dep):
    assert tcp_answer(dep, A1["slot"], A2["ip"], 8080) == "a2"  # same group, across NCs
    assert tcp_answer(dep, A2["slot"], A1["ip"], 8080) == "a1"
    assert tcp_answer(dep, A1["slot"], B1["ip"], 8080) == "b1"  # b admits group a, same NC
    assert "0% packet loss" in dep[B1["slot"]].cmd(f"ping -c 2 -i 0.2 -W 1 {A1['ip']}")
    for cc in ("c1cc1", "c1cc2"):  # no CC routes anything: no router table, no gateway address
        assert "eucalab" not in dep[cc].cmd("nft list tables")
        assert f"{ROUTER}/" not in dep[cc].cmd("ip -o addr")


@pytest.mark.parametrize("src,dst,port", [("b1", "a1", 8080), ("c1", "a1", 8080), ("a1", "c1", 8080),
                                           ("c1", "b1", 8080)])
def test_denied_pairs_see_nothing(dep, src, dst, port):
    assert_denied(dep, INSTANCES[src], INSTANCES[dst], port, icmp_too=dst != "a1")  # a admits ICMP from anywhere


def test_attacks_fail(dep):
    assert_attacks_fail(dep, A1, A2, B1, C1, ROUTER, vlans=(10, 11))


def test_broadcast_stays_inside_the_group(dep):
    assert_broadcast_stays_inside_the_group(dep, A1, A2, B1, bridge_answers=True)


def test_the_clusters_infrastructure_on_the_segment_is_out_of_reach(dep):
    """The SC shares the instances' segment in EDGE: no frame of an instance reaches it."""
    sc = dep.plan.hosts["c1sc1"]
    start_listener(dep, "c1sc1", 3260, "l3260-sc", reply="sc")
    with capture(dep, "c1sc1", f"ether host {A1['mac']}", "cap-sc", intf=sc.intf("priv1").name) as cap:
        assert tcp_answer(dep, A1["slot"], sc.ip_on("priv1"), 3260, timeout=0.5) == ""
        assert tcp_answer(dep, A1["slot"], "10.101.1.2", 8775, timeout=0.5) == ""  # an NC's API
    assert cap["count"] == 0, cap["lines"]
    assert tcp_answer(dep, "c1n1", sc.ip_on("priv1"), 3260) == "sc"  # the NCs still reach it


def test_elastic_ip_reaches_the_instance_from_the_user_host(dep):
    assert tcp_answer(dep, "user", C1["public_ip"], 80) == "c1"
    assert tcp_answer(dep, "user", C1["public_ip"], 8080, timeout=0.5) == ""  # not admitted by group c
    assert tcp_answer(dep, "user", C1["ip"], 80, timeout=0.5) == ""  # the site admits no private address
    for host in ("c1cc1", "c1cc2", "c1n2"):  # translated by the bridge: no host holds the address
        assert C1["public_ip"] not in dep[host].cmd("ip -o addr")


def test_the_instance_speaks_as_its_elastic_ip_beyond_the_cloud(dep):
    start_listener(dep, "user", 9000, "l9000-user", reply="$SOCAT_PEERADDR")
    assert tcp_answer(dep, C1["slot"], USER, 9000) == C1["public_ip"]
    assert tcp_answer(dep, A1["slot"], USER, 9000) == A1["ip"]  # no elastic IP: its own address, routed


def test_a_new_primary_cc_changes_no_flow(dep):
    status, answer = put_intent(dep, cluster_intent(epoch=2, primary="c1cc2"))
    assert status == 200 and answer["installed"], answer
    assert answer["flows_added"] == 0 and answer["flows_removed"] == 0, answer
    assert tcp_answer(dep, "user", C1["public_ip"], 80) == "c1"
    status, answer = put_intent(dep, cluster_intent(epoch=1, primary="c1cc1"))  # the stale ex-primary
    assert status == 409
    status, body = intent_request(dep, "GET", "/intent")
    assert body["clusters"]["1"]["primary_cc"] == "c1cc2"
