"""EC2 Query protocol plumbing: flattened parameters in, XML out, EC2 errors."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from components.common.names import NOT_XML, xml_text

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
# Python's int() also takes " 1", "+1" and "1_000"; the API takes plain decimal integers.
INTEGER = re.compile(r"-?[0-9]{1,19}")



class EC2Error(Exception):
    """An EC2 API error: code and HTTP status as the EC2 API reference documents them."""

    def __init__(self, code: str, message: str, status: int = 400):
        self.code, self.message, self.status = code, message, status
        super().__init__(f"{code}: {message}")


def iso(ts: float) -> str:
    """A time as the EC2 API writes it (launchTime, createTime)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def request_id() -> str:
    return str(uuid.uuid4())


def error_xml(err: EC2Error, rid: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(err.code)}</Code>'
            f"<Message>{escape(err.message)}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
            ).encode()


def _render(value, out: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                continue
            out.append(f"<{k}>")
            _render(v, out)
            out.append(f"</{k}>")
    elif isinstance(value, list):
        for item in value:
            out.append("<item>")
            _render(item, out)
            out.append("</item>")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    else:
        out.append(escape(str(value)))


def response_xml(action: str, body: dict, rid: str) -> bytes:
    """``<ActionResponse xmlns=...><requestId/>...</ActionResponse>``; lists become <item> sequences."""
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_NS}">',
           f"<requestId>{rid}</requestId>"]
    _render(body, out)
    out.append(f"</{action}Response>")
    return "".join(out).encode()


class Params:
    """The flattened query parameters of one request (Key.1.Sub.2=...)."""

    def __init__(self, pairs: dict[str, str]):
        self.p = pairs

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.p.get(name, default)

    def req(self, name: str) -> str:
        value = self.p.get(name)
        if value is None or value == "":
            raise EC2Error("MissingParameter", f"The request must contain the parameter {name}")
        return value

    def int(self, name: str, default: int | None = None, low: int | None = None, high: int | None = None) -> int:
        raw = self.p.get(name)
        if raw is None:
            if default is None:
                raise EC2Error("MissingParameter", f"The request must contain the parameter {name}")
            return default
        if not INTEGER.fullmatch(raw):
            raise EC2Error("InvalidParameterValue", f"Value ({raw}) for parameter {name} is invalid. "
                           "Expected an integer.")
        value = int(raw)
        if (low is not None and value < low) or (high is not None and value > high):
            raise EC2Error("InvalidParameterValue", f"Value ({raw}) for parameter {name} is out of range")
        return value

    def list(self, name: str) -> list[str]:
        """Values of Name.1, Name.2, ... in index order."""
        rx = re.compile(re.escape(name) + r"\.(\d+)$")
        found = sorted((int(m.group(1)), v) for k, v in self.p.items() if (m := rx.match(k)))
        return [v for _, v in found]

    def structs(self, name: str) -> list[dict[str, str]]:
        """Name.N.Rest=value as one dict per N: {"Rest": value}, in index order."""
        rx = re.compile(re.escape(name) + r"\.(\d+)\.(.+)$")
        groups: dict[int, dict[str, str]] = {}
        for k, v in self.p.items():
            m = rx.match(k)
            if m:
                groups.setdefault(int(m.group(1)), {})[m.group(2)] = v
        return [groups[i] for i in sorted(groups)]

    def filters(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self.structs("Filter"):
            name = f.get("Name")
            if not name:
                raise EC2Error("InvalidParameterValue", "a filter needs a Name")
            out[name] = [v for k, v in sorted(f.items()) if k.startswith("Value.")]
        return out


def parse_query(raw_query: str, body: bytes = b"") -> Params:
    """The parameters of a request: its URL query and its form-encoded body, strictly parsed."""
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=bool(raw_query))
        text = body.decode("utf-8")
        if text:
            pairs += parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        # The AWS common-errors reference gives MalformedQueryString HTTP 404.
        raise EC2Error("MalformedQueryString", "the query string contains a syntax error", 404) from None
    for name, value in pairs:
        if NOT_XML.search(name) or NOT_XML.search(value):
            raise EC2Error("InvalidParameterValue", f"the value of parameter {xml_text(name)} holds a "
                           "control character")
    return Params(dict(pairs))


def sub_list(struct: dict[str, str], name: str) -> list[dict[str, str]]:
    """Within one struct, Name.N.Key=value as dicts (e.g. IpRanges.1.CidrIp)."""
    return Params(struct).structs(name)


ID_PATTERNS = {
    "instance": re.compile(r"^i-[0-9a-f]{8}$"),
    "group": re.compile(r"^sg-[0-9a-f]{8}$"),
    "volume": re.compile(r"^vol-[0-9a-f]{8}$"),
    "image": re.compile(r"^emi-[0-9a-f]{8}$"),
    "allocation": re.compile(r"^eipalloc-[0-9a-f]{8}$"),
    "association": re.compile(r"^eipassoc-[0-9a-f]{8}$"),
}
MALFORMED = {"instance": "InvalidInstanceID.Malformed", "group": "InvalidGroupId.Malformed",
             "volume": "InvalidVolumeID.Malformed", "image": "InvalidAMIID.Malformed",
             "allocation": "InvalidAllocationID.Malformed", "association": "InvalidAssociationID.Malformed"}


def named(rows: list, ids: list[str], not_found: Callable[[list[str]], EC2Error]) -> list:
    """The rows (with an ``id``) a Describe call names, every row when it names none;
    ``not_found`` of the ids (sorted) that are not among them, raised, when some are not."""
    if not ids:
        return rows
    missing = sorted(set(ids) - {r["id"] for r in rows})
    if missing:
        raise not_found(missing)
    return [r for r in rows if r["id"] in ids]


def check_id(kind: str, value: str) -> str:
    if not ID_PATTERNS[kind].match(value or ""):
        raise EC2Error(MALFORMED[kind], f"Invalid id: \"{value}\"")
    return value


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
