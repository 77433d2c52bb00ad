"""The experiment's prober (experiments/failover/prober.py) against an HTTP server on loopback: it
keeps its pace while requests hang, reports each one with its own times, and stops when
its stdin closes."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest

from experiments.failover.prober import matches, overhead
from experiments.testbed.rundir import REPO_ROOT

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


def test_what_counts_as_success():
    assert matches("equals", b"abc", 200, b"abc") and not matches("equals", b"abc", 200, b"abc\n")
    assert matches("stripped", b"i-1", 200, b"i-1\n") and not matches("stripped", b"i-1", 503, b"i-1")
    assert matches("contains", b"Response", 200, b"<DescribeResponse/>")
    assert matches("contains", b"", 200, b"anything") and not matches("contains", b"", 0, b"")
    with pytest.raises(ValueError):
        matches("regex", b"", 200, b"")


@pytest.fixture
def server():
    state = {"hang": False, "body": b"hello\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if state["hang"]:
                time.sleep(1.0)
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(state["body"])))
                self.end_headers()
                self.wfile.write(state["body"])
            except OSError:
                pass  # the prober cut this request at its timeout

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, state
    srv.shutdown()
    srv.server_close()


def test_requests_keep_their_pace_while_some_hang_and_it_stops_on_stdin_close(server):
    srv, state = server
    argv = [sys.executable, "-m", "experiments.failover.prober", "--url", f"http://127.0.0.1:{srv.server_address[1]}/x",
            "--interval", "0.01", "--timeout", "0.2", "--expect", "equals", "--body-hex", b"hello\n".hex()]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    time.sleep(0.5)
    state["hang"] = True  # every request from now on is cut at its timeout
    time.sleep(0.5)
    state["hang"] = False
    time.sleep(0.5)
    proc.stdin.close()
    assert proc.wait(timeout=5) == 0
    out = proc.stdout.read()
    proc.stdout.close()
    *lines, last = out.splitlines()
    probes = sorted(tuple(float(x) for x in line.split()) for line in lines)
    # Its last line is its own cost: one lateness per request, and the CPU it used.
    assert last.startswith(b"# ")
    cost = json.loads(last[2:])
    assert cost["requests"] == len(probes) and cost["cpu_s"] > 0 and cost["wall_s"] >= 1.0
    assert 0 <= cost["start_late_ms"]["p50"] <= cost["start_late_ms"]["p99"] <= cost["start_late_ms"]["max"]
    starts = [s for s, _, _ in probes]
    assert len(probes) > 80  # about 150 in 1.5 s
    # Hanging requests never delayed the next ones: a prober that waited for each would
    # leave gaps of the whole timeout (0.2 s) between starts; a loaded machine may leave
    # ~0.1 s between two starts (seen at load 10), never the timeout.
    assert max(b - a for a, b in zip(starts, starts[1:])) < 0.18
    failed = [(s, d) for s, d, ok in probes if not ok]
    assert failed and all(0.19 <= d - s < 0.5 for s, d in failed)  # cut at the timeout
    assert probes[0][2] == 1 and probes[-1][2] == 1


def test_overhead_figures():
    cost = overhead([0.001, 0.002, 0.003, 0.010], cpu_s=0.5, wall_s=2.0)
    assert cost["requests"] == 4 and cost["cores"] == 0.25
    assert cost["start_late_ms"]["p50"] == 2.5 and cost["start_late_ms"]["max"] == 10.0
    assert overhead([], 0.0, 0.0) == {"requests": 0, "cpu_s": 0.0, "wall_s": 0.0, "cores": None,
                                      "start_late_ms": {"p50": None, "p99": None, "max": None}}


def test_a_2_ms_interval_keeps_its_pace(server):
    """The finer probing the safe-floor experiment uses: 2 ms between request starts."""
    srv, _ = server
    argv = [sys.executable, "-m", "experiments.failover.prober", "--url", f"http://127.0.0.1:{srv.server_address[1]}/x",
            "--interval", "0.002", "--timeout", "0.2", "--expect", "equals", "--body-hex", b"hello\n".hex()]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    time.sleep(1.0)
    proc.stdin.close()
    assert proc.wait(timeout=5) == 0
    *lines, last = proc.stdout.read().splitlines()
    proc.stdout.close()
    starts = sorted(float(line.split()[0]) for line in lines)
    cost = json.loads(last[2:])
    assert cost["requests"] == len(starts) > 100
    # About one start per 2 ms over the time it ran, with room for a loaded machine.
    assert len(starts) >= 0.5 * (starts[-1] - starts[0]) / 0.002
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    assert gaps[len(gaps) // 2] < 0.004  # the median start-to-start gap is the interval
