"""Request bodies Walrus takes in: an object's bytes (a PutObject or UploadPart body, or a
browser form's file field) streamed into a new object file, and small XML documents;
every digest the client sent is checked before anything is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
import zlib
from xml.etree import ElementTree as ET

from aiohttp import web
from multidict import CIMultiDict

from components.common.sigv4 import ChunkedDecoder, SigV4Error

from components.walrus.s3 import CHECKSUMS, S3Error, refuse_unverified, verify_digests
from components.walrus.store import CHUNK, Store

MAX_XML_BODY = 1 << 16  # request bodies that are XML documents (CreateBucketConfiguration)


async def read_xml(request: web.Request, resource: str, limit: int = MAX_XML_BODY, auth=None) -> ET.Element | None:
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


async def receive(store: Store, max_object: int, request, auth, key: str,
                  chunks=None) -> tuple[str, int, str, dict]:
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
    if size_hint is not None and size_hint > max_object:
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
    tmp = store.objects / f".{name}.part"
    try:
        with open(tmp, "wb") as f:
            async for raw in (request.content.iter_chunked(CHUNK) if chunks is None else chunks):
                data = decoder.feed(raw) if decoder else raw
                size += len(data)
                if size > max_object:
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
    await asyncio.to_thread(store.install, tmp, name)
    checked = {h: headers[h] for h in (*CHECKSUMS, "x-amz-checksum-crc32") if h in headers}
    return name, size, md5.hexdigest(), checked
