"""Supervised background loops: the one way every component runs work that repeats.

A component's background loop (the CLC following its CCs, a catch-up from the HA peer,
the CC polling an NC, the HA agent's heartbeat ticker) is written as one *round*, an
async function, and run by ``supervise``:

    await supervise(self.events, "clc.sync", self.once, pause=0.1)  # components/clc/sync.py

The round runs, then the loop waits ``pause`` seconds (or what the round returned, when
it paces itself) and runs it again, for as long as the task lives. An exception a round
raises never ends the loop: it is a ``loop.failed`` event carrying the loop's name, the
error and its traceback, and the rounds after it wait twice as long each time the
failure repeats (up to ``max_backoff`` seconds), so a persistent fault (a full disk, a
peer that answers garbage) neither spins the CPU nor floods the event log. A failure
is reported when it starts and again whenever the error changes; the first round that
succeeds after failures is a ``loop.recovered`` event with how many rounds failed.

Writing an event can itself fail (the disk is full): that is logged through
``logging`` and the loop goes on all the same (``EventLog.emit`` never raises).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable

from .events import EventLog

MAX_BACKOFF_S = 5.0  # the longest pause after repeated failures of a round
TRACEBACK_CHARS = 4000  # the tail of a traceback an event keeps

log = logging.getLogger(__name__)


async def supervise(events: EventLog, loop: str, round_: Callable[[], Awaitable[float | None]], pause: float,
                    *, max_backoff: float = MAX_BACKOFF_S, first_pause: bool = True, **fields) -> None:
    """Run ``round_`` every ``pause`` seconds for ever (see the module docstring).

    ``round_`` may return the pause before the next round (a loop that keeps its own
    pace); None means ``pause``. ``first_pause``: wait before the first round too.
    ``fields`` go into the loop's events (which NC a poll loop asks, say)."""
    failures, said = 0, None
    wait = pause if first_pause else 0.0
    while True:
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            paced = await round_()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (the loop must go on, whatever a round raised)
            failures += 1
            wait = min(max(pause, 0.001) * 2 ** failures, max(max_backoff, pause))
            if repr(exc) != said:
                said = repr(exc)
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                events.emit("loop.failed", loop=loop, error=said[:500], traceback=tb[-TRACEBACK_CHARS:],
                            failures=failures, backoff_s=round(wait, 3), **fields)
            continue
        if failures:
            events.emit("loop.recovered", loop=loop, failures=failures, **fields)
            failures, said = 0, None
        wait = pause if paced is None else paced
