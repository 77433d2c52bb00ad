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

import re
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common.accounts import AccountResolver
from components.common.names import valid_bucket
from components.common.service import Service

from components.walrus.acls import Acls
from components.walrus.auth import S3Auth
from components.walrus.buckets import Buckets
from components.walrus.copies import Copies
from components.walrus.forms import PostForms
from components.walrus.objects import Objects
from components.walrus.routing import PREFIX, S3Router, error_response
from components.walrus.s3 import S3Error
from components.walrus.store import Store
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
        from .replication import WalrusReplication  # here: it takes the store's names from this module

        self.replication = WalrusReplication(self)  # before the base class sets up the routes to it
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
        self.replica = None  # the session to the HA peer, opened in on_start when HA is on
        if self.ha is not None:
            self.ha.last_seq = lambda: self.store.last_seq
            self.ha.on_demote = self.replication.on_demote

    async def on_start(self) -> None:
        await self.replication.start()

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/internal/ha/apply", self.replication.handle_apply)
        app.router.add_get("/internal/ha/ops", self.replication.handle_ops)
        app.router.add_get("/internal/ha/file/{name}", self.replication.handle_file)
        app.router.add_route("GET", "/internal/object", self.handle_internal_object)
        app.router.add_route("HEAD", "/internal/object", self.handle_internal_object)
        app.router.add_route("*", PREFIX, self.dispatch)
        # Any character, a newline too: a name that holds one gets its S3 error, not a 404.
        app.router.add_route("*", PREFIX + r"/{rest:[\s\S]*}", self.dispatch)

    async def on_stop(self) -> None:
        await self.accounts.close()
        await self.replication.stop()

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

    async def replicate(self) -> None:
        """Ship what the DISABLED peer lacks before acknowledging (replication.py)."""
        await self.replication.replicate()

    # -- internal: image downloads by NCs -------------------------------------------------------

    async def handle_internal_object(self, request: web.Request) -> web.StreamResponse:
        self.require_internal(request, "nc")
        if not self.may_serve():
            return web.Response(status=503, text=f"{self.host} is {self.state.value}")
        row = self.store.obj(request.query.get("bucket", ""), request.query.get("key", ""))
        if row is None:
            return web.Response(status=404, text="no such object")
        return await self.objects.send(request, row)
