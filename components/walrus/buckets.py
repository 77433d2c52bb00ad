"""Buckets in Walrus: ListBuckets, GetBucketLocation, CreateBucket, DeleteBucket,
HeadBucket, and the listing of a bucket's keys (ListObjectsV2 and ListObjects).
"""

from __future__ import annotations

import base64
import datetime as dt
from urllib.parse import quote
from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.bodies import read_xml
from components.walrus.s3 import S3_NS, S3Error, iso_time, sub, xml_response


class Buckets:
    """The bucket requests (a path with a bucket and no key, and no subresource)."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

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
        self.walrus.acls.owned_bucket(account, bucket)
        root = ET.Element("LocationConstraint", xmlns=S3_NS)  # empty: the default region
        return xml_response(root)

    async def create_bucket(self, request, account, bucket):
        if account is None:
            raise S3Error("AccessDenied", "Access Denied", 403, bucket)
        acl = self.walrus.acls.requested(request.headers, account, account, bucket)
        await read_xml(request, bucket)
        row = self.store.bucket(bucket)
        if row is not None:
            if row[1] == account:
                raise S3Error("BucketAlreadyOwnedByYou", "You already own this bucket", 409, bucket)
            raise S3Error("BucketAlreadyExists", "The requested bucket name is not available", 409, bucket)
        self.walrus._apply({"type": "bucket.create", "bucket": bucket, "account": account,
                            "created": dt.datetime.now().timestamp(), "acl": acl})
        await self.walrus.replicate()
        self.walrus.events.emit("bucket.create", bucket=bucket)
        return web.Response(status=200, headers={"Location": f"/{bucket}"})

    async def delete_bucket(self, request, account, bucket):
        self.walrus.acls.owned_bucket(account, bucket)
        if self.store.db.execute("SELECT 1 FROM objects WHERE bucket=? UNION ALL SELECT 1 FROM versions "
                                 "WHERE bucket=? LIMIT 1", (bucket, bucket)).fetchone():
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409, bucket)
        self.walrus._apply({"type": "bucket.delete", "bucket": bucket})
        await self.walrus.replicate()
        self.walrus.events.emit("bucket.delete", bucket=bucket)
        return web.Response(status=204)

    async def head_bucket(self, request, account, bucket):
        self.walrus.acls.access(account, bucket, "READ")
        return web.Response(status=200)

    async def list_objects(self, request, account, bucket):
        """ListObjectsV2 (list-type=2) or the original ListObjects (marker)."""
        self.walrus.acls.access(account, bucket, "READ")
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
