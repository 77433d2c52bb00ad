"""Supervised background loops (components/common/supervise.py) and the loops built on them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from components.common.events import EventLog, read_events
from components.common.ha import HAAgent
from components.common.supervise import supervise

from tests.support.processes import HA_SECRET
from tests.support.util import free_port, until

from .test_ha_agent import FakeService


def test_a_failing_round_is_an_event_with_its_traceback_and_the_loop_goes_on_slower(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", "clc1", "clc")
    calls: list[float] = []
    outcomes = [ValueError("garbled"), ValueError("garbled"), ValueError("garbled"), None, KeyError("x"), None]

    async def round_():
        calls.append(asyncio.get_running_loop().time())
        outcome = outcomes[len(calls) - 1] if len(calls) <= len(outcomes) else None
        if outcome is not None:
            raise outcome

    async def main():
        task = asyncio.create_task(supervise(log, "test.loop", round_, pause=0.01, nc="c1n1"))
        await until(lambda: len(calls) >= 8)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    events = [e for e in read_events(tmp_path / "events.jsonl") if e["event"].startswith("loop.")]
    # Said when it starts and when the error changes, not once per round; recovered twice.
    assert [(e["event"], e.get("error"), e.get("failures")) for e in events] == [
        ("loop.failed", "ValueError('garbled')", 1), ("loop.recovered", None, 3),
        ("loop.failed", "KeyError('x')", 1), ("loop.recovered", None, 1)]
    assert all(e["loop"] == "test.loop" and e["nc"] == "c1n1" for e in events)
    assert "in round_" in events[0]["traceback"] and "ValueError: garbled" in events[0]["traceback"]
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08  # backoff doubles per repeated failure
    assert gaps[3] < 0.06  # and is over once a round succeeds


def test_the_backoff_is_bounded(tmp_path):
    log = EventLog(None, "clc1", "clc")
    calls: list[float] = []

    async def round_():
        calls.append(asyncio.get_running_loop().time())
        raise RuntimeError("always")

    async def main():
        task = asyncio.create_task(supervise(log, "test.loop", round_, pause=0.01, max_backoff=0.05))
        await until(lambda: len(calls) >= 7)
        task.cancel()

    asyncio.run(main())
    assert max(b - a for a, b in zip(calls, calls[1:])) < 0.05 + 0.04


def test_an_event_log_on_a_full_disk_never_raises(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    log = EventLog("/dev/full", "clc1", "clc")
    record = log.emit("ha.heartbeat", seq=1)
    assert record["event"] == "ha.heartbeat" and log.dropped == 1
    log.emit("ha.heartbeat", seq=2)
    assert log.dropped == 2
    log.close()


def _agent(tmp_path, events: EventLog):
    """An HA agent whose heartbeats stay on loopback (its peer: 127.0.0.2, nobody there)."""
    svc = FakeService(tmp_path)
    svc.events = events
    port = free_port()
    cfg = {"host": "clc1", "role": "primary", "data_dir": str(tmp_path), "pair": {"name": "clc"},
           "ha": {"peer": "clc2", "peer_addresses": ["127.0.0.2"], "listen": ["127.0.0.1"], "port": port,
                  "secret": HA_SECRET,
                  "interval_ms": 20, "misses": 3, "vips": [], "arbitrators": []}}

    async def run(*argv):
        return 0

    return HAAgent(svc, cfg, run=run, garp=lambda intf, ip: None)


def test_the_heartbeat_ticker_goes_on_when_the_event_log_fails_and_when_a_tick_raises(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    agent = _agent(tmp_path, EventLog("/dev/full", "clc1", "clc"))
    real_tick, ticks = agent.tick, []

    def tick():
        ticks.append(1)
        if len(ticks) == 2:
            raise OSError(28, "No space left on device")
        real_tick()

    agent.tick = tick

    async def main():
        await agent.start()
        try:
            seq = agent.seq
            await until(lambda: agent.seq >= seq + 5 and len(ticks) >= 6, timeout=5)
        finally:
            await agent.stop()

    asyncio.run(main())
    assert agent.events.dropped > 0  # every event failed, heartbeats went on


def test_a_tick_that_raises_is_reported_with_its_traceback(tmp_path):
    agent = _agent(tmp_path, EventLog(tmp_path / "events.jsonl", "clc1", "clc"))
    real_tick, ticks = agent.tick, []

    def tick():
        ticks.append(1)
        if len(ticks) == 2:
            raise RuntimeError("a broken tick")
        real_tick()

    agent.tick = tick

    async def main():
        await agent.start()
        try:
            await until(lambda: len(ticks) >= 5, timeout=5)
        finally:
            await agent.stop()

    asyncio.run(main())
    failed = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "loop.failed"]
    assert [(e["loop"], e["error"]) for e in failed] == [("ha.ticker", "RuntimeError('a broken tick')")]
    assert "a broken tick" in failed[0]["traceback"]
