"""What the kernel says of a process, read from /proc (no privileges needed)."""

from __future__ import annotations


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot), or None when it is
    gone: a PID and its start time together name one process, so a reused PID is told apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
