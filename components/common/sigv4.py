"""AWS Signature Version 4 verification, for the CLC's EC2 API and Walrus's S3 API.

Both forms a client can use are checked: the ``Authorization`` header and the
presigned query string (``X-Amz-Signature``). Payload forms:

* a hex SHA-256 in ``x-amz-content-sha256`` or, for EC2, the SHA-256 of the body
  computed here. This is what botocore 1.44.5 sends for every S3 upload to a plain
  http endpoint (PutObject, upload_fileobj, the AWS CLI), with an
  ``x-amz-checksum-crc32`` of the body and ``x-amz-sdk-checksum-algorithm`` beside it,
  both signed.
* ``UNSIGNED-PAYLOAD`` (S3 presigned URLs; a presigned request to another service
  signs the SHA-256 of its body, as botocore's ``SigV4QueryAuth`` does, and its method:
  POST for EC2, whose presigned URLs users open with GET, so an EC2 presigned query is
  accepted with either);
* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` (aws-chunked bodies, every chunk signed):
  ``ChunkedDecoder`` checks each chunk's signature as the body streams in.
* ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (aws-chunked bodies, chunks unsigned, a checksum
  of the body in a trailer): botocore's form for uploads over https (behind a TLS
  terminator, say). ``ChunkedDecoder(None, trailer=True)`` decodes it and keeps the
  trailers; the caller checks the body against the checksum the trailer carries.

S3 requires ``x-amz-content-sha256`` on every request signed in the Authorization
header (``InvalidRequest`` 400 without it, as AWS answers). The credential scope's
region and service must be the server's (``region=`` and ``service=``).

The request time comes from ``X-Amz-Date``, or from ``Date`` when that is absent;
it must be within 15 minutes of the server's clock (a presigned URL instead must
not have expired). The canonical request follows the AWS reference: S3 paths are
used as sent (no double encoding), other services' paths are encoded once more.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import parse_qsl, quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
QUERY_METHODS = {"GET": "POST", "POST": "GET"}  # a Query API's presigned URL: either method, the same request
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
MAX_TRAILERS = 4096  # bytes of trailer lines after an aws-chunked body's final chunk
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = dt.timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
MAX_CHUNK_HEADER = 4096  # "<hex size>;chunk-signature=<64 hex>" is ~90 bytes
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9]{1,128}")  # AWS issues letters and digits (eucalab: AKIA + 16)

_AUTH_RE = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*"
                      r"Signature=([0-9a-f]{64})\s*$")

# Error codes per dialect: (missing/malformed, unknown key, bad signature, skewed clock, expired)
CODES = {
    "ec2": {"malformed": ("AuthFailure", 401), "unknown_key": ("AuthFailure", 401),
            "signature": ("AuthFailure", 401), "skew": ("RequestExpired", 400),
            "expired": ("RequestExpired", 400), "missing": ("AuthFailure", 401),
            "payload": ("AuthFailure", 401), "no_sha256": ("AuthFailure", 401)},
    "s3": {"malformed": ("AuthorizationHeaderMalformed", 400), "unknown_key": ("InvalidAccessKeyId", 403),
           "signature": ("SignatureDoesNotMatch", 403), "skew": ("RequestTimeTooSkewed", 403),
           "expired": ("AccessDenied", 403), "missing": ("AccessDenied", 403),
           "payload": ("InvalidArgument", 400), "no_sha256": ("InvalidRequest", 400)},
}


class SigV4Error(Exception):
    """A refused request: ``code`` and ``http_status`` are what the API answers."""

    def __init__(self, code: str, message: str, http_status: int):
        self.code, self.message, self.http_status = code, message, http_status
        super().__init__(f"{code}: {message}")


def _fail(dialect: str, kind: str, message: str) -> SigV4Error:
    code, status = CODES[dialect][kind]
    return SigV4Error(code, message, status)


@dataclass
class AuthResult:
    access_key: str
    account_id: str
    region: str
    service: str
    payload_mode: str  # "signed", "unsigned", "streaming" (signed chunks) or "trailer" (unsigned chunks)
    signing_key: bytes
    signature: str
    amz_date: str
    scope: str


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key of one credential scope (cached: it changes once a day per key)."""
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def canonical_query(raw_query: str, drop: tuple[str, ...] = ()) -> str:
    pairs = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True) if k not in drop]
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_uri(raw_path: str, service: str) -> str:
    path = raw_path or "/"
    if service == "s3":
        return path
    return quote(path, safe="/~")


def _lower_headers(headers) -> dict[str, str]:
    """Header names lower-cased; repeated headers joined with commas, as SigV4 does."""
    lower: dict[str, list[str]] = {}
    for name, value in headers.items():
        lower.setdefault(name.lower(), []).append(value)
    return {k: ",".join(" ".join(v.split()) for v in vs) for k, vs in lower.items()}


def _canonical_headers(headers: dict[str, str], signed: list[str]) -> str:
    out = []
    for name in signed:
        if name not in headers:
            raise KeyError(name)
        out.append(f"{name}:{headers[name]}\n")
    return "".join(out)


def _parse_amz_date(value: str) -> dt.datetime:
    """The ISO 8601 basic form SigV4 signs (20261202T224715Z), exactly; ValueError otherwise.

    By hand, not with strptime: its first call in a process imports _strptime and builds
    its locale tables, about 2 ms that a member promoted to primary spent on the first
    request it served (strace of a Walrus takeover), where it adds to the outage."""
    if len(value) != 16 or value[8] != "T" or value[15] != "Z" or not value.isascii() \
            or not (value[:8] + value[9:15]).isdigit():
        raise ValueError(f"not an ISO 8601 basic date-time: {value!r}")
    return dt.datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[11:13]),
                       int(value[13:15]), tzinfo=dt.timezone.utc)


def _request_date(headers: dict[str, str]) -> str | None:
    """X-Amz-Date, else the Date header converted to the ISO 8601 basic form SigV4 signs."""
    if headers.get("x-amz-date"):
        return headers["x-amz-date"]
    if headers.get("date"):
        try:
            when = parsedate_to_datetime(headers["date"])
        except (TypeError, ValueError):
            return headers["date"]  # reported as a bad date below
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return None


def _string_to_sign(method: str, raw_path: str, raw_query: str, drop: tuple[str, ...], headers: dict[str, str],
                    signed_headers: str, body_hash: str, amz_date: str, scope: str) -> str:
    """SigV4's string to sign; headers lower-cased, raises KeyError for a signed header that is absent."""
    service = scope.split("/")[2]
    canonical = "\n".join([method, canonical_uri(raw_path, service), canonical_query(raw_query, drop),
                           _canonical_headers(headers, signed_headers.split(";")), signed_headers, body_hash])
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def sign(method: str, raw_path: str, raw_query: str, host: str, access_key: str, secret: str, region: str,
         service: str, payload_hash: str = EMPTY_SHA256, now: dt.datetime | None = None) -> dict[str, str]:
    """The headers that sign a request (Authorization header form) as ``access_key``.

    For a component that acts for a user with the user's own key (the CLC reading an
    image's object from Walrus as the account registering it). ``raw_path`` and
    ``raw_query`` as they will be sent (percent-encoded)."""
    amz_date = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed_headers = ";".join(sorted(headers))
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = _string_to_sign(method, raw_path, raw_query, (), headers, signed_headers, payload_hash, amz_date, scope)
    signature = hmac.new(signing_key(secret, amz_date[:8], region, service), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    headers["authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, "
                                f"Signature={signature}")
    del headers["host"]  # the HTTP client sends it
    return headers


def verify(method: str, raw_path: str, raw_query: str, headers, payload_hash: str | None,
           lookup_secret: Callable[[str], tuple[str, str] | None], dialect: str = "ec2",
           now: dt.datetime | None = None, service: str | None = None, region: str | None = None) -> AuthResult:
    """Check a request's SigV4 signature; return who signed it, or raise SigV4Error.

    ``raw_path`` and ``raw_query`` are as received (still percent-encoded).
    ``payload_hash`` is the hex SHA-256 of the body when the caller computed it
    (EC2 form bodies); for S3 the declared ``x-amz-content-sha256`` is signed and
    the caller checks the body against it while reading (``payload_mode``).
    ``lookup_secret(access_key)`` returns ``(secret, account_id)`` or None; an async
    caller resolves unknown keys first (see ``accounts.AccountResolver.ensure``).
    ``dialect`` ("ec2" or "s3") picks the error codes; ``service`` and ``region``,
    when given, are the only service and region accepted in the credential scope.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    headers = _lower_headers(headers)
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    auth = headers.get("authorization")
    presigned = "X-Amz-Signature" in query
    if auth:
        m = _AUTH_RE.match(auth.strip())
        if not m:
            raise _fail(dialect, "malformed", "the Authorization header is not AWS4-HMAC-SHA256")
        credential, signed_headers, signature = m.groups()
        amz_date = _request_date(headers)
        if not amz_date:
            raise _fail(dialect, "malformed", "neither X-Amz-Date nor Date is present")
        drop: tuple[str, ...] = ()
        expires = None
    elif presigned:
        if query.get("X-Amz-Algorithm") != ALGORITHM:
            raise _fail(dialect, "malformed", "X-Amz-Algorithm must be AWS4-HMAC-SHA256")
        try:
            credential, signed_headers = query["X-Amz-Credential"], query["X-Amz-SignedHeaders"]
            signature, amz_date = query["X-Amz-Signature"], query["X-Amz-Date"]
            expires = int(query.get("X-Amz-Expires", "604800"))
        except (KeyError, ValueError):
            raise _fail(dialect, "malformed", "incomplete presigned query") from None
        if not _SHA256_RE.fullmatch(signature):
            raise _fail(dialect, "malformed", "X-Amz-Signature must be 64 lower-case hexadecimal digits")
        if not 0 < expires <= MAX_PRESIGN_EXPIRES:
            raise _fail(dialect, "malformed", "X-Amz-Expires must be between 1 second and one week")
        drop = ("X-Amz-Signature",)
    else:
        raise _fail(dialect, "missing", "the request is not signed")

    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise _fail(dialect, "malformed", f"bad credential scope {credential!r}")
    access_key, date, scope_region, scope_service, _ = parts
    if service is not None and scope_service != service:
        raise _fail(dialect, "malformed", f"the credential is for service {scope_service!r}, not {service!r}")
    if region is not None and scope_region != region:
        raise _fail(dialect, "malformed", f"the region {scope_region!r} is wrong; expecting {region!r}")
    try:
        when = _parse_amz_date(amz_date)
    except ValueError:
        raise _fail(dialect, "malformed", f"bad X-Amz-Date {amz_date!r}") from None
    if date != amz_date[:8]:
        raise _fail(dialect, "malformed", "the credential date does not match X-Amz-Date")
    if expires is not None:
        if now > when + dt.timedelta(seconds=expires):
            raise _fail(dialect, "expired", "the presigned request has expired")
        if when - now > MAX_SKEW:
            raise _fail(dialect, "skew", "the presigned request is not valid yet")
    elif abs(now - when) > MAX_SKEW:
        raise _fail(dialect, "skew", "the request time is more than 15 minutes from the server's")
    found = lookup_secret(access_key)
    if found is None:
        raise _fail(dialect, "unknown_key", f"unknown access key {access_key}")
    secret, account_id = found

    declared = headers.get("x-amz-content-sha256")
    if presigned and not declared:
        if scope_service == "s3":
            body_hash, mode = UNSIGNED, "unsigned"
        else:  # botocore's SigV4QueryAuth signs the body's hash for every other service
            body_hash, mode = payload_hash if payload_hash is not None else EMPTY_SHA256, "signed"
    elif not declared and scope_service == "s3":
        raise _fail(dialect, "no_sha256", "Missing required header for this request: x-amz-content-sha256")
    elif declared:
        body_hash = declared
        mode = {UNSIGNED: "unsigned", STREAMING: "streaming", STREAMING_TRAILER: "trailer"}.get(declared, "signed")
        if mode == "signed" and not _SHA256_RE.fullmatch(declared):
            raise _fail(dialect, "payload", f"unsupported x-amz-content-sha256 {declared!r}: eucalab accepts "
                        "a hex SHA-256, UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD or "
                        "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        if mode == "signed" and payload_hash is not None and payload_hash != declared:
            raise _fail(dialect, "signature", "x-amz-content-sha256 does not match the body")
    else:
        body_hash = payload_hash if payload_hash is not None else EMPTY_SHA256
        mode = "signed"

    if "host" not in signed_headers.split(";"):
        raise _fail(dialect, "malformed", "the host header must be signed")
    scope = f"{date}/{scope_region}/{scope_service}/aws4_request"
    try:
        to_sign = _string_to_sign(method, raw_path, raw_query, drop, headers, signed_headers, body_hash, amz_date,
                                  scope)
    except KeyError as exc:
        raise _fail(dialect, "signature", f"signed header {exc.args[0]} is missing") from None
    key = signing_key(secret, date, scope_region, scope_service)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature) and presigned and scope_service != "s3" \
            and method in QUERY_METHODS:
        # botocore presigns a Query API operation with the operation's method (POST for EC2),
        # and a user opens the URL with GET. For a Query API both carry the same request (the
        # action and its parameters are all in the signed query), so either method's signature
        # is accepted; S3's methods differ in meaning, and are never exchanged.
        other = QUERY_METHODS[method]
        alt = _string_to_sign(other, raw_path, raw_query, drop, headers, signed_headers, body_hash, amz_date, scope)
        expected = hmac.new(key, alt.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise _fail(dialect, "signature", "the request signature does not match")
    return AuthResult(access_key, account_id, scope_region, scope_service, mode, key, signature, amz_date, scope)


class ChunkedDecoder:
    """Decode an aws-chunked body, verifying each chunk's signature as it arrives (or, with
    ``auth`` None, unsigned chunks; ``trailer``: trailer lines follow the final chunk, kept
    in ``trailers``).

    Feed raw bytes with ``feed()``; it returns the payload bytes decoded so far, so a
    caller streams the body to disk holding at most one chunk (``max_chunk``) here.
    ``finished`` is True after the final zero-length chunk; bytes after it, a chunk
    not followed by CRLF or a bad chunk signature raise SigV4Error. ``decoded`` counts
    payload bytes (to compare with ``x-amz-decoded-content-length``).
    """

    def __init__(self, auth: AuthResult | None, max_chunk: int = 16 * 2**20, trailer: bool = False):
        self.auth = auth
        self.prev = auth.signature if auth else None
        self.trailer = trailer
        self.trailers: dict[str, str] = {}
        self.buf = bytearray()
        self.finished = False
        self.max_chunk = max_chunk
        self.decoded = 0

    def _chunk_signature(self, data) -> str:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", self.auth.amz_date, self.auth.scope, self.prev,
                             EMPTY_SHA256, hashlib.sha256(data).hexdigest()])
        return hmac.new(self.auth.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _malformed(what: str) -> SigV4Error:
        return SigV4Error("IncompleteBody", f"malformed aws-chunked body: {what}", 400)

    def feed(self, raw: bytes) -> bytes:
        if self.finished:
            if raw:
                raise self._malformed("data after the final chunk")
            return b""
        self.buf.extend(raw)
        out = bytearray()
        pos = 0  # consume from the front once per feed, not once per chunk
        while True:
            end = self.buf.find(b"\r\n", pos, pos + MAX_CHUNK_HEADER)
            if end < 0:
                if len(self.buf) - pos > MAX_CHUNK_HEADER:
                    raise self._malformed("chunk header too long")
                break
            header = bytes(self.buf[pos:end]).decode("ascii", "replace")
            size_hex, _, sig_part = header.partition(";chunk-signature=")
            try:
                size = int(size_hex, 16)
            except ValueError:
                raise self._malformed("bad chunk size") from None
            if size > self.max_chunk or len(sig_part) != (64 if self.auth else 0):
                raise self._malformed("bad chunk header")
            start = end + 2
            if size == 0 and self.trailer:
                done = self._read_trailers(start)
                if done is not None:
                    pos = done
                break  # not all here yet: the final chunk's header is read again with the rest
            if len(self.buf) < start + size + 2:
                break
            if self.buf[start + size:start + size + 2] != b"\r\n":
                raise self._malformed("a chunk is not followed by CRLF")
            data = memoryview(self.buf)[start:start + size]
            try:
                if self.auth is not None:
                    expected = self._chunk_signature(data)
                    if not hmac.compare_digest(expected, sig_part):
                        raise SigV4Error("SignatureDoesNotMatch", "a chunk signature does not match", 403)
                    self.prev = expected
                out += data
            finally:
                data.release()
            self.decoded += size
            pos = start + size + 2
            if size == 0:
                self.finished = True
                if len(self.buf) > pos:
                    raise self._malformed("data after the final chunk")
                break
        del self.buf[:pos]
        return bytes(out)

    def _read_trailers(self, start: int) -> int | None:
        """After the final chunk's header, at ``start``: trailer lines ``name:value`` up to an
        empty line. Sets ``trailers`` and ``finished`` and returns where they end, or None
        when they are not all here yet."""
        end = self.buf.find(b"\r\n\r\n", start - 2, start + MAX_TRAILERS)
        if end < 0:
            if len(self.buf) - start > MAX_TRAILERS:
                raise self._malformed("trailers too long")
            return None
        for line in bytes(self.buf[start:end]).decode("ascii", "replace").split("\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise self._malformed("bad trailer line")
            self.trailers[name.strip().lower()] = value.strip()
        self.finished = True
        if len(self.buf) > end + 4:
            raise self._malformed("data after the trailers")
        return end + 4
