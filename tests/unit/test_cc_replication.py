"""The CC's view replicated to its standby: in order, acknowledged before the CC answers the
CLC, to the address the peer is heard on; terminated instances retired; one elastic IP per
instance. No root: the router is recorded, the standby is a real CC on loopback."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from components.cc import router
from components.cc.service import ClusterController
from components.common.service import INTERNAL_TOKEN_HEADER

from tests.support.processes import TOKEN
from tests.support.util import until

NC = {"c1n1": {"url": "http://127.0.0.1:9", "slots": ["c1n1v1", "c1n1v2", "c1n1v3"]}}


def _record(iid: str, slot: str, ip: str) -> dict:
    return {"id": iid, "nc": "c1n1", "slot": slot, "ip": ip, "mac": "d0:0d:0a:65:10:02", "prefix": 27,
            "gateway": "10.101.16.1", "group": "sg-a", "vlan": 10, "account": "a", "image": None,
            "public_ip": None, "reason": "", "state": "running"}


def _config(tmp_path, host: str, **extra) -> dict:
    (tmp_path / host).mkdir(exist_ok=True)
    return {"host": host, "data_dir": str(tmp_path / host), "cluster": 1, "mode": "MANAGED", "ncs": NC,
            "internal_token": TOKEN, "private_interface": f"{host}-eth1", "public_interface": f"{host}-eth0",
            **extra}


def pair(tmp_path, monkeypatch, body, delays=()):
    """A primary CC (its API on a test server) replicating to a standby CC on 127.0.0.1; the
    standby's n-th replication request waits ``delays[n]`` seconds before it is handled."""
    async def apply(config, primary, armed=False, inline=False, announce_held=False):
        return {"added": [], "announced": {}}

    monkeypatch.setattr(router, "apply_router_async", apply)

    async def main():
        standby = ClusterController(_config(tmp_path, "c1cc2", state="DISABLED"))
        pending = list(delays)

        @web.middleware
        async def slow(request, handler):
            if request.path == "/internal/ha/state" and pending:
                await asyncio.sleep(pending.pop(0))
            return await handler(request)

        standby.app.middlewares.append(slow)
        runner = web.AppRunner(standby.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        # The HA agent's answers only: the peer is alive and heard on 127.0.0.1 (not on
        # its heartbeat-link address, where nothing listens), and replication goes there.
        primary = ClusterController(_config(tmp_path, "c1cc1", port=port))
        primary.ha = SimpleNamespace(peer_alive=lambda: True, peer_address=lambda: "127.0.0.1", interval=0.02,
                                     peer_addresses=["127.0.0.3", "127.0.0.1"])
        primary.http = aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: TOKEN})
        primary.instances = {"i-1": _record("i-1", "c1n1v1", "10.101.16.2"),
                             "i-2": _record("i-2", "c1n1v2", "10.101.16.3")}
        primary._restore_view()
        server = TestServer(primary.app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: TOKEN}) as client:
                return await body(primary, standby, client, server.make_url)
        finally:
            await asyncio.gather(*primary._tasks, *standby._tasks, return_exceptions=True)
            await server.close()
            await runner.cleanup()
            await primary.http.close()

    return asyncio.run(main())


def test_an_association_is_answered_once_the_standby_holds_it(tmp_path, monkeypatch):
    async def body(primary, standby, client, url):
        async with client.put(url("/cluster/addresses/10.0.128.5"), json={"instance": "i-1"}) as r:
            assert r.status == 200
        # Answered: the standby has it already (its copy was slow to arrive, 0.2 s).
        assert standby.addresses == {"10.0.128.5": "i-1"}
        assert standby.instances["i-1"]["public_ip"] == "10.0.128.5"
        assert standby.version == primary.version

    pair(tmp_path, monkeypatch, body, delays=[0.2])


def test_views_reach_the_standby_in_order(tmp_path, monkeypatch):
    async def body(primary, standby, client, url):
        # The first copy is held up; the changes after it must not be overtaken by it.
        first = asyncio.create_task(client.put(url("/cluster/addresses/10.0.128.5"), json={"instance": "i-1"}))
        await asyncio.sleep(0.05)
        for n, iid in ((6, "i-2"), (7, "i-1")):
            async with client.put(url(f"/cluster/addresses/10.0.128.{n}"), json={"instance": iid}) as r:
                assert r.status == 200
        (await first).release()
        await until(lambda: primary._acked == primary.version)
        assert standby.addresses == primary.addresses == {"10.0.128.6": "i-2", "10.0.128.7": "i-1"}

    pair(tmp_path, monkeypatch, body, delays=[0.3])


def test_an_older_view_never_replaces_a_newer_one(tmp_path, monkeypatch):
    async def body(primary, standby, client, url):
        async with client.put(url("/cluster/addresses/10.0.128.5"), json={"instance": "i-1"}) as r:
            assert r.status == 200
        newest = primary._snapshot()
        older = dict(newest, version=newest["version"] - 1, addresses={})
        target = f"http://127.0.0.1:{primary.config['port']}/internal/ha/state"
        async with client.put(target, json=older) as r:
            assert r.status == 200
        assert standby.addresses == {"10.0.128.5": "i-1"}

    pair(tmp_path, monkeypatch, body)


def test_a_second_elastic_ip_replaces_the_first_on_the_instance(tmp_path, monkeypatch):
    async def body(primary, standby, client, url):
        for ip in ("10.0.128.5", "10.0.128.6"):
            async with client.put(url(f"/cluster/addresses/{ip}"), json={"instance": "i-1"}) as r:
                assert r.status == 200
        assert primary.addresses == standby.addresses == {"10.0.128.6": "i-1"}
        assert [i["public_ip"] for i in primary.intent()["instances"]] == ["10.0.128.6", None]

    pair(tmp_path, monkeypatch, body)


def test_terminated_instances_are_retired_after_the_retention(tmp_path, monkeypatch):
    async def body(primary, standby, client, url):
        primary.retention_s = 0.1
        primary._end(primary.instances["i-1"], "terminated by request")
        primary._end(primary.instances["i-2"], "terminated by request")
        primary._recall["i-2"] = time.time()  # its NC may still run it: kept until recalled
        await primary._retire_once()
        assert set(primary.instances) == {"i-1", "i-2"}  # not yet: shown for the retention
        await until(lambda: time.time() > primary.instances["i-1"]["ended"] + 0.1)
        await primary._retire_once()
        assert set(primary.instances) == {"i-2"}
        await until(lambda: primary._acked == primary.version)
        assert set(standby.instances) == {"i-2"}

    pair(tmp_path, monkeypatch, body)


def test_the_retention_is_a_parameter_of_an_hour_by_default(tmp_path):
    assert ClusterController(_config(tmp_path, "c1cc1")).retention_s == 3600.0
    assert ClusterController(_config(tmp_path, "c1cc1", terminated_retention_s=2)).retention_s == 2.0
