"""Operator transitions of an HA member (Eucalyptus's ModifyService): the planned switchover,
maintenance (STOPPED), and refusals that change nothing; without a network."""

from __future__ import annotations

import asyncio
import json

import pytest

from components.common import ha as ha_mod
from components.common import ha_net
from components.common.ha import vips as ha_vips
from components.common.ha import TransitionError
from components.common.states import ServiceState

from tests.support.util import until
from .test_ha_agent import decide, events, heartbeat, make_agent, run_in_loop

ENABLED, DISABLED, STOPPED = ServiceState.ENABLED, ServiceState.DISABLED, ServiceState.STOPPED


class Wire:
    """A transport that keeps every heartbeat the agent sends, opened."""

    def __init__(self, agent):
        self.agent, self.sent = agent, []

    def sendto(self, data, addr):
        self.sent.append(json.loads(ha_mod.unseal(self.agent.secret, data)))


def primary_with_standby(tmp_path, **kw):
    svc, agent = make_agent(tmp_path, state="ENABLED", **kw)
    agent.epoch = 2
    agent.handover_drain_s = 0.02
    agent._transport = wire = Wire(agent)
    return svc, agent, wire


def test_a_planned_switchover_offers_the_pair_keeps_the_vip_until_the_peer_took_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ha_vips, "GARP_SCHEDULE_S", (0.0,))  # where the VIPs are announced
    svc, agent, wire = primary_with_standby(tmp_path)

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2)
        assert agent.transition("DISABLED") == "DISABLE"  # a state name stands for its transition
        h = agent.handover
        await until(lambda: h.phase == "offered")
        assert svc.state is DISABLED
        assert wire.sent[-1]["handover"] and wire.sent[-1]["state"] == "DISABLED"
        assert not any(c[:3] == ("ip", "addr", "del") for c in agent.commands)  # the VIP is still here
        await agent._decide("tick")
        assert svc.state is DISABLED  # it never takes the pair back by election meanwhile
        heartbeat(agent, state="ENABLED", epoch=3)
        await until(lambda: h.settled.is_set())
        assert h.successor == "10.254.1.2"  # held requests go to the new primary
        await until(lambda: agent.handover is None)
        assert any(c[:3] == ("ip", "addr", "del") for c in agent.commands)

    asyncio.run(go())
    assert not agent.discard_pending  # its state is the pair's: nothing to drop and fetch again
    kinds = events(tmp_path)
    assert kinds.index("ha.handover_start") < kinds.index("ha.handover") < kinds.index("ha.demote")


def test_a_switchover_the_peer_does_not_take_is_undone(tmp_path):
    svc, agent, wire = primary_with_standby(tmp_path)
    agent.handover_timeout_s = 0.05

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2)
        agent.transition("DISABLE")
        await until(lambda: agent.handover is None)

    asyncio.run(go())
    assert svc.state is ENABLED and agent.epoch == 3 and agent.handover is None
    assert "ha.handover_aborted" in events(tmp_path)


def test_the_standby_takes_an_offered_pair_at_once_even_when_it_would_lose_the_election(tmp_path):
    svc, agent = make_agent(tmp_path, role="secondary")
    run_in_loop(lambda: heartbeat(agent, state="DISABLED", epoch=2, priority=5, handover=True))
    decide(agent)
    assert svc.state is ENABLED and agent.epoch == 3
    assert agent.peer.handover


def test_the_new_holder_passes_the_old_ones_connections_on_to_it_until_the_drain_ends(tmp_path):
    """Segments of connections the old holder accepted go on to it (its address on the VIP's
    network, not the heartbeat link's) from before the VIP is added here until the drain ends;
    a takeover after a failure diverts nothing (the peer is dead)."""
    svc, agent = make_agent(tmp_path, role="secondary")
    agent.handover_drain_s = 0.02

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2, priority=5, handover=True)
        await agent._decide("heartbeat")
        assert svc.state is ENABLED
        nft = [c for c in agent.commands if c[0] == "nft"]
        assert len(nft) == 1 and nft[0][1] == ha_net.divert_ruleset([("10.0.0.10", "10.0.0.12", "clc1-eth0")])
        vip = next(i for i, c in enumerate(agent.commands) if c[:3] == ("ip", "addr", "replace"))
        assert agent.commands.index(nft[0]) < vip
        await until(lambda: agent.commands[-1] == ("nft", ha_net.undivert_ruleset()))
        # Taken again before the first diversion ended (switchovers in a row): the first
        # one's end leaves the second in place.
        agent.handover_drain_s = 0.2
        await agent._divert_peer_connections()
        agent.handover_drain_s = 0.01
        await agent._divert_peer_connections()
        await asyncio.sleep(0.3)
        assert [c[1] == ha_net.undivert_ruleset() for c in agent.commands if c[0] == "nft"][-3:] == [False, False, True]

    asyncio.run(go())
    kinds = events(tmp_path)
    assert kinds.index("ha.divert") < kinds.index("ha.promote") and "ha.divert_end" in kinds

    svc, agent = make_agent(tmp_path / "failover", role="secondary")
    run_in_loop(lambda: heartbeat(agent, state="NOTREADY", epoch=2, priority=5))
    decide(agent)
    assert svc.state is ENABLED and not [c for c in agent.commands if c[0] == "nft"]


def test_the_diversion_matches_only_segments_of_connections_this_host_never_saw_open():
    text = ha_net.divert_ruleset([("10.0.0.10", "10.0.0.12", "clc1-eth0"), ("10.1.0.10", "10.1.0.12", "clc1-eth1")])
    assert text.startswith(ha_net.undivert_ruleset())  # replaces one a crash left behind
    rules = [line.strip() for line in text.splitlines() if "dup to" in line]
    assert rules == ['ip daddr 10.0.0.10 tcp flags & (syn | rst) == 0 ct state new dup to 10.0.0.12 device '
                     '"clc1-eth0" drop',
                     'ip daddr 10.1.0.10 tcp flags & (syn | rst) == 0 ct state new dup to 10.1.0.12 device '
                     '"clc1-eth1" drop']
    assert "hook prerouting priority mangle" in text  # after conntrack, before any NAT


def test_a_standby_behind_does_not_take_an_offered_pair(tmp_path):
    svc, agent = make_agent(tmp_path, role="secondary")
    agent.last_seq = lambda: 4
    run_in_loop(lambda: heartbeat(agent, state="DISABLED", epoch=2, last_seq=5, priority=5, handover=True))
    decide(agent)
    assert svc.state is DISABLED


@pytest.mark.parametrize("peer", [None, "NOTREADY", "STOPPED", "ENABLED"])
def test_disable_is_refused_when_the_peer_cannot_take_over(tmp_path, peer):
    svc, agent, wire = primary_with_standby(tmp_path)
    if peer:
        run_in_loop(lambda: heartbeat(agent, state=peer, epoch=1))
    with pytest.raises(TransitionError) as err:
        agent.transition("DISABLE")
    assert err.value.code == "IncorrectState"
    assert svc.state is ENABLED and agent.handover is None and wire.sent == []


@pytest.mark.parametrize("name", ["PROMOTE", "", "enable;rm"])
def test_an_unknown_transition_is_refused(tmp_path, name):
    svc, agent, wire = primary_with_standby(tmp_path)
    with pytest.raises(TransitionError) as err:
        agent.transition(name)
    assert err.value.code == "InvalidParameterValue" and svc.state is ENABLED


def test_enable_on_the_standby_of_an_enabled_peer_says_to_disable_the_peer(tmp_path):
    svc, agent = make_agent(tmp_path, role="secondary")
    run_in_loop(lambda: heartbeat(agent, state="ENABLED", epoch=2))
    with pytest.raises(TransitionError, match="DISABLE it"):
        agent.transition("ENABLE")
    assert svc.state is DISABLED


def test_a_stopped_member_never_takes_over_and_starts_again_as_a_standby(tmp_path):
    svc, agent = make_agent(tmp_path, role="secondary")
    agent._transport = wire = Wire(agent)
    run_in_loop(lambda: heartbeat(agent, state="ENABLED", epoch=2))
    agent.transition("STOP")
    assert svc.state is STOPPED and wire.sent[-1]["state"] == "STOPPED"
    agent.peer.heard -= 1.0  # the ENABLED peer dies during the maintenance
    decide(agent)
    assert svc.state is STOPPED  # no failover towards a member stopped on purpose
    with pytest.raises(TransitionError):
        agent.transition("ENABLE")
    agent.transition("START")
    assert svc.state is DISABLED and agent.hold_until > ha_mod._mono()  # listens before claiming anything


def test_a_member_still_forwarding_takes_the_pair_back_when_it_is_offered_again(tmp_path):
    """Two switchovers in a row: the old member still forwards (and holds its VIPs) when the
    new one hands the pair back; it takes it and serves again, with no handover left."""
    svc, agent, wire = primary_with_standby(tmp_path)
    agent.handover_drain_s = 5.0

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2)
        agent.transition("DISABLE")
        await until(lambda: agent.handover.phase == "offered")
        heartbeat(agent, state="ENABLED", epoch=3)
        await until(lambda: agent.handover.phase == "forwarding")
        assert svc.state is DISABLED
        heartbeat(agent, state="DISABLED", epoch=3, handover=True)
        await until(lambda: svc.state is ENABLED)
        assert agent.epoch == 4 and agent.handover is None
        await asyncio.sleep(0.01)

    asyncio.run(go())
    assert not any(c[:3] == ("ip", "addr", "del") for c in agent.commands)  # it kept the VIP throughout


def test_a_switchover_waits_one_arp_locktime_after_the_member_took_the_pair(tmp_path):
    """Neighbours ignore an ARP update within a second of the last change: a member that has
    just taken the pair serves on as usual, and hands it over only once that second passed."""
    svc, agent, wire = primary_with_standby(tmp_path)
    agent.promoted_at = ha_mod._mono()

    async def go():
        async def standby():  # the peer's heartbeats go on meanwhile
            while True:
                heartbeat(agent, state="DISABLED", epoch=2)
                await asyncio.sleep(0.04)

        beats = asyncio.ensure_future(standby())
        await asyncio.sleep(0)
        agent.transition("DISABLE")
        await asyncio.sleep(0.5)
        assert svc.state is ENABLED and agent.handover.phase == "waiting"
        assert not any(m.get("handover") for m in wire.sent)
        await until(lambda: agent.handover.phase == "offered", 2.0)
        assert svc.state is DISABLED
        beats.cancel()

    asyncio.run(go())


def test_a_peer_behind_is_waited_for_while_this_member_serves_and_never_given_the_pair(tmp_path):
    """Back from maintenance, the standby lacks writes: the switchover waits (serving as
    usual), and is undone without holding a request or leaving ENABLED if it stays behind."""
    svc, agent, wire = primary_with_standby(tmp_path)
    agent.handover_timeout_s = 0.2
    agent.last_seq = lambda: 9

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2, last_seq=4)
        h = agent.transition("DISABLE") and agent.handover
        await asyncio.sleep(0.1)
        assert h.phase == "waiting" and svc.state is ENABLED
        await until(lambda: agent.handover is None)
        assert h.settled.is_set() and h.successor is None

    asyncio.run(go())
    assert svc.state is ENABLED and agent.epoch == 2  # never left ENABLED: nothing to take back
    assert not any(m.get("handover") for m in wire.sent)
    assert "ha.handover_aborted" in events(tmp_path)


def test_a_switchover_waits_until_the_peer_is_ready_and_past_the_drain_it_may_still_be_in(tmp_path):
    """A peer not ready (a CC the SDN controller has not staged: it took the pair back within
    the previous switchover's drain and still routes) is accepted as a standby, and the
    switchover waits, serving as usual, until its heartbeat says it is ready; it may take the
    drain and a timeout, not the timeout alone."""
    svc, agent, wire = primary_with_standby(tmp_path)
    agent.handover_timeout_s, agent.handover_drain_s = 0.1, 0.3

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2, ready=False)
        h = agent.transition("DISABLE") and agent.handover
        await asyncio.sleep(0.2)  # past the timeout alone, within drain + timeout
        assert h.phase == "waiting" and svc.state is ENABLED
        assert not any(m.get("handover") for m in wire.sent)
        heartbeat(agent, state="DISABLED", epoch=2, ready=True)
        await until(lambda: h.phase == "offered")
        assert svc.state is DISABLED

    asyncio.run(go())


def test_a_member_says_in_its_heartbeat_whether_it_could_take_the_pair_at_once(tmp_path):
    # A clock that stands still: the peer heard below stays alive however long this process
    # waits between the heartbeat and the check (a loaded CI machine once took over 150 ms).
    svc, agent, wire = primary_with_standby(tmp_path, clock=lambda: 1000.0)
    staged = [False]
    agent.standby_ready = lambda: staged[0]
    agent.send_heartbeat()
    said = [m["ready"] for m in wire.sent]
    staged[0] = True
    agent.send_heartbeat()
    assert said and not any(said) and all(m["ready"] for m in wire.sent[len(said):])
    run_in_loop(lambda: heartbeat(agent, state="DISABLED", epoch=2, ready=False))
    assert not agent.peer.ready and agent.switchover._standby_ready(caught_up=False) \
        and not agent.switchover._standby_ready()


def test_stop_right_after_a_switchover_applies_once_the_forwarding_is_done(tmp_path):
    """DISABLE then STOP at once (maintenance of the old primary): the STOP is taken while the
    member still forwards, and it is STOPPED once its VIPs are gone."""
    svc, agent, wire = primary_with_standby(tmp_path)
    agent.handover_drain_s = 0.1

    async def go():
        heartbeat(agent, state="DISABLED", epoch=2)
        agent.transition("DISABLE")
        h = agent.handover
        await until(lambda: h.phase == "offered")
        heartbeat(agent, state="ENABLED", epoch=3)
        await until(lambda: h.phase == "forwarding")
        assert agent.transition("STOP") == "STOP" and svc.state is DISABLED
        with pytest.raises(TransitionError):
            agent.transition("ENABLE")  # anything else waits for the switchover to end
        await until(lambda: agent.handover is None)

    asyncio.run(go())
    assert svc.state is STOPPED and any(c[:3] == ("ip", "addr", "del") for c in agent.commands)
