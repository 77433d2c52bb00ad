"""The CC answers a run only once each instance's NC holds it (or refused it), so an
instance the CLC was told about survives a CC crash right after the answer: the restarted
CC rebuilds it from the NCs. No root: the router is recorded, the NCs are HTTP servers
on loopback that take their time to accept."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from components.cc import router
from components.cc.service import ClusterController
from components.common.service import INTERNAL_TOKEN_HEADER

TOKEN = "t0ken"


def wanted(*ids):
    return {"instances": [{"id": i, "account": "a", "image": {"bucket": "b", "key": "k"},
                           "group": {"id": "sg-a", "name": "default", "rules": []}} for i in ids]}


async def nc_server(held: list, refuse: bool = False) -> web.AppRunner:
    async def run(request):
        body = await request.json()
        await asyncio.sleep(0.2)  # an NC slow to accept: its disk, its load
        if refuse:
            return web.json_response({"error": "SlotBusy", "message": "in use"}, status=409)
        held.append(body["id"])
        return web.json_response(dict(body, state="pending"), status=202)

    app = web.Application()
    app.router.add_post("/instances", run)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def test_the_answer_comes_once_the_ncs_hold_the_instances(tmp_path, monkeypatch):
    async def apply(config, primary, armed=False, inline=False):
        return {"added": [], "announced": {}}

    monkeypatch.setattr(router, "apply_router_async", apply)
    held: dict[str, list] = {"c1n1": [], "c1n2": []}

    async def main():
        ncs = {n: await nc_server(held[n], refuse=(n == "c1n2")) for n in held}
        cc = ClusterController({"host": "c1cc1", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "internal_token": TOKEN, "private_interface": "c1cc1-eth1",
                                "public_interface": "c1cc1-eth0",
                                "ncs": {n: {"url": f"http://127.0.0.1:{r.addresses[0][1]}", "slots": [f"{n}v1"]}
                                        for n, r in ncs.items()}})
        cc.http = aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: TOKEN})
        server = TestServer(cc.app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: TOKEN}) as client:
                async with client.post(server.make_url("/cluster/instances"), json=wanted("i-1", "i-2")) as r:
                    assert r.status == 200
                    placements = {p["id"]: p for p in (await r.json())["placements"]}
                    # At the answer, not later: the accepting NC has its instance already.
                    assert held["c1n1"] == [placements_on(placements, "c1n1")]
                async with client.get(server.make_url("/cluster/capacity")) as r:
                    capacity = await r.json()
        finally:
            await server.close()
            await cc.http.close()
            for runner in ncs.values():
                await runner.cleanup()
        return placements, capacity

    placements, capacity = asyncio.run(main())
    # The refused one is terminated in the answer itself, with the NC's reason, its slot free.
    refused = next(p for p in placements.values() if p["nc"] == "c1n2")
    assert refused["state"] == "terminated" and "SlotBusy" in refused["reason"]
    accepted = next(p for p in placements.values() if p["nc"] == "c1n1")
    assert accepted["state"] == "pending"
    assert capacity["free"] == 1


def placements_on(placements: dict, nc: str) -> str:
    return next(i for i, p in placements.items() if p["nc"] == nc)
