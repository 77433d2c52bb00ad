"""The CC answers a run only once each instance's NC holds it (or refused it), so an
instance the CLC was told about survives a CC crash right after the answer: the restarted
CC rebuilds it from the NCs. An instance whose NC did not answer in time is terminated,
and ended on the NC should it have arrived there after all; a restarted CC never brings
back an instance it had terminated. No root: the router is recorded, the NCs are HTTP
servers on loopback that take their time to accept."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from components.cc import router
from components.cc import nodes as cc_nodes
from components.cc.service import ClusterController
from components.common.service import INTERNAL_TOKEN_HEADER

from tests.support.util import until

TOKEN = "t0ken"


def wanted(*ids):
    return {"instances": [{"id": i, "account": "a", "image": {"bucket": "b", "key": "k"},
                           "group": {"id": "sg-a", "name": "default", "rules": []}} for i in ids]}


class FakeNC:
    """An NC that takes ``delay`` s to accept (its disk, its load), or refuses; it lists
    what it holds and ends what it is told to."""

    def __init__(self, delay: float = 0.2, refuse: bool = False):
        self.delay, self.refuse = delay, refuse
        self.held: dict[str, dict] = {}
        self.deleted: list[str] = []

    async def run(self, request):
        body = await request.json()
        await asyncio.sleep(self.delay)
        if self.refuse:
            return web.json_response({"error": "SlotBusy", "message": "in use"}, status=409)
        self.held[body["id"]] = dict(body, state="pending")
        return web.json_response(self.held[body["id"]], status=202)

    async def listing(self, request):
        return web.json_response({"instances": list(self.held.values())})

    async def delete(self, request):
        iid = request.match_info["id"]
        self.deleted.append(iid)
        if iid not in self.held:
            return web.json_response({"error": "InvalidInstanceID.NotFound"}, status=404)
        self.held[iid]["state"] = "terminated"
        return web.json_response(self.held[iid])

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/instances", self.run)
        app.router.add_get("/instances", self.listing)
        app.router.add_delete("/instances/{id}", self.delete)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"


def cluster(tmp_path, monkeypatch, ncs: dict[str, FakeNC], body):
    """A CC (its API on a test server) over ``ncs``; ``body(cc, client, url)`` drives it."""
    async def apply(config, primary, armed=False, inline=False, announce_held=False):
        return {"added": [], "announced": {}}

    monkeypatch.setattr(router, "apply_router_async", apply)

    async def main():
        urls = {n: await nc.start() for n, nc in ncs.items()}
        cc = ClusterController({"host": "c1cc1", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "internal_token": TOKEN, "private_interface": "c1cc1-eth1",
                                "public_interface": "c1cc1-eth0",
                                "ncs": {n: {"url": u, "slots": [f"{n}v1"]} for n, u in urls.items()}})
        cc.http = aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: TOKEN})
        server = TestServer(cc.app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: TOKEN}) as client:
                return await body(cc, client, server.make_url)
        finally:
            if cc._poller:
                cc._poller.cancel()
            await asyncio.gather(*cc._tasks, return_exceptions=True)
            await server.close()
            await cc.http.close()
            for nc in ncs.values():
                await nc.runner.cleanup()

    return asyncio.run(main())


async def run(client, url, *ids) -> dict:
    async with client.post(url("/cluster/instances"), json=wanted(*ids)) as r:
        assert r.status == 200
        return {p["id"]: p for p in (await r.json())["placements"]}


def test_the_answer_comes_once_the_ncs_hold_the_instances(tmp_path, monkeypatch):
    ncs = {"c1n1": FakeNC(), "c1n2": FakeNC(refuse=True)}

    async def body(cc, client, url):
        placements = await run(client, url, "i-1", "i-2")
        # At the answer, not later: the accepting NC has its instance already.
        assert list(ncs["c1n1"].held) == [i for i, p in placements.items() if p["nc"] == "c1n1"]
        async with client.get(url("/cluster/capacity")) as r:
            return placements, await r.json()

    placements, capacity = cluster(tmp_path, monkeypatch, ncs, body)
    # The refused one is terminated in the answer itself, with the NC's reason, its slot free.
    refused = next(p for p in placements.values() if p["nc"] == "c1n2")
    assert refused["state"] == "terminated" and "SlotBusy" in refused["reason"]
    assert next(p for p in placements.values() if p["nc"] == "c1n1")["state"] == "pending"
    assert capacity["free"] == 1


def test_an_instance_its_nc_took_too_late_is_terminated_and_ended_there(tmp_path, monkeypatch):
    monkeypatch.setattr(cc_nodes, "HANDOFF_S", 0.1)
    monkeypatch.setattr(cc_nodes, "POLL_S", 0.02)
    ncs = {"c1n1": FakeNC(delay=0.3)}

    async def body(cc, client, url):
        placements = await run(client, url, "i-late")
        assert placements["i-late"]["state"] == "terminated"
        assert "did not answer" in placements["i-late"]["reason"]
        cc._poller = asyncio.create_task(cc._poll_ncs())
        await until(lambda: ncs["c1n1"].held.get("i-late", {}).get("state") == "terminated")
        await until(lambda: not cc._recall)  # listed terminated: forgotten
        return cc

    cc = cluster(tmp_path, monkeypatch, ncs, body)
    assert ncs["c1n1"].deleted == ["i-late"] and cc.scheduler.capacity()["free"] == 1


def test_a_restarted_cc_does_not_bring_back_what_it_terminated(tmp_path, monkeypatch):
    monkeypatch.setattr(cc_nodes, "POLL_S", 0.02)
    nc = FakeNC()
    nc.held["i-gone"] = {"id": "i-gone", "slot": "c1n1v1", "ip": "10.101.16.2", "mac": "d0:0d:0a:65:10:02",
                         "group": "sg-a", "state": "running"}
    nc.held["i-kept"] = dict(nc.held["i-gone"], id="i-kept", slot="c1n1v2", ip="10.101.16.3",
                             mac="d0:0d:0a:65:10:03")

    async def body(cc, client, url):
        cc.ncs["c1n1"]["slots"] = ["c1n1v1", "c1n1v2"]
        cc.scheduler, cc.alloc = cc._empty_placement("ROUNDROBIN")
        # What the CC had on disk: i-gone terminated (its NC did not answer the terminate).
        cc.instances = {"i-gone": dict(nc.held["i-gone"], nc="c1n1", state="terminated", reason="by request")}
        await cc.rebuild_from_ncs()
        assert cc.instances["i-gone"]["state"] == "terminated" and cc.instances["i-kept"]["state"] == "running"
        assert cc.scheduler.capacity()["free"] == 1
        cc._poller = asyncio.create_task(cc._poll_ncs())
        await until(lambda: nc.held["i-gone"]["state"] == "terminated")
        return cc

    cluster(tmp_path, monkeypatch, {"c1n1": nc}, body)
    assert nc.deleted == ["i-gone"] and nc.held["i-kept"]["state"] == "running"


class SlowListingNC(FakeNC):
    async def listing(self, request):
        await asyncio.sleep(0.25)  # slow to list too: the listing predates what the CC did meanwhile
        return await super().listing(request)


def test_a_listing_taken_before_an_instance_was_terminated_does_not_bring_it_back(tmp_path, monkeypatch):
    monkeypatch.setattr(cc_nodes, "HANDOFF_S", 0.1)
    monkeypatch.setattr(cc_nodes, "POLL_S", 0.02)
    nc = SlowListingNC(delay=0.15)
    nc.held["i-old"] = {"id": "i-old", "slot": "c1n1v2", "state": "running"}  # keeps the poller asking

    async def body(cc, client, url):
        cc.instances["i-old"] = {"id": "i-old", "nc": "c1n1", "slot": "c1n1v2", "state": "running",
                                 "group": "sg-a", "ip": "10.101.16.9", "mac": "m", "public_ip": None}
        cc._poller = asyncio.create_task(cc._poll_ncs())
        placements = await run(client, url, "i-late")
        assert placements["i-late"]["state"] == "terminated"
        seen = set()
        for _ in range(50):
            seen.add(cc.instances["i-late"]["state"])
            await asyncio.sleep(0.02)
        await until(lambda: nc.held["i-late"]["state"] == "terminated")
        return seen

    assert cluster(tmp_path, monkeypatch, {"c1n1": nc}, body) == {"terminated"}


def test_a_run_withdrawn_during_its_hand_off_is_ended_on_the_nc(tmp_path, monkeypatch):
    """The CLC withdraws a run it stopped waiting for; the NC, slow, takes it after that."""
    monkeypatch.setattr(cc_nodes, "POLL_S", 0.02)
    nc = FakeNC(delay=0.3)

    async def body(cc, client, url):
        cc._poller = asyncio.create_task(cc._poll_ncs())
        running = asyncio.create_task(run(client, url, "i-1"))
        await until(lambda: "i-1" in cc.instances)
        async with client.delete(url("/cluster/instances/i-1")) as r:
            assert r.status == 200 and (await r.json())["state"] == "terminated"
        assert (await running)["i-1"]["state"] == "terminated"
        await until(lambda: nc.held.get("i-1", {}).get("state") == "terminated")
        return cc

    cc = cluster(tmp_path, monkeypatch, {"c1n1": nc}, body)
    assert cc.scheduler.capacity()["free"] == 1


class HungNC(FakeNC):
    """An NC whose listing does not answer until released (a hung hypervisor)."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()

    async def listing(self, request):
        await self.release.wait()
        return await super().listing(request)


def test_an_nc_that_hangs_delays_no_other_ncs_states(tmp_path, monkeypatch):
    monkeypatch.setattr(cc_nodes, "POLL_S", 0.02)
    hung, nc = HungNC(), FakeNC()
    record = {"slot": "c1n2v1", "state": "pending", "group": "sg-a", "ip": "10.101.16.3", "mac": "m",
              "public_ip": None}
    nc.held["i-2"] = dict(record, id="i-2", state="running")

    async def body(cc, client, url):
        cc.instances["i-1"] = dict(record, id="i-1", nc="c1n1", slot="c1n1v1")  # asked first, never answers
        cc.instances["i-2"] = dict(record, id="i-2", nc="c1n2")
        cc._poller = asyncio.create_task(cc._poll_ncs())
        try:
            await until(lambda: cc.instances["i-2"]["state"] == "running")
        finally:
            hung.release.set()
        return cc.instances["i-1"]["state"]

    assert cluster(tmp_path, monkeypatch, {"c1n1": hung, "c1n2": nc}, body) == "pending"


class GarbledNC(FakeNC):
    """An NC whose first listings are malformed (not a list of instances)."""

    def __init__(self, garbled: int):
        super().__init__()
        self.garbled = garbled

    async def listing(self, request):
        if self.garbled:
            self.garbled -= 1
            return web.json_response({"instances": ["not an instance"]})
        return await super().listing(request)


def test_a_malformed_listing_is_reported_once_and_polling_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(cc_nodes, "POLL_S", 0.02)
    nc = GarbledNC(garbled=3)
    nc.held["i-1"] = {"id": "i-1", "slot": "c1n1v1", "state": "running"}

    async def body(cc, client, url):
        seen = []
        emit = cc.events.emit
        monkeypatch.setattr(cc.events, "emit", lambda event, **f: seen.append(event) or emit(event, **f))
        cc.instances["i-1"] = {"id": "i-1", "nc": "c1n1", "slot": "c1n1v1", "state": "pending", "group": "sg-a",
                               "ip": "10.101.16.2", "mac": "m", "public_ip": None}
        cc._poller = asyncio.create_task(cc._poll_ncs())
        await until(lambda: cc.instances["i-1"]["state"] == "running")
        return seen

    seen = cluster(tmp_path, monkeypatch, {"c1n1": nc}, body)
    assert seen.count("loop.failed") == 1 and seen.count("loop.recovered") == 1
