"""The block protocol against strangers: logins without the attachment's secret, from
another host, replayed, after a detach; and the SC's replication path against ids that
would name files outside its volumes. A real SC on loopback (127.0.0.1 is the NC c1n1,
127.0.0.2 the NC c1n2), plain sockets as the attacker."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession

from components.common.config import validate_config
from components.common.events import read_events
from components.sc import blockproto as bp
from components.sc.service import StorageController

from tests.support.processes import TOKEN
from tests.support.util import free_port

from .test_sc import NCS, _started

VOL = "vol-0000abcd"
H = {"X-Eucalab-Internal-Token": TOKEN}


def make_sc(tmp_path, **extra) -> StorageController:
    return StorageController(validate_config({
        "host": "c1sc1", "component": "sc", "port": free_port(), "listen_host": "127.0.0.1",
        "data_dir": str(tmp_path / "data"), "events_path": str(tmp_path / "e.jsonl"), "internal_token": TOKEN,
        "block_port": free_port(), "max_volume_mib": 4, "nc_addresses": NCS, **extra}))


async def exchange(reader, writer, op: bytes, payload: bytes = b"") -> tuple[int, bytes]:
    writer.write(bp.HEADER.pack(op, 0, len(payload)) + payload)
    await writer.drain()
    status, n = bp.REPLY.unpack(await reader.readexactly(bp.REPLY.size))
    return status, await reader.readexactly(n) if n else b""


async def login(port: int, volume: str, secret: str | None, source: str = "127.0.0.1",
                answer: bytes | None = None) -> tuple[int, bytes, bytes, tuple]:
    """One raw login from ``source``: (status of the answer, its message, the challenge, streams)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    status, challenge = await exchange(reader, writer, b"L", volume.encode())
    assert status == bp.OK and len(challenge) == bp.CHALLENGE_BYTES
    if answer is None:
        answer = bp.login_answer(secret, challenge, volume) if secret else b"\0" * bp.ANSWER_BYTES
    status, message = await exchange(reader, writer, b"A", answer)
    return status, message, challenge, (reader, writer)


def scenario(tmp_path, body, **extra):
    sc = make_sc(tmp_path, **extra)

    async def main():
        task = await _started(sc, tmp_path / "e.jsonl")
        base = f"http://127.0.0.1:{sc.config['port']}"
        try:
            async with ClientSession(headers=H) as http:
                async with http.post(f"{base}/volumes", json={"id": VOL, "size_mib": 1}) as r:
                    assert r.status == 201
                async with http.post(f"{base}/volumes", json={"id": "vol-00000002", "size_mib": 1}) as r:
                    assert r.status == 201
                async with http.post(f"{base}/volumes/{VOL}/attach", json={"instance": "i-1", "nc": "c1n1"}) as r:
                    secret = (await r.json())["target"]["secret"]
                await body(sc, http, base, secret)
        finally:
            sc.stop()
            await task
    asyncio.run(main())


def test_every_refused_login_looks_the_same_and_the_right_one_works(tmp_path):
    """The issue's attack: a login with the id of another account's attached volume read its
    data; status 1 and 4 told which ids exist. Now one refusal for every case."""
    async def body(sc, http, base, secret):
        refusals = [
            await login(sc.block_port, VOL, None),  # no secret: a guessed answer
            await login(sc.block_port, VOL, "another attachment's secret"),
            await login(sc.block_port, VOL, secret, source="127.0.0.2"),  # right secret, another NC
            await login(sc.block_port, "vol-00000002", secret),  # exists, not attached
            await login(sc.block_port, "vol-99999999", secret),  # no such volume
            await login(sc.block_port, "../../etc/pw", secret),
        ]
        for status, message, _, (reader, writer) in refusals:
            assert (status, message) == (bp.LOGIN_REFUSED, b"login refused")
            assert await reader.read() == b""  # and the connection is closed
            writer.close()
        status, _, _, (reader, writer) = await login(sc.block_port, VOL, secret)
        assert status == bp.OK
        assert await exchange(reader, writer, b"R", b"") == (bp.OK, b"")
        writer.close()
        refused = [e for e in read_events(sc.config["events_path"]) if e["event"] == "block.login_refused"]
        assert len(refused) == len(refusals)
    scenario(tmp_path, body)


def test_the_secret_never_crosses_the_connection_and_an_answer_cannot_be_replayed(tmp_path):
    async def body(sc, http, base, secret):
        status, _, challenge, (reader, writer) = await login(sc.block_port, VOL, secret)
        assert status == bp.OK
        answer = bp.login_answer(secret, challenge, VOL)
        assert secret.encode() not in answer and secret.encode() not in challenge
        writer.close()
        # The recorded answer on a new connection meets a new challenge: refused.
        status, _, again, (reader, writer) = await login(sc.block_port, VOL, None, answer=answer)
        assert again != challenge and status == bp.LOGIN_REFUSED
        writer.close()
        # The secret is the NC's alone: the volume listing does not show it.
        async with http.get(f"{base}/volumes") as r:
            assert secret not in await r.text()
    scenario(tmp_path, body)


def test_detach_ends_the_session_and_the_old_secret_logs_in_no_more(tmp_path):
    """A session kept working after DetachVolume."""
    async def body(sc, http, base, secret):
        fast = bp.SessionTimeouts(connect_s=0.2, reply_s=0.3, retry_interval_s=0.01, request_s=0.4)
        client = bp.BlockClient("127.0.0.1", sc.block_port, VOL, secret, fast)
        await client.connect()
        await client.write(0, b"mine")
        status, _, _, (reader, writer) = await login(sc.block_port, VOL, secret)
        assert status == bp.OK
        async with http.post(f"{base}/volumes/{VOL}/detach") as r:
            assert r.status == 200
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the SC at the detach
        writer.close()
        with pytest.raises(bp.BlockError) as refused:
            await client.read(0, 4)  # logs in again with the old secret: refused
        assert refused.value.status == bp.LOGIN_REFUSED
        await client.close()
        # Attached anew: a new secret, the old one refused.
        async with http.post(f"{base}/volumes/{VOL}/attach", json={"instance": "i-2", "nc": "c1n2"}) as r:
            new = (await r.json())["target"]["secret"]
        assert new != secret
        assert (await login(sc.block_port, VOL, secret, source="127.0.0.2"))[0] == bp.LOGIN_REFUSED
        assert (await login(sc.block_port, VOL, new, source="127.0.0.2"))[0] == bp.OK
    scenario(tmp_path, body)


def test_a_login_naming_no_possible_volume_id_is_cut_short(tmp_path):
    """A 4 MiB "volume id" would have gone whole into the refusal's event."""
    async def body(sc, http, base, secret):
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.block_port)
        assert (await exchange(reader, writer, b"L", b"v" * 2**20))[0] == bp.BAD_REQUEST
        assert await reader.read() == b""
        writer.close()
    scenario(tmp_path, body)


def test_attach_names_an_nc_of_this_cluster(tmp_path):
    async def body(sc, http, base, secret):
        async with http.post(f"{base}/volumes/vol-00000002/attach", json={"instance": "i-3", "nc": "eve"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "InvalidParameterValue"
        assert sc.volumes["vol-00000002"]["attachment"] is None
    scenario(tmp_path, body)


def test_the_block_service_listens_on_the_configured_addresses_only(tmp_path):
    async def body(sc, http, base, secret):
        assert sorted(s.sockets[0].getsockname() for s in sc.block.servers) == [
            ("127.0.0.1", sc.block_port), ("127.0.0.3", sc.block_port)]
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.2", sc.block_port)
    scenario(tmp_path, body, block_listen=["127.0.0.1", "127.0.0.3"])
    with pytest.raises(ValueError, match="not 0.0.0.0"):
        make_sc(tmp_path / "wild", block_listen=["0.0.0.0"])


@pytest.mark.parametrize("op", [
    {"type": "create", "id": "../../../tmp/evil", "size_mib": 1},
    {"type": "delete", "id": "/etc/passwd"},
    {"type": "write", "id": "vol-00000003", "offset": 0},  # no such volume here
    {"type": "write", "id": VOL, "offset": -1},
    {"type": "write", "id": VOL, "offset": 2**20},  # past the end
    {"type": "meta", "id": 5, "state": "in-use", "attachment": None},
])
def test_a_replicated_change_naming_a_bad_path_is_refused_before_the_disk(tmp_path, op):
    sc = make_sc(tmp_path)
    asyncio.run(sc._apply({"type": "create", "id": VOL, "size_mib": 1}))
    before = sorted(p.name for p in sc.vol_dir.iterdir()), sc.wseq
    with pytest.raises(ValueError):
        asyncio.run(sc._apply(op, b"data", seq=sc.wseq + 1))
    assert (sorted(p.name for p in sc.vol_dir.iterdir()), sc.wseq) == before
    assert not (tmp_path / "tmp").exists()
