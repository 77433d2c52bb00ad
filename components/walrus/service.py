"""Walrus (port 8773): the S3-compatible object store, path-style under /services/Walrus.

Operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, PutObject, GetObject
(with Range), HeadObject, DeleteObject, ListObjectsV2 (prefix, delimiter,
continuation, start-after); S3 error XML. Objects are files named by a random id
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
import json
import os
import re
import sqlite3
import uuid
import zlib
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree as ET

import aiohttp
from aiohttp import web

from components.common.accounts import AccountResolver, AccountsUnavailable, access_key_of
from components.common.service import Service
from components.common.sigv4 import ChunkedDecoder, SigV4Error, verify
from components.common.supervise import supervise

PREFIX = "/services/Walrus"
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
SMALL = 1 << 20  # objects up to this size are answered from memory
CHUNK = 1 << 16
# Replication streams whole objects (images of hundreds of MiB): no total time limit,
# only a stall limit.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=10)
MAX_XML_BODY = 1 << 16  # request bodies that are XML documents (CreateBucketConfiguration)
# Sub-resources of the S3 API that Walrus does not implement: refused with NotImplemented
# rather than served as if they were plain bucket or object requests.
UNSUPPORTED_SUBRESOURCES = frozenset((
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption", "intelligent-tiering",
    "inventory", "legal-hold", "lifecycle", "logging", "metrics", "notification", "object-lock",
    "ownershipControls", "partNumber", "policy", "policyStatus", "publicAccessBlock", "replication",
    "requestPayment", "restore", "retention", "select", "tagging", "torrent", "uploadId", "uploads",
    "versioning", "versionId", "versions", "website"))
# Checksums Walrus verifies (base64 of the digest); others are refused before the body is read.
CHECKSUMS = {"x-amz-checksum-sha256": hashlib.sha256, "x-amz-checksum-sha1": hashlib.sha1}
UNVERIFIED_CHECKSUMS = ("x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme")


class ReplicaError(Exception):
    """A replicated op that cannot be applied as sent (its object's bytes do not match it)."""


class S3Error(Exception):
    def __init__(self, code: str, message: str, status: int, resource: str = ""):
        self.code, self.message, self.status, self.resource = code, message, status, resource
        super().__init__(message)


def _xml(root: ET.Element, status: int = 200) -> web.Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)
    return web.Response(body=body, status=status, content_type="application/xml")


def _sub(parent: ET.Element, tag: str, text=None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def valid_bucket(name: str) -> bool:
    return bool(BUCKET_RE.match(name)) and ".." not in name and not IP_RE.match(name)


def parse_range(header: str, size: int) -> tuple[int, int]:
    """Inclusive byte range of a Range header; raises S3Error(InvalidRange)."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    first, last = m.groups()
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    return start, min(end, size - 1)


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
        """)
        self._sweep()

    @property
    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0]

    def apply(self, op: dict, seq: int | None = None, epoch: int = 1) -> str | None:
        """Apply one logged operation in one transaction; returns a file the change made obsolete.

        The op log is what HA replication ships: a DISABLED peer applies the same ops
        (with the object bytes) and so holds the same buckets and objects.
        """
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        obsolete = None
        try:
            t = op["type"]
            if t == "bucket.create":
                cur.execute("INSERT INTO buckets VALUES (?, ?, ?)", (op["bucket"], op["account"], op["created"]))
            elif t == "bucket.delete":
                cur.execute("DELETE FROM buckets WHERE name=?", (op["bucket"],))
            elif t == "object.put":
                old = cur.execute("SELECT file FROM objects WHERE bucket=? AND key=?",
                                  (op["bucket"], op["key"])).fetchone()
                cur.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (op["bucket"], op["key"], op["size"], op["etag"], op["content_type"], op["modified"],
                             json.dumps(op["meta"]), op["file"]))
                obsolete = old[0] if old and old[0] != op["file"] else None
            elif t == "object.delete":
                old = cur.execute("SELECT file FROM objects WHERE bucket=? AND key=?",
                                  (op["bucket"], op["key"])).fetchone()
                cur.execute("DELETE FROM objects WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                obsolete = old[0] if old else None
            else:
                raise ValueError(f"unknown operation {t!r}")
            seq = seq if seq is not None else (cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0] + 1)
            cur.execute("INSERT INTO ops VALUES (?, ?, ?)", (seq, epoch, json.dumps(op, sort_keys=True)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        if obsolete:
            (self.objects / obsolete).unlink(missing_ok=True)
        return obsolete

    def export_ops(self, after: int) -> list[dict]:
        return [{"seq": seq, "epoch": epoch, "op": json.loads(op)} for seq, epoch, op in
                self.db.execute("SELECT seq, epoch, op FROM ops WHERE seq > ? ORDER BY seq", (after,))]

    def reset(self) -> None:
        self.db.executescript("DELETE FROM buckets; DELETE FROM objects; DELETE FROM ops;")
        for f in self.objects.iterdir():
            f.unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Remove files no metadata row points to (left by a crash mid-write)."""
        live = {row[0] for row in self.db.execute("SELECT file FROM objects")}
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


class Walrus(Service):
    component = "walrus"
    api_prefixes = (PREFIX,)

    def __init__(self, config: dict):
        super().__init__(config)
        self.store = Store(Path(config["data_dir"]))
        clc = (config.get("endpoints", {}).get("clc") or "").split("/services/")[0] or None
        self.accounts = AccountResolver(config, clc)
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
        app.router.add_route("*", PREFIX + "/{rest:.*}", self.dispatch)

    async def on_stop(self) -> None:
        await self.accounts.close()
        if self._catchup:
            self._catchup.cancel()
        if self.replica is not None:
            await self.replica.close()

    def unavailable(self, request: web.Request) -> web.Response:
        return self._error(S3Error("ServiceUnavailable", f"{self.host} is {self.state.value}", 503))

    def status_extra(self) -> dict:
        n = self.store.db.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        return {"objects": n}

    # -- plumbing -----------------------------------------------------------------------

    def _error(self, err: S3Error) -> web.Response:
        root = ET.Element("Error")
        _sub(root, "Code", err.code)
        _sub(root, "Message", err.message)
        _sub(root, "Resource", err.resource)
        rid = uuid.uuid4().hex[:16].upper()
        _sub(root, "RequestId", rid)
        resp = _xml(root, err.status)
        resp.headers["x-amz-request-id"] = rid
        return resp

    def _raw_path_query(self, request: web.Request) -> tuple[str, str]:
        raw = request.raw_path
        path, _, query = raw.partition("?")
        return path, query

    async def _authenticate(self, request: web.Request) -> tuple[str, object]:
        raw_path, raw_query = self._raw_path_query(request)
        try:
            await self.accounts.ensure(access_key_of(request.headers, request.query))
        except AccountsUnavailable as exc:
            raise S3Error("ServiceUnavailable", f"cannot check the access key now: {exc}", 503, request.path) from None
        try:
            auth = verify(request.method, raw_path, raw_query, request.headers, None,
                          self.accounts.lookup, dialect="s3", service="s3")
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
            m = request.method
            unsupported = UNSUPPORTED_SUBRESOURCES.intersection(request.query)
            if unsupported:
                raise S3Error("NotImplemented", f"Walrus does not implement ?{min(unsupported)}", 501)
            if not key and "location" in request.query:
                if m != "GET":
                    raise S3Error("MethodNotAllowed", f"{m} is not allowed on ?location", 405)
                return self.bucket_location(account, bucket)
            if not key:
                handler = {"PUT": self.create_bucket, "DELETE": self.delete_bucket, "GET": self.list_objects,
                           "HEAD": self.head_bucket}.get(m)
                if handler is None:
                    raise S3Error("MethodNotAllowed", f"{m} is not allowed on a bucket", 405)
                return await handler(request, account, bucket)
            if len(key.encode()) > 1024:
                raise S3Error("KeyTooLongError", "Your key is too long", 400, key)
            handler = {"PUT": self.put_object, "GET": self.get_object, "HEAD": self.get_object,
                       "DELETE": self.delete_object}.get(m)
            if handler is None:
                raise S3Error("MethodNotAllowed", f"{m} is not allowed on an object", 405)
            return await handler(request, account, bucket, key, auth)
        except S3Error as err:
            if not err.resource:
                err.resource = request.path
            if request.method == "HEAD":  # a HEAD answer has no body: the code goes in a header
                return web.Response(status=err.status, headers={"x-amz-error-code": err.code})
            return self._error(err)

    def _owned_bucket(self, account: str, bucket: str):
        row = self.store.bucket(bucket)
        if row is None:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, bucket)
        if row[1] != account:
            raise S3Error("AccessDenied", "Access Denied", 403, bucket)
        return row

    # -- buckets --------------------------------------------------------------------------

    def list_buckets(self, account: str) -> web.Response:
        root = ET.Element("ListAllMyBucketsResult", xmlns=S3_NS)
        owner = _sub(root, "Owner")
        _sub(owner, "ID", account)
        _sub(owner, "DisplayName", account)
        buckets = _sub(root, "Buckets")
        for name, _, created in self.store.db.execute(
                "SELECT name, account, created FROM buckets WHERE account=? ORDER BY name", (account,)):
            b = _sub(buckets, "Bucket")
            _sub(b, "Name", name)
            _sub(b, "CreationDate", _iso(created))
        return _xml(root)

    def bucket_location(self, account: str, bucket: str) -> web.Response:
        self._owned_bucket(account, bucket)
        root = ET.Element("LocationConstraint", xmlns=S3_NS)  # empty: the default region
        return _xml(root)

    async def create_bucket(self, request, account, bucket):
        if (request.content_length or 0) > MAX_XML_BODY:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400, bucket)
        body = bytearray()
        while len(body) <= MAX_XML_BODY:  # read() may return part of the body: read to EOF
            piece = await request.content.read(MAX_XML_BODY + 1 - len(body))
            if not piece:
                break
            body += piece
        if len(body) > MAX_XML_BODY:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400, bucket)
        if body.strip():
            try:
                ET.fromstring(bytes(body))
            except ET.ParseError:
                raise S3Error("MalformedXML", "The XML you provided was not well-formed", 400, bucket) from None
        row = self.store.bucket(bucket)
        if row is not None:
            if row[1] == account:
                raise S3Error("BucketAlreadyOwnedByYou", "You already own this bucket", 409, bucket)
            raise S3Error("BucketAlreadyExists", "The requested bucket name is not available", 409, bucket)
        self._apply({"type": "bucket.create", "bucket": bucket, "account": account,
                     "created": dt.datetime.now().timestamp()})
        await self.replicate()
        self.events.emit("bucket.create", bucket=bucket)
        return web.Response(status=200, headers={"Location": f"/{bucket}"})

    async def delete_bucket(self, request, account, bucket):
        self._owned_bucket(account, bucket)
        if self.store.db.execute("SELECT 1 FROM objects WHERE bucket=? LIMIT 1", (bucket,)).fetchone():
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409, bucket)
        self._apply({"type": "bucket.delete", "bucket": bucket})
        await self.replicate()
        self.events.emit("bucket.delete", bucket=bucket)
        return web.Response(status=204)

    async def head_bucket(self, request, account, bucket):
        self._owned_bucket(account, bucket)
        return web.Response(status=200)

    async def list_objects(self, request, account, bucket):
        """ListObjectsV2 (list-type=2) or the original ListObjects (marker)."""
        self._owned_bucket(account, bucket)
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
        _sub(root, "Name", bucket)
        # botocore decodes Prefix in V2 answers only (handlers.decode_list_object*).
        _sub(root, "Prefix", enc(prefix) if v2 else prefix)
        if delimiter:
            _sub(root, "Delimiter", enc(delimiter))
        _sub(root, "MaxKeys", max_keys)
        if encoding:
            _sub(root, "EncodingType", encoding)
        _sub(root, "IsTruncated", "true" if truncated else "false")
        if v2:
            _sub(root, "KeyCount", len(contents) + len(prefixes))
            if token:
                _sub(root, "ContinuationToken", token)
            if q.get("start-after"):
                _sub(root, "StartAfter", enc(q["start-after"]))
            if truncated:
                _sub(root, "NextContinuationToken", base64.urlsafe_b64encode(resume.encode()).decode())
        else:
            _sub(root, "Marker", enc(q.get("marker", "")))
            if truncated and delimiter:  # without a delimiter, clients resume after the last Key
                _sub(root, "NextMarker", enc(resume))
        for key, size, etag, modified in contents:
            c = _sub(root, "Contents")
            _sub(c, "Key", enc(key))
            _sub(c, "LastModified", _iso(modified))
            _sub(c, "ETag", f'"{etag}"')
            _sub(c, "Size", size)
            _sub(c, "StorageClass", "STANDARD")
        for p in prefixes:
            _sub(_sub(root, "CommonPrefixes"), "Prefix", enc(p))
        return _xml(root)

    # -- objects --------------------------------------------------------------------------

    async def put_object(self, request, account, bucket, key, auth):
        self._owned_bucket(account, bucket)
        length = request.content_length
        declared_len = request.headers.get("x-amz-decoded-content-length")
        size_hint = int(declared_len) if declared_len and declared_len.isdigit() else length
        if size_hint is not None and size_hint > self.max_object:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400, key)
        unverified = [h for h in UNVERIFIED_CHECKSUMS if h in request.headers]
        if unverified:
            raise S3Error("NotImplemented", f"Walrus cannot verify {unverified[0]}; use CRC32, SHA1 or SHA256",
                          501, key)
        digests = {h: fn() for h, fn in CHECKSUMS.items() if h in request.headers}
        decoder = ChunkedDecoder(auth) if auth.payload_mode == "streaming" else None
        md5, sha, crc, size = hashlib.md5(), hashlib.sha256(), 0, 0
        name = uuid.uuid4().hex
        tmp = self.store.objects / f".{name}.part"
        try:
            with open(tmp, "wb") as f:
                async for raw in request.content.iter_chunked(CHUNK):
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
            for header, d in digests.items():
                if base64.b64encode(d.digest()).decode() != request.headers[header]:
                    raise S3Error("BadDigest", f"The {header[len('x-amz-checksum-'):].upper()} you specified "
                                  "did not match the calculated checksum.", 400, key)
            if auth.payload_mode == "signed" and sha.hexdigest() != request.headers["x-amz-content-sha256"]:
                raise S3Error("XAmzContentSHA256Mismatch",
                              "The provided 'x-amz-content-sha256' header does not match what was computed.", 400, key)
            want_crc = request.headers.get("x-amz-checksum-crc32")
            if want_crc and base64.b64encode(crc.to_bytes(4, "big")).decode() != want_crc:
                raise S3Error("BadDigest", "The CRC32 you specified did not match the calculated checksum.", 400, key)
            want_md5 = request.headers.get("Content-MD5")
            if want_md5 and base64.b64encode(md5.digest()).decode() != want_md5:
                raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.", 400, key)
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
        etag = md5.hexdigest()
        meta = {k[len("x-amz-meta-"):]: v for k, v in request.headers.items() if k.lower().startswith("x-amz-meta-")}
        self._apply({"type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
                     "content_type": request.headers.get("Content-Type", "binary/octet-stream"),
                     "modified": dt.datetime.now().timestamp(), "meta": meta, "file": name})
        await self.replicate()  # the DISABLED peer has the object before the client hears success
        self.events.emit("object.put", bucket=bucket, key=key, size=size, etag=etag)
        return web.Response(status=200, headers={"ETag": f'"{etag}"'})

    def _object_headers(self, row) -> dict:
        key, size, etag, ctype, modified, meta, _ = row
        headers = {"ETag": f'"{etag}"', "Last-Modified": formatdate(modified, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": ctype or "binary/octet-stream"}
        for k, v in json.loads(meta or "{}").items():
            headers[f"x-amz-meta-{k}"] = v
        return headers

    async def get_object(self, request, account, bucket, key, auth):
        self._owned_bucket(account, bucket)
        row = self.store.obj(bucket, key)
        if row is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, key)
        return await self._send_object(request, row)

    async def _send_object(self, request: web.Request, row) -> web.StreamResponse:
        size, path = row[1], self.store.objects / row[6]
        headers = self._object_headers(row)
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
        self._owned_bucket(account, bucket)
        row = self.store.obj(bucket, key)
        if row is not None:
            self._apply({"type": "object.delete", "bucket": bucket, "key": key})
            await self.replicate()
            self.events.emit("object.delete", bucket=bucket, key=key, size=row[1], etag=row[2])
        return web.Response(status=204)

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
            if op["type"] == "object.put":
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
        self.require_internal(request)
        ha = self.ha
        if ha is None or self.state.value == "ENABLED":
            return web.json_response({"error": "not a secondary"}, status=409)
        entry = json.loads(request.headers["X-Eucalab-Op"])
        sender_epoch = int(request.headers.get("X-Eucalab-Epoch", "0"))
        if sender_epoch < max(ha.epoch, ha.peer.epoch):  # a stale ex-primary's stream
            return web.json_response({"error": "stale epoch", "current": max(ha.epoch, ha.peer.epoch)}, status=409)
        try:
            await self._apply_replica(entry, request.content)
        except ReplicaError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"last_seq": self.store.last_seq})

    async def _apply_replica(self, entry: dict, body: aiohttp.StreamReader | None) -> None:
        """Apply one replicated op; an object's bytes stream to disk first (any size, one chunk held).

        Concurrent streams may carry the same op: the first to finish applies it, the
        others find it applied and drop their copy.
        """
        if entry["seq"] <= self.store.last_seq:
            return
        op = entry["op"]
        tmp = None
        if op["type"] == "object.put":
            tmp = self.store.objects / f".{op['file']}.{uuid.uuid4().hex[:8]}.part"
            try:
                size = 0
                with open(tmp, "wb") as f:
                    if body is not None:
                        async for chunk in body.iter_chunked(CHUNK):
                            size += len(chunk)
                            f.write(chunk)
                    if size != op["size"]:
                        raise ReplicaError(f"object {op['key']!r}: got {size} bytes, the op says {op['size']}")
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

    async def handle_ha_ops(self, request: web.Request) -> web.Response:
        self.require_internal(request)
        return web.json_response({"ops": self.store.export_ops(int(request.query.get("after", "0")))})

    async def handle_ha_file(self, request: web.Request) -> web.StreamResponse:
        self.require_internal(request)
        name = request.match_info["name"]
        if not re.fullmatch(r"[0-9a-f]{32}", name) or not (self.store.objects / name).exists():
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
        if ha.peer.last_seq <= self.store.last_seq:
            return
        try:
            async with self.replica.get(f"{self._peer_url()}/internal/ha/ops",
                                        params={"after": str(self.store.last_seq)}) as r:
                ops = (await r.json())["ops"]
            for entry in ops:
                if entry["op"]["type"] != "object.put":
                    await self._apply_replica(entry, None)
                    continue
                async with self.replica.get(f"{self._peer_url()}/internal/ha/file/{entry['op']['file']}",
                                            timeout=STREAM_TIMEOUT) as r:
                    if r.status != 200:
                        # Replaced on the peer since: record the op so later ones apply.
                        self.store.db.execute("INSERT INTO ops VALUES (?, ?, ?)",
                                              (entry["seq"], entry["epoch"], json.dumps(entry["op"])))
                        continue
                    await self._apply_replica(entry, r.content)
            self.events.emit("ha.caught_up", last_seq=self.store.last_seq)
        except Exception as exc:
            self.events.emit("ha.catch_up_failed", error=repr(exc))

    async def _on_demote(self, reason: str) -> None:
        # Whatever made it step down, an ex-primary may hold writes nobody acknowledged:
        # the new primary's log wins (catch-up).
        self.store.reset()
        self.events.emit("ha.state_reset", reason=reason)

    # -- internal: image downloads by NCs -------------------------------------------------------

    async def handle_internal_object(self, request: web.Request) -> web.StreamResponse:
        self.require_internal(request)
        if not self.may_serve():
            return web.Response(status=503, text=f"{self.host} is {self.state.value}")
        row = self.store.obj(request.query.get("bucket", ""), request.query.get("key", ""))
        if row is None:
            return web.Response(status=404, text="no such object")
        return await self._send_object(request, row)
