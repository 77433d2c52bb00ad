"""Object tagging in Walrus: Get/Put/DeleteObjectTagging (``?tagging`` on a key). Tags
belong to the key, all its versions; PutObject, CopyObject and CreateMultipartUpload set
them from ``x-amz-tagging`` through their own ops.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.bodies import read_xml
from components.walrus.s3 import S3_NS, S3Error, checked_tags, sub, xml_response


class Tagging:
    """The ``?tagging`` subresource of an object."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

    async def get_tagging(self, request, account, bucket, key, auth):
        self.walrus.acls.access(account, bucket, "READ", key)
        self.walrus.versions.version_of(bucket, key, request.query.get("versionId"))
        root = ET.Element("Tagging", xmlns=S3_NS)
        tag_set = sub(root, "TagSet")
        for k, v in self.store.tags(bucket, key).items():
            tag = sub(tag_set, "Tag")
            sub(tag, "Key", k)
            sub(tag, "Value", v)
        return xml_response(root)

    async def put_tagging(self, request, account, bucket, key, auth):
        self.walrus.acls.access(account, bucket, "WRITE")
        self.walrus.versions.version_of(bucket, key, request.query.get("versionId"))
        doc = await read_xml(request, key, auth=auth)
        if doc is None or doc.tag != "Tagging" or doc.find("TagSet") is None:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema", 400, key)
        tags = checked_tags([(t.findtext("Key") or "", t.findtext("Value") or "")
                             for t in doc.find("TagSet").findall("Tag")], key)
        self.walrus._apply({"type": "tags.put", "bucket": bucket, "key": key, "tags": tags})
        await self.walrus.replicate()
        return web.Response(status=200)

    async def delete_tagging(self, request, account, bucket, key, auth):
        self.walrus.acls.access(account, bucket, "WRITE")
        self.walrus.versions.version_of(bucket, key, request.query.get("versionId"))
        self.walrus._apply({"type": "tags.put", "bucket": bucket, "key": key, "tags": {}})
        await self.walrus.replicate()
        return web.Response(status=204)
