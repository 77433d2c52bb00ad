"""Which components run at realtime priority, and what the NC's children inherit of it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components.common.service import scheduler_policy
from components.nc.service import NodeController
from experiments.testbed.configs import NC_REALTIME_PRIORITY, REALTIME_PRIORITY, realtime_priority


def test_the_nc_runs_at_realtime_below_the_members():
    # The NC carries every volume request between an instance and the SC: at the normal
    # scheduler it queued behind the rest of the machine.
    assert realtime_priority("nc", paired=False, realtime=True) == NC_REALTIME_PRIORITY
    assert 0 < NC_REALTIME_PRIORITY < REALTIME_PRIORITY  # never ahead of a heartbeat
    for role in ("clc", "walrus", "cc", "sc"):
        assert realtime_priority(role, paired=True, realtime=True) == REALTIME_PRIORITY
        assert realtime_priority(role, paired=False, realtime=True) is None  # no HA: no heartbeats to keep
    assert realtime_priority("nc", paired=False, realtime=False) is None
    assert realtime_priority("sc", paired=True, realtime=False) is None


def test_what_the_nc_starts_does_not_inherit_its_priority():
    assert scheduler_policy(True) == os.SCHED_FIFO  # the members' ip and nft commands do
    assert NodeController.realtime_inherited is False
    assert scheduler_policy(NodeController.realtime_inherited) == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK


# Raising a process to SCHED_FIFO needs root: these run the code in a Python of their own.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root")


def printed(code: str) -> list[str]:
    """What ``python -c code`` prints, word by word."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


@pytest.mark.loopback
@needs_root
def test_a_child_of_a_process_at_the_ncs_policy_runs_at_the_normal_scheduler():
    code = ("import os, subprocess, sys; from components.common.service import scheduler_policy; "
            f"os.sched_setscheduler(0, scheduler_policy(False), os.sched_param({NC_REALTIME_PRIORITY})); "
            "print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, flush=True); "
            "subprocess.run([sys.executable, '-c', 'import os; print(os.sched_getscheduler(0))'])")
    assert printed(code) == [str(os.SCHED_FIFO), str(os.SCHED_OTHER)]


@pytest.mark.loopback
@needs_root
def test_leaving_realtime_lowers_every_thread_of_the_process():
    code = ("import os, threading; from components.common.service import leave_realtime, scheduler_name; "
            f"os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param({REALTIME_PRIORITY})); "
            "go, done = threading.Event(), threading.Event(); tid = []; "
            "t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), go.set(), done.wait())); "
            "t.start(); go.wait(); print(scheduler_name(0), scheduler_name(tid[0])); "
            "leave_realtime(); print(scheduler_name(0), scheduler_name(tid[0])); done.set()")
    assert printed(code) == ["SCHED_FIFO", "SCHED_FIFO", "normal", "normal"]


@pytest.mark.loopback
@needs_root
def test_a_component_at_realtime_shuts_down_at_the_normal_scheduler(tmp_path):
    import signal

    from components.common.events import read_events
    from tests.support.processes import component

    with component("walrus", tmp_path, realtime_priority=REALTIME_PRIORITY) as (_, _, proc):
        assert os.sched_getscheduler(proc.pid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    stop = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "service.stop"]
    assert [e["scheduler"] for e in stop] == ["normal"]
