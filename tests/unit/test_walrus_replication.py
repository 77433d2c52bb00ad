"""Walrus replication to the DISABLED peer, in-process on loopback (no HA agent, no root).

The two members are real Walrus services; only the HA agent's view of the peer is
set by hand (alive, DISABLED), so what is tested is the op and object stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from components.common.config import validate_config
from components.common.service import MAX_BODY
from components.walrus.service import Walrus

from .components_helper import ADMIN, HA_SECRET, TOKEN, free_port


def _member(tmp: Path, name: str, state: str, peer_port: int) -> Walrus:
    # ``port`` is where the peer's Walrus listens: both members use the same port.
    cfg = validate_config({"host": name, "component": "walrus", "listen_host": "127.0.0.1", "port": peer_port,
                           "role": "primary" if state == "ENABLED" else "secondary", "state": state,
                           "data_dir": str(tmp / name), "events_path": str(tmp / f"{name}.jsonl"),
                           "admin": ADMIN, "internal_token": TOKEN, "pair": {"name": "walrus"},
                           "ha": {"peer_addresses": ["127.0.0.1"], "listen": ["127.0.0.1"], "secret": HA_SECRET}})
    return Walrus(cfg)


def _put_on(member: Walrus, bucket: str, key: str, data: bytes) -> dict:
    """Store an object on a member as PutObject does (file first, then the op)."""
    name = uuid.uuid4().hex
    (member.store.objects / name).write_bytes(data)
    op = {"type": "object.put", "bucket": bucket, "key": key, "size": len(data),
          "etag": hashlib.md5(data).hexdigest(), "content_type": "binary/octet-stream", "modified": 1.0,
          "meta": {}, "file": name}
    member._apply(op)
    return op


def _stored(member: Walrus, bucket: str, key: str) -> bytes | None:
    row = member.store.obj(bucket, key)
    return None if row is None else (member.store.objects / row[6]).read_bytes()


def _leftovers(member: Walrus) -> list[str]:
    return [p.name for p in member.store.objects.iterdir() if p.name.endswith(".part")]


def test_objects_larger_than_a_request_body_replicate_streamed(tmp_path):
    async def scenario():
        port = free_port()
        primary, secondary = _member(tmp_path, "walrus1", "ENABLED", port), _member(tmp_path, "walrus2", "DISABLED", port)
        server = TestServer(secondary.app, host="127.0.0.1", port=port)
        await server.start_server()
        await primary.on_start()
        await secondary.on_start()
        try:
            primary.ha.peer.heard, primary.ha.peer.state = float("inf"), "DISABLED"
            primary._apply({"type": "bucket.create", "bucket": "images", "account": ADMIN["account_id"],
                            "created": 1.0})
            image = os.urandom(MAX_BODY + 5 * 2**20)  # bigger than any buffered request body
            _put_on(primary, "images", "big.img", image)
            await primary.replicate()
            assert primary.ha.peer.last_seq == primary.store.last_seq == secondary.store.last_seq
            assert _stored(secondary, "images", "big.img") == image
            assert _leftovers(secondary) == []

            # Writes replicating at once: every op crosses once, and is applied once.
            applied = []
            original = secondary._apply_replica

            async def counting(entry, body):
                applied.append(entry["seq"])
                await original(entry, body)

            secondary._apply_replica = counting
            _put_on(primary, "images", "a", b"a" * 300_000)
            _put_on(primary, "images", "b", b"b" * 10)
            await asyncio.gather(primary.replicate(), primary.replicate(), primary.replicate())
            assert secondary.store.export_ops(0) == primary.store.export_ops(0)
            assert sorted(applied) == [3, 4]
            assert _stored(secondary, "images", "a") == b"a" * 300_000
            assert _leftovers(secondary) == []
            # A stream the secondary already applied is dropped there, leaving nothing behind.
            entry = primary.store.export_ops(2)[0]
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/internal/ha/apply", data=b"a" * 300_000,
                                     headers={"X-Eucalab-Op": json.dumps(entry), "X-Eucalab-Epoch": "1",
                                              "X-Eucalab-Internal-Token": TOKEN}) as r:
                    assert r.status == 200
            assert secondary.store.export_ops(0) == primary.store.export_ops(0) and _leftovers(secondary) == []

            # Bytes that do not match their op are refused; the replica is unchanged.
            before = secondary.store.export_ops(0)
            entry = {"seq": primary.store.last_seq + 1, "epoch": 1,
                     "op": {**_put_on(primary, "images", "c", b"c" * 100), "size": 101}}
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/internal/ha/apply", data=b"c" * 100,
                                     headers={"X-Eucalab-Op": json.dumps(entry), "X-Eucalab-Epoch": "1",
                                              "X-Eucalab-Internal-Token": TOKEN}) as r:
                    assert r.status == 400 and "101" in (await r.json())["error"]
            assert secondary.store.export_ops(0) == before and _leftovers(secondary) == []
        finally:
            await primary.on_stop()
            await secondary.on_stop()
            await server.close()

    asyncio.run(scenario())
