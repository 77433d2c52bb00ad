"""The controller's client (components/common/control.py) against a stand-in API on a Unix socket."""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from components.common import control


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Echo(BaseHTTPRequestHandler):
    """Answers what it was asked: method, path and body (parsed when JSON)."""

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args) -> None:
        pass

    def _do(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            self.send_response(400)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        data = json.dumps({"method": self.command, "path": self.path, "body": body}).encode()
        self.send_response(409 if self.path == "/conflict" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = _do


@pytest.fixture
def sock(tmp_path):
    path = control.socket_path(tmp_path)
    server = _Server(str(path), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path
    server.shutdown()
    server.server_close()


def test_the_run_directory_names_the_socket(tmp_path):
    assert control.socket_path(tmp_path) == tmp_path / "control.sock"


def test_blocking_and_event_loop_calls_send_and_read_the_same(sock):
    body = {"pair": "clc", "epoch": 3, "primary": "clc2"}
    assert control.call_blocking(sock, "PUT", "/vips/clc", body) == \
        (200, {"method": "PUT", "path": "/vips/clc", "body": body})
    assert asyncio.run(control.call(sock, "PUT", "/vips/clc", body)) == \
        (200, {"method": "PUT", "path": "/vips/clc", "body": body})
    assert control.call_blocking(sock, "GET", "/vips") == (200, {"method": "GET", "path": "/vips", "body": None})
    assert asyncio.run(control.call(sock, "PUT", "/conflict", {}))[0] == 409


def test_bad_input_is_sent_as_it_is(sock):
    assert control.call_blocking(sock, "PUT", "/intent/clusters/1", b"not json")[0] == 400


def test_no_controller_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        control.call_blocking(tmp_path / "missing.sock", "GET", "/health")
    with pytest.raises(OSError):
        asyncio.run(control.call(tmp_path / "missing.sock", "GET", "/health"))


def test_a_run_directory_too_deep_for_a_socket_name_still_serves(tmp_path):
    """A run directory deep in a temporary tree (pytest's, say) makes ``RUN/control.sock``
    longer than the 107 bytes a Unix socket's name holds: the controller's API binds it
    and its clients reach it all the same."""
    from controllers.api import IntentAPI, serve

    deep = tmp_path.joinpath(*["d" * 20] * 5)
    deep.mkdir(parents=True)
    path = control.socket_path(deep)
    assert len(str(path)) > 107  # sun_path: 108 bytes with the NUL
    server = serve(path, IntentAPI.__new__(IntentAPI))
    try:
        assert path.exists()
        status, _ = control.call_blocking(path, "GET", "/no-such-path")
        assert status == 404
        assert asyncio.run(control.call(path, "GET", "/no-such-path"))[0] == 404
    finally:
        server.shutdown()
        server.server_close()
