"""Walrus's HTTP routing: a request under /services/Walrus is authenticated, then sent by
its method, its bucket and key and its subresource (``?acl``, ``?uploads``, ...) to the
manager that serves it; an S3Error raised on the way becomes S3's error XML.
"""

from __future__ import annotations

import uuid
from xml.etree import ElementTree as ET

from aiohttp import web

from components.common.names import valid_bucket, valid_key, xml_text

from components.walrus.auth import AUTH
from components.walrus.s3 import S3Error, sub, xml_response

PREFIX = "/services/Walrus"
# Sub-resources of the S3 API that Walrus does not implement: refused with NotImplemented
# rather than served as if they were plain bucket or object requests.
UNSUPPORTED_SUBRESOURCES = frozenset((
    "accelerate", "analytics", "attributes", "cors", "encryption", "intelligent-tiering",
    "inventory", "legal-hold", "lifecycle", "logging", "metrics", "notification", "object-lock",
    "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "replication",
    "requestPayment", "restore", "retention", "select", "torrent", "website"))


def error_response(err: S3Error) -> web.Response:
    """S3's error XML for a refused request, with a request id."""
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


class S3Router:
    """Sends each S3 request to the manager method that serves it."""

    def __init__(self, walrus):
        self.walrus = walrus

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        w = self.walrus
        rest = request.path[len(PREFIX):].lstrip("/")
        bucket, _, key = rest.partition("/")
        try:
            if not bucket and key == "":
                if request.method != "GET":
                    raise S3Error("MethodNotAllowed", "not allowed on the service", 405)
                account, _ = await w.auth.authenticate(request)
                return w.buckets.list_buckets(account)
            if not valid_bucket(bucket):
                raise S3Error("InvalidBucketName", "The specified bucket is not valid.", 400, bucket)
            account, auth = await w.auth.authenticate(request)
            request[AUTH] = auth  # for bucket handlers that read a signed body
            m = request.method
            unsupported = UNSUPPORTED_SUBRESOURCES.intersection(request.query)
            if unsupported:
                raise S3Error("NotImplemented", f"Walrus does not implement ?{min(unsupported)}", 501)
            if not key and "location" in request.query:
                if m != "GET":
                    raise S3Error("MethodNotAllowed", f"{m} is not allowed on ?location", 405)
                return w.buckets.bucket_location(account, bucket)
            if not key:
                if "uploads" in request.query:
                    handler = {"GET": w.uploads.list_uploads}.get(m)
                elif "delete" in request.query:
                    handler = {"POST": w.objects.delete_objects}.get(m)
                elif "versioning" in request.query:
                    handler = {"GET": w.versions.get_versioning, "PUT": w.versions.put_versioning}.get(m)
                elif "versions" in request.query:
                    handler = {"GET": w.versions.list_versions}.get(m)
                elif "acl" in request.query:
                    handler = {"GET": w.acls.get_bucket_acl, "PUT": w.acls.put_bucket_acl}.get(m)
                elif "tagging" in request.query:
                    raise S3Error("NotImplemented", "Walrus does not implement bucket tagging", 501)
                elif m == "POST" and request.content_type == "multipart/form-data":
                    handler = w.forms.post_object
                else:
                    handler = {"PUT": w.buckets.create_bucket, "DELETE": w.buckets.delete_bucket,
                               "GET": w.buckets.list_objects, "HEAD": w.buckets.head_bucket}.get(m)
                if handler is None:
                    raise S3Error("MethodNotAllowed", f"{m} is not allowed on a bucket", 405)
                return await handler(request, account, bucket)
            if not valid_key(key):
                raise S3Error("KeyTooLongError", "Your key is too long", 400, key)
            if "uploadId" in request.query:
                handler = {"PUT": w.uploads.upload_part, "POST": w.uploads.complete_upload,
                           "DELETE": w.uploads.abort_upload, "GET": w.uploads.list_parts}.get(m)
            elif "uploads" in request.query:
                handler = {"POST": w.uploads.create_upload}.get(m)
            elif "acl" in request.query:
                handler = {"GET": w.acls.get_object_acl, "PUT": w.acls.put_object_acl}.get(m)
            elif "tagging" in request.query:
                handler = {"GET": w.tagging.get_tagging, "PUT": w.tagging.put_tagging,
                           "DELETE": w.tagging.delete_tagging}.get(m)
            elif "partNumber" in request.query:
                raise S3Error("NotImplemented", "Walrus does not implement ?partNumber on an object", 501)
            elif "versionId" in request.query and m not in ("GET", "HEAD", "DELETE"):
                raise S3Error("InvalidArgument", f"versionId is not allowed on {m}", 400, key)
            else:
                handler = {"PUT": w.objects.put_object, "GET": w.objects.get_object, "HEAD": w.objects.get_object,
                           "DELETE": w.objects.delete_object}.get(m)
            if handler is None:
                raise S3Error("MethodNotAllowed", f"{m} is not allowed on an object", 405)
            return await handler(request, account, bucket, key, auth)
        except S3Error as err:
            if not err.resource:
                err.resource = request.path
            if request.method == "HEAD":  # a HEAD answer has no body: the code goes in a header
                return web.Response(status=err.status, headers={"x-amz-error-code": err.code, **err.headers})
            return error_response(err)
