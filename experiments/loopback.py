"""What the benchmarks that run components on 127.0.0.1 (no network, no root) share, and
the tests with them: a free port, a process stopped by its PID, a JSON stand-in server.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from http.server import BaseHTTPRequestHandler


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM a process we started, SIGKILL it after ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
