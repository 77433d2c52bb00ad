"""Takeover sdn without OVS or root: the spec field, the VIP flows in a fake flow table,
the redirect's epoch rule over the API socket, and the HA agent's side of it."""

from __future__ import annotations

import asyncio

import pytest

from components.common import ha_net
from components.common.ha import HAAgent
from components.common.ha_config import HAConfig
from components.common.states import ServiceState
from controllers.api import IntentAPI, serve
from tests.support.fakeoftable import FakeFabric
from controllers.flows import compute_flows, vip_flows
from controllers.intent import IntentError, IntentStore, StaleEpoch
from controllers.topology import Topology
from controllers.vips import VipStore, virtual_mac
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, HASpec, SpecError, spec_from_dict

from tests.support.processes import HA_SECRET

from .test_ha_agent import events, make_agent
from .test_sdn_intent import request

VIP = "10.0.0.10"
VMAC = "02:ee:0a:00:00:0a"
BCAST = "ff:ff:ff:ff:ff:ff"


def topology(takeover: str = "sdn") -> Topology:
    spec = DeploymentSpec(name="t", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=1,
                          ha=HASpec(takeover=takeover))
    return Topology.from_dict(build_plan(spec).controller_topology())


@pytest.fixture(scope="module")
def topo():
    return topology()


def port(topo, host):
    return topo.host_port(host, "cloud")


def arp_request(topo, host, tpa, spa=None, eth_dst=BCAST):
    hp = port(topo, host)
    return {"eth_src": hp.mac, "eth_dst": eth_dst, "eth_type": 0x0806, "arp_op": 1, "arp_sha": hp.mac,
            "arp_spa": spa or hp.ip, "arp_tha": "00:00:00:00:00:00", "arp_tpa": tpa}


def to_vip(topo, host, mac=VMAC):
    hp = port(topo, host)
    return {"eth_src": hp.mac, "eth_dst": mac, "eth_type": 0x0800, "ipv4_src": hp.ip, "ipv4_dst": VIP}


def deliveries(fabric, host, pkt):
    return {d.host: dict(d.packet) for d in fabric.send(host, pkt, "cloud")}


# -- the spec ------------------------------------------------------------------------------

def test_takeover_defaults_to_garp_and_accepts_sdn():
    assert DeploymentSpec().ha.takeover == "garp"
    assert spec_from_dict({"ha": {"takeover": "sdn"}}).ha.takeover == "sdn"


def test_an_unknown_takeover_method_names_the_field():
    with pytest.raises(SpecError) as err:
        spec_from_dict({"ha": {"takeover": "vrrp"}})
    assert err.value.field_path == "ha.takeover" and "garp" in str(err.value) and "sdn" in str(err.value)


# -- the virtual MAC and the flows -----------------------------------------------------------

def test_the_virtual_mac_is_locally_administered_unicast_and_per_pair(topo):
    first = int(VMAC[:2], 16)
    assert virtual_mac(VIP) == VMAC and first & 0x02 and not first & 0x01
    macs = {virtual_mac(p["vip"]) for p in topo.redirected_pairs().values()}
    assert sorted(topo.redirected_pairs()) == ["cc1", "clc", "sc1", "walrus"] and len(macs) == 4
    assert not macs & {hp.mac for hp in topo.host_ports()}


def test_garp_takeover_adds_no_flow():
    topo = topology("garp")
    assert vip_flows(topo, {"clc": {"pair": "clc", "epoch": 1, "primary": "clc1"}}) == {}
    flows = compute_flows(topo, {}, {})
    assert all(len(f) == 1 for s, f in flows.items() if topo.network_of(s) == "cloud")


def test_the_switch_answers_arp_for_the_vip_with_the_virtual_mac_whoever_is_primary(topo):
    gw = port(topo, "gw")
    answers = []
    for vips in ({}, {"clc": {"pair": "clc", "epoch": 2, "primary": "clc1"}},
                 {"clc": {"pair": "clc", "epoch": 3, "primary": "clc2"}}):
        fabric = FakeFabric(topo, compute_flows(topo, {}, vips))
        got = deliveries(fabric, "gw", arp_request(topo, "gw", VIP))
        assert set(got) == {"gw"}  # answered at the switch: no member sees the request
        answers.append(got["gw"])
    assert answers[0] == answers[1] == answers[2]  # a takeover changes nobody's ARP cache
    reply = answers[0]
    assert (reply["arp_op"], reply["arp_sha"], reply["arp_spa"]) == (2, VMAC, VIP)
    assert (reply["eth_src"], reply["eth_dst"], reply["arp_tha"], reply["arp_tpa"]) == (VMAC, gw.mac, gw.mac, gw.ip)
    # A unicast probe of a stale entry (sent to the virtual MAC) is answered the same way.
    assert deliveries(fabric, "gw", arp_request(topo, "gw", VIP, eth_dst=VMAC)) == {"gw": reply}


def test_frames_for_the_virtual_mac_reach_the_current_primary_only_with_its_own_mac(topo):
    nobody = FakeFabric(topo, compute_flows(topo, {}, {}))
    assert deliveries(nobody, "gw", to_vip(topo, "gw")) == {}  # no primary named yet: dropped
    for primary, other in (("clc1", "clc2"), ("clc2", "clc1")):
        fabric = FakeFabric(topo, compute_flows(topo, {}, {"clc": {"pair": "clc", "epoch": 2, "primary": primary}}))
        for sender in ("gw", "walrus1", "walrus2"):  # from the core, and from both access switches
            got = deliveries(fabric, sender, to_vip(topo, sender))
            assert set(got) == {primary}, (sender, got)
            assert got[primary]["eth_dst"] == port(topo, primary).mac and not got[primary]["vlans"]
        # Everything else keeps the switches' own forwarding.
        assert other in deliveries(fabric, "gw", to_vip(topo, "gw", mac=port(topo, other).mac))


def test_only_the_primarys_arp_speaks_for_the_vip_and_with_the_virtual_mac(topo):
    fabric = FakeFabric(topo, compute_flows(topo, {}, {"clc": {"pair": "clc", "epoch": 3, "primary": "clc2"}}))
    # The primary resolving the gateway from the VIP (Linux's default source choice).
    got = deliveries(fabric, "clc2", arp_request(topo, "clc2", "10.0.0.1", spa=VIP))
    assert got["gw"]["eth_src"] == VMAC and got["gw"]["arp_sha"] == VMAC
    # A resumed ex-primary still holding the VIP: neither its ARP nor its gratuitous ARP
    # reaches anyone else (the latter is answered back to it, like any request for the VIP).
    assert deliveries(fabric, "clc1", arp_request(topo, "clc1", "10.0.0.1", spa=VIP)) == {}
    assert set(deliveries(fabric, "clc1", arp_request(topo, "clc1", VIP, spa=VIP))) == {"clc1"}
    # Its ARP from its own address is untouched.
    assert deliveries(fabric, "clc1", arp_request(topo, "clc1", "10.0.0.1"))["gw"]["arp_sha"] == port(topo, "clc1").mac


# -- the redirect's epoch rule -------------------------------------------------------------

def test_redirects_are_validated_and_a_stale_epoch_is_refused(tmp_path, topo):
    store = VipStore(tmp_path, topo)
    assert store.put("clc", {"pair": "clc", "epoch": 3, "primary": "clc2"})[0]["primary"] == "clc2"
    store.put("clc", {"pair": "clc", "epoch": 3, "primary": "clc2"})  # the same epoch again
    with pytest.raises(StaleEpoch) as stale:
        store.put("clc", {"pair": "clc", "epoch": 2, "primary": "clc1"})
    assert stale.value.current == 3
    for pair, body, field in (("gw", {"pair": "gw", "epoch": 1, "primary": "gw"}, "redirect.pair"),
                              ("clc", {"pair": "clc", "epoch": 4, "primary": "walrus1"}, "redirect.primary"),
                              ("clc", {"pair": "clc", "epoch": -1, "primary": "clc1"}, "redirect.epoch"),
                              ("clc", {"pair": "clc", "epoch": 4, "primary": "clc1", "x": 1}, "redirect")):
        with pytest.raises(IntentError, match=field):
            store.put(pair, body)
    assert store.flush()
    assert VipStore(tmp_path, topo).snapshot()["clc"] == {"pair": "clc", "epoch": 3, "primary": "clc2"}
    with pytest.raises(IntentError, match="takeover is not sdn"):
        VipStore(tmp_path / "x", topology("garp")).put("clc", {"pair": "clc", "epoch": 1, "primary": "clc1"})


@pytest.fixture
def api(tmp_path, topo):
    applied = []
    vips = VipStore(tmp_path, topo)
    api = IntentAPI(IntentStore(tmp_path, topo), lambda new, prev: {}, vips=vips,
                    apply_redirect=lambda new, prev: applied.append((new, prev)) or {"installed": True})
    server = serve(tmp_path / "control.sock", api)
    api.applied = applied
    yield api, tmp_path
    server.shutdown()
    server.server_close()


def test_the_api_steers_a_vip_and_refuses_a_stale_epoch(api):
    a, path = api
    assert request(path, "GET", "/vips")[1]["pairs"]["clc"] == {"pair": "clc", "vip": VIP, "mac": VMAC,
                                                                "epoch": None, "primary": None}
    status, body = request(path, "PUT", "/vips/clc", {"pair": "clc", "epoch": 3, "primary": "clc2"})
    assert status == 200 and body["accepted"] and body["primary"] == "clc2" and body["installed"]
    assert request(path, "PUT", "/vips/clc", {"pair": "clc", "epoch": 2, "primary": "clc1"}) == \
        (409, {"error": "stale epoch", "current": 3})
    assert request(path, "PUT", "/vips/clc", {"pair": "clc", "epoch": 4, "primary": "ext"})[0] == 400
    assert request(path, "PUT", "/vips/clc", b"{")[0] == 400
    assert len(a.applied) == 1 and request(path, "GET", "/vips")[1]["pairs"]["clc"]["primary"] == "clc2"


def test_the_agents_client_speaks_the_api(api):
    a, path = api
    sock = str(path / "control.sock")
    assert asyncio.run(ha_net.redirect_vip(sock, "walrus", 5, "walrus2"))[0] == 200
    status, body = asyncio.run(ha_net.redirect_vip(sock, "walrus", 4, "walrus1"))
    assert (status, body["current"]) == (409, 5)
    with pytest.raises(OSError):
        asyncio.run(ha_net.redirect_vip(str(path / "missing.sock"), "walrus", 6, "walrus1"))


# -- the HA agent ------------------------------------------------------------------------------

def sdn_agent(tmp_path, answers):
    svc, agent = make_agent(tmp_path, arbitrators=0)
    cfg = {"host": "clc1", "role": "primary", "data_dir": str(tmp_path), "pair": {"name": "clc"},
           "ha": {"peer_addresses": ["10.254.1.2"], "listen": ["10.254.1.1"], "secret": HA_SECRET, "control_socket": str(tmp_path / "control.sock"),
                  "vips": [{"address": VIP, "prefix": 16, "interface": "clc1-eth0", "takeover": "sdn"}]}}
    calls = []

    async def redirect(epoch):
        calls.append(epoch)
        return answers.pop(0)

    agent2 = HAAgent(svc, cfg, run=agent._run_cmd, garp=lambda intf, ip: agent.garps.append((intf, ip)),
                     redirect=redirect)
    agent2.commands, agent2.garps, agent2.calls = agent.commands, agent.garps, calls
    agent2.hold_until = 0
    agent2.last_sent = agent.last_sent
    return svc, agent2


def promote(agent):
    async def go():
        await agent._decide("test")
        for _ in range(3):
            await asyncio.sleep(0)
    asyncio.run(go())


def test_an_sdn_vip_is_added_and_redirected_with_the_epoch_and_never_announced(tmp_path):
    svc, agent = sdn_agent(tmp_path, [(200, {"accepted": True, "installed": True, "flows_added": 1})])
    promote(agent)
    assert svc.state is ServiceState.ENABLED and agent.calls == [agent.epoch] == [2]
    assert any(c[:3] == ("ip", "addr", "replace") and f"{VIP}/16" in c for c in agent.commands)
    assert agent.garps == []
    assert "ha.vip_redirected" in events(tmp_path)


def test_a_refused_redirect_makes_the_member_step_down(tmp_path):
    svc, agent = sdn_agent(tmp_path, [(409, {"error": "stale epoch", "current": 7})])
    promote(agent)
    assert svc.state is ServiceState.DISABLED and agent.superseded == 7
    assert any(c[:3] == ("ip", "addr", "del") for c in agent.commands)
    assert {"ha.redirect_refused", "ha.demote"} <= set(events(tmp_path))


def test_an_sdn_vip_needs_the_control_socket():
    cfg = {"host": "clc1", "data_dir": "/tmp", "pair": {"name": "clc"},
           "ha": {"peer_addresses": ["10.254.1.2"], "listen": ["10.254.1.1"], "secret": HA_SECRET,
                  "vips": [{"address": VIP, "prefix": 16, "interface": "e0", "takeover": "sdn"}]}}
    with pytest.raises(ValueError, match="control_socket"):
        HAConfig.from_config(cfg)
