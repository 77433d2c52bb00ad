"""Browser-form uploads to Walrus: PostObject, an HTML form (multipart/form-data) posted
to a bucket, whose policy document is signed with SigV4 (checked in ``auth.py``); the
file field, last, streams to disk as a PutObject body does.
"""

from __future__ import annotations

from urllib.parse import quote
from xml.etree import ElementTree as ET

from aiohttp import web

from components.walrus.bodies import receive
from components.walrus.routing import PREFIX
from components.walrus.s3 import GRANT_HEADERS, S3Error, meta_of, sub, xml_response
from components.walrus.store import CHUNK

MAX_POST_FIELDS = 20 << 10  # a browser-form POST: the fields before the file, all together (as S3)


class PostForms:
    """POST of a multipart/form-data document to a bucket."""

    def __init__(self, walrus):
        self.walrus = walrus
        self.store = walrus.store

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
        account, length_range = (await self.walrus.auth.post_policy(fields, bucket, key)) \
            if "x-amz-signature" in fields else (None, None)
        owner = self.walrus.acls.access(account, bucket, "WRITE")[1]
        grant_fields = {("x-amz-acl" if k == "acl" else k): v for k, v in fields.items()
                        if k == "acl" or k in GRANT_HEADERS}
        acl = self.walrus.acls.requested(grant_fields, account or owner, owner, key)

        async def file_bytes():
            while chunk := await part.read_chunk(CHUNK):
                yield chunk

        name, size, etag, _ = await receive(self.store, self.walrus.max_object, request, None, key, file_bytes())
        if length_range and not length_range[0] <= size <= length_range[1]:
            (self.store.objects / name).unlink(missing_ok=True)
            small = size < length_range[0]
            raise S3Error("EntityTooSmall" if small else "EntityTooLarge", "Your proposed upload is "
                          f"{'smaller than the minimum' if small else 'larger than the maximum'} the policy allows",
                          400, key)
        op = await self.walrus.objects.commit({
            "type": "object.put", "bucket": bucket, "key": key, "size": size, "etag": etag,
            "content_type": fields.get("content-type", "binary/octet-stream"), "meta": meta_of(fields),
            "file": name, "acl": acl})
        headers = {"ETag": f'"{etag}"', "Location": f"{PREFIX}/{bucket}/{quote(key)}",
                   **self.walrus.versions.version_header(op)}
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
