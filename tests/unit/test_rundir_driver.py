"""rundir.driver_alive: whether a registry record's driver still runs; a run directory its control socket fits in."""
import os
import subprocess

import pytest

from experiments.testbed import rundir as rd

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


def test_the_running_driver_is_alive():
    record = {"driver_pid": os.getpid(), "driver_start": rd.process_start_time(os.getpid())}
    assert rd.driver_alive(record)


def test_a_reused_pid_is_not_the_driver():
    record = {"driver_pid": os.getpid(), "driver_start": rd.process_start_time(os.getpid()) + 1}
    assert not rd.driver_alive(record)


def test_a_dead_driver_is_not_alive_even_without_a_start_time():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not rd.driver_alive({"driver_pid": proc.pid})
    assert not rd.driver_alive({"driver_pid": proc.pid, "driver_start": None})
    assert not rd.driver_alive({})


