"""experiments.testbed.deployment.Process.events: a started process's own events, read as its log grows."""

from __future__ import annotations

import json

from experiments.testbed.deployment import Process


def _line(event: str, **fields) -> bytes:
    return (json.dumps({"event": event, **fields}) + "\n").encode()


def test_events_are_read_as_the_log_grows_a_partial_line_waits_and_a_predecessors_are_left_out(tmp_path):
    log = tmp_path / "events.jsonl"
    before = _line("service.start", state="ENABLED") + _line("service.stop")  # a predecessor's
    log.write_bytes(before)
    proc = Process("clc1", "clc", pid=1, start_time=None, dir=tmp_path, popen=None, events_offset=len(before))
    assert proc.events() == []
    with open(log, "ab") as f:
        f.write(_line("service.start", state="DISABLED"))
        half = _line("state.change", to="ENABLED")
        f.write(half[:10])  # being written right now
        f.flush()
        assert [e["event"] for e in proc.events()] == ["service.start"]
        f.write(half[10:] + b"not json\n" + _line("ha.promote"))
    events = proc.events()
    assert [e["event"] for e in events] == ["service.start", "state.change", "ha.promote"]
    assert events[1]["to"] == "ENABLED"
    events.clear()  # the caller's copy
    assert len(proc.events()) == 3


def test_no_log_yet_is_no_events(tmp_path):
    assert Process("clc1", "clc", pid=1, start_time=None, dir=tmp_path, popen=None).events() == []
