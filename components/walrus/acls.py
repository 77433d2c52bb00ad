"""Access control in Walrus: who may do what to a bucket or an object (its ACL; the
bucket's owner holds every permission in its bucket), the ACL a write asks for, and
Get/Put{Bucket,Object}Acl.
"""

from __future__ import annotations

from aiohttp import web

from components.walrus.auth import AUTH
from components.walrus.bodies import read_xml
from components.walrus.s3 import S3Error, acl_from_headers, acl_from_xml, acl_xml, permitted


class Acls:
    """Permission checks for the other managers, and the ACL subresource (``?acl``)."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

    def access(self, account: str | None, bucket: str, need: str, key: str | None = None):
        """The bucket's row if ``account`` holds ``need`` on the bucket (or, with ``key``, on
        that object) by its ACL; the bucket's owner holds every permission in its bucket."""
        row = self.store.bucket(bucket)
        if row is None:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, bucket)
        if account != row[1] and not permitted(self.store.acl(bucket, key or ""), account, need):
            raise S3Error("AccessDenied", "Access Denied", 403, key or bucket)
        return row

    def owned_bucket(self, account: str, bucket: str):
        """The bucket's row if ``account`` owns it (for what no ACL grants to others)."""
        row = self.store.bucket(bucket)
        if row is None:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, bucket)
        if row[1] != account:
            raise S3Error("AccessDenied", "Access Denied", 403, bucket)
        return row

    @staticmethod
    def requested(headers, account: str, bucket_owner: str, resource: str) -> dict:
        """The ACL a write asks for in its headers (or a form's fields); private to the writer without one."""
        return acl_from_headers(headers, account, bucket_owner, resource) or \
            {"owner": account, "grants": [["id", account, "FULL_CONTROL"]]}

    async def get_bucket_acl(self, request, account, bucket):
        self.access(account, bucket, "READ_ACP")
        return acl_xml(self.store.acl(bucket))

    async def put_bucket_acl(self, request, account, bucket):
        owner = self.access(account, bucket, "WRITE_ACP")[1]
        await self._put_acl(request, bucket, "", owner, owner)
        return web.Response(status=200)

    async def get_object_acl(self, request, account, bucket, key, auth):
        self.access(account, bucket, "READ_ACP", key)
        self.walrus.versions.version_of(bucket, key, request.query.get("versionId"))
        return acl_xml(self.store.acl(bucket, key))

    async def put_object_acl(self, request, account, bucket, key, auth):
        bucket_owner = self.access(account, bucket, "WRITE_ACP", key)[1]
        self.walrus.versions.version_of(bucket, key, request.query.get("versionId"))
        await self._put_acl(request, bucket, key, self.store.acl(bucket, key)["owner"], bucket_owner)
        return web.Response(status=200)

    async def _put_acl(self, request, bucket: str, key: str, owner: str, bucket_owner: str) -> None:
        """Put{Bucket,Object}Acl: a canned ACL or grant headers, or an AccessControlPolicy body."""
        resource = key or bucket
        acl = acl_from_headers(request.headers, owner, bucket_owner, resource)
        doc = await read_xml(request, resource, auth=request[AUTH])
        if acl is not None and doc is not None:
            raise S3Error("UnexpectedContent", "This request does not support content when an ACL is given in "
                          "headers", 400, resource)
        if acl is None:
            acl = acl_from_xml(doc, owner, resource)
        self.walrus._apply({"type": "acl.put", "bucket": bucket, "key": key, "acl": acl})
        await self.walrus.replicate()
