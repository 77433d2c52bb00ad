"""The S3 protocol's rules, apart from any store or server: S3 error XML, digests and
checksums, conditional requests, paging by key, ACLs and canned ACLs, object tags,
bucket names and ranges. Pure functions, used by the Walrus service and tested through it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

from aiohttp import web

from components.common.sigv4 import EMPTY_SHA256

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Checksums Walrus verifies (base64 of the digest); others are refused before the body is read.
CHECKSUMS = {"x-amz-checksum-sha256": hashlib.sha256, "x-amz-checksum-sha1": hashlib.sha1}
UNVERIFIED_CHECKSUMS = ("x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme")


class S3Error(Exception):
    """A refused request: S3's error code, message and HTTP status (and headers to add)."""

    def __init__(self, code: str, message: str, status: int, resource: str = "", headers: dict | None = None):
        self.code, self.message, self.status, self.resource = code, message, status, resource
        self.headers = headers or {}
        super().__init__(message)


def precondition_failed() -> S3Error:
    return S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)


def xml_response(root: ET.Element, status: int = 200) -> web.Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)
    return web.Response(body=body, status=status, content_type="application/xml")


def sub(parent: ET.Element, tag: str, text=None, **attrib) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = str(text)
    return el


def iso_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def meta_of(headers) -> dict:
    return {k[len("x-amz-meta-"):]: v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")}


def composite_etag(part_etags: list[str]) -> str:
    """S3's ETag of a multipart object: the MD5 of the parts' binary MD5s, a dash, the part count."""
    return f"{hashlib.md5(b''.join(bytes.fromhex(e) for e in part_etags)).hexdigest()}-{len(part_etags)}"


def int_param(query, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(query.get(name, str(default)))
        if not low <= value <= high:
            raise ValueError
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer between {low} and {high}", 400) from None
    return value


def refuse_unverified(headers, resource: str) -> None:
    unverified = [h for h in UNVERIFIED_CHECKSUMS if h in headers]
    if unverified:
        raise S3Error("NotImplemented", f"Walrus cannot verify {unverified[0]}; use CRC32, SHA1 or SHA256",
                      501, resource)


def verify_digests(headers, auth, md5, sha, crc: int, digests: dict, resource: str) -> None:
    """Refuse a body whose bytes do not match a digest the client sent or signed."""
    for header, d in digests.items():
        if base64.b64encode(d.digest()).decode() != headers[header]:
            raise S3Error("BadDigest", f"The {header[len('x-amz-checksum-'):].upper()} you specified "
                          "did not match the calculated checksum.", 400, resource)
    if auth is not None and auth.payload_mode == "signed" and \
            sha.hexdigest() != headers.get("x-amz-content-sha256", EMPTY_SHA256):
        raise S3Error("XAmzContentSHA256Mismatch",
                      "The provided 'x-amz-content-sha256' header does not match what was computed.", 400, resource)
    want_crc = headers.get("x-amz-checksum-crc32")
    if want_crc and base64.b64encode(crc.to_bytes(4, "big")).decode() != want_crc:
        raise S3Error("BadDigest", "The CRC32 you specified did not match the calculated checksum.", 400, resource)
    want_md5 = headers.get("Content-MD5")
    if want_md5 and base64.b64encode(md5.digest()).decode() != want_md5:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.", 400, resource)


def _etag_listed(header: str, etag: str) -> bool:
    return any(t.strip().strip('"') in ("*", etag) for t in header.split(","))


def _http_date(header: str | None) -> float | None:
    try:
        return parsedate_to_datetime(header).timestamp() if header else None
    except (TypeError, ValueError):
        return None  # S3 ignores a date it cannot read


def precondition(headers, etag: str, modified: float, prefix: str = "") -> int | None:
    """S3's answer to If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since (after
    ``prefix``, x-amz-copy-source- for copies): None to go on, 412 or 304.

    If-Match that holds overrides a failing If-Unmodified-Since, If-None-Match that fails
    overrides a holding If-Modified-Since; times compare to the second (Last-Modified's precision).
    """
    modified = int(modified)
    if_match, if_none = headers.get(prefix + "If-Match"), headers.get(prefix + "If-None-Match")
    if if_match is not None:
        if not _etag_listed(if_match, etag):
            return 412
    elif (since := _http_date(headers.get(prefix + "If-Unmodified-Since"))) is not None and modified > since:
        return 412
    if if_none is not None:
        if _etag_listed(if_none, etag):
            return 304
    elif (since := _http_date(headers.get(prefix + "If-Modified-Since"))) is not None and modified <= since:
        return 304
    return None


def page_by_key(rows, prefix: str, delimiter: str, key_marker: str, id_marker: str,
                limit: int) -> tuple[list, list[str], tuple[str, str] | None]:
    """One page of rows ``(key, id, ...)`` sorted by key (ListMultipartUploads, ListObjectVersions).

    Rows after the markers (every id of ``key_marker`` when ``id_marker`` is empty, else those
    up to it), keys under ``prefix``, rolled up at ``delimiter`` into common prefixes.
    Returns (rows, common prefixes, the next markers when the page is truncated).
    """
    items: list = []
    prefixes: list[str] = []
    past = not id_marker
    last = (key_marker, id_marker)
    for row in rows:
        key, rid = row[0], row[1]
        if not key.startswith(prefix):
            if key > prefix:
                break
            continue
        if key_marker and (key < key_marker or (key == key_marker and not id_marker)):
            continue
        if key == key_marker and not past:
            past = rid == id_marker
            continue
        common = None
        if delimiter and (cut := key.find(delimiter, len(prefix))) >= 0:
            common = key[:cut + len(delimiter)]
            if prefixes and prefixes[-1] == common:
                continue
        if len(items) + len(prefixes) >= limit:
            return items, prefixes, last
        if common is not None:
            prefixes.append(common)
            last = (common + "\U0010ffff", "")  # resume after every key under it
        else:
            items.append(row)
            last = (key, rid)
    return items, prefixes, None


ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ET.register_namespace("xsi", XSI)
PERMISSIONS = ("READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL")
GRANT_HEADERS = {f"x-amz-grant-{p.lower().replace('_', '-')}": p for p in PERMISSIONS}
# Canned ACLs: the grants each adds to the owner's FULL_CONTROL ("bucket-owner" is the
# bucket's owner, for objects written into another account's bucket).
CANNED = {"private": [], "public-read": [("group", ALL_USERS, "READ")],
          "public-read-write": [("group", ALL_USERS, "READ"), ("group", ALL_USERS, "WRITE")],
          "authenticated-read": [("group", AUTHENTICATED_USERS, "READ")],
          "bucket-owner-read": [("id", "bucket-owner", "READ")],
          "bucket-owner-full-control": [("id", "bucket-owner", "FULL_CONTROL")]}


def permitted(acl: dict, account: str | None, need: str) -> bool:
    """Whether ``account`` (None: an anonymous request) holds ``need`` under ``acl``."""
    if account is not None and account == acl["owner"]:
        return True
    for kind, grantee, permission in acl["grants"]:
        if permission not in (need, "FULL_CONTROL"):
            continue
        if (kind == "group" and (grantee == ALL_USERS or (grantee == AUTHENTICATED_USERS and account is not None))) \
                or (kind == "id" and account is not None and grantee == account):
            return True
    return False


def _grantee(kind: str, value: str, resource: str) -> tuple[str, str]:
    if kind in ("id", "ID"):
        return "id", value
    if kind in ("uri", "URI") and value in (ALL_USERS, AUTHENTICATED_USERS):
        return "group", value
    if kind in ("emailAddress", "EmailAddress"):
        raise S3Error("UnresolvableGrantByEmailAddress", "The e-mail address you provided does not match any "
                      "account on record.", 400, resource)
    raise S3Error("InvalidArgument", f"Invalid grantee {kind}={value!r}", 400, resource)


def acl_from_headers(headers, owner: str, bucket_owner: str, resource: str) -> dict | None:
    """The ACL an x-amz-acl or x-amz-grant-* header asks for; None when there is none."""
    canned = headers.get("x-amz-acl")
    granted = [(h, p) for h, p in GRANT_HEADERS.items() if h in headers]
    if canned is not None and granted:
        raise S3Error("InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed", 400,
                      resource)
    if canned is not None:
        if canned not in CANNED:
            raise S3Error("InvalidArgument", f"Unknown canned ACL {canned!r}", 400, resource)
        grants = [["id", owner, "FULL_CONTROL"]] + [
            [kind, bucket_owner if grantee == "bucket-owner" else grantee, perm] for kind, grantee, perm in
            CANNED[canned]]
        return {"owner": owner, "grants": grants}
    if not granted:
        return None
    grants = []
    for header, permission in granted:
        for item in headers[header].split(","):
            kind, _, value = item.strip().partition("=")
            grants.append([*_grantee(kind.strip(), value.strip().strip('"'), resource), permission])
    return {"owner": owner, "grants": grants}


def acl_from_xml(doc: ET.Element | None, owner: str, resource: str) -> dict:
    """The ACL of an AccessControlPolicy document (namespaces stripped)."""
    if doc is None or doc.tag != "AccessControlPolicy" or doc.find("AccessControlList") is None:
        raise S3Error("MalformedACLError", "The XML you provided was not well-formed or did not validate against "
                      "our published schema", 400, resource)
    grants = []
    for grant in doc.find("AccessControlList").findall("Grant"):
        grantee, permission = grant.find("Grantee"), (grant.findtext("Permission") or "").strip()
        field = None if grantee is None else next((c for c in grantee if c.tag in ("ID", "URI", "EmailAddress")),
                                                  None)
        if field is None or permission not in PERMISSIONS:
            raise S3Error("MalformedACLError", "The XML you provided was not well-formed or did not validate "
                          "against our published schema", 400, resource)
        grants.append([*_grantee(field.tag, (field.text or "").strip(), resource), permission])
    return {"owner": owner, "grants": grants}


def acl_xml(acl: dict) -> web.Response:
    root = ET.Element("AccessControlPolicy", xmlns=S3_NS)
    owner = sub(root, "Owner")
    sub(owner, "ID", acl["owner"])
    sub(owner, "DisplayName", acl["owner"])
    grants = sub(root, "AccessControlList")
    for kind, grantee, permission in acl["grants"]:
        g = sub(grants, "Grant")
        who = sub(g, "Grantee", **{f"{{{XSI}}}type": "CanonicalUser" if kind == "id" else "Group"})
        if kind == "id":
            sub(who, "ID", grantee)
            sub(who, "DisplayName", grantee)
        else:
            sub(who, "URI", grantee)
        sub(g, "Permission", permission)
    return xml_response(root)


def checked_tags(pairs: list[tuple[str, str]], resource: str) -> dict:
    """S3's limits on an object's tags: at most 10, unique keys of 1 to 128 characters,
    values up to 256 (InvalidTag otherwise)."""
    tags: dict = {}
    for k, v in pairs:
        if not 1 <= len(k) <= 128 or len(v) > 256 or k in tags:
            raise S3Error("InvalidTag", f"The tag {k[:128]!r} is not valid (1-128 character unique keys, values up "
                          "to 256)", 400, resource)
        tags[k] = v
    if len(tags) > 10:
        raise S3Error("BadRequest", "Object tags cannot be greater than 10", 400, resource)
    return tags


def tags_from_header(headers, resource: str) -> dict | None:
    """The x-amz-tagging header (URL-encoded ``k=v&k2=v2``); None without one."""
    if "x-amz-tagging" not in headers:
        return None
    return checked_tags(parse_qsl(headers["x-amz-tagging"], keep_blank_values=True), resource)


def _position(digits: str) -> int:
    """A Range position; past 19 digits it is beyond any object (int() refuses 4,300 digits)."""
    return int(digits) if len(digits) <= 19 else 1 << 64


def parse_range(header: str, size: int) -> tuple[int, int]:
    """Inclusive byte range of a Range header; raises S3Error(InvalidRange)."""
    m = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    first, last = m.groups()
    if first == "":
        n = _position(last)
        if n == 0 or size == 0:
            raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
        return max(0, size - n), size - 1
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size or end < start:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    return start, min(end, size - 1)
