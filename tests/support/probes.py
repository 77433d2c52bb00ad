"""A user's HTTP requests through the emulated network, and the outage they saw.

``HttpProbe`` sends one GET every ``period`` from a host's namespace (default: the user
host) in a thread of the test, one request at a time, each cut at ``timeout``. The
outage it reports is the experiments' own measure (``experiments.analysis.measures.outage``):
the longest time between two consecutive successful completions from the last success
before the fault, so that a test and a failover experiment mean the same by it.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Callable, NamedTuple
from urllib.parse import urlsplit

from experiments.analysis.measures import Probe, outage
from experiments.testbed.timescale import wait_until


class Answer(NamedTuple):
    sent: float  # CLOCK_MONOTONIC
    done: float
    ok: bool
    body: bytes  # the response body when ok, else b""


class HttpProbe:
    """GET ``url`` from ``host`` every ``period`` s; ``check(status, body)`` says what counts
    as served. Entering waits (up to ``ready_s``) for the first success."""

    def __init__(self, dep, url: str, check: Callable[[int, bytes], bool] = lambda status, body: status == 200,
                 *, host: str = "user", period: float = 0.01, timeout: float = 0.3, ready_s: float = 5.0):
        self.dep, self.url, self.check, self.host = dep, url, check, host
        self.period, self.timeout, self.ready_s = period, timeout, ready_s
        self.log: list[Answer] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _get(self) -> tuple[bool, bytes]:
        u = urlsplit(self.url)
        try:
            c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=self.timeout)
            c.request("GET", u.path + (f"?{u.query}" if u.query else ""))
            r = c.getresponse()
            status, body = r.status, r.read()
            c.close()
        except (OSError, http.client.HTTPException):
            return False, b""
        ok = self.check(status, body)
        return ok, body if ok else b""

    def _run(self) -> None:
        with self.dep.in_host(self.host):
            while not self._stop.is_set():
                t0 = time.monotonic()
                ok, body = self._get()
                self.log.append(Answer(t0, time.monotonic(), ok, body))
                self._stop.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def __enter__(self) -> "HttpProbe":
        self._t.start()
        assert wait_until(lambda: self.served_since(0.0), self.ready_s), f"{self.url} never answered"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(timeout=5)

    def outage_after(self, t_fault: float, until: float | None = None) -> float | None:
        """Seconds without service around a fault at ``t_fault`` (experiments.analysis.measures.outage);
        None if service never resumed."""
        return outage([Probe(a.sent, a.done, a.ok) for a in self.log], t_fault, until)

    def served_since(self, t: float) -> bool:
        """Whether a request sent at or after ``t`` succeeded."""
        return any(a.ok and a.sent >= t for a in self.log)

    def last_served_after(self, t: float) -> bool:
        """Whether the latest request was sent after ``t`` and succeeded."""
        return bool(self.log) and self.log[-1].ok and self.log[-1].sent > t

    def failures_after(self, t: float) -> list[Answer]:
        """The failed requests sent at or after ``t``."""
        return [a for a in self.log if a.sent >= t and not a.ok]

    def answers_after(self, t: float) -> set[bytes]:
        """The bodies of the successful answers to requests sent at or after ``t``."""
        return {a.body for a in self.log if a.ok and a.sent >= t}
