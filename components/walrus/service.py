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
committed: after a crash an object is either entirely there or not at all. The store
(metadata in SQLite, object files, the op log) is ``store.py``.

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
from components.common.supervise import supervise

from components.walrus.s3 import (CHECKSUMS, GRANT_HEADERS, S3_NS, S3Error, acl_from_headers, acl_from_xml, acl_xml,
                                  checked_tags, composite_etag, int_param, iso_time, meta_of, page_by_key, parse_range,
                                  permitted, precondition, precondition_failed, refuse_unverified, sub,
                                  tags_from_header, verify_digests, xml_response)
from components.walrus.store import CHUNK, Store, concatenate

PREFIX = "/services/Walrus"
OBJECT_FILE = re.compile(r"[0-9a-f]{32}")  # an object's or a part's file in the store: a uuid4 in hex
SMALL = 1 << 20  # objects up to this size are answered from memory
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
        # Any character, a newline too: a name that holds one gets its S3 error, not a 404.
        app.router.add_route("*", PREFIX + r"/{rest:[\s\S]*}", self.dispatch)

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
        return await self._send_object(request, row)
