"""CLC replication to the DISABLED peer and its catch-up, in-process on loopback (no HA agent, no root).

The two members are real CLC services talking HTTP; only the HA agent's view of the
peer is set by hand (alive, its state and position), so what is tested is the op and
snapshot stream: bounded batches, snapshots past the compaction point, epochs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

import components.clc.replication as clc_replication
from components.clc.service import CloudController
from components.common.config import validate_config
from components.common.events import read_events
from components.common.replication import CATCH_UP_POLL_S

from tests.support.processes import HA_SECRET, TOKEN
from tests.support.util import free_port, until

from .test_clc_state import OPS, STATE, dump

KEEP = 20


def _member(tmp: Path, name: str, state: str, peer_port: int) -> CloudController:
    # ``port`` is where the peer's CLC listens: both members use the same port. No admin
    # account, so that neither starts with an op of its own.
    cfg = validate_config({"host": name, "component": "clc", "listen_host": "127.0.0.1", "port": peer_port,
                           "role": "primary" if state == "ENABLED" else "secondary", "state": state,
                           "data_dir": str(tmp / name), "events_path": str(tmp / f"{name}.jsonl"),
                           "internal_token": TOKEN, "pair": {"name": "clc"}, "oplog_keep": KEEP,
                           "ha": {"peer_addresses": ["127.0.0.1"], "listen": ["127.0.0.1"], "secret": HA_SECRET}})
    return CloudController(cfg)


def _history(member: CloudController, rounds: int) -> None:
    """OPS, then ``rounds`` x 2 instance updates: far more ops than the log keeps."""
    for op in OPS:
        member._apply(op)
    for i in range(rounds):
        member._apply({"type": "instance.update", "id": "i-0000000a", "state": "stopped", "reason": str(i)})
        member._apply({"type": "instance.update", "id": "i-0000000a", "state": "running", "reason": str(i)})


def _state(member: CloudController) -> dict:
    return {t: rows for t, rows in dump(member.store).items() if t in STATE}


def _batches(member: CloudController) -> list[int]:
    """Record the size of every op batch the member applies."""
    sizes, apply_ops = [], member.store.apply_ops

    def recording(ops):
        sizes.append(len(ops))
        return apply_ops(ops)

    member.store.apply_ops = recording
    return sizes


def _events(member: CloudController, name: str) -> list[dict]:
    return [e for e in read_events(member.config["events_path"]) if e["event"] == name]


async def _pair(tmp: Path, serve: str):
    """Both members started; the one named by ``serve`` answers on the shared port."""
    port = free_port()
    primary, secondary = _member(tmp, "clc1", "ENABLED", port), _member(tmp, "clc2", "DISABLED", port)
    server = TestServer((primary if serve == "primary" else secondary).app, host="127.0.0.1", port=port)
    await server.start_server()
    await primary.on_start()
    await secondary.on_start()
    return primary, secondary, server


async def _stop(*things) -> None:
    for thing in things:
        await (thing.close() if isinstance(thing, TestServer) else thing.on_stop())


def test_a_write_pushes_a_far_behind_peer_a_snapshot_then_bounded_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(clc_replication, "BATCH_OPS", 7)

    async def scenario():
        primary, secondary, server = await _pair(tmp_path, serve="secondary")
        try:
            sizes = _batches(secondary)
            _history(primary, 100)
            assert primary.store.base_seq > 0  # the peer's position 0 is compacted away
            primary.ha.peer.heard, primary.ha.peer.state = float("inf"), "DISABLED"
            await primary.replicate(primary.store.last_seq)
            assert primary.ha.peer.last_seq == primary.store.last_seq == secondary.store.last_seq
            assert _state(secondary) == _state(primary)
            assert [e["last_seq"] for e in _events(secondary, "ha.snapshot_installed")] == [primary.store.last_seq]
            assert sizes == []  # the snapshot was all it needed

            # Then the peer falls behind by more than a batch, within the log: ops only,
            # every op up to the write sent before replicate() returns, none twice.
            primary.ha.peer.last_seq = secondary.store.last_seq
            for i in range(KEEP - 1):
                primary._apply({"type": "instance.update", "id": "i-0000000a", "state": "running", "reason": f"x{i}"})
            await primary.replicate(primary.store.last_seq)
            assert secondary.store.last_seq == primary.store.last_seq and _state(secondary) == _state(primary)
            assert sizes == [7, 7, 5]
        finally:
            await _stop(primary, secondary, server)

    asyncio.run(scenario())


def caught_up(member) -> list[int]:
    """The last_seq of ``member``'s newest ``ha.caught_up`` event ([] before one). Waited on
    rather than its store's last_seq, which moves in the worker thread before the batch's
    await returns and the events that follow it are emitted."""
    return [e["last_seq"] for e in _events(member, "ha.caught_up")][-1:]


def took_over(member, epoch_ahead: int = 1) -> None:
    """What ``member`` knows after stepping down for a peer ENABLED at a newer epoch."""
    member.ha.discard_pending = True  # as HAAgent._demote sets it
    member.ha.peer.heard, member.ha.peer.state = float("inf"), "ENABLED"
    member.ha.peer.epoch = member.ha.epoch + epoch_ahead


def test_a_member_stepping_down_keeps_its_state_until_a_newer_enabled_peer_is_there(tmp_path):
    """Stepping down wiped the store whatever the reason: one forged heartbeat emptied the
    primary. The state goes only once an ENABLED peer at a newer position can be caught up from."""
    async def scenario():
        primary, secondary, server = await _pair(tmp_path, serve="primary")
        try:
            _history(secondary, 5)
            before = secondary.store.last_seq
            took_over(secondary, epoch_ahead=0)  # the peer is ENABLED, but not newer
            await secondary._on_demote("test: no newer peer")
            secondary.ha.peer.heard = None  # and a peer not heard at all
            await secondary._on_demote("test: no peer")
            assert secondary.store.last_seq == before and not _events(secondary, "ha.state_reset")
            assert secondary.ha.discard_pending  # still owed: dropped once a newer peer is there
            took_over(secondary)
            await secondary._on_demote("test: the peer took over")
            assert secondary.store.last_seq == 0 and not secondary.ha.discard_pending
        finally:
            await _stop(primary, secondary, server)

    asyncio.run(scenario())


def test_a_reset_member_catches_up_through_a_snapshot_in_bounded_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(clc_replication, "BATCH_OPS", 4)
    monkeypatch.setitem(CATCH_UP_POLL_S, "clc", 0.02)

    async def scenario():
        primary, secondary, server = await _pair(tmp_path, serve="primary")
        try:
            _history(secondary, 5)
            took_over(secondary)
            await secondary._on_demote("test: the peer took over")  # the new primary's state wins
            assert secondary.store.last_seq == 0
            _history(primary, 50)
            sizes = _batches(secondary)
            secondary.ha.peer.heard, secondary.ha.peer.state = float("inf"), "ENABLED"
            secondary.ha.peer.epoch = secondary.ha.epoch
            secondary.ha.peer.last_seq = primary.store.last_seq
            await until(lambda: caught_up(secondary) == [primary.store.last_seq])
            assert _state(secondary) == _state(primary) and sizes == []
            assert [e["last_seq"] for e in _events(secondary, "ha.snapshot_installed")] == [primary.store.last_seq]

            # More writes, as its heartbeats would say: within the log now, so ops only.
            for i in range(10):
                primary._apply({"type": "instance.update", "id": "i-0000000a", "state": "running", "reason": f"y{i}"})
            secondary.ha.peer.last_seq = primary.store.last_seq
            await until(lambda: caught_up(secondary) == [primary.store.last_seq])
            assert _state(secondary) == _state(primary) and sizes == [4, 4, 2]
            assert len(_events(secondary, "ha.snapshot_installed")) == 1
            assert _events(secondary, "ha.caught_up")[-1] == {**_events(secondary, "ha.caught_up")[-1],
                                                               "last_seq": primary.store.last_seq, "batches": 3}
        finally:
            await _stop(primary, secondary, server)

    asyncio.run(scenario())


def test_a_stale_epoch_or_an_enabled_member_is_refused_and_nothing_applies(tmp_path):
    async def scenario():
        primary, secondary, server = await _pair(tmp_path, serve="secondary")
        try:
            _history(primary, 0)
            url = f"http://127.0.0.1:{server.port}/internal/ha/ops"
            secondary.ha.epoch = 5
            body = await primary.replication.export_from(0, epoch=4)
            async with aiohttp.ClientSession(headers={"X-Eucalab-Internal-Token": TOKEN}) as http:
                async with http.post(url, data=body) as r:
                    assert (r.status, (await r.json())["error"]) == (409, "stale epoch")
                secondary.state = secondary.state.__class__("ENABLED")
                async with http.post(url, data=await primary.replication.export_from(0, epoch=6)) as r:
                    assert (r.status, (await r.json())["error"]) == (409, "not a secondary")
                secondary.state = secondary.state.__class__("DISABLED")
                gap = json.dumps({"epoch": 6, "ops": primary.store.export_ops(3)}).encode()
                async with http.post(url, data=gap) as r:
                    assert r.status == 409 and "gap" in (await r.json())["error"]
            assert secondary.store.last_seq == 0
        finally:
            await _stop(primary, secondary, server)

    asyncio.run(scenario())
