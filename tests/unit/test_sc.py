"""The SC's volume API and block protocol, on loopback."""

from __future__ import annotations

import asyncio
import json

from aiohttp import ClientSession

from components.common.config import validate_config
from components.common.events import read_events
from components.common.states import ServiceState
from components.sc import blockproto as bp
from components.sc.service import StorageController
from tests.support.util import free_port

TOKEN = "t0ken"


NCS = {"c1n1": ["127.0.0.1"], "c1n2": ["127.0.0.2"]}  # the cluster's NCs and their addresses


def make_sc(tmp_path):
    cfg = validate_config({"host": "c1sc1", "component": "sc", "port": free_port(), "listen_host": "127.0.0.1",
                           "data_dir": str(tmp_path / "data"), "events_path": str(tmp_path / "e.jsonl"),
                           "internal_token": TOKEN, "block_port": free_port(), "max_volume_mib": 64,
                           "nc_addresses": NCS})
    return StorageController(cfg)


async def _started(sc, events):
    """``sc`` serving (its task), once ``events`` (its event log) says it started."""
    task = asyncio.create_task(sc.serve())
    for _ in range(300):
        if any(e["event"] == "service.start" for e in read_events(events)):
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("SC did not start")


def _member(tmp_path, port: int, name: str, address: str, state: str, cls=StorageController):
    """One member of an SC pair, on ``address``: the pair shares one port, as on two hosts."""
    return cls(validate_config({
        "host": name, "component": "sc", "port": port, "listen_host": address,
        "data_dir": str(tmp_path / name), "events_path": str(tmp_path / f"{name}.jsonl"),
        "internal_token": TOKEN, "block_port": free_port(), "state": state, "nc_addresses": NCS}))


def test_volume_round_trip_through_the_block_protocol(tmp_path):
    sc = make_sc(tmp_path)

    async def scenario():
        task = await _started(sc, tmp_path / "e.jsonl")
        base = f"http://127.0.0.1:{sc.config['port']}"
        h = {"X-Eucalab-Internal-Token": TOKEN}
        async with ClientSession(headers=h) as http:
            async with http.post(f"{base}/volumes", json={"id": "vol-0000abcd", "size_mib": 4}) as r:
                assert r.status == 201
            async with http.post(f"{base}/volumes", json={"id": "vol-0000abcd", "size_mib": 4}) as r:
                assert (await r.json())["error"] == "VolumeExists"
            async with http.post(f"{base}/volumes", json={"id": "../etc", "size_mib": 4}) as r:
                assert r.status == 400
            async with http.post(f"{base}/volumes", json={"id": "vol-0000abce", "size_mib": 999}) as r:
                assert r.status == 400
            # Not attached yet: the block service refuses the login.
            client = bp.BlockClient("127.0.0.1", sc.block_port, "vol-0000abcd", "no secret yet")
            try:
                await client.connect()
                raise AssertionError("login to an unattached volume succeeded")
            except bp.BlockError as exc:
                assert exc.status == bp.LOGIN_REFUSED
            async with http.post(f"{base}/volumes/vol-0000abcd/attach", json={"instance": "i-1", "nc": "c1n1"}) as r:
                target = (await r.json())["target"]
                assert target["port"] == sc.block_port
            client = bp.BlockClient("127.0.0.1", sc.block_port, "vol-0000abcd", target["secret"])
            await client.connect()
            await client.write(4096, b"eucalab" * 100)
            assert await client.read(4096, 700) == b"eucalab" * 100
            try:
                await client.read(4 * 2**20 - 10, 100)
                raise AssertionError("read past the end succeeded")
            except bp.BlockError as exc:
                assert exc.status == bp.OUT_OF_RANGE
            await client.close()
            async with http.delete(f"{base}/volumes/vol-0000abcd") as r:
                assert (await r.json())["error"] == "VolumeInUse"
            async with http.get(f"{base}/volumes", headers={"X-Eucalab-Internal-Token": "wrong"}) as r:
                assert r.status == 403
        # Written data is on the SC's disk.
        data = (tmp_path / "data" / "volumes" / "vol-0000abcd.img").read_bytes()
        assert data[4096:4096 + 700] == b"eucalab" * 100
        async with ClientSession(headers=h) as http:
            async with http.post(f"{base}/volumes/vol-0000abcd/detach") as r:
                assert r.status == 200
            async with http.delete(f"{base}/volumes/vol-0000abcd") as r:
                assert r.status == 200
        assert not (tmp_path / "data" / "volumes" / "vol-0000abcd.img").exists()
        sc.stop()
        await task

    asyncio.run(scenario())
    kinds = [e["event"] for e in read_events(tmp_path / "e.jsonl")]
    assert ["volume.create", "volume.attach", "volume.detach", "volume.delete"] == [
        k for k in kinds if k.startswith("volume.")]


def test_volumes_survive_a_restart(tmp_path):
    sc = make_sc(tmp_path)
    sc.volumes["vol-00000001"] = {"id": "vol-00000001", "size_mib": 1, "state": "available", "attachment": None}
    asyncio.run(sc._save())
    assert make_sc(tmp_path).volumes["vol-00000001"]["size_mib"] == 1


def test_a_slow_disk_never_stalls_the_event_loop_and_changes_stay_in_order(tmp_path, monkeypatch):
    """A rename that waits on the filesystem's journal (a peer's catch-up fsyncing a whole
    volume) once stalled a primary's loop, heartbeats and all, for 924 ms."""
    import time

    sc = make_sc(tmp_path)
    write_meta = sc._write_meta
    monkeypatch.setattr(sc, "_write_meta", lambda text: (time.sleep(0.3), write_meta(text)))

    async def scenario():
        ticks = 0

        async def heartbeat():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        await asyncio.gather(sc._apply({"type": "create", "id": "vol-00000001", "size_mib": 1}),
                             sc._apply({"type": "write", "id": "vol-00000001", "offset": 0}, b"abc"))
        beat.cancel()
        return ticks

    assert asyncio.run(scenario()) >= 30  # 0.6 s of saves, the loop ticking all along
    assert sc.wseq == 2 and (sc.vol_dir / "vol-00000001.img").read_bytes()[:3] == b"abc"
    assert json.loads(sc.meta_file.read_text())["wseq"] == 2
    # A replicated change out of sequence is refused and touches nothing.
    assert asyncio.run(sc._apply({"type": "delete", "id": "vol-00000001"}, seq=5)) == 0
    assert "vol-00000001" in sc.volumes and sc.wseq == 2


def test_a_member_that_does_not_serve_sends_initiators_back_to_the_vip(tmp_path):
    """A standby (or a primary that stepped down) takes no block session and ends the
    ones it has with NOT_PRIMARY: the NC logs in again through the VIP until the primary
    answers there."""
    sc = make_sc(tmp_path)
    sc.volumes["vol-0000abcd"] = {"id": "vol-0000abcd", "size_mib": 1, "state": "in-use",
                                  "attachment": {"instance": "i-1", "nc": "c1n1", "secret": "s3cret"}}
    (tmp_path / "data" / "volumes" / "vol-0000abcd.img").write_bytes(b"\0" * 2**20)
    fast = bp.SessionTimeouts(connect_s=0.1, reply_s=0.2, retry_interval_s=0.01, request_s=0.3)

    async def scenario():
        task = await _started(sc, tmp_path / "e.jsonl")
        client = bp.BlockClient("127.0.0.1", sc.block_port, "vol-0000abcd", "s3cret", fast)
        await client.connect()
        sc.state = ServiceState.DISABLED  # it stepped down
        try:
            await client.read(0, 4)
            raise AssertionError("a member that stepped down served a read")
        except bp.BlockUnavailable:
            pass
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.block_port)
        writer.write(bp.HEADER.pack(b"L", 0, 12) + b"vol-0000abcd")
        status, n = bp.REPLY.unpack(await reader.readexactly(bp.REPLY.size))
        assert status == bp.NOT_PRIMARY and b"not the primary" in await reader.readexactly(n)
        assert await reader.read() == b""  # and the session is over
        writer.close()
        sc.state = ServiceState.ENABLED  # the VIP's primary answers again
        assert await client.read(0, 4) == b"\0" * 4
        await client.close()
        sc.stop()
        await task

    asyncio.run(scenario())


def _catch_up_pair(tmp_path, port: int, peer_class=StorageController):
    """A DISABLED member (127.0.0.2) behind its ENABLED peer (127.0.0.1), both on one port as
    on two hosts; the member's HA agent is a stand-in saying the peer is ahead."""
    from types import SimpleNamespace

    peer = _member(tmp_path, port, "c1sc1", "127.0.0.1", "ENABLED", peer_class)
    member = _member(tmp_path, port, "c1sc2", "127.0.0.2", "DISABLED")
    for vid, fill in (("vol-00000001", b"new"), ("vol-00000002", b"too")):
        asyncio.run(peer._apply({"type": "create", "id": vid, "size_mib": 1}))
        asyncio.run(peer._apply({"type": "write", "id": vid, "offset": 0}, fill))
    asyncio.run(member._apply({"type": "create", "id": "vol-00000001", "size_mib": 1}))
    asyncio.run(member._apply({"type": "write", "id": "vol-00000001", "offset": 0}, b"old"))
    member.config["ha"] = {"peer_addresses": ["127.0.0.1"]}
    member.ha = SimpleNamespace(peer_alive=lambda: True, peer_address=lambda: "127.0.0.1",
                                peer=SimpleNamespace(state="ENABLED", last_seq=peer.wseq))
    return peer, member


def _run_catch_up(tmp_path, peer, member, until: str) -> list[dict]:
    async def scenario():
        member.replica = ClientSession(headers={"X-Eucalab-Internal-Token": TOKEN})
        task = await _started(peer, tmp_path / "c1sc1.jsonl")
        copier = asyncio.create_task(member.replication.catch_up_loop())
        for _ in range(500):
            if any(e["event"] == until for e in read_events(tmp_path / "c1sc2.jsonl")):
                break
            await asyncio.sleep(0.01)
        copier.cancel()
        await member.replica.close()
        peer.stop()
        await task
    asyncio.run(scenario())
    return read_events(tmp_path / "c1sc2.jsonl")


def test_a_member_behind_its_peer_copies_its_volumes(tmp_path):
    peer, member = _catch_up_pair(tmp_path, free_port())
    _run_catch_up(tmp_path, peer, member, "ha.caught_up")
    assert member.wseq == peer.wseq and set(member.volumes) == {"vol-00000001", "vol-00000002"}
    assert (tmp_path / "c1sc2" / "volumes" / "vol-00000001.img").read_bytes()[:3] == b"new"
    assert not list((tmp_path / "c1sc2" / "volumes").glob(".*.part"))


def test_a_copy_cut_short_by_a_promotion_changes_nothing(tmp_path):
    """The peer dies during the copy and this member takes over: its own state is the
    pair's now; a copy finished afterwards must not replace it."""
    promoted = []

    class DyingPeer(StorageController):
        def _path(self, vid):  # once the member copies: the peer is serving it a volume's file
            if promoted:
                promoted[0].state = ServiceState.ENABLED
            return super()._path(vid)

    peer, member = _catch_up_pair(tmp_path, free_port(), DyingPeer)
    promoted.append(member)
    events = _run_catch_up(tmp_path, peer, member, "ha.catch_up_abandoned")
    assert "ha.caught_up" not in [e["event"] for e in events]
    assert member.wseq == 2 and set(member.volumes) == {"vol-00000001"}
    assert (tmp_path / "c1sc2" / "volumes" / "vol-00000001.img").read_bytes()[:3] == b"old"
    assert not list((tmp_path / "c1sc2" / "volumes").glob(".*.part"))


def test_an_error_from_the_peer_is_never_taken_for_a_volume(tmp_path):
    peer, member = _catch_up_pair(tmp_path, free_port())
    peer.volumes["vol-00000003"] = {"id": "vol-00000003", "size_mib": 1, "state": "available",
                                    "attachment": None}  # listed, but its file is gone: 404
    events = _run_catch_up(tmp_path, peer, member, "ha.catch_up_failed")
    assert "ha.caught_up" not in [e["event"] for e in events]
    assert (tmp_path / "c1sc2" / "volumes" / "vol-00000001.img").read_bytes()[:3] == b"old"


def test_concurrent_changes_reach_the_peer_in_order_each_with_its_own_sequence_number(tmp_path):
    """Two block writes at once (two volumes): each is shipped with the number it was
    applied under, never one change under the other's number."""
    from types import SimpleNamespace

    sc = make_sc(tmp_path)
    shipped: list[tuple[str, int]] = []

    async def replicate(op, data, seq):
        await asyncio.sleep(0.02)  # the peer's answer takes a while: the other write waits
        shipped.append((op["id"], seq))
        sc.ha.peer.last_seq = seq
        return None

    async def scenario():
        sc.replica = object()
        sc.ha = SimpleNamespace(peer_alive=lambda: True, peer_took_over=lambda: False,
                                peer=SimpleNamespace(state="DISABLED", last_seq=0))
        sc.replication._replicate_op = replicate
        await asyncio.gather(*(sc._mutate({"type": "create", "id": f"vol-0000000{n}", "size_mib": 1})
                               for n in range(1, 4)))

    asyncio.run(scenario())
    assert shipped == [("vol-00000001", 1), ("vol-00000002", 2), ("vol-00000003", 3)]
    assert sc.wseq == 3


def test_a_heartbeat_overtaken_by_the_peers_answer_does_not_stop_replication(tmp_path):
    """The peer's heartbeat, sent before it applied a change, can arrive after its 200 for
    that change and say one change less. The next change is still shipped, not left to a
    catch-up of every volume (which, not done within the HA window, answered 503 to a
    DeleteVolume the peer could have taken at once). A new incarnation of the peer is
    believed as its heartbeat says."""
    from types import SimpleNamespace

    import pytest

    from components.sc.service import NotAcknowledged

    port = free_port()
    primary = _member(tmp_path, port, "c1sc1", "127.0.0.1", "ENABLED")
    peer = _member(tmp_path, port, "c1sc2", "127.0.0.2", "DISABLED")

    async def never(refused, upto=None):
        return False  # the peer never reports the change in time

    primary.ha = SimpleNamespace(epoch=1, peer_alive=lambda: True, peer_took_over=lambda: False,
                                 peer_address=lambda: "127.0.0.2", may_acknowledge_unreplicated=never,
                                 peer=SimpleNamespace(state="DISABLED", last_seq=0, boot=7, epoch=1))

    async def scenario():
        primary.replica = ClientSession(headers={"X-Eucalab-Internal-Token": TOKEN})
        task = await _started(peer, tmp_path / "c1sc2.jsonl")
        peer.ha = SimpleNamespace(epoch=1, peer=SimpleNamespace(epoch=1))  # a standby, as far as replication goes
        try:
            await primary._mutate({"type": "create", "id": "vol-00000001", "size_mib": 1})
            assert peer.wseq == 1
            primary.ha.peer.last_seq = 0  # the overtaken heartbeat
            await primary._mutate({"type": "create", "id": "vol-00000002", "size_mib": 1})
            assert peer.wseq == 2 and set(peer.volumes) == {"vol-00000001", "vol-00000002"}
            primary.ha.peer.boot, primary.ha.peer.last_seq = 8, 1  # restarted, and says it has 1
            with pytest.raises(NotAcknowledged):
                await primary._mutate({"type": "create", "id": "vol-00000003", "size_mib": 1})
            assert peer.wseq == 2  # not shipped out of order: left to its catch-up
        finally:
            await primary.replica.close()
            peer.ha = None
            peer.stop()
            await task

    asyncio.run(scenario())
