"""Names and values the APIs accept: S3 bucket names and keys, text an XML answer can carry."""

from __future__ import annotations

import re

# fullmatch, never ``^...$``: ``$`` also matches before a trailing newline, which would
# let a bucket named "name\n" in (and every request on it fail).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
IP_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")
MAX_KEY_BYTES = 1024
# What XML 1.0 cannot carry (control characters but tab, LF and CR; surrogates; U+FFFE,
# U+FFFF). A name holding one is refused, never stored: every answer showing it (a public
# image's name in everyone's DescribeImages) would be invalid XML.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def valid_bucket(name: str) -> bool:
    return bool(BUCKET_RE.fullmatch(name)) and ".." not in name and not IP_RE.fullmatch(name)


def valid_key(key: str) -> bool:
    """An object key S3 stores: 1 to 1024 bytes of UTF-8. Any character, control characters
    included, as S3 allows (listings carry them with encoding-type=url)."""
    return 0 < len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES


def xml_text(text: str) -> str:
    """``text`` with what XML cannot carry replaced by '?' (for echoing input in error answers)."""
    return NOT_XML.sub("?", text)
