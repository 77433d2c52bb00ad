"""ovs-vswitchd's scheduling while deployments run (experiments/testbed/vswitchd.py), on a
stand-in process: finding it, refusing what cannot be done, and putting back only
what was recorded, only when no other run still uses the datapath."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from experiments.testbed import rundir as rd
from experiments.testbed import vswitchd

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


@pytest.fixture
def child():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setattr(rd, "REGISTRY", path)
    return path


def test_pid_from_the_pidfile(tmp_path, child):
    pidfile = tmp_path / "ovs-vswitchd.pid"
    assert vswitchd.vswitchd_pid(pidfile) is None  # not running: no pidfile
    pidfile.write_text(f"{child}\n")
    assert vswitchd.vswitchd_pid(pidfile) == child
    pidfile.write_text("not a pid\n")
    assert vswitchd.vswitchd_pid(pidfile) is None
    pidfile.write_text(f"{2**22 + 1}\n")  # above the largest pid_max: no such process
    assert vswitchd.vswitchd_pid(pidfile) is None


def test_a_priority_that_cannot_be_set_changes_nothing_and_keeps_no_record(tmp_path, child):
    saved = tmp_path / "sched.json"
    before = vswitchd.scheduling(child)
    assert vswitchd.raise_priority(child, priority=100, saved=saved) is None  # SCHED_FIFO stops at 99
    assert vswitchd.scheduling(child) == before and not saved.exists()
    assert vswitchd.raise_priority(2**22 + 1, saved=saved) is None and not saved.exists()
    # Raised by another run already: its record stays, for the last run to put back.
    record = {"pid": child, "start_time": rd.process_start_time(child), "threads": {str(child): list(before)}}
    saved.write_text(json.dumps(record))
    assert vswitchd.raise_priority(child, priority=100, saved=saved) is None
    assert json.loads(saved.read_text()) == record


def test_a_record_of_a_process_gone_is_dropped(tmp_path):
    saved = tmp_path / "sched.json"
    assert vswitchd.restore(saved) is None
    saved.write_text(json.dumps({"pid": 2**22 + 1, "start_time": 5, "threads": {str(2**22 + 1): [0, 0]}}))
    assert "no longer running" in vswitchd.restore(saved) and not saved.exists()
    saved.write_text("{half a record")
    assert vswitchd.restore(saved) is None and not saved.exists()


def test_release_waits_for_the_last_live_run(tmp_path, registry, child):
    saved = tmp_path / "sched.json"
    record = {"pid": child, "start_time": rd.process_start_time(child), "threads": {str(child): [0, 0]}}
    saved.write_text(json.dumps(record))
    registry.mkdir()
    ours = registry / "ours.json"
    ours.write_text(json.dumps({"driver_pid": os.getpid(), "driver_start": rd.process_start_time(os.getpid())}))
    other = registry / "other.json"
    other.write_text(json.dumps({"driver_pid": child, "driver_start": rd.process_start_time(child)}))
    dead = registry / "dead.json"
    dead.write_text(json.dumps({"driver_pid": 2**22 + 1, "driver_start": 1}))
    assert vswitchd.live_runs(exclude=ours) == [other]
    assert vswitchd.release(exclude=ours, saved=saved) is None and saved.exists()  # the other still runs
    other.unlink()
    assert vswitchd.release(exclude=ours, saved=saved) == f"ovs-vswitchd {child}: scheduling put back"
    assert not saved.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (make test runs as root)")
def test_raised_then_put_back_as_it_was(tmp_path, child):
    saved = tmp_path / "sched.json"
    os.setpriority(os.PRIO_PROCESS, child, 5)  # a nice value, as ovs-ctl gives ovs-vswitchd one
    before = vswitchd.scheduling(child)
    assert vswitchd.raise_priority(child, priority=20, saved=saved) == 20
    assert vswitchd.scheduling(child) == (os.SCHED_FIFO, 20)
    # A second run raising it again keeps the first record: the scheduling from before any run.
    assert vswitchd.raise_priority(child, priority=20, saved=saved) == 20
    assert json.loads(saved.read_text())["threads"][str(child)] == list(before)
    assert vswitchd.restore(saved) == f"ovs-vswitchd {child}: scheduling put back"
    assert vswitchd.scheduling(child) == before and os.getpriority(os.PRIO_PROCESS, child) == 5
    assert not saved.exists()
