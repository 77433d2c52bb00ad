"""The user's requests during a trial, from a process of their own on the user host.

``python -m experiments.failover.prober --url URL --interval S --timeout S --expect {equals,contains,
stripped} --body-hex HEX [--header NAME:VALUE ...]`` sends one plain HTTP request every
interval, overlapping (one that hangs is cut at its timeout and never delays the next
ones; no retries), and prints one line per request as it completes::

    <sent> <done> <ok>

(CLOCK_MONOTONIC seconds, the same clock as the harness and the components' events; ok
is 1 when the status is 200 and the body matches). It stops on SIGTERM or when its stdin
closes, and its last line, starting with ``#``, is its own cost (``overhead``): CPU seconds
it used, requests sent, and how late request starts were against their schedule (p50,
p99, max, ms). A finer interval (2-5 ms where outages are tens of ms) costs CPU and
requests on the service it measures; that line says how much.

Why a process of its own: the probes measure the outage, so nothing the fault injector
does may delay them. Restarting the killed member forks the harness's large process,
which pauses its threads; probes there would count that pause as outage
(docs/experiments.md). Only the standard library (and experiments.analysis.measures, which uses
nothing else): the process starts in tens of ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from experiments.analysis.measures import percentile  # the standard library only


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def matches(expect: str, want: bytes, status: int, body: bytes) -> bool:
    """Did a request succeed as the user wanted it to?"""
    if status != 200:
        return False
    if expect == "equals":
        return body == want
    if expect == "stripped":
        return body.strip() == want
    if expect == "contains":
        return want in body
    raise ValueError(f"unknown expectation {expect!r}")


def request(url: str, headers: dict, timeout: float) -> tuple[int, bytes]:
    """One GET; (0, b"") when it fails (no retries)."""
    u = urlsplit(url)
    try:
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        c.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers)
        r = c.getresponse()
        out = r.status, r.read()
        c.close()
        return out
    except (OSError, http.client.HTTPException):
        return 0, b""


def overhead(late_s: list[float], cpu_s: float, wall_s: float) -> dict:
    """The prober's own cost: CPU it used (seconds, and cores on average over ``wall_s``), and
    how late request starts were against their schedule (``late_s``, one per request)."""
    def q(p: float) -> float | None:
        return round(percentile(late_s, p) * 1000, 3) if late_s else None

    return {"requests": len(late_s), "cpu_s": round(cpu_s, 4), "wall_s": round(wall_s, 4),
            "cores": round(cpu_s / wall_s, 4) if wall_s > 0 else None,
            "start_late_ms": {"p50": q(50), "p99": q(99), "max": q(100)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.failover.prober", description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--interval", type=float, required=True, help="seconds between request starts")
    ap.add_argument("--timeout", type=float, required=True, help="seconds before a request is cut")
    ap.add_argument("--expect", choices=("equals", "contains", "stripped"), required=True)
    ap.add_argument("--body-hex", default="", help="the body expected (hex)")
    ap.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    ap.add_argument("--realtime-priority", type=int, default=0,
                    help="SCHED_FIFO priority for the prober's threads (0: the normal scheduler)")
    args = ap.parse_args(argv)
    if args.interval <= 0 or args.timeout <= 0:
        ap.error("--interval and --timeout must be positive")
    if args.realtime_priority:
        # Before any thread starts: threads inherit the policy. The instrument must not
        # wait for the CPU behind the emulated cloud it measures: a probe that starts late
        # counts as outage (docs/experiments.md).
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime_priority))
        except OSError as exc:
            print(f"prober: no realtime priority ({exc}): probes may start late", file=sys.stderr)
    want = bytes.fromhex(args.body_hex)
    headers = dict(h.split(":", 1) for h in args.header)
    stop = threading.Event()
    out_lock = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    late: list[float] = []

    def one(due: float) -> None:
        t0 = _mono()
        status, body = request(args.url, headers, args.timeout)
        ok = matches(args.expect, want, status, body)
        with out_lock:
            late.append(t0 - due)
            sys.stdout.write(f"{t0:.6f} {_mono():.6f} {int(ok)}\n")
            sys.stdout.flush()

    pool = ThreadPoolExecutor(max_workers=int(args.timeout / args.interval) + 4)
    t_start, cpu_start = _mono(), time.process_time()
    next_at = t_start
    while not stop.is_set():
        pool.submit(one, next_at)
        next_at += args.interval
        stop.wait(max(0.0, next_at - _mono()))
    pool.shutdown(wait=True)
    cost = overhead(late, time.process_time() - cpu_start, _mono() - t_start)
    sys.stdout.write("# " + json.dumps(cost) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
