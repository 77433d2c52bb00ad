"""One clock story for a run over several servers.

CLOCK_MONOTONIC, which every event carries, starts at each machine's boot: events of
two servers compare only once each server's offset from this machine is known.
``measure_clock_offset`` finds it by a ping exchange over any byte pipe to the server (ssh):
a small echo there answers each line with its monotonic reading, and this machine notes
when the line left and when the answer came back. As in NTP, the exchange with the
shortest round trip gives the offset (the far reading minus the round trip's midpoint),
and half that round trip is its resolution: the far clock was read inside it.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass

# Answers each line it reads with its CLOCK_MONOTONIC: the far end of the ping exchange.
_CLOCK_ECHO = ("import sys, time\n"
               "for _ in sys.stdin:\n"
               "    print(repr(time.clock_gettime(time.CLOCK_MONOTONIC)), flush=True)\n")


@dataclass
class ClockOffset:
    """A server's CLOCK_MONOTONIC minus this machine's, from a ping exchange."""

    offset_s: float
    resolution_s: float  # half the round trip of the exchange the offset came from
    samples: int


def clock_offset(exchanges: list[tuple[float, float, float]]) -> ClockOffset:
    """The offset from (sent here, read there, answered here) triples, as NTP does: the
    exchange with the shortest round trip, the far reading against the midpoint; the
    far clock was read at some moment of that round trip, so half of it bounds the error."""
    if not exchanges:
        raise ValueError("no exchanges")
    sent, there, back = min(exchanges, key=lambda e: e[2] - e[0])
    return ClockOffset(there - (sent + back) / 2, (back - sent) / 2, len(exchanges))


def measure_clock_offset(command: list[str], samples: int = 20) -> ClockOffset:
    """Start ``command`` + a python3 clock echo on the server (e.g. ``["ssh", ..., host]``)
    and ping it ``samples`` times over its stdin and stdout."""
    proc = subprocess.Popen(command + ["python3 -u -c " + shlex.quote(_CLOCK_ECHO)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    exchanges = []
    try:
        for _ in range(samples + 1):
            sent = time.clock_gettime(time.CLOCK_MONOTONIC)
            proc.stdin.write("\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            back = time.clock_gettime(time.CLOCK_MONOTONIC)
            if not line:
                raise RuntimeError(f"clock echo ended: {' '.join(command)}")
            exchanges.append((sent, float(line), back))
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    # The first exchange also waited for python to start.
    return clock_offset(exchanges[1:])


def measured_on_one_machine(spec, what: str, error: type[BaseException] = ValueError) -> None:
    """Refuse (``error``), before anything is built, to measure ``what`` (failover trials,
    soaks, the scale bench) on a deployment over several servers: their analyses compare
    the times of a member's events with this machine's (a fault, a probe), and another
    server's events carry its own CLOCK_MONOTONIC. The numbers would be wrong, silently."""
    if len(spec.servers) > 1:
        raise error(
            f"{what} measures on this machine only, and the spec lists {len(spec.servers)} servers "
            f"({', '.join(spec.servers)}): their analyses compare member events with this machine's "
            "clock, and other servers' events are not mapped onto it yet. Drop `servers` to measure; "
            "a deployment over several servers comes up with `eucalab up SPEC --ssh-config FILE` "
            "(docs/cluster.md)")
