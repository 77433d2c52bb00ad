"""Walrus's replication to its DISABLED peer and its catch-up.

What moves is the store's op log and the objects' bytes: the push
(POST /internal/ha/apply, the op in the X-Eucalab-Op header) streams an object's or a
part's file with its op; a completed upload travels without, and the peer assembles it
from the parts it holds. A member behind its ENABLED peer reads the ops it lacks
(GET /internal/ha/ops?after=N) and fetches the files they name
(GET /internal/ha/file/{name}). What every replicating component shares is in
components/common/replication.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import aiohttp
from aiohttp import web

from components.common.replication import REPLICATION_FAILED, REPLICATION_REFUSED, Replication, after_param

from .s3 import S3Error
from .service import BYTE_OPS, OBJECT_FILE, STREAM_TIMEOUT, ReplicaError, check_replica
from .store import CHUNK, concatenate

SESSION_TIMEOUT = aiohttp.ClientTimeout(total=5)


class WalrusReplication(Replication):
    """Walrus's side of its pair's replication; the service builds one and routes to it."""

    discards_superseded = True

    def __init__(self, svc):
        super().__init__(svc, SESSION_TIMEOUT)
        self._replica_lock = asyncio.Lock()  # a DISABLED member applies one op at a time
        self._replicate_lock = asyncio.Lock()  # an ENABLED member streams to its peer once at a time

    @property
    def store(self):
        return self.svc.store

    def position(self) -> int:
        return self.store.last_seq

    # -- the push ---------------------------------------------------------------------------

    async def replicate(self) -> None:
        """Ship what the DISABLED peer lacks (ops and object bytes) before acknowledging.

        Writes that arrive while an image is streaming wait for it, then send only
        what is still missing, instead of each sending the image again.
        """
        if self.svc.ha is None:
            return
        async with self._replicate_lock:
            refused = await self._replicate()
        await self.refuse_unless_acknowledged(
            refused, self.store.last_seq,
            S3Error("ServiceUnavailable", "the write could not be replicated to the peer; retry", 503))

    async def _replicate(self) -> bool | None:
        """None when the peer has everything (or is dead); else whether the peer refused."""
        ha = self.svc.ha
        if ha.peer_took_over():
            return True  # never acknowledged: the peer is primary now
        if not ha.peer_alive() or ha.peer.state != "DISABLED":
            return None
        for entry in self.store.export_ops(ha.peer.last_seq):
            op = entry["op"]
            body = None
            if op["type"] in BYTE_OPS:
                try:
                    # Streamed from the open file: an image is never held in memory, and a
                    # concurrent overwrite cannot remove it under the request.
                    body = open(self.store.objects / op["file"], "rb")
                except FileNotFoundError:
                    continue  # replaced since: a later op carries the object
            try:
                async with self.svc.replica.post(f"{self.peer_url()}/internal/ha/apply",
                                                 data=body if body is not None else b"", timeout=STREAM_TIMEOUT,
                                                 headers={"X-Eucalab-Op": json.dumps(entry),
                                                          "X-Eucalab-Epoch": str(ha.epoch)}) as r:
                    answer = await r.json(content_type=None)
                    if r.status != 200:
                        self.svc.events.emit(REPLICATION_REFUSED, status=r.status, answer=answer)
                        return True
                    ha.peer.last_seq = int(answer["last_seq"])
            except Exception as exc:
                self.svc.events.emit(REPLICATION_FAILED, error=repr(exc))
                return False
            finally:
                if body is not None:
                    body.close()
        return None

    # -- what the peer sends ------------------------------------------------------------------

    async def handle_apply(self, request: web.Request) -> web.Response:
        """POST /internal/ha/apply: one op from the ENABLED peer, with its bytes."""
        svc = self.svc
        svc.require_internal(request, "walrus")
        ha = svc.ha
        if ha is None or svc.state.value == "ENABLED":
            return web.json_response({"error": "not a secondary"}, status=409)
        try:
            entry = json.loads(request.headers["X-Eucalab-Op"])
            sender_epoch = int(request.headers.get("X-Eucalab-Epoch", "0"))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": f"malformed replicated op: {exc!r}"}, status=400)
        if sender_epoch < max(ha.epoch, ha.peer.epoch):  # a stale ex-primary's stream
            return web.json_response({"error": "stale epoch", "current": max(ha.epoch, ha.peer.epoch)}, status=409)
        try:
            entry = check_replica(entry)
            await self._apply_replica(entry, request.content if entry["op"].get("type") in BYTE_OPS else None)
        except (ReplicaError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"last_seq": self.store.last_seq})

    async def _apply_replica(self, entry: dict, body: aiohttp.StreamReader | None) -> None:
        """Apply one replicated op; an object's or a part's bytes stream to disk first (any size,
        one chunk held). A completed upload is assembled from the parts this member holds, or,
        lacking one, its object fetched from the peer.

        Concurrent streams may carry the same op: the first to finish applies it, the
        others find it applied and drop their copy.
        """
        entry = check_replica(entry)
        if entry["seq"] <= self.store.last_seq:
            return
        op = entry["op"]
        tmp = None
        if op["type"] == "upload.complete" and body is None:
            try:
                opened = [open(self.store.objects / f, "rb") for _, f in op["parts"]]
            except FileNotFoundError:
                await self._fetch_from_peer(entry)
                return
            tmp = self.store.objects / f".{op['file']}.{uuid.uuid4().hex[:8]}.part"
            try:
                await asyncio.to_thread(concatenate, opened, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                for f in opened:
                    f.close()
        elif body is not None:
            tmp = self.store.objects / f".{op['file']}.{uuid.uuid4().hex[:8]}.part"
            try:
                size = 0
                with open(tmp, "wb") as f:
                    async for chunk in body.iter_chunked(CHUNK):
                        size += len(chunk)
                        f.write(chunk)
                    if size != op["size"]:
                        raise ReplicaError(f"{op['type']} {op.get('key', op.get('upload'))!r}: got {size} bytes, "
                                           f"the op says {op['size']}")
                    f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        async with self._replica_lock:
            if entry["seq"] <= self.store.last_seq:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                return
            if tmp is not None:
                await asyncio.to_thread(self.store.install, tmp, op["file"])
            self.store.apply(op, seq=entry["seq"], epoch=entry["epoch"])

    async def _fetch_from_peer(self, entry: dict) -> None:
        """Apply an op whose file this member lacks, with the file fetched from the ENABLED peer.

        A file the peer no longer has was replaced or removed there by a later op: this
        op's rows are applied without it, and that later op (in the same log) supersedes them.
        """
        async with self.svc.replica.get(f"{self.peer_url()}/internal/ha/file/{entry['op']['file']}",
                                        timeout=STREAM_TIMEOUT) as r:
            if r.status == 200:
                await self._apply_replica(entry, r.content)
                return
        async with self._replica_lock:
            if entry["seq"] > self.store.last_seq:
                self.store.apply(entry["op"], seq=entry["seq"], epoch=entry["epoch"])

    # -- what this member serves its peer ------------------------------------------------------

    async def handle_ops(self, request: web.Request) -> web.Response:
        """GET /internal/ha/ops?after=N: the ops after N."""
        self.svc.require_internal(request, "walrus")
        return web.json_response({"ops": self.store.export_ops(after_param(request))})

    async def handle_file(self, request: web.Request) -> web.StreamResponse:
        """GET /internal/ha/file/{name}: an object's or a part's file."""
        self.svc.require_internal(request, "walrus")
        name = request.match_info["name"]
        if not OBJECT_FILE.fullmatch(name) or not (self.store.objects / name).exists():
            return web.Response(status=404)
        return web.FileResponse(self.store.objects / name)

    # -- the catch-up -----------------------------------------------------------------------

    async def pull(self) -> dict:
        """The ops this member lacks, and the files they name, from the ENABLED peer."""
        async with self.svc.replica.get(f"{self.peer_url()}/internal/ha/ops",
                                        params={"after": str(self.store.last_seq)}) as r:
            ops = (await r.json())["ops"]
        for entry in ops:
            if entry["op"]["type"] in BYTE_OPS:
                await self._fetch_from_peer(entry)
            else:
                await self._apply_replica(entry, None)
        return {}

    async def reset_state(self) -> None:
        self.store.reset()

    async def on_demote(self, reason: str) -> None:
        await self.discard_if_superseded(reason)
