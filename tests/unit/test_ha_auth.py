"""The heartbeat channel against forged, replayed, garbled and misaddressed heartbeats.

Every one of these changed who serves before heartbeats were authenticated: the agent
took any JSON with the right pair name, from anywhere, at any epoch.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from components.common import ha as ha_mod
from components.common.ha import HAAgent, _mono
from components.common.events import read_events
from components.common.ha_config import HAConfig
from components.common.states import ServiceState

from tests.support.processes import HA_SECRET

from .test_ha_agent import FakeService, decide, make_agent, run_in_loop

PEER_HB, PEER_CLOUD = "10.254.1.2", "10.0.0.12"


def sealed(agent, key: bytes | None = None, **fields) -> bytes:
    """A heartbeat of the agent's peer (fields override), sealed with ``key`` (the pair's by default)."""
    msg = {"pair": "clc", "member": agent.cfg.peer, "epoch": 1, "state": "DISABLED", "seq": 1, "boot": 7,
           "t_mono": _mono(), "ack": [agent.boot, 0], "last_seq": 0, "priority": 0, "arb_ok": True,
           "fenced": False}
    msg.update(fields)
    return ha_mod.seal(agent.secret if key is None else key, json.dumps(msg).encode())


def deliver(agent, data: bytes, addr: str = PEER_HB) -> None:
    run_in_loop(lambda: agent.on_heartbeat(data, (addr, 7800)))


def view(agent) -> tuple:
    p = agent.peer
    return (p.boot, p.seq, p.state, p.epoch, p.last_seq, p.heard)


def test_seal_and_unseal_are_inverse_and_any_flipped_bit_is_refused():
    key = bytes.fromhex(HA_SECRET)
    data = ha_mod.seal(key, b'{"seq": 1}')
    assert ha_mod.unseal(key, data) == b'{"seq": 1}'
    for i in range(len(data)):
        garbled = bytearray(data)
        garbled[i] ^= 0x01
        assert ha_mod.unseal(key, bytes(garbled)) is None
    assert ha_mod.unseal(b"k" * 32, data) is None  # another pair's key
    assert ha_mod.unseal(key, data[:10]) is None and ha_mod.unseal(key, b"") is None


def test_the_issue_s_forged_heartbeat_changes_nothing(tmp_path):
    """Unsigned JSON claiming the peer is DISABLED at epoch 1000000 demoted the primary and
    raised the pair's epoch; now it is refused and counted."""
    svc, agent = make_agent(tmp_path, state="ENABLED")
    before = view(agent)
    forged = {"pair": "clc", "member": "clc2", "boot": 999, "seq": 5, "state": "ENABLED", "epoch": 1000000,
              "last_seq": 0}
    for raw in (json.dumps(forged).encode(), sealed(agent, key=b"\x00" * 32, epoch=1000000, state="ENABLED"),
                b"\xff" * 200, b""):
        deliver(agent, raw)
    decide(agent)
    assert svc.state is ServiceState.ENABLED and view(agent) == before and agent.epoch == 1
    assert agent.rejected == {"tag": 4}
    assert agent._next_epoch() == 2  # the forged epoch reserved nothing either


def test_a_heartbeat_from_an_address_outside_the_plan_is_refused_even_when_sealed(tmp_path):
    svc, agent = make_agent(tmp_path, state="DISABLED")
    deliver(agent, sealed(agent, state="NOTREADY"), addr="10.0.0.99")
    assert agent.peer.heard is None and agent.rejected == {"address": 1}
    deliver(agent, sealed(agent, state="NOTREADY"), addr=PEER_CLOUD)  # its planned cloud address
    assert agent.peer.state == "NOTREADY" and agent.peer.paths.keys() == {PEER_CLOUD}


def test_a_replayed_heartbeat_of_the_same_incarnation_is_refused(tmp_path):
    """A captured 'NOTREADY' heartbeat sent again later would promote the secondary on demand."""
    svc, agent = make_agent(tmp_path, state="DISABLED")
    notready = sealed(agent, seq=1, state="NOTREADY", priority=1)
    deliver(agent, notready)
    deliver(agent, sealed(agent, seq=2, state="ENABLED", priority=1))
    deliver(agent, notready)  # replayed
    assert agent.peer.state == "ENABLED" and agent.peer.seq == 2 and agent.rejected == {"replay": 1}
    decide(agent)
    assert svc.state is ServiceState.DISABLED


def test_an_older_incarnation_is_refused_even_after_this_member_restarted(tmp_path):
    svc, agent = make_agent(tmp_path, state="DISABLED")
    old = sealed(agent, boot=100, seq=50, state="NOTREADY")
    deliver(agent, old)
    deliver(agent, sealed(agent, boot=200, seq=1, state="ENABLED"))  # the peer restarted
    deliver(agent, old)
    assert agent.peer.boot == 200 and agent.rejected == {"replay": 1}
    # This member restarts: the newest incarnation it heard is on disk, and its own boot is new.
    asyncio.run(asyncio.sleep(0))
    svc2, again = make_agent(tmp_path, state="DISABLED")
    assert again.boot > agent.boot and again.peer_boot_floor == 200
    deliver(again, old)  # older than the newest incarnation heard
    # The newest one, recorded before the restart: refused unless it answers this incarnation.
    deliver(again, sealed(again, boot=200, seq=9, state="NOTREADY", ack=[agent.boot, 3]))
    assert again.peer.heard is None and again.rejected == {"replay": 1, "unacknowledged": 1}
    deliver(again, sealed(again, boot=200, seq=10, state="ENABLED", ack=[again.boot, 1]))
    assert again.peer.state == "ENABLED" and again.peer.seq == 10


@pytest.mark.parametrize("fields", [
    {"epoch": 2**63 - 1}, {"epoch": ha_mod.MAX_EPOCH + 1}, {"epoch": 0}, {"epoch": "x"}, {"seq": -1},
    {"last_seq": 2**64}, {"state": "PRIMARY"}, {"pair": "walrus"}, {"member": "clc1"}, {"member": "eve"},
    {"boot": None}, {"ack": 5}, {"ack": ["x", 1]}, {"arb_confirm": [1]}, {"priority": "high"},
])
def test_a_sealed_heartbeat_out_of_bounds_or_not_of_this_pair_changes_nothing(tmp_path, fields):
    """Even with the pair's key (a bug, a corrupt peer), an epoch near 2^63 would overflow every
    later SQLite write of epoch + 1; it and every malformed field are refused."""
    svc, agent = make_agent(tmp_path, state="ENABLED")
    deliver(agent, sealed(agent, **fields))
    assert agent.peer.heard is None and agent.rejected == {"malformed": 1} and agent.epoch == 1


def test_the_controller_cannot_push_an_epoch_past_the_bound(tmp_path):
    svc, agent = make_agent(tmp_path, state="ENABLED")
    run_in_loop(lambda: agent.learn_epoch(2**63 - 1, "test"))
    assert agent.superseded is None and agent._next_epoch() == 2


def test_rejections_are_reported_at_most_once_a_second_and_none_is_left_unsaid(tmp_path):
    now = [100.0]
    svc, agent = make_agent(tmp_path, state="ENABLED", clock=lambda: now[0])
    agent._transport = type("T", (), {"sendto": lambda self, m, a: None})()
    for _ in range(500):
        deliver(agent, b"junk")
    deliver(agent, sealed(agent, seq=1), addr="10.9.9.9")

    def reports():
        return [e["counts"] for e in read_events(tmp_path / "events.jsonl") if e["event"] == "ha.heartbeat_rejected"]
    assert reports() == [{"tag": 1}] and agent.rejected == {"tag": 500, "address": 1}
    run_in_loop(agent.tick)  # within the second: nothing more said
    assert len(reports()) == 1
    now[0] += ha_mod.REJECT_REPORT_S
    run_in_loop(agent.tick)
    assert reports() == [{"tag": 1}, {"tag": 499, "address": 1}]


def test_the_config_needs_the_pair_key_and_the_member_s_own_addresses(tmp_path):
    def cfg(**ha):
        return {"host": "clc1", "data_dir": str(tmp_path), "pair": {"name": "clc"},
                "ha": {"peer_addresses": [PEER_HB], "listen": ["10.254.1.1"], "secret": HA_SECRET, **ha}}
    assert HAConfig.from_config(cfg()).secret == bytes.fromhex(HA_SECRET)
    for bad, message in (({"secret": None}, "heartbeat key"), ({"secret": "ab" * 8}, "at least 32"),
                         ({"secret": "zz" * 32}, "hex"), ({"listen": ["0.0.0.0"]}, "not 0.0.0.0"),
                         ({"listen": []}, "own")):
        with pytest.raises(ValueError, match=message):
            HAConfig.from_config(cfg(**bad))


def test_heartbeat_sockets_bind_the_member_s_own_addresses_and_send_path_by_path(tmp_path):
    """The socket bound 0.0.0.0: every address of the host, the users' side included. Each
    path's heartbeat now leaves from the member's own address on it (the peer checks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = {"host": "clc1", "role": "primary", "data_dir": str(tmp_path), "pair": {"name": "clc"},
           "ha": {"peer": "clc2", "peer_addresses": ["127.0.0.3", "127.0.0.4"], "port": port,
                  "listen": ["127.0.0.1", "127.0.0.2"], "secret": HA_SECRET, "interval_ms": 50}}

    async def go():
        received = []
        loop = asyncio.get_running_loop()
        sinks = []
        for address in ("127.0.0.3", "127.0.0.4"):
            t, _ = await loop.create_datagram_endpoint(
                lambda: type("P", (asyncio.DatagramProtocol,), {
                    "datagram_received": lambda self, d, a: received.append((self.at, a[0], d))})(),
                local_addr=(address, port))
            t.get_protocol().at = address
            sinks.append(t)
        agent = HAAgent(FakeService(tmp_path), cfg, run=lambda *a: asyncio.sleep(0, 0), garp=lambda i, a: None)
        await agent.start()
        try:
            assert sorted(s.getsockname() for s in agent._endpoints) == [
                ("127.0.0.1", port), ("127.0.0.2", port)]
            for _ in range(100):
                if {at for at, _, _ in received} == {"127.0.0.3", "127.0.0.4"}:
                    break
                await asyncio.sleep(0.01)
        finally:
            await agent.stop()
            for t in sinks:
                t.close()
        paths = {(at, src) for at, src, _ in received}
        assert paths == {("127.0.0.3", "127.0.0.1"), ("127.0.0.4", "127.0.0.2")}
        assert all(ha_mod.unseal(bytes.fromhex(HA_SECRET), d) is not None for _, _, d in received)
    asyncio.run(go())
