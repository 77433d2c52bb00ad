"""How much slower this machine runs than the one the testbed's timeouts were set on, and
the one poller that waits with those timeouts (``wait_until``).

``EUCALAB_TIME_SCALE`` (default 1) multiplies every timeout the testbed waits with:
starting processes, waiting for events, elections, the SDN controller, test probes.
The kernel-lane VM sets it under software emulation (TCG), where process start-up is
20-40 times slower; nothing a component measures or an experiment reports is scaled.
"""

from __future__ import annotations

import os
import time


def _read(value: str | None) -> float:
    if value in (None, ""):
        return 1.0
    try:
        scale = float(value)
    except ValueError:
        raise SystemExit(f"EUCALAB_TIME_SCALE={value!r}: not a number") from None
    if not 1.0 <= scale <= 1000.0:
        raise SystemExit(f"EUCALAB_TIME_SCALE={value!r}: must be between 1 and 1000")
    return scale


TIME_SCALE = _read(os.environ.get("EUCALAB_TIME_SCALE"))


def scaled(timeout: float) -> float:
    """``timeout`` seconds on this machine."""
    return timeout * TIME_SCALE


def wait_until(fn, timeout: float = 10.0, step: float = 0.01):
    """Poll ``fn`` until it returns something true or ``timeout`` (scaled) passes; returns
    its last value. The one poller of the testbed, its benchmarks and its tests."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    return fn()
