"""Versioning in Walrus: a bucket's versioning status, ListObjectVersions, and which
version (or delete marker) a request names. The versions themselves are rows of the
store, written by the ops of PutObject and DeleteObject (``Store.apply``).
"""

from __future__ import annotations

from urllib.parse import quote
from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.auth import AUTH
from components.walrus.bodies import read_xml
from components.walrus.s3 import S3_NS, S3Error, int_param, iso_time, page_by_key, sub, xml_response


class Versioning:
    """The ``?versioning`` and ``?versions`` subresources, and version lookups for the other managers."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

    @staticmethod
    def version_header(op: dict) -> dict:
        """The x-amz-version-id header of a logged write, if its bucket gave it a version."""
        return {"x-amz-version-id": op["version"]} if op.get("version") is not None else {}

    def version_of(self, bucket: str, key: str, version: str | None):
        """The version asked for (the latest without ``version``), delete markers included."""
        row = self.store.version(bucket, key, version)
        if row is None and version is not None:
            raise S3Error("NoSuchVersion", "The specified version does not exist.", 404, key)
        if row is None or (row[8] and version is None):
            marker = {"x-amz-delete-marker": "true", "x-amz-version-id": row[7]} if row else {}
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, key, marker)
        return row

    async def get_versioning(self, request, account, bucket):
        self.walrus.acls.owned_bucket(account, bucket)
        root = ET.Element("VersioningConfiguration", xmlns=S3_NS)
        status = self.store.versioning(bucket)
        if status is not None:
            sub(root, "Status", status)
        return xml_response(root)

    async def put_versioning(self, request, account, bucket):
        self.walrus.acls.owned_bucket(account, bucket)
        doc = await read_xml(request, bucket, auth=request[AUTH])
        status = None if doc is None or doc.tag != "VersioningConfiguration" else doc.findtext("Status")
        if status not in ("Enabled", "Suspended"):
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema (Status Enabled or Suspended)", 400, bucket)
        if (doc.findtext("MfaDelete") or "Disabled") != "Disabled":
            raise S3Error("NotImplemented", "Walrus does not implement MFA delete", 501, bucket)
        self.walrus._apply({"type": "bucket.versioning", "bucket": bucket, "status": status})
        await self.walrus.replicate()
        return web.Response(status=200)

    async def list_versions(self, request, account, bucket):
        """ListObjectVersions: prefix, delimiter, key-marker / version-id-marker, max-keys,
        encoding-type=url; a bucket never versioned lists its objects as "null" versions."""
        self.walrus.acls.owned_bucket(account, bucket)
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
