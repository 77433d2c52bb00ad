"""Structured events: one JSON line per event, the schema every eucalab process shares.

    {"t_mono": ..., "t_wall": ..., "host": "clc1", "component": "clc", "event": "state.change", ...}

``t_mono`` is CLOCK_MONOTONIC, the same clock on every emulated host of the
machine, so experiments can order events across hosts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class EventLog:
    """Append-only JSON-lines event log, flushed per event (experiments read it live)."""

    def __init__(self, path: str | Path | None, host: str, component: str):
        self.path = Path(path) if path else None
        self.host, self.component = host, component
        self._lock = threading.Lock()
        self._f = None
        self.dropped = 0  # events that could not be written (a full disk)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)

    def spawn(self, coro, tasks: set, event: str):
        """Run ``coro`` beside the caller, held in ``tasks`` until it ends; an exception it
        ends with becomes ``event`` {error}, never lost."""
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)

        def done(t) -> None:
            tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.emit(event, error=repr(t.exception()))

        task.add_done_callback(done)
        return task

    def emit(self, event: str, **fields) -> dict:
        """Append one event. Never raises: a write that fails (a full disk) is counted in
        ``dropped`` and logged, and the caller (a heartbeat ticker, say) goes on."""
        record = {"t_mono": time.clock_gettime(time.CLOCK_MONOTONIC), "t_wall": time.time(),
                  "host": self.host, "component": self.component, "event": event, **fields}
        if self._f is not None:
            line = json.dumps(record, default=str) + "\n"
            try:
                with self._lock:
                    self._f.write(line)
            except (OSError, ValueError) as exc:  # ValueError: closed meanwhile
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error("event log %s: %d event(s) not written: %r", self.path, self.dropped, exc)
        return record

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                try:
                    self._f.close()
                except OSError as exc:  # what was left to flush did not fit either
                    log.error("event log %s: closing: %r", self.path, exc)
                self._f = None


def read_events(path: str | Path) -> list[dict]:
    """All complete events in a log (a line being written is skipped)."""
    out = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
