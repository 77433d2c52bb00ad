"""Copies in Walrus: CopyObject, and the source and bytes of an UploadPartCopy. The
source is named by ``x-amz-copy-source`` (``[/]bucket/key[?versionId=]``), read with the
reader's permission and its ``x-amz-copy-source-if-*`` conditions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from urllib.parse import parse_qsl, unquote
from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.s3 import (S3_NS, S3Error, iso_time, meta_of, precondition, precondition_failed, sub,
                                  tags_from_header, xml_response)
from components.walrus.store import CHUNK


class Copies:
    """Server-side copies from one object (or a byte range of it) into a new object file."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

    async def copy_object(self, request, account, bucket, key, acl: dict):
        """CopyObject: same or other bucket, metadata directive COPY or REPLACE, the
        x-amz-copy-source-if-* conditions."""
        src = self.source(request, account)
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
        name, size, etag = await self.copy_bytes(src[6], 0, src[1])
        op = await self.walrus.objects.commit({
            "type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
            "content_type": content_type, "meta": meta, "file": name, "acl": acl, "tags": tags})
        root = ET.Element("CopyObjectResult", xmlns=S3_NS)
        sub(root, "LastModified", iso_time(op["modified"]))
        sub(root, "ETag", f'"{etag}"')
        resp = xml_response(root)
        resp.headers.update(self.walrus.versions.version_header(op))
        if self.store.versioning(src_bucket) is not None:
            resp.headers["x-amz-copy-source-version-id"] = src[7]
        return resp

    def source(self, request: web.Request, account: str):
        """The object row named by x-amz-copy-source (``[/]bucket/key[?versionId=]``, URL-encoded)."""
        raw = request.headers["x-amz-copy-source"]
        path, _, query = raw.partition("?")
        src_bucket, _, src_key = unquote(path).lstrip("/").partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                          "sourcebucket/sourcekey", 400, raw)
        version = dict(parse_qsl(query)).get("versionId")
        self.walrus.acls.access(account, src_bucket, "READ", src_key)
        row = self.walrus.versions.version_of(src_bucket, src_key, version)
        if row[8]:
            raise S3Error("InvalidRequest", "The source of a copy request may not specifically refer to a delete "
                          "marker by version id.", 400, raw)
        if precondition(request.headers, row[2], row[4], prefix="x-amz-copy-source-") is not None:
            raise precondition_failed()
        return row

    async def copy_bytes(self, src_file: str, start: int, length: int) -> tuple[str, int, str]:
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
