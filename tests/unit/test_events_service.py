"""The event log, config validation and the service skeleton."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp import ClientSession

from components.common.config import ConfigError, load_config, validate_config
from components.common.events import EventLog, read_events
from components.common.service import Service
from components.common.states import ServiceState
from tests.support.util import free_port


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


def test_event_log_is_flushed_per_event_and_thread_safe(tmp_path):
    import threading

    log = EventLog(tmp_path / "e.jsonl", "walrus1", "walrus")
    log.emit("first")
    # Readable while the writer is still open: experiments tail these files live.
    assert [e["event"] for e in read_events(tmp_path / "e.jsonl")] == ["first"]

    def writer(n):
        for i in range(500):
            log.emit("tick", writer=n, i=i, pad="x" * 300)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 8 * 500
    records = [json.loads(line) for line in lines]  # no interleaved, torn lines
    for n in range(8):
        assert [r["i"] for r in records if r.get("writer") == n] == list(range(500))
    log.close()


def test_event_log_without_a_path_writes_nothing(tmp_path):
    log = EventLog(None, "nc1", "nc")
    record = log.emit("instance.boot", instance="i-1")
    assert record["event"] == "instance.boot" and record["host"] == "nc1" and record["instance"] == "i-1"
    assert list(tmp_path.iterdir()) == []


def test_read_events_skips_a_torn_line(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text('{"event": "a"}\n{"event": "b"')
    assert [e["event"] for e in read_events(p)] == ["a"]


BASE = {"host": "h", "component": "cc", "port": 80, "data_dir": "/tmp"}


@pytest.mark.parametrize("cfg,field", [
    ({}, "host"),
    ({**BASE, "port": "80"}, "port"),
    ({**BASE, "port": True}, "port"),
    ({**BASE, "component": "x"}, "component"),
    ({**BASE, "role": "boss"}, "role"),
    ({**BASE, "state": "ON"}, "state"),
    ({**BASE, "port": 99999}, "port"),
    ({**BASE, "admin": {"access_key": "a"}}, "admin.account_id"),
    ({**BASE, "admin": "AKIA"}, "admin"),
    ({**BASE, "endpoints": {"clc": "10.0.0.1:8773"}}, "endpoints.clc"),
    ({**BASE, "endpoints": {"cc": {"cluster1": 8774}}}, "endpoints.cc.cluster1"),
    ({**BASE, "endpoints": []}, "endpoints"),
])
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).split(":")[0] == field


def test_config_defaults_extra_keys_and_data_dir(tmp_path):
    path = tmp_path / "walrus.json"
    path.write_text(json.dumps({"host": "walrus1", "component": "walrus", "port": 8773,
                                "data_dir": str(tmp_path / "new" / "data"), "max_object_bytes": 1024,
                                "endpoints": {"clc": "http://10.0.0.10:8773/services/Eucalyptus",
                                              "cc": {"cluster1": "http://10.1.0.5:8774"}}}))
    cfg = load_config(path)
    assert (cfg["role"], cfg["listen_host"], cfg["state"], cfg["region"]) == ("single", "0.0.0.0", "ENABLED",
                                                                            "eucalyptus")
    assert cfg["max_object_bytes"] == 1024  # component-specific keys are kept
    assert (tmp_path / "new" / "data").is_dir()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


class Demo(Service):
    component = "demo"
    api_prefixes = ("/api",)

    def setup_routes(self, app):
        app.router.add_get("/api/hello", self.hello)

    async def hello(self, request):
        from aiohttp import web

        return web.json_response({"hello": self.host})


def test_service_gate_status_and_clean_stop(tmp_path):
    port = free_port()
    cfg = validate_config({"host": "h1", "component": "cc", "port": port, "listen_host": "127.0.0.1",
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
                assert status["component"] == "demo" and status["host"] == "h1"
                assert status["pid"] == os.getpid() and status["since"] == svc.since
        svc.stop()
        await task

    asyncio.run(scenario())
    events = [e["event"] for e in read_events(tmp_path / "e.jsonl")]
    assert events == ["service.start", "state.change", "service.stop"]
    change = read_events(tmp_path / "e.jsonl")[1]
    assert (change["from"], change["to"], change["reason"]) == ("DISABLED", "ENABLED", "test")
