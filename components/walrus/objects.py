"""Objects in Walrus: PutObject, GetObject and HeadObject (ranges and conditional
requests), DeleteObject and DeleteObjects, with the versions and delete markers of a
versioned bucket. A new object's file is written, fsynced and renamed into place before
its op is logged (``commit``): after a crash an object is either entirely there or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from email.utils import formatdate
from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.auth import AUTH
from components.walrus.bodies import read_xml, receive
from components.walrus.s3 import (CHECKSUMS, S3_NS, S3Error, meta_of, parse_range, precondition, precondition_failed,
                                  sub, tags_from_header, xml_response)
from components.walrus.store import CHUNK

SMALL = 1 << 20  # objects up to this size are answered from memory
MAX_DELETE_BODY = 8 << 20  # DeleteObjects: 1,000 keys of up to 1,024 bytes, each character escaped


class Objects:
    """The object requests (a path with a key and no subresource), and DeleteObjects."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

    async def put_object(self, request, account, bucket, key, auth):
        owner = self.walrus.acls.access(account, bucket, "WRITE")[1]
        acl = self.walrus.acls.requested(request.headers, account or owner, owner, key)
        if "x-amz-copy-source" in request.headers:
            return await self.walrus.copies.copy_object(request, account, bucket, key, acl)
        tags = tags_from_header(request.headers, key) or {}
        name, size, etag, _ = await receive(self.store, self.walrus.max_object, request, auth, key)
        op = await self.commit({"type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
                                "content_type": request.headers.get("Content-Type", "binary/octet-stream"),
                                "meta": meta_of(request.headers), "file": name, "acl": acl, "tags": tags})
        return web.Response(status=200, headers={"ETag": f'"{etag}"', **self.walrus.versions.version_header(op)})

    async def commit(self, op: dict) -> dict:
        """Log a new object (object.put, upload.complete) whose file is installed and replicate
        it; a versioned bucket gives it a version id. Returns the op as logged."""
        op = {**op, "modified": dt.datetime.now().timestamp()}
        status = self.store.versioning(op["bucket"])
        if status is not None:
            op["version"] = uuid.uuid4().hex if status == "Enabled" else "null"
        self.walrus._apply(op)
        await self.walrus.replicate()  # the DISABLED peer has the object before the client hears success
        self.walrus.events.emit("object.put", bucket=op["bucket"], key=op["key"], size=op["size"], etag=op["etag"])
        return op

    async def delete_objects(self, request, account, bucket):
        """DeleteObjects: up to 1,000 keys, each answered Deleted or Error (quiet: errors only)."""
        self.walrus.acls.access(account, bucket, "WRITE")
        if not any(h in request.headers for h in ("Content-MD5", *CHECKSUMS, "x-amz-checksum-crc32")):
            raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5", 400, bucket)
        doc = await read_xml(request, bucket, limit=MAX_DELETE_BODY, auth=request[AUTH])
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
            await self.walrus.replicate()  # one round for every key: the peer has them all before the answer
        for row in deleted:
            self.walrus.events.emit("object.delete", bucket=bucket, key=row[0], size=row[1], etag=row[2])
        return xml_response(root)

    def headers_of(self, row) -> dict:
        key, size, etag, ctype, modified, meta = row[:6]
        headers = {"ETag": f'"{etag}"', "Last-Modified": formatdate(modified, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": ctype or "binary/octet-stream"}
        for k, v in json.loads(meta or "{}").items():
            headers[f"x-amz-meta-{k}"] = v
        return headers

    async def get_object(self, request, account, bucket, key, auth):
        # A key with neither an object nor an ACL is 404 only to who may list the bucket.
        known = self.store.obj(bucket, key) is not None or self.store.db.execute(
            "SELECT 1 FROM acls WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        self.walrus.acls.access(account, bucket, "READ", key if known else None)
        row = self.walrus.versions.version_of(bucket, key, request.query.get("versionId"))
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
            headers = self.headers_of(row)
            return web.Response(status=304, headers={h: headers[h] for h in ("ETag", "Last-Modified")})
        return await self.send(request, row, extra)

    async def send(self, request: web.Request, row, extra: dict | None = None) -> web.StreamResponse:
        size, path = row[1], self.store.objects / row[6]
        headers = {**self.headers_of(row), **(extra or {})}
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
        self.walrus.acls.access(account, bucket, "WRITE")
        applied, headers, removed = self._delete(bucket, key, request.query.get("versionId"))
        if applied:
            await self.walrus.replicate()
        if removed is not None:
            self.walrus.events.emit("object.delete", bucket=bucket, key=key, size=removed[1], etag=removed[2])
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
        self.walrus._apply(op)
        return True, headers, removed
