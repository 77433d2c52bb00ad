"""A promoted CC routes first, from the view its old primary replicated to it, and asks
its NCs what they run only after that (their answers were 5-15 ms of HTTP in every
takeover); what the NCs add is routed in a second step. No root: the router is recorded,
the NC is an HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from components.cc import router
from components.cc.service import ClusterController

REPLICATED = {"id": "i-old", "nc": "c1n1", "slot": "c1n1v1", "ip": "10.101.16.2", "mac": "d0:0d:0a:65:10:02",
              "prefix": 27, "gateway": "10.101.16.1", "group": "sg-a", "vlan": 10, "account": "a",
              "image": None, "public_ip": "10.0.128.5", "reason": "", "state": "running"}
# Placed after the old primary's last replicated change: only the NC knows it.
NEWER = {"id": "i-new", "slot": "c1n1v2", "ip": "10.101.16.3", "mac": "d0:0d:0a:65:10:03", "prefix": 27,
         "gateway": "10.101.16.1", "group": "sg-a", "vlan": 10, "account": "a", "state": "running"}


def test_the_router_moves_before_the_ncs_are_asked_and_again_with_what_they_add(tmp_path, monkeypatch):
    log: list[tuple[str, object]] = []

    async def apply(config, primary):
        log.append(("router", sorted(config.public_addresses + config.private_addresses)))
        return {"added": [], "announced": {}}

    async def instances(request):
        log.append(("nc", None))
        return web.json_response({"instances": [dict(REPLICATED, public_ip=None), NEWER]})

    monkeypatch.setattr(router, "apply_router_async", apply)

    async def main():
        app = web.Application()
        app.router.add_get("/instances", instances)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cc = ClusterController({"host": "c1cc2", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "ncs": {"c1n1": {"url": f"http://127.0.0.1:{port}", "slots": ["c1n1v1", "c1n1v2"]}},
                                "private_interface": "c1cc2-eth1", "public_interface": "c1cc2-eth0"})
        cc.instances = {"i-old": dict(REPLICATED)}
        cc.addresses = {"10.0.128.5": "i-old"}
        cc.http = aiohttp.ClientSession()
        try:
            await cc._on_promote(7)
            assert log == [("router", ["10.0.128.5/16", "10.101.16.1/27"])]  # routed, the NC not yet asked
            await asyncio.gather(*cc._tasks)
            await cc._writer  # the view reaches the disk off the event loop
        finally:
            await cc.http.close()
            await runner.cleanup()
        return cc

    cc = asyncio.run(main())
    assert [kind for kind, _ in log] == ["router", "nc", "router"]
    # The replicated elastic IP is kept; the instance only the NC knew is now in the view.
    assert log[-1][1] == ["10.0.128.5/16", "10.101.16.1/27"]
    assert set(cc.instances) == {"i-old", "i-new"} and cc.epoch == 7
    assert [i["id"] for i in cc.intent()["instances"]] == ["i-old", "i-new"]
    assert set(json.loads((tmp_path / "cluster.json").read_text())["instances"]) == {"i-old", "i-new"}


def test_with_the_controller_a_new_primary_routes_while_it_pushes_its_intent(tmp_path, monkeypatch):
    """A takeover waits on the slower of the controller and the router, not on their sum:
    the new primary applies its router (rules, addresses, neighbour entries) while the
    controller installs its flows. Any later change routes first, then tells the
    controller."""
    log: list = []

    async def apply(config, primary):
        log.append("addresses")
        return {"added": [], "announced": {}}

    async def put_intent(request):
        await asyncio.sleep(0.05)  # the controller installing flows: the router does not wait
        log.append(f"controller {(await request.json())['primary_cc']}")
        return web.json_response({"ok": True})

    async def no_instances(request):
        return web.json_response({"instances": []})

    monkeypatch.setattr(router, "apply_router_async", apply)
    sock = tmp_path / "control.sock"

    async def main():
        app = web.Application()
        app.router.add_put("/intent/clusters/{k}", put_intent)
        app.router.add_get("/instances", no_instances)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        cc = ClusterController({"host": "c1cc2", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "ncs": {}, "control_socket": str(sock),
                                "private_interface": "c1cc2-eth1", "public_interface": "c1cc2-eth0"})
        cc.instances = {"i-old": dict(REPLICATED)}
        cc.intent_http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))
        cc.http = aiohttp.ClientSession()
        try:
            await cc._on_promote(7)
            await asyncio.gather(*cc._tasks)
            log.append("--")
            await cc.publish_intent("group rules", force=True)  # any later change: route, then tell
        finally:
            await cc.http.close()
            await cc.intent_http.close()
            await runner.cleanup()

    asyncio.run(main())
    assert log == ["addresses", "controller c1cc2", "--", "addresses", "controller c1cc2"]
