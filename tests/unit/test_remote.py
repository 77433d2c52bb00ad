"""Deployments over several servers: how a process on another server is started, told
apart and signalled, and what a killed run's cleanup runs there (no root, no ssh)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from experiments.testbed.remote import PID_MARK, RemoteRef, parse_pid_line, put_files, start_line
from topologies.created import Created, remote_teardown_line

pytestmark = pytest.mark.loopback


def test_a_remote_start_prints_its_own_pid_and_start_time_then_becomes_the_process(tmp_path):
    """The line run over ssh, run here by bash: the pid it prints is the process that runs
    (exec keeps it) and the start time is that process's."""
    from components.common.procs import process_start_time

    line = start_line(tmp_path, 1, ["sleep", "30"], {"A": "b c"}).replace("mnexec -a 1 ", "")
    proc = subprocess.Popen(["bash", "-c", line], stdout=subprocess.PIPE, text=True)
    try:
        pid, start = parse_pid_line(proc.stdout.readline())
        assert pid == proc.pid and start == process_start_time(proc.pid)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()


def test_a_remote_process_s_files_travel_on_stdin_and_are_root_s_alone(tmp_path):
    """Its config holds the pair's key: never on a command line (ps shows it), never readable
    by others (the old line printf'd the text into files of the default umask)."""
    secret = "key 'x' $(y)\n" * 3
    line, stdin = put_files(tmp_path / "p d", {"config.json": secret, "other": ""})
    assert "key" not in line
    subprocess.run(["bash", "-c", line], input=stdin, check=True)
    made = tmp_path / "p d"
    assert (made / "config.json").read_text() == secret and (made / "other").read_text() == ""
    assert (made / "data").is_dir()
    for path in (made, made / "data", made / "config.json", made / "other"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_the_start_line_enters_the_hosts_namespace_with_quoted_words(tmp_path):
    line = start_line(tmp_path / "a b", 4242, ["python", "-m", "components.clc", "--config", "x y"],
                      {"PYTHONPATH": "/repo"})
    assert "exec mnexec -a 4242 env PYTHONPATH=/repo python -m components.clc --config 'x y'" in line
    assert line.startswith(f"cd '{tmp_path}/a b' && echo {PID_MARK} $$")


def test_a_pid_line_is_found_only_whole():
    assert parse_pid_line("noise\neucalab-remote-pid 12 345\nmore") == (12, 345)
    assert parse_pid_line("eucalab-remote-pid 12") is None
    assert parse_pid_line("eucalab-remote-pid x 345") is None
    assert parse_pid_line("") is None


def test_a_remote_signal_goes_only_to_the_recorded_process(tmp_path):
    """The check runs there: a pid whose start time differs (reused) is not signalled."""
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        from components.common.procs import process_start_time

        start = process_start_time(sleeper.pid)
        RemoteRef("here", ["bash", "-c"], sleeper.pid, start + 1).signal(9)
        assert sleeper.poll() is None
        RemoteRef("here", ["bash", "-c"], sleeper.pid, start).signal(9, group=True)
        assert sleeper.wait(timeout=10) == -9
    finally:
        sleeper.kill()
        sleeper.wait()


def test_remote_teardown_deletes_only_what_was_recorded():
    line = remote_teardown_line({"ssh": ["ssh", "root@10.99.0.2"], "run_dir": "/tmp/pytest-of-root/run1",
                                 "bridges": ["abswc1", "abbr1n1"], "root_links": ["c1cc1-eth0"],
                                 "pids": {"77": 123}})
    assert '[ "$(cut -d" " -f22 /proc/77/stat 2>/dev/null)" = "123" ] && kill -KILL -- -77 77' in line
    assert "-- --if-exists del-br abswc1 -- --if-exists del-br abbr1n1" in line
    assert "ip link del dev c1cc1-eth0" in line and "rm -rf -- /tmp/pytest-of-root/run1" in line
    assert "mn -c" not in line and "pkill" not in line and "killall" not in line


def test_remote_teardown_refuses_names_a_shell_would_read_otherwise():
    line = remote_teardown_line({"bridges": ["br; reboot"], "root_links": ["$(x)"], "run_dir": "/",
                                 "pids": {}})
    assert "reboot" not in line and "$(x)" not in line and "rm -rf" not in line
    assert remote_teardown_line({"run_dir": "/tmp"}) == "true"
    for way_up in ("/tmp/../etc", "/tmp/./..", "/tmp//etc/..", "/tmp/x/.."):
        assert remote_teardown_line({"run_dir": way_up}) == "true", way_up


def test_a_run_record_keeps_what_it_made_on_other_servers():
    created = Created(remote={"10.99.0.2": {"ssh": ["ssh"], "bridges": ["x"], "root_links": [], "pids": {}}})
    from dataclasses import asdict

    assert Created(**asdict(created)) == created


def test_a_teardown_goes_on_when_a_server_does_not_take_its_signals(monkeypatch):
    """Processes whose signals never arrive (ssh to their server hangs) are ended here and
    the others still stopped; it used to raise TimeoutExpired and stop the teardown there."""
    from experiments.testbed import processes

    monkeypatch.setattr(processes, "KILL_WAIT_S", 0.1, raising=False)
    lost = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    processes.terminate(lost, timeout=0.1, send=lambda popen, sig: None)
    assert [p.returncode for p in lost] == [-9, -9]


def test_a_remote_signal_that_ssh_cannot_deliver_in_time_is_not_raised(monkeypatch):
    from experiments.testbed import remote

    monkeypatch.setattr(remote, "scaled", lambda s: 0.2)
    RemoteRef("10.99.0.2", ["bash", "-c", "sleep 5", "ssh"], 42, 1).signal(9)  # an ssh that never answers
