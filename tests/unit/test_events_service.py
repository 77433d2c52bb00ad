"""The event log, config validation and the service skeleton."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import ClientSession

from components.common.config import ConfigError, validate_config
from components.common.events import EventLog, read_events
from components.common.service import Service
from components.common.states import ServiceState


def test_event_log_schema(tmp_path):
    log = EventLog(tmp_path / "e.jsonl", "clc1", "clc")
    log.emit("state.change", **{"from": "DISABLED", "to": "ENABLED"})
    log.emit("x", n=1)
    log.close()
    events = read_events(tmp_path / "e.jsonl")
    assert [e["event"] for e in events] == ["state.change", "x"]
    for e in events:
        assert {"t_mono", "t_wall", "host", "component", "event"} <= set(e)
    assert events[0]["t_mono"] <= events[1]["t_mono"]


def test_read_events_skips_a_torn_line(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text('{"event": "a"}\n{"event": "b"')
    assert [e["event"] for e in read_events(p)] == ["a"]


@pytest.mark.parametrize("cfg,field", [
    ({}, "host"),
    ({"host": "h", "component": "x", "port": "80", "data_dir": "/tmp"}, "port"),
    ({"host": "h", "component": "x", "port": 80, "data_dir": "/tmp", "role": "boss"}, "role"),
    ({"host": "h", "component": "x", "port": 80, "data_dir": "/tmp", "state": "ON"}, "state"),
    ({"host": "h", "component": "x", "port": 99999, "data_dir": "/tmp"}, "port"),
    ({"host": "h", "component": "x", "port": 80, "data_dir": "/tmp", "admin": {"access_key": "a"}}, "admin"),
])
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).startswith(field)


class Demo(Service):
    component = "demo"
    api_prefixes = ("/api",)

    def setup_routes(self, app):
        app.router.add_get("/api/hello", self.hello)

    async def hello(self, request):
        from aiohttp import web

        return web.json_response({"hello": self.host})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_gate_status_and_clean_stop(tmp_path):
    port = free_port()
    cfg = validate_config({"host": "h1", "component": "demo", "port": port, "listen_host": "127.0.0.1",
                           "data_dir": str(tmp_path / "d"), "events_path": str(tmp_path / "e.jsonl"),
                           "state": "DISABLED", "role": "secondary"})
    svc = Demo(cfg)

    async def scenario():
        task = asyncio.create_task(svc.serve())
        for _ in range(100):
            if any(e["event"] == "service.start" for e in read_events(tmp_path / "e.jsonl")):
                break
            await asyncio.sleep(0.01)
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/api/hello") as r:
                assert r.status == 503
            async with http.get(f"http://127.0.0.1:{port}/health") as r:
                assert r.status == 200
            svc.set_state(ServiceState.ENABLED, "test")
            async with http.get(f"http://127.0.0.1:{port}/api/hello") as r:
                assert (await r.json()) == {"hello": "h1"}
            async with http.get(f"http://127.0.0.1:{port}/status") as r:
                status = await r.json()
                assert status["state"] == "ENABLED" and status["role"] == "secondary"
        svc.stop()
        await task

    asyncio.run(scenario())
    events = [e["event"] for e in read_events(tmp_path / "e.jsonl")]
    assert events == ["service.start", "state.change", "service.stop"]
    change = read_events(tmp_path / "e.jsonl")[1]
    assert (change["from"], change["to"], change["reason"]) == ("DISABLED", "ENABLED", "test")
