"""Walrus (port 8773): the S3-compatible object store, path-style under /services/Walrus.

Operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, PutObject, GetObject
(with Range), HeadObject, DeleteObject, ListObjectsV2 (prefix, delimiter,
continuation, start-after), multipart upload (Create, UploadPart, UploadPartCopy,
Complete, Abort, ListParts, ListMultipartUploads), DeleteObjects, CopyObject,
conditional GET/HEAD, versioning (Put/GetBucketVersioning, ListObjectVersions, version
ids, delete markers), ACLs (canned and grants, Get/Put{Bucket,Object}Acl, anonymous
access where an ACL allows it), object tagging, browser-form POST uploads (SigV4
policy); S3 error XML. Objects are files named by a random id
under data_dir/objects (never by their key, so no key can escape the store),
written to a temporary file, fsynced and renamed before their metadata row is
committed: after a crash an object is either entirely there or not at all.

Machine images are objects; NCs, which hold the run's internal token rather than
user keys, fetch them at ``GET|HEAD /internal/object?bucket=&key=``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import sqlite3
import uuid
import zlib
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote
from xml.etree import ElementTree as ET

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from components.common.accounts import AccountResolver, AccountsUnavailable, access_key_of
from components.common.names import valid_bucket, valid_key, xml_text
from components.common.service import Service
from components.common.sigv4 import ACCESS_KEY_RE, ChunkedDecoder, SigV4Error, signing_key, verify

from components.walrus.s3 import (CHECKSUMS, GRANT_HEADERS, S3_NS, S3Error, acl_from_headers, acl_from_xml, acl_xml,
                                  checked_tags, composite_etag, int_param, iso_time, meta_of, page_by_key, parse_range,
                                  permitted, precondition, precondition_failed, refuse_unverified, sub,
                                  tags_from_header, verify_digests, xml_response)

PREFIX = "/services/Walrus"
OBJECT_FILE = re.compile(r"[0-9a-f]{32}")  # an object's or a part's file in the store: a uuid4 in hex
SMALL = 1 << 20  # objects up to this size are answered from memory
CHUNK = 1 << 16
# Replication streams whole objects (images of hundreds of MiB): no total time limit,
# only a stall limit.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=10)
MAX_XML_BODY = 1 << 16  # request bodies that are XML documents (CreateBucketConfiguration)
MAX_PARTS = 10000  # S3's limits on a multipart upload: part numbers 1..10000,
MIN_PART = 5 << 20  # every part but the last at least 5 MiB
MAX_POST_FIELDS = 20 << 10  # a browser-form POST: the fields before the file, all together (as S3)
MAX_DELETE_BODY = 8 << 20  # DeleteObjects: 1,000 keys of up to 1,024 bytes, each character escaped
# Sub-resources of the S3 API that Walrus does not implement: refused with NotImplemented
# rather than served as if they were plain bucket or object requests.
UNSUPPORTED_SUBRESOURCES = frozenset((
    "accelerate", "analytics", "attributes", "cors", "encryption", "intelligent-tiering",
    "inventory", "legal-hold", "lifecycle", "logging", "metrics", "notification", "object-lock",
    "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "replication",
    "requestPayment", "restore", "retention", "select", "torrent", "website"))
AUTH = web.RequestKey("auth", object)  # the request's AuthResult, for handlers that read a signed body
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


def concatenate(files: list, path: Path) -> None:
    """Write open files one after the other into ``path``, fsynced."""
    with open(path, "wb") as out:
        for f in files:
            while chunk := f.read(CHUNK * 16):
                out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


class Store:
    """Buckets and object metadata in SQLite; object bytes in files."""

    def __init__(self, root: Path):
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "walrus.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # see docs/ha.md, "Durability and the event loop"
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, account TEXT NOT NULL,
                                                created REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS objects (bucket TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL,
                etag TEXT NOT NULL, content_type TEXT, modified REAL NOT NULL, meta TEXT, file TEXT NOT NULL,
                PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, op TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL,
                account TEXT NOT NULL, initiated REAL NOT NULL, content_type TEXT, meta TEXT, acl TEXT, tags TEXT);
            CREATE TABLE IF NOT EXISTS tags (bucket TEXT NOT NULL, key TEXT NOT NULL, tags TEXT NOT NULL,
                PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS acls (bucket TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL,
                grants TEXT NOT NULL, PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS parts (upload TEXT NOT NULL, number INTEGER NOT NULL, size INTEGER NOT NULL,
                etag TEXT NOT NULL, modified REAL NOT NULL, file TEXT NOT NULL, PRIMARY KEY (upload, number));
            CREATE TABLE IF NOT EXISTS versioning (bucket TEXT PRIMARY KEY, status TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS versions (bucket TEXT NOT NULL, key TEXT NOT NULL, vid TEXT NOT NULL,
                n INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, content_type TEXT,
                modified REAL NOT NULL, meta TEXT, file TEXT, marker INTEGER NOT NULL,
                PRIMARY KEY (bucket, key, vid));
        """)
        self._sweep()

    @property
    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0]

    def apply(self, op: dict, seq: int | None = None, epoch: int = 1) -> list[str]:
        """Apply one logged operation in one transaction; returns the files the change made obsolete.

        The op log is what HA replication ships: a DISABLED peer applies the same ops
        (with the object and part bytes) and so holds the same buckets, objects and uploads.
        """
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        obsolete: list[str] = []
        try:
            t = op["type"]
            if t == "bucket.create":
                cur.execute("INSERT INTO buckets VALUES (?, ?, ?)", (op["bucket"], op["account"], op["created"]))
            elif t == "bucket.delete":
                cur.execute("DELETE FROM buckets WHERE name=?", (op["bucket"],))
                cur.execute("DELETE FROM versioning WHERE bucket=?", (op["bucket"],))
                cur.execute("DELETE FROM acls WHERE bucket=?", (op["bucket"],))
                cur.execute("DELETE FROM tags WHERE bucket=?", (op["bucket"],))
                for (upload,) in cur.execute("SELECT id FROM uploads WHERE bucket=?", (op["bucket"],)).fetchall():
                    obsolete += self._drop_upload(cur, upload)
            elif t == "bucket.versioning":
                if not cur.execute("SELECT 1 FROM versioning WHERE bucket=?", (op["bucket"],)).fetchone():
                    # First configured: each object so far becomes its key's "null" version.
                    cur.execute("INSERT INTO versions SELECT bucket, key, 'null', 0, size, etag, content_type, "
                                "modified, meta, file, 0 FROM objects WHERE bucket=?", (op["bucket"],))
                cur.execute("INSERT OR REPLACE INTO versioning VALUES (?, ?)", (op["bucket"], op["status"]))
            elif t in ("object.put", "upload.complete"):
                if t == "upload.complete":
                    obsolete += self._drop_upload(cur, op["upload"])
                old = cur.execute("SELECT file FROM objects WHERE bucket=? AND key=?",
                                  (op["bucket"], op["key"])).fetchone()
                cur.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (op["bucket"], op["key"], op["size"], op["etag"], op["content_type"], op["modified"],
                             json.dumps(op["meta"]), op["file"]))
                obsolete += [old[0]] if old and old[0] != op["file"] else []
                if op.get("version") is not None:
                    obsolete += self._add_version(cur, op, marker=False)
            elif t == "object.delete":
                if self.versioning(op["bucket"]) is None:  # the key is gone, and its ACL and tags with it
                    cur.execute("DELETE FROM acls WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                    cur.execute("DELETE FROM tags WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                old = cur.execute("SELECT file FROM objects WHERE bucket=? AND key=?",
                                  (op["bucket"], op["key"])).fetchone()
                obsolete += [old[0]] if old else []
                if op.get("version") is not None:  # that version, for good
                    obsolete += self._remove_version(cur, op["bucket"], op["key"], op["version"])
                    self._refresh_current(cur, op["bucket"], op["key"])
                else:
                    cur.execute("DELETE FROM objects WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                    if op.get("marker") is not None:
                        obsolete += self._add_version(cur, {**op, "version": op["marker"]}, marker=True)
            elif t == "upload.create":
                cur.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (op["upload"], op["bucket"], op["key"], op["account"], op["initiated"],
                             op["content_type"], json.dumps(op["meta"]), json.dumps(op.get("acl")),
                             json.dumps(op.get("tags", {}))))
            elif t == "upload.part":
                old = cur.execute("SELECT file FROM parts WHERE upload=? AND number=?",
                                  (op["upload"], op["number"])).fetchone()
                cur.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?)",
                            (op["upload"], op["number"], op["size"], op["etag"], op["modified"], op["file"]))
                obsolete += [old[0]] if old and old[0] != op["file"] else []
            elif t == "upload.abort":
                obsolete += self._drop_upload(cur, op["upload"])
            elif t not in ("acl.put", "tags.put"):
                raise ValueError(f"unknown operation {t!r}")
            if "tags" in op and t in ("object.put", "upload.complete", "tags.put"):
                cur.execute("DELETE FROM tags WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                if op["tags"]:
                    cur.execute("INSERT INTO tags VALUES (?, ?, ?)", (op["bucket"], op["key"], json.dumps(op["tags"])))
            if op.get("acl") is not None and t in ("bucket.create", "object.put", "upload.complete", "acl.put"):
                cur.execute("INSERT OR REPLACE INTO acls VALUES (?, ?, ?, ?)",
                            (op["bucket"], op.get("key", ""), op["acl"]["owner"], json.dumps(op["acl"]["grants"])))
            # A file another row (a version, the current object) still names stays.
            obsolete = [f for f in dict.fromkeys(obsolete) if f and not cur.execute(
                "SELECT 1 FROM objects WHERE file=? UNION ALL SELECT 1 FROM versions WHERE file=? "
                "UNION ALL SELECT 1 FROM parts WHERE file=? LIMIT 1", (f, f, f)).fetchone()]
            seq = seq if seq is not None else (cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0] + 1)
            cur.execute("INSERT INTO ops VALUES (?, ?, ?)", (seq, epoch, json.dumps(op, sort_keys=True)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        for name in obsolete:
            (self.objects / name).unlink(missing_ok=True)
        return obsolete

    @staticmethod
    def _remove_version(cur, bucket: str, key: str, vid: str) -> list[str]:
        row = cur.execute("SELECT file FROM versions WHERE bucket=? AND key=? AND vid=?", (bucket, key, vid)).fetchone()
        cur.execute("DELETE FROM versions WHERE bucket=? AND key=? AND vid=?", (bucket, key, vid))
        return [row[0]] if row and row[0] else []

    def _add_version(self, cur, op: dict, marker: bool) -> list[str]:
        """A new latest version (or delete marker) of a key in a versioned bucket; a "null"
        version replaces the key's earlier "null" one. Returns the files that replaced."""
        gone = self._remove_version(cur, op["bucket"], op["key"], op["version"])
        n = cur.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM versions").fetchone()[0]
        if marker:
            row = (0, "", None, op["modified"], None, None)
        else:
            row = (op["size"], op["etag"], op["content_type"], op["modified"], json.dumps(op["meta"]), op["file"])
        cur.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (op["bucket"], op["key"], op["version"], n, *row, int(marker)))
        return gone

    @staticmethod
    def _refresh_current(cur, bucket: str, key: str) -> None:
        """The key's current object is its latest version, unless that is a delete marker."""
        cur.execute("DELETE FROM objects WHERE bucket=? AND key=?", (bucket, key))
        cur.execute("INSERT INTO objects SELECT bucket, key, size, etag, content_type, modified, meta, file "
                    "FROM (SELECT * FROM versions WHERE bucket=? AND key=? ORDER BY n DESC LIMIT 1) "
                    "WHERE marker=0", (bucket, key))

    @staticmethod
    def _drop_upload(cur, upload: str) -> list[str]:
        """Remove a multipart upload and its parts' rows; returns the parts' files."""
        files = [row[0] for row in cur.execute("SELECT file FROM parts WHERE upload=?", (upload,))]
        cur.execute("DELETE FROM parts WHERE upload=?", (upload,))
        cur.execute("DELETE FROM uploads WHERE id=?", (upload,))
        return files

    def export_ops(self, after: int) -> list[dict]:
        return [{"seq": seq, "epoch": epoch, "op": json.loads(op)} for seq, epoch, op in
                self.db.execute("SELECT seq, epoch, op FROM ops WHERE seq > ? ORDER BY seq", (after,))]

    def reset(self) -> None:
        self.db.executescript("DELETE FROM buckets; DELETE FROM objects; DELETE FROM ops; DELETE FROM uploads; "
                              "DELETE FROM parts; DELETE FROM versioning; DELETE FROM versions; "
                              "DELETE FROM acls; DELETE FROM tags;")
        for f in self.objects.iterdir():
            f.unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Remove files no metadata row points to (left by a crash mid-write)."""
        live = {row[0] for row in self.db.execute("SELECT file FROM objects UNION SELECT file FROM parts "
                                                  "UNION SELECT file FROM versions")}
        for f in self.objects.iterdir():
            if f.name not in live:
                f.unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str, delimiter: str, after: str,
             max_keys: int) -> tuple[list[tuple], list[str], bool, str]:
        """One page of keys after ``after``: (contents, common prefixes, truncated, resume point).

        ``resume`` is the string the next page lists after: the last key, or a
        common prefix followed by the highest code point, so the keys it rolled up
        are skipped and a common prefix never repeats across pages.
        """
        rows = self.db.execute("SELECT key, size, etag, modified FROM objects WHERE bucket=? AND key > ? "
                               "AND key >= ? ORDER BY key", (bucket, after, prefix))
        contents: list[tuple] = []
        prefixes: list[str] = []
        resume, truncated = after, False
        for key, size, etag, modified in rows:
            if not key.startswith(prefix):
                break  # sorted: past every key under the prefix
            common = None
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[:cut + len(delimiter)]
                    if prefixes and prefixes[-1] == common:
                        continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = max_keys > 0
                break
            if common is not None:
                prefixes.append(common)
                resume = common + "\U0010ffff"
            else:
                contents.append((key, size, etag, modified))
                resume = key
        return contents, prefixes, truncated, resume

    def install(self, tmp: Path, name: str) -> None:
        """Rename a written, fsynced temporary file into place durably (the rename too)."""
        os.replace(tmp, self.objects / name)
        fd = os.open(self.objects, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def bucket(self, name: str):
        return self.db.execute("SELECT name, account, created FROM buckets WHERE name=?", (name,)).fetchone()

    def obj(self, bucket: str, key: str):
        return self.db.execute("SELECT key, size, etag, content_type, modified, meta, file FROM objects "
                               "WHERE bucket=? AND key=?", (bucket, key)).fetchone()

    def versioning(self, bucket: str) -> str | None:
        """"Enabled", "Suspended", or None for a bucket whose versioning was never configured."""
        row = self.db.execute("SELECT status FROM versioning WHERE bucket=?", (bucket,)).fetchone()
        return row[0] if row else None

    def version(self, bucket: str, key: str, vid: str | None):
        """A version as (key, size, etag, content_type, modified, meta, file, vid, marker), the
        latest when ``vid`` is None; a bucket never versioned holds only "null" versions."""
        if self.versioning(bucket) is None:
            row = self.obj(bucket, key) if vid in (None, "null") else None
            return None if row is None else (*row, "null", 0)
        if vid is None:
            return self.db.execute("SELECT key, size, etag, content_type, modified, meta, file, vid, marker "
                                   "FROM versions WHERE bucket=? AND key=? ORDER BY n DESC LIMIT 1",
                                   (bucket, key)).fetchone()
        return self.db.execute("SELECT key, size, etag, content_type, modified, meta, file, vid, marker "
                               "FROM versions WHERE bucket=? AND key=? AND vid=?", (bucket, key, vid)).fetchone()

    def tags(self, bucket: str, key: str) -> dict:
        row = self.db.execute("SELECT tags FROM tags WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        return json.loads(row[0]) if row else {}

    def upload(self, bucket: str, key: str, upload: str):
        return self.db.execute("SELECT id, account, initiated, content_type, meta, acl, tags FROM uploads "
                               "WHERE id=? AND bucket=? AND key=?", (upload, bucket, key)).fetchone()

    def acl(self, bucket: str, key: str = "") -> dict:
        """The ACL of a bucket (key "") or an object: {"owner", "grants": [[kind, grantee,
        permission], ...]}; without one stored (written before ACLs), private to the bucket's owner."""
        row = self.db.execute("SELECT owner, grants FROM acls WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        if row is not None:
            return {"owner": row[0], "grants": json.loads(row[1])}
        owner = self.bucket(bucket)[1]
        return {"owner": owner, "grants": [["id", owner, "FULL_CONTROL"]]}

    def parts(self, upload: str, after: int = 0) -> list[tuple]:
        return self.db.execute("SELECT number, size, etag, modified, file FROM parts WHERE upload=? AND number > ? "
                               "ORDER BY number", (upload, after)).fetchall()

    def assemble(self, files: list, name: str) -> None:
        """Concatenate open part files into the object file ``name`` (fsynced, renamed into place).

        Takes open files, so a part replaced or removed meanwhile still reads whole.
        """
        tmp = self.objects / f".{name}.part"
        try:
            concatenate(files, tmp)
            self.install(tmp, name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class Walrus(Service):
    component = "walrus"
    api_prefixes = (PREFIX,)

    def __init__(self, config: dict):
        from .replication import WalrusReplication  # here: it takes the store's names from this module

        self.replication = WalrusReplication(self)  # before the base class sets up the routes to it
        super().__init__(config)
        self.store = Store(Path(config["data_dir"]))
        clc = (config.get("endpoints", {}).get("clc") or "").split("/services/")[0] or None
        self.accounts = AccountResolver(config, clc)
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
        return self._error(S3Error("ServiceUnavailable", f"{self.host} is {self.state.value}", 503))

    def status_extra(self) -> dict:
        n = self.store.db.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        return {"objects": n}

    # -- plumbing -----------------------------------------------------------------------

    def _error(self, err: S3Error) -> web.Response:
        root = ET.Element("Error")
        sub(root, "Code", err.code)
        sub(root, "Message", xml_text(err.message))
        sub(root, "Resource", xml_text(err.resource))
        rid = uuid.uuid4().hex[:16].upper()
        sub(root, "RequestId", rid)
        resp = xml_response(root, err.status)
        resp.headers["x-amz-request-id"] = rid
        resp.headers.update(err.headers)
        return resp

    def _raw_path_query(self, request: web.Request) -> tuple[str, str]:
        raw = request.raw_path
        path, _, query = raw.partition("?")
        return path, query

    async def _authenticate(self, request: web.Request) -> tuple[str | None, object]:
        """(account, AuthResult) of a signed request; (None, None) for an anonymous one, which
        only an ACL granting AllUsers lets through."""
        if "Authorization" not in request.headers and not any(
                q in request.query for q in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm")):
            return None, None
        raw_path, raw_query = self._raw_path_query(request)
        access_key = access_key_of(request.headers, request.query)
        if access_key is not None and not ACCESS_KEY_RE.fullmatch(access_key):
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                          403, request.path)
        try:
            await self.accounts.ensure(access_key)
        except AccountsUnavailable as exc:
            raise S3Error("ServiceUnavailable", f"cannot check the access key now: {exc}", 503, request.path) from None
        try:
            auth = verify(request.method, raw_path, raw_query, request.headers, None,
                          self.accounts.lookup, dialect="s3", service="s3",
                          region=self.config.get("region", "eucalyptus"))
        except SigV4Error as exc:
            raise S3Error(exc.code, exc.message, exc.http_status, request.path) from None
        return auth.account_id, auth

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        rest = request.path[len(PREFIX):].lstrip("/")
        bucket, _, key = rest.partition("/")
        try:
            if not bucket and key == "":
                if request.method != "GET":
                    raise S3Error("MethodNotAllowed", "not allowed on the service", 405)
                account, _ = await self._authenticate(request)
                return self.list_buckets(account)
            if not valid_bucket(bucket):
                raise S3Error("InvalidBucketName", "The specified bucket is not valid.", 400, bucket)
            account, auth = await self._authenticate(request)
            request[AUTH] = auth  # for bucket handlers that read a signed body
            m = request.method
            unsupported = UNSUPPORTED_SUBRESOURCES.intersection(request.query)
            if unsupported:
                raise S3Error("NotImplemented", f"Walrus does not implement ?{min(unsupported)}", 501)
            if not key and "location" in request.query:
                if m != "GET":
                    raise S3Error("MethodNotAllowed", f"{m} is not allowed on ?location", 405)
                return self.bucket_location(account, bucket)
            if not key:
                if "uploads" in request.query:
                    handler = {"GET": self.list_uploads}.get(m)
                elif "delete" in request.query:
                    handler = {"POST": self.delete_objects}.get(m)
                elif "versioning" in request.query:
                    handler = {"GET": self.get_versioning, "PUT": self.put_versioning}.get(m)
                elif "versions" in request.query:
                    handler = {"GET": self.list_versions}.get(m)
                elif "acl" in request.query:
                    handler = {"GET": self.get_bucket_acl, "PUT": self.put_bucket_acl}.get(m)
                elif "tagging" in request.query:
                    raise S3Error("NotImplemented", "Walrus does not implement bucket tagging", 501)
                elif m == "POST" and request.content_type == "multipart/form-data":
                    handler = self.post_object
                else:
                    handler = {"PUT": self.create_bucket, "DELETE": self.delete_bucket, "GET": self.list_objects,
                               "HEAD": self.head_bucket}.get(m)
                if handler is None:
                    raise S3Error("MethodNotAllowed", f"{m} is not allowed on a bucket", 405)
                return await handler(request, account, bucket)
            if not valid_key(key):
                raise S3Error("KeyTooLongError", "Your key is too long", 400, key)
            if "uploadId" in request.query:
                handler = {"PUT": self.upload_part, "POST": self.complete_upload, "DELETE": self.abort_upload,
                           "GET": self.list_parts}.get(m)
            elif "uploads" in request.query:
                handler = {"POST": self.create_upload}.get(m)
            elif "acl" in request.query:
                handler = {"GET": self.get_object_acl, "PUT": self.put_object_acl}.get(m)
            elif "tagging" in request.query:
                handler = {"GET": self.get_tagging, "PUT": self.put_tagging, "DELETE": self.delete_tagging}.get(m)
            elif "partNumber" in request.query:
                raise S3Error("NotImplemented", "Walrus does not implement ?partNumber on an object", 501)
            elif "versionId" in request.query and m not in ("GET", "HEAD", "DELETE"):
                raise S3Error("InvalidArgument", f"versionId is not allowed on {m}", 400, key)
            else:
                handler = {"PUT": self.put_object, "GET": self.get_object, "HEAD": self.get_object,
                           "DELETE": self.delete_object}.get(m)
            if handler is None:
                raise S3Error("MethodNotAllowed", f"{m} is not allowed on an object", 405)
            return await handler(request, account, bucket, key, auth)
        except S3Error as err:
            if not err.resource:
                err.resource = request.path
            if request.method == "HEAD":  # a HEAD answer has no body: the code goes in a header
                return web.Response(status=err.status, headers={"x-amz-error-code": err.code, **err.headers})
            return self._error(err)

    async def _read_xml(self, request: web.Request, resource: str, limit: int = MAX_XML_BODY,
                        auth=None) -> ET.Element | None:
        """The request's XML document (None for an empty body), namespaces stripped.

        Bodies above ``limit`` get MaxMessageLengthExceeded, bad XML MalformedXML; the body
        is checked against every digest the client sent (with ``auth``, its signed SHA-256 too).
        """
        refuse_unverified(request.headers, resource)
        if (request.content_length or 0) > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400, resource)
        body = bytearray()
        while len(body) <= limit:  # read() may return part of the body: read to EOF
            piece = await request.content.read(limit + 1 - len(body))
            if not piece:
                break
            body += piece
        if len(body) > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400, resource)
        body = bytes(body)
        verify_digests(request.headers, auth, hashlib.md5(body), hashlib.sha256(body), zlib.crc32(body),
                       {h: fn(body) for h, fn in CHECKSUMS.items() if h in request.headers}, resource)
        if not body.strip():
            return None
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed", 400, resource) from None
        for el in root.iter():
            el.tag = el.tag.rpartition("}")[2]
        return root

    def _access(self, account: str | None, bucket: str, need: str, key: str | None = None):
        """The bucket's row if ``account`` holds ``need`` on the bucket (or, with ``key``, on
        that object) by its ACL; the bucket's owner holds every permission in its bucket."""
        row = self.store.bucket(bucket)
        if row is None:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, bucket)
        if account != row[1] and not permitted(self.store.acl(bucket, key or ""), account, need):
            raise S3Error("AccessDenied", "Access Denied", 403, key or bucket)
        return row

    def _request_acl(self, request, account: str, bucket_owner: str, resource: str) -> dict:
        """The ACL a write asks for in its headers; private to the writer without one."""
        return acl_from_headers(request.headers, account, bucket_owner, resource) or \
            {"owner": account, "grants": [["id", account, "FULL_CONTROL"]]}

    def _owned_bucket(self, account: str, bucket: str):
        row = self.store.bucket(bucket)
        if row is None:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, bucket)
        if row[1] != account:
            raise S3Error("AccessDenied", "Access Denied", 403, bucket)
        return row

    # -- buckets --------------------------------------------------------------------------

    def list_buckets(self, account: str | None) -> web.Response:
        if account is None:
            raise S3Error("AccessDenied", "Access Denied", 403)
        root = ET.Element("ListAllMyBucketsResult", xmlns=S3_NS)
        owner = sub(root, "Owner")
        sub(owner, "ID", account)
        sub(owner, "DisplayName", account)
        buckets = sub(root, "Buckets")
        for name, _, created in self.store.db.execute(
                "SELECT name, account, created FROM buckets WHERE account=? ORDER BY name", (account,)):
            b = sub(buckets, "Bucket")
            sub(b, "Name", name)
            sub(b, "CreationDate", iso_time(created))
        return xml_response(root)

    def bucket_location(self, account: str, bucket: str) -> web.Response:
        self._owned_bucket(account, bucket)
        root = ET.Element("LocationConstraint", xmlns=S3_NS)  # empty: the default region
        return xml_response(root)

    async def create_bucket(self, request, account, bucket):
        if account is None:
            raise S3Error("AccessDenied", "Access Denied", 403, bucket)
        acl = self._request_acl(request, account, account, bucket)
        await self._read_xml(request, bucket)
        row = self.store.bucket(bucket)
        if row is not None:
            if row[1] == account:
                raise S3Error("BucketAlreadyOwnedByYou", "You already own this bucket", 409, bucket)
            raise S3Error("BucketAlreadyExists", "The requested bucket name is not available", 409, bucket)
        self._apply({"type": "bucket.create", "bucket": bucket, "account": account,
                     "created": dt.datetime.now().timestamp(), "acl": acl})
        await self.replicate()
        self.events.emit("bucket.create", bucket=bucket)
        return web.Response(status=200, headers={"Location": f"/{bucket}"})

    async def delete_bucket(self, request, account, bucket):
        self._owned_bucket(account, bucket)
        if self.store.db.execute("SELECT 1 FROM objects WHERE bucket=? UNION ALL SELECT 1 FROM versions "
                                 "WHERE bucket=? LIMIT 1", (bucket, bucket)).fetchone():
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409, bucket)
        self._apply({"type": "bucket.delete", "bucket": bucket})
        await self.replicate()
        self.events.emit("bucket.delete", bucket=bucket)
        return web.Response(status=204)

    async def head_bucket(self, request, account, bucket):
        self._access(account, bucket, "READ")
        return web.Response(status=200)

    async def list_objects(self, request, account, bucket):
        """ListObjectsV2 (list-type=2) or the original ListObjects (marker)."""
        self._access(account, bucket, "READ")
        q = request.query
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request", 400)
        try:
            max_keys = int(q.get("max-keys", "1000"))
            if not 0 <= max_keys <= 1000:
                raise ValueError
        except ValueError:
            raise S3Error("InvalidArgument", "max-keys must be an integer between 0 and 1000", 400) from None
        token = q.get("continuation-token") if v2 else None
        after = q.get("start-after", "") if v2 else q.get("marker", "")
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise S3Error("InvalidArgument", "The continuation token provided is incorrect", 400) from None
        contents, prefixes, truncated, resume = self.store.list(bucket, prefix, delimiter, after, max_keys)
        enc = (lambda v: quote(v, safe="/")) if encoding == "url" else (lambda v: v)
        root = ET.Element("ListBucketResult", xmlns=S3_NS)
        sub(root, "Name", bucket)
        # botocore decodes Prefix in V2 answers only (handlers.decode_list_object*).
        sub(root, "Prefix", enc(prefix) if v2 else prefix)
        if delimiter:
            sub(root, "Delimiter", enc(delimiter))
        sub(root, "MaxKeys", max_keys)
        if encoding:
            sub(root, "EncodingType", encoding)
        sub(root, "IsTruncated", "true" if truncated else "false")
        if v2:
            sub(root, "KeyCount", len(contents) + len(prefixes))
            if token:
                sub(root, "ContinuationToken", token)
            if q.get("start-after"):
                sub(root, "StartAfter", enc(q["start-after"]))
            if truncated:
                sub(root, "NextContinuationToken", base64.urlsafe_b64encode(resume.encode()).decode())
        else:
            sub(root, "Marker", enc(q.get("marker", "")))
            if truncated and delimiter:  # without a delimiter, clients resume after the last Key
                sub(root, "NextMarker", enc(resume))
        for key, size, etag, modified in contents:
            c = sub(root, "Contents")
            sub(c, "Key", enc(key))
            sub(c, "LastModified", iso_time(modified))
            sub(c, "ETag", f'"{etag}"')
            sub(c, "Size", size)
            sub(c, "StorageClass", "STANDARD")
        for p in prefixes:
            sub(sub(root, "CommonPrefixes"), "Prefix", enc(p))
        return xml_response(root)

    # -- objects --------------------------------------------------------------------------

    async def put_object(self, request, account, bucket, key, auth):
        owner = self._access(account, bucket, "WRITE")[1]
        acl = self._request_acl(request, account or owner, owner, key)
        if "x-amz-copy-source" in request.headers:
            return await self.copy_object(request, account, bucket, key, acl)
        tags = tags_from_header(request.headers, key) or {}
        name, size, etag, _ = await self._receive(request, auth, key)
        op = await self._put({"type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
                              "content_type": request.headers.get("Content-Type", "binary/octet-stream"),
                              "meta": meta_of(request.headers), "file": name, "acl": acl, "tags": tags})
        return web.Response(status=200, headers={"ETag": f'"{etag}"', **self._version_header(op)})

    async def _put(self, op: dict) -> dict:
        """Log a new object (object.put, upload.complete) whose file is installed and replicate
        it; a versioned bucket gives it a version id. Returns the op as logged."""
        op = {**op, "modified": dt.datetime.now().timestamp()}
        status = self.store.versioning(op["bucket"])
        if status is not None:
            op["version"] = uuid.uuid4().hex if status == "Enabled" else "null"
        self._apply(op)
        await self.replicate()  # the DISABLED peer has the object before the client hears success
        self.events.emit("object.put", bucket=op["bucket"], key=op["key"], size=op["size"], etag=op["etag"])
        return op

    @staticmethod
    def _version_header(op: dict) -> dict:
        return {"x-amz-version-id": op["version"]} if op.get("version") is not None else {}

    async def copy_object(self, request, account, bucket, key, acl: dict):
        """CopyObject: same or other bucket, metadata directive COPY or REPLACE, the
        x-amz-copy-source-if-* conditions."""
        src = self._copy_source(request, account)
        directive = request.headers.get("x-amz-metadata-directive", "COPY")
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.", 400, key)
        src_bucket, _, src_key = unquote(request.headers["x-amz-copy-source"].partition("?")[0]).lstrip("/") \
            .partition("/")
        if (src_bucket, src_key) == (bucket, key) and directive == "COPY":
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                          "to itself without changing the object's metadata, storage class, website redirect "
                          "location or encryption attributes.", 400, key)
        tagging = request.headers.get("x-amz-tagging-directive", "COPY")
        if tagging not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown tagging directive.", 400, key)
        tags = self.store.tags(src_bucket, src_key) if tagging == "COPY" else \
            (tags_from_header(request.headers, key) or {})
        if directive == "COPY":
            content_type, meta = src[3] or "binary/octet-stream", json.loads(src[5] or "{}")
        else:
            content_type = request.headers.get("Content-Type", "binary/octet-stream")
            meta = meta_of(request.headers)
        name, size, etag = await self._copy_bytes(src[6], 0, src[1])
        op = await self._put({"type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
                              "content_type": content_type, "meta": meta, "file": name, "acl": acl,
                              "tags": tags})
        root = ET.Element("CopyObjectResult", xmlns=S3_NS)
        sub(root, "LastModified", iso_time(op["modified"]))
        sub(root, "ETag", f'"{etag}"')
        resp = xml_response(root)
        resp.headers.update(self._version_header(op))
        if self.store.versioning(src_bucket) is not None:
            resp.headers["x-amz-copy-source-version-id"] = src[7]
        return resp

    async def delete_objects(self, request, account, bucket):
        """DeleteObjects: up to 1,000 keys, each answered Deleted or Error (quiet: errors only)."""
        self._access(account, bucket, "WRITE")
        if not any(h in request.headers for h in ("Content-MD5", *CHECKSUMS, "x-amz-checksum-crc32")):
            raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5", 400, bucket)
        doc = await self._read_xml(request, bucket, limit=MAX_DELETE_BODY, auth=request[AUTH])
        objects = [] if doc is None or doc.tag != "Delete" else doc.findall("Object")
        if not 1 <= len(objects) <= 1000:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema (1 to 1000 objects)", 400, bucket)
        quiet = (doc.findtext("Quiet") or "").strip().lower() == "true"
        root = ET.Element("DeleteResult", xmlns=S3_NS)
        deleted, applied = [], False
        for obj in objects:
            key, version = obj.findtext("Key"), obj.findtext("VersionId")
            if not key or len(key.encode()) > 1024:
                code, message = "KeyTooLongError" if key else "UserKeyMustBeSpecified", \
                    "Your key is too long" if key else "The key is missing"
            else:
                try:
                    done, headers, removed = self._delete(bucket, key, version)
                except S3Error as err:
                    code, message = err.code, err.message
                else:
                    applied |= done
                    if removed is not None:
                        deleted.append(removed)
                    if not quiet:
                        el = sub(root, "Deleted")
                        sub(el, "Key", key)
                        if version is not None:
                            sub(el, "VersionId", version)
                        if headers.get("x-amz-delete-marker"):
                            sub(el, "DeleteMarker", "true")
                            if version is None:
                                sub(el, "DeleteMarkerVersionId", headers["x-amz-version-id"])
                    continue
            el = sub(root, "Error")
            sub(el, "Key", key or "")
            if version is not None:
                sub(el, "VersionId", version)
            sub(el, "Code", code)
            sub(el, "Message", message)
        if applied:
            await self.replicate()  # one round for every key: the peer has them all before the answer
        for row in deleted:
            self.events.emit("object.delete", bucket=bucket, key=row[0], size=row[1], etag=row[2])
        return xml_response(root)

    async def _receive(self, request, auth, key: str, chunks=None) -> tuple[str, int, str, dict]:
        """Stream a request body (or ``chunks``, an async iterator of the bytes of a form's file
        field) into a new object file, checking every digest the client sent.

        Returns (file name, size, MD5 hex, the checksum headers verified); on any error
        the temporary file is gone and nothing was installed.
        """
        headers = request.headers if chunks is None else {}
        length = request.content_length
        trailer = auth is not None and auth.payload_mode == "trailer"
        if trailer and "x-amz-decoded-content-length" not in headers:
            raise S3Error("MissingContentLength", "An aws-chunked body must say its length in "
                          "x-amz-decoded-content-length.", 411, key)
        # As S3: a body must say its length (an aws-chunked one with a trailer says it above:
        # botocore sends it with Transfer-Encoding chunked).
        if chunks is None and length is None and not trailer:
            if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
                raise S3Error("NotImplemented", "A header you provided implies functionality that is not "
                              "implemented: Transfer-Encoding", 501, key)
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411, key)
        declared_len = headers.get("x-amz-decoded-content-length")
        if declared_len is not None and not re.fullmatch(r"[0-9]{1,19}", declared_len):
            raise S3Error("InvalidArgument", "x-amz-decoded-content-length must be a decimal integer", 400, key)
        size_hint = int(declared_len) if declared_len else length
        if size_hint is not None and size_hint > self.max_object:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400, key)
        # The checksum an aws-chunked body's trailer carries (x-amz-trailer names it).
        trailed = headers.get("x-amz-trailer", "").strip().lower() if trailer else ""
        refuse_unverified(headers, key)
        refuse_unverified({trailed: ""}, key)
        digests = {h: fn() for h, fn in CHECKSUMS.items() if h in headers or h == trailed}
        decoder = (ChunkedDecoder(auth) if auth is not None and auth.payload_mode == "streaming"
                   else ChunkedDecoder(None, trailer=True) if trailer else None)
        md5, sha, crc, size = hashlib.md5(), hashlib.sha256(), 0, 0
        name = uuid.uuid4().hex
        tmp = self.store.objects / f".{name}.part"
        try:
            with open(tmp, "wb") as f:
                async for raw in (request.content.iter_chunked(CHUNK) if chunks is None else chunks):
                    data = decoder.feed(raw) if decoder else raw
                    size += len(data)
                    if size > self.max_object:
                        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                                      400, key)
                    md5.update(data)
                    sha.update(data)
                    for d in digests.values():
                        d.update(data)
                    crc = zlib.crc32(data, crc)
                    f.write(data)
                f.flush()
                # fsync of a large object takes hundreds of ms: off the event loop, so
                # GETs and HA heartbeats keep running meanwhile.
                await asyncio.to_thread(os.fsync, f.fileno())
            if decoder and not decoder.finished:
                raise S3Error("IncompleteBody", "The request body ended early", 400, key)
            if decoder and declared_len is not None and str(size) != declared_len:
                raise S3Error("IncompleteBody", "x-amz-decoded-content-length does not match the body", 400, key)
            if trailed and trailed not in decoder.trailers:
                raise S3Error("IncompleteBody", f"the body's trailer lacks {trailed}, which x-amz-trailer "
                              "announced", 400, key)
            if decoder and decoder.trailers:
                headers = CIMultiDict(headers)
                headers.update(decoder.trailers)
            verify_digests(headers, auth, md5, sha, crc, digests, key)
        except S3Error:
            tmp.unlink(missing_ok=True)
            raise
        except SigV4Error as exc:
            tmp.unlink(missing_ok=True)
            raise S3Error(exc.code, exc.message, exc.http_status, key) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(self.store.install, tmp, name)
        checked = {h: headers[h] for h in (*CHECKSUMS, "x-amz-checksum-crc32") if h in headers}
        return name, size, md5.hexdigest(), checked

    def _object_headers(self, row) -> dict:
        key, size, etag, ctype, modified, meta = row[:6]
        headers = {"ETag": f'"{etag}"', "Last-Modified": formatdate(modified, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": ctype or "binary/octet-stream"}
        for k, v in json.loads(meta or "{}").items():
            headers[f"x-amz-meta-{k}"] = v
        return headers

    def _version_of(self, bucket: str, key: str, version: str | None):
        """The version asked for (the latest without ``version``), delete markers included."""
        row = self.store.version(bucket, key, version)
        if row is None and version is not None:
            raise S3Error("NoSuchVersion", "The specified version does not exist.", 404, key)
        if row is None or (row[8] and version is None):
            marker = {"x-amz-delete-marker": "true", "x-amz-version-id": row[7]} if row else {}
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, key, marker)
        return row

    async def get_object(self, request, account, bucket, key, auth):
        # A key with neither an object nor an ACL is 404 only to who may list the bucket.
        known = self.store.obj(bucket, key) is not None or self.store.db.execute(
            "SELECT 1 FROM acls WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        self._access(account, bucket, "READ", key if known else None)
        row = self._version_of(bucket, key, request.query.get("versionId"))
        extra = {"x-amz-version-id": row[7]} if self.store.versioning(bucket) is not None else {}
        if tags := self.store.tags(bucket, key):
            extra["x-amz-tagging-count"] = str(len(tags))
        if row[8]:
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405,
                          key, {"x-amz-delete-marker": "true", **extra})
        verdict = precondition(request.headers, row[2], row[4])
        if verdict == 412:
            raise precondition_failed()
        if verdict == 304:
            headers = self._object_headers(row)
            return web.Response(status=304, headers={h: headers[h] for h in ("ETag", "Last-Modified")})
        return await self._send_object(request, row, extra)

    async def _send_object(self, request: web.Request, row, extra: dict | None = None) -> web.StreamResponse:
        size, path = row[1], self.store.objects / row[6]
        headers = {**self._object_headers(row), **(extra or {})}
        start, end, status = 0, size - 1, 200
        if request.headers.get("Range"):
            start, end = parse_range(request.headers["Range"], size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        if request.method == "HEAD":
            headers["Content-Length"] = str(length)
            return web.Response(status=status, headers=headers)
        if length <= SMALL:
            with open(path, "rb") as f:
                f.seek(start)
                body = f.read(length)
            return web.Response(status=status, body=body, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        await resp.prepare(request)
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left:
                chunk = f.read(min(CHUNK * 16, left))
                if not chunk:
                    break
                left -= len(chunk)
                await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def delete_object(self, request, account, bucket, key, auth):
        self._access(account, bucket, "WRITE")
        applied, headers, removed = self._delete(bucket, key, request.query.get("versionId"))
        if applied:
            await self.replicate()
        if removed is not None:
            self.events.emit("object.delete", bucket=bucket, key=key, size=removed[1], etag=removed[2])
        return web.Response(status=204, headers=headers)

    def _delete(self, bucket: str, key: str, version: str | None) -> tuple[bool, dict, tuple | None]:
        """Apply (not yet replicate) DeleteObject: (whether an op was logged, the answer's
        headers, the object row whose bytes are gone from view).

        Without a version: a bucket never versioned loses the object; a versioned one gets
        a delete marker (Suspended: the "null" one, replacing the "null" version). With a
        version: that version goes for good, and the one before it becomes current.
        """
        status = self.store.versioning(bucket)
        op = {"type": "object.delete", "bucket": bucket, "key": key}
        if version is not None:
            row = self.store.version(bucket, key, version)
            if row is None:
                if version == "null":
                    return False, {}, None
                raise S3Error("NoSuchVersion", "The specified version does not exist.", 404, key)
            if status is not None:
                op["version"] = version
            headers = {"x-amz-version-id": version, **({"x-amz-delete-marker": "true"} if row[8] else {})}
            removed = None if row[8] else row
        else:
            removed = self.store.obj(bucket, key)
            if status is None:
                if removed is None:
                    return False, {}, None
                headers = {}
            else:
                op["marker"] = uuid.uuid4().hex if status == "Enabled" else "null"
                op["modified"] = dt.datetime.now().timestamp()
                headers = {"x-amz-delete-marker": "true", "x-amz-version-id": op["marker"]}
        self._apply(op)
        return True, headers, removed

    # -- versioning -------------------------------------------------------------------------

    async def get_versioning(self, request, account, bucket):
        self._owned_bucket(account, bucket)
        root = ET.Element("VersioningConfiguration", xmlns=S3_NS)
        status = self.store.versioning(bucket)
        if status is not None:
            sub(root, "Status", status)
        return xml_response(root)

    async def put_versioning(self, request, account, bucket):
        self._owned_bucket(account, bucket)
        doc = await self._read_xml(request, bucket, auth=request[AUTH])
        status = None if doc is None or doc.tag != "VersioningConfiguration" else doc.findtext("Status")
        if status not in ("Enabled", "Suspended"):
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema (Status Enabled or Suspended)", 400, bucket)
        if (doc.findtext("MfaDelete") or "Disabled") != "Disabled":
            raise S3Error("NotImplemented", "Walrus does not implement MFA delete", 501, bucket)
        self._apply({"type": "bucket.versioning", "bucket": bucket, "status": status})
        await self.replicate()
        return web.Response(status=200)

    async def list_versions(self, request, account, bucket):
        """ListObjectVersions: prefix, delimiter, key-marker / version-id-marker, max-keys,
        encoding-type=url; a bucket never versioned lists its objects as "null" versions."""
        self._owned_bucket(account, bucket)
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("version-id-marker", "")
        max_keys = int_param(q, "max-keys", 1000, 0, 1000)
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request", 400)
        enc = (lambda v: quote(v, safe="/")) if encoding == "url" else (lambda v: v)
        owner = self.store.bucket(bucket)[1]
        start = max(prefix, key_marker)
        if self.store.versioning(bucket) is None:
            rows = self.store.db.execute("SELECT key, 'null', size, etag, modified, 0, 1 FROM objects "
                                         "WHERE bucket=? AND key >= ? ORDER BY key", (bucket, start))
        else:
            rows = self.store.db.execute(
                "SELECT key, vid, size, etag, modified, marker, n = MAX(n) OVER (PARTITION BY key) FROM versions "
                "WHERE bucket=? AND key >= ? ORDER BY key, n DESC", (bucket, start))
        items, prefixes, nxt = page_by_key(rows, prefix, delimiter, key_marker, id_marker, max_keys)
        root = ET.Element("ListVersionsResult", xmlns=S3_NS)
        sub(root, "Name", bucket)
        sub(root, "Prefix", enc(prefix))
        sub(root, "KeyMarker", enc(key_marker))
        sub(root, "VersionIdMarker", id_marker)
        if nxt:
            sub(root, "NextKeyMarker", enc(nxt[0]))
            sub(root, "NextVersionIdMarker", nxt[1])
        sub(root, "MaxKeys", max_keys)
        if delimiter:
            sub(root, "Delimiter", enc(delimiter))
        if encoding:
            sub(root, "EncodingType", encoding)
        sub(root, "IsTruncated", "true" if nxt else "false")
        for key, vid, size, etag, modified, marker, latest in items:
            el = sub(root, "DeleteMarker" if marker else "Version")
            sub(el, "Key", enc(key))
            sub(el, "VersionId", vid)
            sub(el, "IsLatest", "true" if latest else "false")
            sub(el, "LastModified", iso_time(modified))
            if not marker:
                sub(el, "ETag", f'"{etag}"')
                sub(el, "Size", size)
                sub(el, "StorageClass", "STANDARD")
            who = sub(el, "Owner")
            sub(who, "ID", owner)
            sub(who, "DisplayName", owner)
        for p in prefixes:
            sub(sub(root, "CommonPrefixes"), "Prefix", enc(p))
        return xml_response(root)

    # -- ACLs -----------------------------------------------------------------------------------

    async def get_bucket_acl(self, request, account, bucket):
        self._access(account, bucket, "READ_ACP")
        return acl_xml(self.store.acl(bucket))

    async def put_bucket_acl(self, request, account, bucket):
        owner = self._access(account, bucket, "WRITE_ACP")[1]
        await self._put_acl(request, bucket, "", owner, owner)
        return web.Response(status=200)

    async def get_object_acl(self, request, account, bucket, key, auth):
        self._access(account, bucket, "READ_ACP", key)
        self._version_of(bucket, key, request.query.get("versionId"))
        return acl_xml(self.store.acl(bucket, key))

    async def put_object_acl(self, request, account, bucket, key, auth):
        bucket_owner = self._access(account, bucket, "WRITE_ACP", key)[1]
        self._version_of(bucket, key, request.query.get("versionId"))
        await self._put_acl(request, bucket, key, self.store.acl(bucket, key)["owner"], bucket_owner)
        return web.Response(status=200)

    async def _put_acl(self, request, bucket: str, key: str, owner: str, bucket_owner: str) -> None:
        """Put{Bucket,Object}Acl: a canned ACL or grant headers, or an AccessControlPolicy body."""
        resource = key or bucket
        acl = acl_from_headers(request.headers, owner, bucket_owner, resource)
        doc = await self._read_xml(request, resource, auth=request[AUTH])
        if acl is not None and doc is not None:
            raise S3Error("UnexpectedContent", "This request does not support content when an ACL is given in "
                          "headers", 400, resource)
        if acl is None:
            acl = acl_from_xml(doc, owner, resource)
        self._apply({"type": "acl.put", "bucket": bucket, "key": key, "acl": acl})
        await self.replicate()

    # -- browser-form POST uploads -------------------------------------------------------

    async def post_object(self, request, account, bucket):
        """PostObject: an HTML form (multipart/form-data) whose policy document is signed
        with SigV4 (``x-amz-algorithm``, ``-credential``, ``-date``, ``-signature``); every
        field but the file must satisfy the policy's conditions. Unsigned forms are
        anonymous (a public-read-write bucket)."""
        reader = await request.multipart()
        fields: dict[str, str] = {}
        used, part = 0, None
        while (part := await reader.next()) is not None:
            if (part.name or "").lower() == "file":
                break
            value = bytearray()
            while chunk := await part.read_chunk(4096):
                value += chunk
                used += len(chunk)
                if used > MAX_POST_FIELDS:
                    raise S3Error("MaxPostPreDataLengthExceeded", "Your POST request fields preceding the upload "
                                  "file were too large.", 400, bucket)
            fields[(part.name or "").lower()] = value.decode("utf-8", "replace")
        if part is None:
            raise S3Error("InvalidArgument", "POST requires exactly one file upload per request.", 400, bucket)
        if "key" not in fields:
            raise S3Error("InvalidArgument", "Bucket POST must contain a field named 'key'.", 400, bucket)
        key = fields["key"].replace("${filename}", part.filename or "")
        if not key or len(key.encode()) > 1024:
            raise S3Error("KeyTooLongError", "Your key is too long", 400, key)
        account, length_range = (await self._check_post_policy(fields, bucket, key)) \
            if "x-amz-signature" in fields else (None, None)
        owner = self._access(account, bucket, "WRITE")[1]
        grant_fields = {("x-amz-acl" if k == "acl" else k): v for k, v in fields.items()
                        if k == "acl" or k in GRANT_HEADERS}
        acl = acl_from_headers(grant_fields, account or owner, owner, key) or \
            {"owner": account or owner, "grants": [["id", account or owner, "FULL_CONTROL"]]}

        async def file_bytes():
            while chunk := await part.read_chunk(CHUNK):
                yield chunk

        name, size, etag, _ = await self._receive(request, None, key, file_bytes())
        if length_range and not length_range[0] <= size <= length_range[1]:
            (self.store.objects / name).unlink(missing_ok=True)
            small = size < length_range[0]
            raise S3Error("EntityTooSmall" if small else "EntityTooLarge", "Your proposed upload is "
                          f"{'smaller than the minimum' if small else 'larger than the maximum'} the policy allows",
                          400, key)
        op = await self._put({"type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
                              "content_type": fields.get("content-type", "binary/octet-stream"),
                              "meta": meta_of(fields), "file": name, "acl": acl})
        headers = {"ETag": f'"{etag}"', "Location": f"{PREFIX}/{bucket}/{quote(key)}", **self._version_header(op)}
        redirect = fields.get("success_action_redirect")
        if redirect:
            sep = "&" if "?" in redirect else "?"
            headers["Location"] = f"{redirect}{sep}bucket={quote(bucket)}&key={quote(key)}&etag={quote(etag)}"
            return web.Response(status=303, headers=headers)
        if fields.get("success_action_status") == "201":
            root = ET.Element("PostResponse")
            for tag, value in (("Location", headers["Location"]), ("Bucket", bucket), ("Key", key),
                               ("ETag", f'"{etag}"')):
                sub(root, tag, value)
            resp = xml_response(root, 201)
            resp.headers.update(headers)
            return resp
        return web.Response(status=200 if fields.get("success_action_status") == "200" else 204, headers=headers)

    async def _check_post_policy(self, fields: dict, bucket: str, key: str) -> tuple[str, tuple | None]:
        """The signer's account and the policy's content-length-range, once the policy's
        signature, expiration and conditions hold for these fields."""
        def denied(why: str) -> S3Error:
            return S3Error("AccessDenied", f"Invalid according to Policy: {why}", 403, bucket)

        if fields.get("x-amz-algorithm") != "AWS4-HMAC-SHA256" or "policy" not in fields:
            raise S3Error("InvalidArgument", "A signed POST needs x-amz-algorithm AWS4-HMAC-SHA256 and a policy",
                          400, bucket)
        scope = fields.get("x-amz-credential", "").split("/")
        if len(scope) != 5 or scope[4] != "aws4_request" or scope[3] != "s3":
            raise S3Error("AuthorizationQueryParametersError", "x-amz-credential must be "
                          "<key>/<date>/<region>/s3/aws4_request", 400, bucket)
        try:
            await self.accounts.ensure(scope[0])
        except AccountsUnavailable as exc:
            raise S3Error("ServiceUnavailable", f"cannot check the access key now: {exc}", 503, bucket) from None
        found = self.accounts.lookup(scope[0])
        if found is None:
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                          403, bucket)
        secret, account = found
        expected = hmac.new(signing_key(secret, scope[1], scope[2], "s3"), fields["policy"].encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["x-amz-signature"]):
            raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not match the "
                          "signature you provided.", 403, bucket)
        try:
            policy = json.loads(base64.b64decode(fields["policy"], validate=True))
            expires = dt.datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
            conditions = policy["conditions"]
        except (ValueError, KeyError, TypeError):
            raise S3Error("InvalidPolicyDocument", "Invalid Policy: the policy is not a JSON document with an "
                          "expiration and conditions", 400, bucket) from None
        if expires < dt.datetime.now(dt.timezone.utc):
            raise denied("Policy expired.")
        values = {**fields, "bucket": bucket, "key": key}
        covered, length_range = set(), None
        for cond in conditions:
            if isinstance(cond, dict):
                checks = [("eq", k, v) for k, v in cond.items()]
            elif isinstance(cond, list) and len(cond) == 3 and str(cond[0]).lower() == "content-length-range":
                length_range = (int(cond[1]), int(cond[2]))
                continue
            elif isinstance(cond, list) and len(cond) == 3 and str(cond[0]).lower() in ("eq", "starts-with"):
                checks = [(str(cond[0]).lower(), cond[1], cond[2])]
            else:
                raise S3Error("InvalidPolicyDocument", f"Invalid Policy: unknown condition {cond!r}", 400, bucket)
            for how, name, want in checks:
                name = str(name).lower().lstrip("$")
                have = values.get(name)
                if have is None or not (have == want if how == "eq" else have.startswith(str(want))):
                    raise denied(f"Policy Condition failed: [{how!r}, ${name}, {want!r}]")
                covered.add(name)
        extra = sorted(k for k in fields if k not in covered and k not in ("policy", "x-amz-signature", "file")
                       and not k.startswith("x-ignore-"))
        if extra:
            raise denied(f"Extra input fields: {', '.join(extra)}")
        return account, length_range

    # -- object tagging ---------------------------------------------------------------------

    async def get_tagging(self, request, account, bucket, key, auth):
        self._access(account, bucket, "READ", key)
        self._version_of(bucket, key, request.query.get("versionId"))
        root = ET.Element("Tagging", xmlns=S3_NS)
        tag_set = sub(root, "TagSet")
        for k, v in self.store.tags(bucket, key).items():
            tag = sub(tag_set, "Tag")
            sub(tag, "Key", k)
            sub(tag, "Value", v)
        return xml_response(root)

    async def put_tagging(self, request, account, bucket, key, auth):
        self._access(account, bucket, "WRITE")
        self._version_of(bucket, key, request.query.get("versionId"))
        doc = await self._read_xml(request, key, auth=auth)
        if doc is None or doc.tag != "Tagging" or doc.find("TagSet") is None:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema", 400, key)
        tags = checked_tags([(t.findtext("Key") or "", t.findtext("Value") or "")
                             for t in doc.find("TagSet").findall("Tag")], key)
        self._apply({"type": "tags.put", "bucket": bucket, "key": key, "tags": tags})
        await self.replicate()
        return web.Response(status=200)

    async def delete_tagging(self, request, account, bucket, key, auth):
        self._access(account, bucket, "WRITE")
        self._version_of(bucket, key, request.query.get("versionId"))
        self._apply({"type": "tags.put", "bucket": bucket, "key": key, "tags": {}})
        await self.replicate()
        return web.Response(status=204)

    # -- multipart upload -----------------------------------------------------------------

    def _upload(self, bucket: str, key: str, upload: str):
        row = self.store.upload(bucket, key, upload)
        if row is None:
            raise S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or "
                          "the upload may have been aborted or completed.", 404, upload)
        return row

    async def create_upload(self, request, account, bucket, key, auth):
        owner = self._access(account, bucket, "WRITE")[1]
        upload = uuid.uuid4().hex
        meta = meta_of(request.headers)
        self._apply({"type": "upload.create", "bucket": bucket, "key": key, "upload": upload,
                     "account": account or owner, "initiated": dt.datetime.now().timestamp(),
                     "content_type": request.headers.get("Content-Type", "binary/octet-stream"), "meta": meta,
                     "acl": self._request_acl(request, account or owner, owner, key),
                     "tags": tags_from_header(request.headers, key) or {}})
        await self.replicate()
        root = ET.Element("InitiateMultipartUploadResult", xmlns=S3_NS)
        sub(root, "Bucket", bucket)
        sub(root, "Key", key)
        sub(root, "UploadId", upload)
        return xml_response(root)

    async def upload_part(self, request, account, bucket, key, auth):
        """UploadPart, or UploadPartCopy with x-amz-copy-source; the part is on the peer before the answer."""
        self._access(account, bucket, "WRITE")
        upload = request.query["uploadId"]
        self._upload(bucket, key, upload)
        try:
            number = int(request.query.get("partNumber", ""))
            if not 1 <= number <= MAX_PARTS:
                raise ValueError
        except ValueError:
            raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive",
                          400, key) from None
        copy = "x-amz-copy-source" in request.headers
        if copy:
            src = self._copy_source(request, account)
            start, end = 0, src[1] - 1
            if request.headers.get("x-amz-copy-source-range"):
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["x-amz-copy-source-range"].strip())
                if not m or int(m.group(1)) > int(m.group(2)) or int(m.group(2)) >= src[1]:
                    raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                                  "bytes=first-last where first and last are the zero-based offsets of the first "
                                  "and last bytes to copy", 400, key)
                start, end = int(m.group(1)), int(m.group(2))
            name, size, etag = await self._copy_bytes(src[6], start, end - start + 1)
            checked: dict = {}
        else:
            name, size, etag, checked = await self._receive(request, auth, key)
        if self.store.upload(bucket, key, upload) is None:  # completed or aborted while the body came in
            (self.store.objects / name).unlink(missing_ok=True)
            self._upload(bucket, key, upload)
        modified = dt.datetime.now().timestamp()
        self._apply({"type": "upload.part", "upload": upload, "number": number, "size": size, "etag": etag,
                     "modified": modified, "file": name})
        await self.replicate()  # a part acknowledged is on both members: a failover loses none
        self.events.emit("upload.part", bucket=bucket, key=key, upload=upload, number=number, size=size)
        if not copy:
            return web.Response(status=200, headers={"ETag": f'"{etag}"', **checked})
        root = ET.Element("CopyPartResult", xmlns=S3_NS)
        sub(root, "LastModified", iso_time(modified))
        sub(root, "ETag", f'"{etag}"')
        return xml_response(root)

    async def complete_upload(self, request, account, bucket, key, auth):
        self._access(account, bucket, "WRITE")
        upload = request.query["uploadId"]
        _, initiator, _, ctype, meta, acl, tags = self._upload(bucket, key, upload)
        doc = await self._read_xml(request, key, limit=MAX_PARTS * 256, auth=auth)
        if doc is None or doc.tag != "CompleteMultipartUpload":
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema", 400, key)
        wanted = []
        for part in doc.findall("Part"):
            try:
                wanted.append((int(part.findtext("PartNumber", "")), part.findtext("ETag", "").strip().strip('"')))
            except ValueError:
                raise S3Error("MalformedXML", "PartNumber must be an integer", 400, key) from None
        if not wanted:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema", 400, key)
        if any(b[0] <= a[0] for a, b in zip(wanted, wanted[1:])):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. The parts list must "
                          "be specified in order by part number.", 400, key)
        have = {number: (size, etag, file) for number, size, etag, _, file in self.store.parts(upload)}
        for i, (number, etag) in enumerate(wanted):
            if have.get(number, (0, None))[1] != etag:
                raise S3Error("InvalidPart", "One or more of the specified parts could not be found. The part may "
                              "not have been uploaded, or the specified entity tag may not match the part's "
                              "entity tag.", 400, key)
            if i < len(wanted) - 1 and have[number][0] < MIN_PART:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size",
                              400, key)
        size = sum(have[n][0] for n, _ in wanted)
        if size > self.max_object:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400, key)
        files = [have[n][2] for n, _ in wanted]
        name = uuid.uuid4().hex
        opened = [open(self.store.objects / f, "rb") for f in files]  # held: a part replaced meanwhile still reads
        try:
            await asyncio.to_thread(self.store.assemble, opened, name)
        finally:
            for f in opened:
                f.close()
        if {n: (sz, e, f) for n, sz, e, _, f in self.store.parts(upload)} != have or \
                self.store.upload(bucket, key, upload) is None:  # changed while it was assembled
            (self.store.objects / name).unlink(missing_ok=True)
            self._upload(bucket, key, upload)
            raise S3Error("InvalidPart", "A part of the upload changed while it was being completed; retry", 400, key)
        etag = composite_etag([e for _, e in wanted])
        op = await self._put({"type": "upload.complete", "bucket": bucket, "key": key, "upload": upload,
                              "parts": [[n, have[n][2]] for n, _ in wanted], "size": size, "etag": etag,
                              "content_type": ctype, "meta": json.loads(meta or "{}"), "file": name,
                              "acl": json.loads(acl or "null") or {"owner": initiator,
                                                                   "grants": [["id", initiator, "FULL_CONTROL"]]},
                              "tags": json.loads(tags or "{}")})
        root = ET.Element("CompleteMultipartUploadResult", xmlns=S3_NS)
        sub(root, "Location", f"{PREFIX}/{bucket}/{quote(key)}")
        sub(root, "Bucket", bucket)
        sub(root, "Key", key)
        sub(root, "ETag", f'"{etag}"')
        resp = xml_response(root)
        resp.headers.update(self._version_header(op))
        return resp

    async def abort_upload(self, request, account, bucket, key, auth):
        self._access(account, bucket, "WRITE")
        upload = request.query["uploadId"]
        self._upload(bucket, key, upload)
        self._apply({"type": "upload.abort", "upload": upload})
        await self.replicate()
        return web.Response(status=204)

    async def list_parts(self, request, account, bucket, key, auth):
        self._access(account, bucket, "WRITE")
        upload = request.query["uploadId"]
        owner = self._upload(bucket, key, upload)[1]
        marker = int_param(request.query, "part-number-marker", 0, 0, MAX_PARTS)
        max_parts = int_param(request.query, "max-parts", 1000, 0, 1000)
        parts = self.store.parts(upload, after=marker)
        root = ET.Element("ListPartsResult", xmlns=S3_NS)
        for tag, value in (("Bucket", bucket), ("Key", key), ("UploadId", upload)):
            sub(root, tag, value)
        for tag in ("Initiator", "Owner"):
            who = sub(root, tag)
            sub(who, "ID", owner)
            sub(who, "DisplayName", owner)
        sub(root, "StorageClass", "STANDARD")
        sub(root, "PartNumberMarker", marker)
        shown = parts[:max_parts]
        if shown:
            sub(root, "NextPartNumberMarker", shown[-1][0])
        sub(root, "MaxParts", max_parts)
        sub(root, "IsTruncated", "true" if len(parts) > max_parts else "false")
        for number, size, etag, modified, _ in shown:
            el = sub(root, "Part")
            sub(el, "PartNumber", number)
            sub(el, "LastModified", iso_time(modified))
            sub(el, "ETag", f'"{etag}"')
            sub(el, "Size", size)
        return xml_response(root)

    async def list_uploads(self, request, account, bucket):
        """ListMultipartUploads: prefix, delimiter, key-marker / upload-id-marker, max-uploads."""
        self._owned_bucket(account, bucket)
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        max_uploads = int_param(q, "max-uploads", 1000, 0, 1000)
        rows = self.store.db.execute(
            "SELECT key, id, account, initiated FROM uploads WHERE bucket=? AND key >= ? "
            "ORDER BY key, initiated, id", (bucket, max(prefix, key_marker)))
        uploads, prefixes, nxt = page_by_key(rows, prefix, delimiter, key_marker, id_marker, max_uploads)
        root = ET.Element("ListMultipartUploadsResult", xmlns=S3_NS)
        sub(root, "Bucket", bucket)
        sub(root, "KeyMarker", key_marker)
        sub(root, "UploadIdMarker", id_marker)
        if nxt:
            sub(root, "NextKeyMarker", nxt[0])
            sub(root, "NextUploadIdMarker", nxt[1])
        if prefix:
            sub(root, "Prefix", prefix)
        if delimiter:
            sub(root, "Delimiter", delimiter)
        sub(root, "MaxUploads", max_uploads)
        sub(root, "IsTruncated", "true" if nxt else "false")
        for key, upload, owner, initiated in uploads:
            el = sub(root, "Upload")
            sub(el, "Key", key)
            sub(el, "UploadId", upload)
            for tag in ("Initiator", "Owner"):
                who = sub(el, tag)
                sub(who, "ID", owner)
                sub(who, "DisplayName", owner)
            sub(el, "StorageClass", "STANDARD")
            sub(el, "Initiated", iso_time(initiated))
        for p in prefixes:
            sub(sub(root, "CommonPrefixes"), "Prefix", p)
        return xml_response(root)

    # -- copies -----------------------------------------------------------------------------

    def _copy_source(self, request: web.Request, account: str):
        """The object row named by x-amz-copy-source (``[/]bucket/key[?versionId=]``, URL-encoded)."""
        raw = request.headers["x-amz-copy-source"]
        path, _, query = raw.partition("?")
        src_bucket, _, src_key = unquote(path).lstrip("/").partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                          "sourcebucket/sourcekey", 400, raw)
        version = dict(parse_qsl(query)).get("versionId")
        self._access(account, src_bucket, "READ", src_key)
        row = self._version_of(src_bucket, src_key, version)
        if row[8]:
            raise S3Error("InvalidRequest", "The source of a copy request may not specifically refer to a delete "
                          "marker by version id.", 400, raw)
        if precondition(request.headers, row[2], row[4], prefix="x-amz-copy-source-") is not None:
            raise precondition_failed()
        return row

    async def _copy_bytes(self, src_file: str, start: int, length: int) -> tuple[str, int, str]:
        """Copy ``length`` bytes from ``start`` of an object file into a new one; (name, size, MD5 hex)."""
        name = uuid.uuid4().hex
        src = open(self.store.objects / src_file, "rb")  # held open: an overwrite meanwhile cannot take it

        def copy() -> str:
            md5, left = hashlib.md5(), length
            tmp = self.store.objects / f".{name}.part"
            try:
                with src, open(tmp, "wb") as out:
                    src.seek(start)
                    while left:
                        chunk = src.read(min(CHUNK * 16, left))
                        if not chunk:
                            raise OSError("the source object is shorter than its metadata says")
                        md5.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                self.store.install(tmp, name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return md5.hexdigest()

        return name, length, await asyncio.to_thread(copy)

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
        return await self._send_object(request, row)
