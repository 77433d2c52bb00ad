"""The translation of a computed flow into os-ken's OpenFlow 1.3 instructions (controllers/oskit.py).

Imports os-ken (as the controller's process does): no switch is needed to build the messages.
"""

from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controllers.flow import OFPVID_PRESENT, TABLE_FORWARD, TABLE_INGRESS, Flow
from controllers.flows import compute_flows
from controllers.oskit import _instructions

from .test_sdn_flows import intent, topology


def test_every_action_a_flow_computation_makes_becomes_an_instruction():
    flow = Flow.make(TABLE_INGRESS, 20, {"in_port": 1},
                     [("push_vlan", 10), ("set_field", "eth_src", "02:00:00:00:00:01"), ("output", "in_port"),
                      ("goto", TABLE_FORWARD)])
    apply, goto = _instructions(ofp, parser, flow)
    push, vid, set_src, out = apply.actions
    assert isinstance(push, parser.OFPActionPushVlan) and vid.value == OFPVID_PRESENT | 10
    assert set_src.key == "eth_src" and out.port == ofp.OFPP_IN_PORT and goto.table_id == TABLE_FORWARD


def test_the_flows_of_a_managed_cluster_all_translate():
    topo = topology()
    flows = compute_flows(topo, {1: intent()})
    assert any(("push_vlan",) == a[:1] for fl in flows.values() for f in fl for a in f.actions)
    for fl in flows.values():
        for f in fl:
            _instructions(ofp, parser, f)
