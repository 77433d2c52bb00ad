"""The integration tests' teardown check (tests/support/runlogs.py) on log files alone."""

from __future__ import annotations

import json

from tests.support.runlogs import RunLogs


def _append(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


def test_a_traceback_in_a_processes_output_is_reported_once(tmp_path):
    out = tmp_path / "run" / "hosts" / "clc1" / "stdout.log"
    _append(out, "started\n")
    logs = RunLogs(tmp_path)
    assert logs.problems() == []
    _append(out, "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'a'\n")
    found = logs.problems()
    assert len(found) == 1 and "run/hosts/clc1/stdout.log" in found[0] and "KeyError" in found[0]
    assert logs.problems() == []  # charged to one test only


def test_an_internal_error_event_is_reported_and_other_events_are_not(tmp_path):
    events = tmp_path / "hosts" / "clc1" / "events.jsonl"
    _append(events, json.dumps({"event": "api.request", "note": "api.internal_error in a field"}) + "\n")
    logs = RunLogs(tmp_path)
    assert logs.problems() == []
    _append(events, json.dumps({"event": "api.internal_error", "action": "RunInstances"}) + "\n")
    assert [p for p in logs.problems() if "RunInstances" in p]


def test_a_line_being_written_is_read_when_complete(tmp_path):
    out = tmp_path / "hosts" / "nc1" / "stdout.log"
    logs = RunLogs(tmp_path)
    _append(out, "Traceback (most recent")
    assert logs.problems() == []
    _append(out, " call last):\nValueError\n")
    assert len(logs.problems()) == 1
