"""Multipart uploads in Walrus: CreateMultipartUpload, UploadPart (and UploadPartCopy),
CompleteMultipartUpload, AbortMultipartUpload, ListParts and ListMultipartUploads. Each
part is replicated before it is acknowledged, so a failover loses none; completing an
upload concatenates the listed parts into a new object file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from urllib.parse import quote
from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.bodies import read_xml, receive
from components.walrus.routing import PREFIX
from components.walrus.s3 import (S3_NS, S3Error, composite_etag, int_param, iso_time, meta_of, page_by_key, sub,
                                  tags_from_header, xml_response)

MAX_PARTS = 10000  # S3's limits on a multipart upload: part numbers 1..10000,
MIN_PART = 5 << 20  # every part but the last at least 5 MiB


class MultipartUploads:
    """The ``?uploads`` and ``?uploadId`` requests."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

    def _upload(self, bucket: str, key: str, upload: str):
        row = self.store.upload(bucket, key, upload)
        if row is None:
            raise S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or "
                          "the upload may have been aborted or completed.", 404, upload)
        return row

    async def create_upload(self, request, account, bucket, key, auth):
        owner = self.walrus.acls.access(account, bucket, "WRITE")[1]
        upload = uuid.uuid4().hex
        meta = meta_of(request.headers)
        self.walrus._apply({"type": "upload.create", "bucket": bucket, "key": key, "upload": upload,
                            "account": account or owner, "initiated": dt.datetime.now().timestamp(),
                            "content_type": request.headers.get("Content-Type", "binary/octet-stream"), "meta": meta,
                            "acl": self.walrus.acls.requested(request.headers, account or owner, owner, key),
                            "tags": tags_from_header(request.headers, key) or {}})
        await self.walrus.replicate()
        root = ET.Element("InitiateMultipartUploadResult", xmlns=S3_NS)
        sub(root, "Bucket", bucket)
        sub(root, "Key", key)
        sub(root, "UploadId", upload)
        return xml_response(root)

    async def upload_part(self, request, account, bucket, key, auth):
        """UploadPart, or UploadPartCopy with x-amz-copy-source; the part is on the peer before the answer."""
        self.walrus.acls.access(account, bucket, "WRITE")
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
            src = self.walrus.copies.source(request, account)
            start, end = 0, src[1] - 1
            if request.headers.get("x-amz-copy-source-range"):
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["x-amz-copy-source-range"].strip())
                if not m or int(m.group(1)) > int(m.group(2)) or int(m.group(2)) >= src[1]:
                    raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                                  "bytes=first-last where first and last are the zero-based offsets of the first "
                                  "and last bytes to copy", 400, key)
                start, end = int(m.group(1)), int(m.group(2))
            name, size, etag = await self.walrus.copies.copy_bytes(src[6], start, end - start + 1)
            checked: dict = {}
        else:
            name, size, etag, checked = await receive(self.store, self.walrus.max_object, request, auth, key)
        if self.store.upload(bucket, key, upload) is None:  # completed or aborted while the body came in
            (self.store.objects / name).unlink(missing_ok=True)
            self._upload(bucket, key, upload)
        modified = dt.datetime.now().timestamp()
        self.walrus._apply({"type": "upload.part", "upload": upload, "number": number, "size": size, "etag": etag,
                            "modified": modified, "file": name})
        await self.walrus.replicate()  # a part acknowledged is on both members: a failover loses none
        self.walrus.events.emit("upload.part", bucket=bucket, key=key, upload=upload, number=number, size=size)
        if not copy:
            return web.Response(status=200, headers={"ETag": f'"{etag}"', **checked})
        root = ET.Element("CopyPartResult", xmlns=S3_NS)
        sub(root, "LastModified", iso_time(modified))
        sub(root, "ETag", f'"{etag}"')
        return xml_response(root)

    async def complete_upload(self, request, account, bucket, key, auth):
        self.walrus.acls.access(account, bucket, "WRITE")
        upload = request.query["uploadId"]
        _, initiator, _, ctype, meta, acl, tags = self._upload(bucket, key, upload)
        doc = await read_xml(request, key, limit=MAX_PARTS * 256, auth=auth)
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
        if size > self.walrus.max_object:
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
        op = await self.walrus.objects.commit({
            "type": "upload.complete", "bucket": bucket, "key": key, "upload": upload,
            "parts": [[n, have[n][2]] for n, _ in wanted], "size": size, "etag": etag,
            "content_type": ctype, "meta": json.loads(meta or "{}"), "file": name,
            "acl": json.loads(acl or "null") or {"owner": initiator, "grants": [["id", initiator, "FULL_CONTROL"]]},
            "tags": json.loads(tags or "{}")})
        root = ET.Element("CompleteMultipartUploadResult", xmlns=S3_NS)
        sub(root, "Location", f"{PREFIX}/{bucket}/{quote(key)}")
        sub(root, "Bucket", bucket)
        sub(root, "Key", key)
        sub(root, "ETag", f'"{etag}"')
        resp = xml_response(root)
        resp.headers.update(self.walrus.versions.version_header(op))
        return resp

    async def abort_upload(self, request, account, bucket, key, auth):
        self.walrus.acls.access(account, bucket, "WRITE")
        upload = request.query["uploadId"]
        self._upload(bucket, key, upload)
        self.walrus._apply({"type": "upload.abort", "upload": upload})
        await self.walrus.replicate()
        return web.Response(status=204)

    async def list_parts(self, request, account, bucket, key, auth):
        self.walrus.acls.access(account, bucket, "WRITE")
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
        self.walrus.acls.owned_bucket(account, bucket)
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
