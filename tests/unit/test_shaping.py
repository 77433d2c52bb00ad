"""Which tc lines each shaped link gets, from the spec (no root, no network)."""

from __future__ import annotations

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
