"""The client of the SDN controller's API: HTTP/1.1 over the run directory's Unix socket.

The controller (controllers/api.py) serves its API on ``RUN/control.sock``
(docs/intent.md). Everything that talks to it goes through here: the HA agent's VIP
redirect and the CC's intent, on their event loops (``call``), and the driver and the
SDN benchmark, blocking (``call_blocking``). One request per connection (``Connection:
close``), a JSON body in and a JSON answer out; connecting to a local socket costs
microseconds, so nothing is kept open between requests.

A Unix socket's name holds at most 107 bytes, and a run directory deep in a temporary
tree is longer: ``reachable`` names such a socket through a descriptor of its directory,
for the controller that binds it and for every client alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

SOCKET_NAME = "control.sock"
MAX_NAME = 107  # sun_path's 108 bytes, less the terminating NUL


def socket_path(run_dir: str | Path) -> Path:
    """A run's control socket."""
    return Path(run_dir) / SOCKET_NAME


@contextlib.contextmanager
def reachable(path: str | Path) -> Iterator[str]:
    """A name for the socket ``path`` that fits a Unix socket address: the path itself, or
    ``/proc/self/fd/N/<name>`` through a descriptor of its directory, open meanwhile."""
    path = str(path)
    if len(os.fsencode(path)) <= MAX_NAME:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def _body(body) -> bytes:
    """A dict (or list) as JSON; bytes and str as they are (a benchmark sends bad input too)."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode()


def _answer(payload: bytes):
    return json.loads(payload or b"{}")


async def call(sock: str | Path, method: str, path: str, body=None, timeout: float = 3.0) -> tuple[int, dict]:
    """One request on the event loop; (status, decoded JSON answer). Raises OSError (no
    controller, no answer within ``timeout``) or ValueError (not HTTP, not JSON)."""
    data = _body(body)
    head = (f"{method} {path} HTTP/1.1\r\nHost: controller\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()

    async def exchange() -> bytes:
        with reachable(sock) as name:
            reader, writer = await asyncio.open_unix_connection(name)
        try:
            writer.write(head + data)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        raise OSError(f"no answer from the controller within {timeout} s") from None
    header, _, payload = raw.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    return int(status_line[1]), _answer(payload)


def call_blocking(sock: str | Path, method: str, path: str, body=None, timeout: float = 5.0) -> tuple[int, dict]:
    """One request, blocking; (status, decoded JSON answer). Raises OSError or ValueError."""
    conn = http.client.HTTPConnection("controller", timeout=timeout)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.sock.settimeout(timeout)
        with reachable(sock) as name:
            conn.sock.connect(name)
        data = None if body is None else _body(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, _answer(resp.read())
    finally:
        conn.close()
