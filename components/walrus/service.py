"""Walrus (port 8773): the S3-compatible object store, path-style under /services/Walrus.

``Walrus`` is the service: it holds the store and HA replication to its peer, and
builds one manager per concern of the S3 API, each in a module of its own:
``routing`` (which request goes where, S3 error XML), ``auth`` (SigV4, and the signed
policy of a browser form), ``buckets``, ``objects`` (PutObject, GetObject with Range and
conditions, DeleteObject, DeleteObjects), ``copies``, ``uploads`` (multipart),
``versioning``, ``acls`` (and the permission checks the others use), ``tagging``,
``forms`` (browser-form POST uploads), ``bodies`` (request bodies in, digests checked)
and ``store`` (SQLite metadata, object files, the op log). The S3 protocol's rules
that need neither store nor server are in ``s3``.

Machine images are objects; NCs, which hold the run's internal token rather than
user keys, fetch them at ``GET|HEAD /internal/object?bucket=&key=``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common.accounts import AccountResolver
from components.common.names import valid_bucket
from components.common.service import Service
from components.common.supervise import supervise

from components.walrus.acls import Acls
from components.walrus.auth import S3Auth
from components.walrus.buckets import Buckets
from components.walrus.copies import Copies
from components.walrus.forms import PostForms
from components.walrus.objects import Objects
from components.walrus.routing import PREFIX, S3Router, error_response
from components.walrus.s3 import S3Error
from components.walrus.store import CHUNK, Store, concatenate
from components.walrus.tagging import Tagging
from components.walrus.uploads import MultipartUploads
from components.walrus.versioning import Versioning

OBJECT_FILE = re.compile(r"[0-9a-f]{32}")  # an object's or a part's file in the store: a uuid4 in hex
# Replication streams whole objects (images of hundreds of MiB): no total time limit,
# only a stall limit.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=10)
# Logged operations whose bytes travel with them to the DISABLED peer (an upload's
# completion travels without: the peer assembles it from the parts it already has).
BYTE_OPS = ("object.put", "upload.part")



class ReplicaError(Exception):
    """A replicated op that cannot be applied as sent (malformed, or its object's bytes do not match it)."""


def check_replica(entry) -> dict:
    """A replicated entry ({seq, epoch, op}) with its numbers as ints, once every name in it
    that reaches the disk or the store has its format: the object's file a uuid4 in hex (a
    path component, checked before any file is opened), the bucket a valid bucket name.
    Raises ReplicaError otherwise."""
    try:
        op = dict(entry["op"])
        checked = {"seq": int(entry["seq"]), "epoch": int(entry["epoch"]), "op": op}
        if "file" in op and not (isinstance(op["file"], str) and OBJECT_FILE.fullmatch(op["file"])):
            raise ReplicaError(f"malformed object file name {op['file']!r}")
        parts = op.get("parts", [])
        if not isinstance(parts, list) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], str) and OBJECT_FILE.fullmatch(p[1])
                for p in parts):
            raise ReplicaError("malformed part list")
        if "bucket" in op and not (isinstance(op["bucket"], str) and valid_bucket(op["bucket"])):
            raise ReplicaError(f"malformed bucket name {op['bucket']!r}")
        if op.get("type") == "object.put" and not ("file" in op and isinstance(op.get("size"), int)):
            raise ReplicaError("object.put without its file or size")
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplicaError(f"malformed replicated op: {exc!r}") from None
    return checked


class Walrus(Service):
    """The Walrus service: the store, HA replication to the peer, and one manager per concern of the S3 API."""

    component = "walrus"
    api_prefixes = (PREFIX,)

    def __init__(self, config: dict):
        super().__init__(config)
        self.store = Store(Path(config["data_dir"]))
        clc = (config.get("endpoints", {}).get("clc") or "").split("/services/")[0] or None
        self.accounts = AccountResolver(config, clc)
        # One manager per concern of the S3 API; each reaches the others through this facade.
        self.auth = S3Auth(self.accounts, config.get("region", "eucalyptus"))
        self.router = S3Router(self)
        self.acls = Acls(self)
        self.versions = Versioning(self)
        self.buckets = Buckets(self)
        self.objects = Objects(self)
        self.copies = Copies(self)
        self.uploads = MultipartUploads(self)
        self.tagging = Tagging(self)
        self.forms = PostForms(self)
        self.max_object = int(config.get("max_object_bytes", 5 * 2**30))
        self.replica = None
        self._catchup: asyncio.Task | None = None
        self._replica_lock = asyncio.Lock()  # a DISABLED member applies one op at a time
        self._replicate_lock = asyncio.Lock()  # an ENABLED member streams to its peer once at a time
        if self.ha is not None:
            self.ha.last_seq = lambda: self.store.last_seq
            self.ha.on_demote = self._on_demote

    async def on_start(self) -> None:
        if self.ha is not None:
            self.replica = aiohttp.ClientSession(headers={"X-Eucalab-Internal-Token": self.config["internal_token"]},
                                                 timeout=aiohttp.ClientTimeout(total=5))
            self._catchup = asyncio.create_task(self._catch_up_loop())

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/internal/ha/apply", self.handle_ha_apply)
        app.router.add_get("/internal/ha/ops", self.handle_ha_ops)
        app.router.add_get("/internal/ha/file/{name}", self.handle_ha_file)
        app.router.add_route("GET", "/internal/object", self.handle_internal_object)
        app.router.add_route("HEAD", "/internal/object", self.handle_internal_object)
        app.router.add_route("*", PREFIX, self.dispatch)
        # Any character, a newline too: a name that holds one gets its S3 error, not a 404.
        app.router.add_route("*", PREFIX + r"/{rest:[\s\S]*}", self.dispatch)

    async def on_stop(self) -> None:
        await self.accounts.close()
        if self._catchup:
            self._catchup.cancel()
        if self.replica is not None:
            await self.replica.close()

    def unavailable(self, request: web.Request) -> web.Response:
        return error_response(S3Error("ServiceUnavailable", f"{self.host} is {self.state.value}", 503))

    def status_extra(self) -> dict:
        n = self.store.db.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        return {"objects": n}

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Every request under /services/Walrus (``S3Router``)."""
        return await self.router.dispatch(request)

    # -- HA replication ---------------------------------------------------------------------------

    def _apply(self, op: dict) -> None:
        self.store.apply(op, epoch=self.ha.epoch if self.ha else 1)

    def _peer_url(self) -> str:
        return f"http://{self.ha.peer_address()}:{self.config['port']}"

    async def replicate(self) -> None:
        """Ship what the DISABLED peer lacks (ops and object bytes) before acknowledging.

        Writes that arrive while an image is streaming wait for it, then send only
        what is still missing, instead of each sending the image again.
        """
        if self.ha is None:
            return
        async with self._replicate_lock:
            refused = await self._replicate()
        if refused is not None and not await self.ha.may_acknowledge_unreplicated(refused, self.store.last_seq):
            self.events.emit("ha.write_not_acknowledged", refused=refused)
            raise S3Error("ServiceUnavailable", "the write could not be replicated to the peer; retry", 503)

    async def _replicate(self) -> bool | None:
        """None when the peer has everything (or is dead); else whether the peer refused."""
        ha = self.ha
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
                async with self.replica.post(f"{self._peer_url()}/internal/ha/apply",
                                             data=body if body is not None else b"", timeout=STREAM_TIMEOUT,
                                             headers={"X-Eucalab-Op": json.dumps(entry),
                                                      "X-Eucalab-Epoch": str(ha.epoch)}) as r:
                    answer = await r.json(content_type=None)
                    if r.status != 200:
                        self.events.emit("ha.replication_refused", status=r.status, answer=answer)
                        return True
                    ha.peer.last_seq = int(answer["last_seq"])
            except Exception as exc:
                self.events.emit("ha.replication_failed", error=repr(exc))
                return False
            finally:
                if body is not None:
                    body.close()

    async def handle_ha_apply(self, request: web.Request) -> web.Response:
        self.require_internal(request, "walrus")
        ha = self.ha
        if ha is None or self.state.value == "ENABLED":
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
        async with self.replica.get(f"{self._peer_url()}/internal/ha/file/{entry['op']['file']}",
                                    timeout=STREAM_TIMEOUT) as r:
            if r.status == 200:
                await self._apply_replica(entry, r.content)
                return
        async with self._replica_lock:
            if entry["seq"] > self.store.last_seq:
                self.store.apply(entry["op"], seq=entry["seq"], epoch=entry["epoch"])

    async def handle_ha_ops(self, request: web.Request) -> web.Response:
        self.require_internal(request, "walrus")
        return web.json_response({"ops": self.store.export_ops(int(request.query.get("after", "0")))})

    async def handle_ha_file(self, request: web.Request) -> web.StreamResponse:
        self.require_internal(request, "walrus")
        name = request.match_info["name"]
        if not OBJECT_FILE.fullmatch(name) or not (self.store.objects / name).exists():
            return web.Response(status=404)
        return web.FileResponse(self.store.objects / name)

    async def _catch_up_loop(self) -> None:
        """``_catch_up_once`` every 0.2 s, supervised (``walrus.catch_up``)."""
        await supervise(self.events, "walrus.catch_up", self._catch_up_once, pause=0.2)

    async def _catch_up_once(self) -> None:
        """A DISABLED member pulls the ops and objects it lacks from the ENABLED peer."""
        ha = self.ha
        if self.state.value == "ENABLED" or not ha.peer_alive() or ha.peer.state != "ENABLED":
            return
        if ha.discard_pending:
            self._discard_if_superseded("a newer primary to catch up from")
            if ha.discard_pending:
                return  # never mix a kept ex-primary's state with the peer's
        if ha.peer.last_seq <= self.store.last_seq:
            return
        try:
            async with self.replica.get(f"{self._peer_url()}/internal/ha/ops",
                                        params={"after": str(self.store.last_seq)}) as r:
                ops = (await r.json())["ops"]
            for entry in ops:
                if entry["op"]["type"] in BYTE_OPS:
                    await self._fetch_from_peer(entry)
                else:
                    await self._apply_replica(entry, None)
            self.events.emit("ha.caught_up", last_seq=self.store.last_seq)
        except Exception as exc:
            self.events.emit("ha.catch_up_failed", error=repr(exc))

    async def _on_demote(self, reason: str) -> None:
        self._discard_if_superseded(reason)

    def _discard_if_superseded(self, reason: str) -> None:
        """Whatever made it step down, an ex-primary may hold writes nobody acknowledged: the
        new primary's log wins (catch-up), once an ENABLED peer holds a newer position
        (HAAgent.may_discard_state); until then the state is kept."""
        if not self.ha.may_discard_state():
            return
        self.store.reset()
        self.ha.discard_pending = False
        self.events.emit("ha.state_reset", reason=reason)

    # -- internal: image downloads by NCs -------------------------------------------------------

    async def handle_internal_object(self, request: web.Request) -> web.StreamResponse:
        self.require_internal(request, "nc")
        if not self.may_serve():
            return web.Response(status=503, text=f"{self.host} is {self.state.value}")
        row = self.store.obj(request.query.get("bucket", ""), request.query.get("key", ""))
        if row is None:
            return web.Response(status=404, text="no such object")
        return await self.objects.send(request, row)
