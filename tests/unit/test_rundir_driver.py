"""rundir.driver_alive: whether a registry record's driver still runs; a run directory its control socket fits in."""
import os
import subprocess
from pathlib import Path

from experiments import rundir as rd


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


def test_a_run_directory_too_deep_for_its_control_socket_is_refused_by_name():
    """A too-long path let the SDN controller die at its control API while the deployment
    went on without it; it is refused before anything is built."""
    from experiments.deployment import UNIX_PATH_MAX, socket_path_problem

    assert socket_path_problem(Path("/tmp/run/control.sock")) is None
    deep = Path("/tmp/" + "d" * (UNIX_PATH_MAX - len("/tmp//control.sock") + 1)) / "control.sock"
    assert len(str(deep)) == UNIX_PATH_MAX + 1
    assert "too deep for its control socket" in socket_path_problem(deep)
