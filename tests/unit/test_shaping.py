"""Which tc lines each shaped link gets, from the spec (no root, no network)."""

from __future__ import annotations

import pytest

from experiments.testbed.linkcheck import binomial_interval, parse_ping, qdisc_counts, round_trip_loss
from topologies.plan import build_plan
from topologies.shaping import expected_qdiscs, interface_commands, shape_commands
from topologies.spec import spec_from_dict


def test_shape_commands_put_netem_under_htb_with_jitter():
    cmds = shape_commands("h1-eth0", 10, 20, 1.5, jitter_ms=4)
    assert cmds[0] == "qdisc add dev h1-eth0 root handle 5: htb default 1"
    assert cmds[-1] == "qdisc add dev h1-eth0 parent 5:1 handle 10: netem delay 20ms 4ms loss 1.5%"
    assert expected_qdiscs(cmds) == ["htb", "netem"]
    assert shape_commands("x", None, None, None) == []
    assert expected_qdiscs(shape_commands("x", None, None, 3)) == ["netem"]


def test_overrides_shape_only_the_links_of_their_network():
    spec = spec_from_dict({"clusters": 1, "ncs_per_cluster": 1, "links": {"by_network": {
        "external": {"delay_ms": 20, "loss_pct": 2}, "heartbeat": {"loss_pct": 1}}}}, netem=True)
    plan = build_plan(spec)
    by_intf = {intf: cmds for _, intf, cmds in interface_commands(plan)}
    kinds = {plan.networks[l.network].kind for l in plan.links if l.a_intf in by_intf}
    assert kinds == {"external", "heartbeat"}
    ext = plan.hosts["ext"].interfaces[0].name
    assert by_intf[ext] == [f"qdisc add dev {ext} root handle 10: netem delay 20ms loss 2%"]
    hb = [cmds for intf, cmds in by_intf.items() if intf.startswith("clc1-")]
    assert hb == [[f"qdisc add dev {hb_intf} root handle 10: netem loss 1%"]
                  for hb_intf in [i for i in by_intf if i.startswith("clc1-")]]
    # Both ends of each shaped link: the switch or the peer gets the same parameters.
    assert len(by_intf) == 2 * len({(l.a, l.b) for l in plan.links if l.a_intf in by_intf})


def test_unshaped_spec_has_no_commands():
    assert interface_commands(build_plan(spec_from_dict({"clusters": 1}))) == []


PING = """PING 10.0.0.21 (10.0.0.21) 56(84) bytes of data.
64 bytes from 10.0.0.21: icmp_seq=1 ttl=64 time=41.6 ms
64 bytes from 10.0.0.21: icmp_seq=3 ttl=64 time=40.2 ms

--- 10.0.0.21 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms
rtt min/avg/max/mdev = 40.2/40.9/41.6/0.7 ms
"""


def test_parse_ping_keeps_every_round_trip():
    result = parse_ping(PING)
    assert (result.sent, result.received, result.rtts_ms) == (3, 2, [41.6, 40.2])
    assert abs(result.loss - 1 / 3) < 1e-9
    assert parse_ping("5 packets transmitted, 0 received, 100% packet loss").loss == 1.0
    with pytest.raises(ValueError):
        parse_ping("ping: connect: Network is unreachable")


def test_binomial_interval_and_round_trip_loss():
    low, high = binomial_interval(300, 0.19)
    assert low < 57 < high and 20 < low and high < 95
    assert binomial_interval(100, 0.0) == (0, 1)
    assert abs(round_trip_loss([10, 10]) - 0.19) < 1e-9
    assert round_trip_loss([]) == 0.0


# tc -s qdisc show, as a Mininet host's terminal returns it (CR LF).
TC_STATS = ("qdisc htb 5: root refcnt 2 r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000\r\n"
            " Sent 98000 bytes 1000 pkt (dropped 0, overlimits 0 requeues 0) \r\n"
            " backlog 0b 0p requeues 0\r\n"
            "qdisc netem 10: parent 5:1 limit 1000 loss 10%\r\n"
            " Sent 88200 bytes 900 pkt (dropped 100, overlimits 0 requeues 0) \r\n"
            " backlog 0b 0p requeues 0\r\n")


def test_qdisc_counts_reads_one_kind_of_queue():
    assert qdisc_counts(TC_STATS) == (900, 100)
    assert qdisc_counts(TC_STATS, "htb") == (1000, 0)
    assert qdisc_counts(TC_STATS + TC_STATS.replace("5:1", "6:1")) == (1800, 200)
    assert qdisc_counts("qdisc noqueue 0: root refcnt 2\n Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0)") == (0, 0)
