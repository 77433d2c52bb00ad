"""What the benchmarks that run components on 127.0.0.1 (no network, no root) share, and
the tests with them: a free port, a process stopped by its PID, a stand-in service
answering JSON from a thread of its own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .processes import terminate


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM a process we started, SIGKILL it after ``timeout``; its exit code."""
    if proc.poll() is None:
        terminate([proc], timeout)
    return proc.returncode


class JsonHandler(BaseHTTPRequestHandler):
    """A stand-in service's request handler: JSON answers, no access log."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client closing a kept-open connection
            super().handle_error(request, client_address)


class StandIn:
    """A stand-in service on 127.0.0.1 (a free port), served from a thread while in a
    ``with`` block; a subclass gives its request handler class in ``_handler``."""

    def __init__(self):
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
