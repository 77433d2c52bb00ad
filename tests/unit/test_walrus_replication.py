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

from tests.support.processes import ADMIN, HA_SECRET, TOKEN
from tests.support.util import free_port, until


def _member(tmp: Path, name: str, state: str, peer_port: int, peer: str = "127.0.0.1",
            own: str = "127.0.0.1") -> Walrus:
    # ``port`` is where the peer's Walrus listens: both members use the same port.
    cfg = validate_config({"host": name, "component": "walrus", "listen_host": "127.0.0.1", "port": peer_port,
                           "role": "primary" if state == "ENABLED" else "secondary", "state": state,
                           "data_dir": str(tmp / name), "events_path": str(tmp / f"{name}.jsonl"),
                           "admin": ADMIN, "internal_token": TOKEN, "pair": {"name": "walrus"},
                           "ha": {"peer_addresses": [peer], "listen": [own], "secret": HA_SECRET}})
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
            original = secondary.replication._apply_replica

            async def counting(entry, body):
                applied.append(entry["seq"])
                await original(entry, body)

            secondary.replication._apply_replica = counting
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


def _port_free_on(*addresses: str) -> int:
    """A port nothing listens on at any of ``addresses`` (other suites use 127.0.0.2 too)."""
    import socket

    while True:
        port = free_port()
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue


def test_multipart_parts_replicate_as_they_arrive_and_the_peer_assembles(tmp_path):
    """Each part is on the DISABLED peer before UploadPart answers; CompleteMultipartUpload
    sends no bytes (the peer joins its own copies of the parts); versions, delete markers,
    ACLs and tags replicate too; a member that missed it all catches up from the log,
    fetching the assembled object when its parts are gone."""
    import boto3
    from botocore.config import Config

    async def scenario():
        port = _port_free_on("127.0.0.1", "127.0.0.2")
        # Two loopback addresses, one port: each member reaches the other where it listens.
        primary = _member(tmp_path, "walrus1", "ENABLED", port, peer="127.0.0.2")
        secondary = _member(tmp_path, "walrus2", "DISABLED", port, peer="127.0.0.1", own="127.0.0.2")
        servers = [TestServer(primary.app, host="127.0.0.1", port=port),
                   TestServer(secondary.app, host="127.0.0.2", port=port)]
        for server in servers:
            await server.start_server()
        await primary.on_start()
        await secondary.on_start()
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}/services/Walrus",
                          aws_access_key_id=ADMIN["access_key"], aws_secret_access_key=ADMIN["secret_key"],
                          region_name="eucalyptus",
                          config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}))

        def call(method, **kw):
            return asyncio.to_thread(getattr(s3, method), **kw)

        fetched = []
        original = secondary.replication._fetch_from_peer

        async def fetching(entry):
            fetched.append(entry["op"]["type"])
            await original(entry)

        secondary.replication._fetch_from_peer = fetching
        try:
            primary.ha.last_sent = float("inf")  # serving, as if its heartbeats went out
            primary.ha.peer.heard, primary.ha.peer.state = float("inf"), "DISABLED"
            await call("create_bucket", Bucket="images")
            upload = (await call("create_multipart_upload", Bucket="images", Key="img"))["UploadId"]
            parts = [os.urandom(5 * 2**20), os.urandom(5 * 2**20), b"tail"]
            etags = []
            for n, data in enumerate(parts, 1):
                etags.append((await call("upload_part", Bucket="images", Key="img", UploadId=upload,
                                         PartNumber=n, Body=data))["ETag"])
                # Acknowledged: the peer holds this part, byte for byte.
                held = secondary.store.parts(upload)
                assert [row[0] for row in held] == list(range(1, n + 1))
                assert (secondary.store.objects / held[-1][4]).read_bytes() == data
            await call("complete_multipart_upload", Bucket="images", Key="img", UploadId=upload,
                       MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
            assert _stored(secondary, "images", "img") == b"".join(parts)
            assert secondary.store.export_ops(0) == primary.store.export_ops(0)
            assert fetched == []  # assembled from its own parts: no object bytes crossed
            assert secondary.store.parts(upload) == [] and _leftovers(secondary) == []
            assert sorted(p.name for p in secondary.store.objects.iterdir()) == \
                sorted(p.name for p in primary.store.objects.iterdir())

            # Versions and delete markers replicate like every write.
            await call("put_bucket_versioning", Bucket="images", VersioningConfiguration={"Status": "Enabled"})
            for body in (b"one", b"two"):
                await call("put_object", Bucket="images", Key="doc", Body=body)
            await call("delete_object", Bucket="images", Key="doc")
            versions = "SELECT bucket, key, vid, n, etag, marker, file FROM versions ORDER BY bucket, key, n"
            assert secondary.store.db.execute(versions).fetchall() == primary.store.db.execute(versions).fetchall()
            assert len(primary.store.db.execute(versions).fetchall()) == 4  # img's null version, 2, a marker
            # ... and so do ACLs and tags.
            await call("put_object_acl", Bucket="images", Key="img", ACL="public-read")
            await call("put_object_tagging", Bucket="images", Key="img",
                       Tagging={"TagSet": [{"Key": "kind", "Value": "image"}]})
            meta = "SELECT * FROM acls UNION ALL SELECT bucket, key, tags, '' FROM tags ORDER BY 1, 2, 3"
            assert secondary.store.db.execute(meta).fetchall() == primary.store.db.execute(meta).fetchall()
            assert secondary.store.tags("images", "img") == {"kind": "image"}

            # A member that lost everything catches up from the log: the parts' files are gone
            # on the primary (completed), so it fetches the assembled object.
            secondary.store.reset()
            secondary.ha.peer.heard, secondary.ha.peer.state = float("inf"), "ENABLED"
            secondary.ha.peer.last_seq = primary.store.last_seq
            await until(lambda: secondary.store.last_seq == primary.store.last_seq, 10)
            assert _stored(secondary, "images", "img") == b"".join(parts)
            assert fetched == ["upload.part"] * 3 + ["upload.complete", "object.put", "object.put"]
            assert secondary.store.export_ops(0) == primary.store.export_ops(0)
            assert secondary.store.db.execute(versions).fetchall() == primary.store.db.execute(versions).fetchall()
            assert secondary.store.db.execute(meta).fetchall() == primary.store.db.execute(meta).fetchall()
            assert secondary.store.db.execute("SELECT COUNT(*) FROM parts").fetchone()[0] == 0
            assert _leftovers(secondary) == []
        finally:
            await primary.on_stop()
            await secondary.on_stop()
            for server in servers:
                await server.close()

    asyncio.run(scenario())
