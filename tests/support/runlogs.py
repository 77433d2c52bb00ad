"""The teardown check of integration tests: no component logged a traceback or an internal error.

After Faucet's test base, whose tearDown fails a test when the controller logged an
exception: a process that crashed, or an API that answered 500 because of a bug, fails
the test during which it happened, even when what the test asserted still held.

``RunLogs`` follows every run directory below a root: each process's ``stdout.log``
(a Python traceback in it) and each event log (an ``api.internal_error`` event). It
reads only what was written since its last look, so each test is charged with what
happened since the one before it (a module's deployment starting up included).
"""

from __future__ import annotations

import json
from pathlib import Path

TRACEBACK = "Traceback (most recent call last):"
INTERNAL_ERROR = "api.internal_error"


class RunLogs:
    """What the processes below ``root`` logged that no test may let pass."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._seen: dict[Path, int] = {}

    def _new_text(self, path: Path) -> str:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return ""
        start = self._seen.get(path, 0)
        if size < start:  # rewritten from the start
            start = 0
        if size == start:
            return ""
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
        # Up to the last complete line: a line being written is read next time.
        end = data.rfind(b"\n") + 1
        self._seen[path] = start + end
        return data[:end].decode(errors="replace")

    def problems(self) -> list[str]:
        """Tracebacks and internal errors logged since the last call, each with where it was."""
        out = []
        for path in sorted(self.root.rglob("stdout.log")):
            text = self._new_text(path)
            at = text.find(TRACEBACK)
            if at >= 0:
                out.append(f"{path.relative_to(self.root)}: a traceback:\n{text[at:at + 3000]}")
        for path in sorted(self.root.rglob("events.jsonl")):
            for line in self._new_text(path).splitlines():
                if INTERNAL_ERROR not in line:
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == INTERNAL_ERROR:
                    out.append(f"{path.relative_to(self.root)}: {line}")
        return out
