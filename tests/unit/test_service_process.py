"""The service skeleton as a real process: start contract, signals, bad configs (loopback only)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest

from components.common.events import read_events

from tests.support.processes import REPO, component

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_exit_0(tmp_path, sig):
    with component("walrus", tmp_path) as (base, cfg, proc):
        # The driver's contract: once service.start is in the log, the port accepts connections.
        with socket.create_connection(("127.0.0.1", cfg["port"]), timeout=1):
            pass
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    events = [e for e in read_events(tmp_path / "events.jsonl") if e.get("pid", proc.pid) == proc.pid]
    names = [e["event"] for e in events]
    assert names[0] == "service.start" and names[-1] == "service.stop"
    assert names.count("service.start") == names.count("service.stop") == 1
    start = events[0]
    assert (start["host"], start["component"], start["port"]) == ("walrus1", "walrus", cfg["port"])
    assert start["t_mono"] <= events[-1]["t_mono"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", cfg["port"]), timeout=1).close()


@pytest.mark.parametrize("cfg,field", [
    ({"component": "walrus", "port": 8773, "data_dir": "d"}, "host"),
    ({"host": "w1", "component": "walrus", "port": "8773", "data_dir": "d"}, "port"),
    ({"host": "w1", "component": "walrus", "port": 8773, "data_dir": "d", "state": "MAYBE"}, "state"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path, cfg, field):
    if "data_dir" in cfg:
        cfg["data_dir"] = str(tmp_path / cfg["data_dir"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, "-m", "components.walrus", "--config", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"bad config: {field}:" in out.stderr
