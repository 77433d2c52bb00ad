"""Eucalyptus's service API: the CLC's DescribeServices / ModifyService (admin only, clear
refusals that change nothing), the members' internal route, and the gate that holds and
forwards requests during a planned switchover. Real processes and sockets on loopback; the
members the CLC asks are stand-ins that record what they are asked."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest
from aiohttp import web

from components.common.ha import Handover
from components.common.service import INTERNAL_TOKEN_HEADER, Service

from tests.support.clc_client import create_account, raw_call
from tests.support.processes import TOKEN, component

pytestmark = pytest.mark.loopback  # starts processes (tests/conftest.py)

V = {"Version": "2016-11-15"}


class Members:
    """Stand-ins for pair members on loopback: GET /internal/service says the state a test set;
    POST /internal/service/T records T (and refuses when told to)."""

    def __init__(self, states: dict[str, str]):
        self.states, self.asked, self.refuse, self.tokens = dict(states), [], None, set()
        members = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                name = self.path.split("/")[1]
                members.tokens.add(self.headers.get(INTERNAL_TOKEN_HEADER))
                self._answer(200, {"name": name, "state": members.states[name], "epoch": 4})

            def do_POST(self):
                _, name, _, _, transition = self.path.split("/")
                if members.refuse:
                    return self._answer(409, {"error": "IncorrectState", "message": members.refuse})
                members.asked.append((name, transition))
                self._answer(200, {"name": name, "transition": transition})

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def config(self) -> list[dict]:
        port = self.server.server_address[1]
        out = []
        for name, pair, kind, part in (("clc1", "clc", "eucalyptus", "eucalyptus"),
                                       ("clc2", "clc", "eucalyptus", "eucalyptus"),
                                       ("c1sc1", "sc1", "storage", "cluster1"),
                                       ("c1sc2", "sc1", "storage", "cluster1")):
            # Each member's internal URL carries its name as a path prefix (one stand-in serves all).
            out.append({"type": kind, "partition": part, "name": name, "uri": f"http://10.0.0.1:8773/{name}",
                        "internal": f"http://127.0.0.1:{port}/{name}", "pair": pair})
        return out


@pytest.fixture
def cloud(tmp_path):
    members = Members({"clc1": "ENABLED", "clc2": "DISABLED", "c1sc1": "ENABLED", "c1sc2": "STOPPED"})
    with component("clc", tmp_path, services=members.config()) as (base, _, _):
        yield base, members
    members.server.shutdown()


def items(text: str) -> list[tuple[str, str, str]]:
    return re.findall(r"<name>(.*?)</name>.*?<localState>(.*?)</localState><localEpoch>(.*?)</localEpoch>", text)


def test_describe_services_lists_every_member_with_its_state(cloud):
    base, members = cloud
    status, text = raw_call(base, {"Action": "DescribeServices", **V})
    assert status == 200, text
    assert items(text) == [("clc1", "ENABLED", "4"), ("clc2", "DISABLED", "4"), ("c1sc1", "ENABLED", "4"),
                           ("c1sc2", "STOPPED", "4")]
    assert "<type>storage</type><partition>cluster1</partition>" in text
    assert members.tokens == {TOKEN}  # asked over the internal channel, with the CLC's credential


def test_only_the_administrator_may_describe_or_modify_services(cloud):
    base, members = cloud
    _, ak, sk = create_account(base, "tenant")
    for params in ({"Action": "DescribeServices"}, {"Action": "ModifyService", "Name": "clc1", "State": "DISABLE"}):
        status, text = raw_call(base, {**params, **V}, ak, sk)
        assert status == 403 and "<Code>UnauthorizedOperation</Code>" in text
    assert members.asked == []


@pytest.mark.parametrize("params, code", [
    ({"Name": "clc9", "State": "DISABLE"}, "InvalidParameterValue"),
    ({"Name": "clc1", "State": "PROMOTE"}, "InvalidParameterValue"),
    ({"Name": "clc1"}, "MissingParameter"),
    ({"State": "STOP"}, "MissingParameter"),
])
def test_a_bad_name_or_transition_is_a_400_and_asks_no_member(cloud, params, code):
    base, members = cloud
    status, text = raw_call(base, {"Action": "ModifyService", **params, **V})
    assert status == 400 and f"<Code>{code}</Code>" in text, text
    assert members.asked == []


def test_enable_on_the_standby_is_asked_of_the_enabled_member_as_disable(cloud):
    base, members = cloud
    status, text = raw_call(base, {"Action": "ModifyService", "Name": "clc2", "State": "ENABLED", **V})
    assert status == 200 and "<return>true</return>" in text, text
    assert members.asked == [("clc1", "DISABLE")]
    raw_call(base, {"Action": "ModifyService", "Name": "c1sc2", "State": "start", **V})
    assert members.asked[-1] == ("c1sc2", "START")


def test_a_refusal_of_the_member_is_a_400_with_its_reason(cloud):
    base, members = cloud
    members.refuse = "the peer (c1sc2) cannot take over (it is STOPPED)"
    status, text = raw_call(base, {"Action": "ModifyService", "Name": "c1sc1", "State": "DISABLE", **V})
    assert status == 400 and "<Code>IncorrectState</Code>" in text and "STOPPED" in text


def test_the_member_route_needs_a_credential_and_a_pair(tmp_path):
    with component("walrus", tmp_path) as (base, _, _):
        async def go():
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/internal/service") as r:
                    assert r.status == 403
                async with http.get(f"{base}/internal/service", headers={INTERNAL_TOKEN_HEADER: TOKEN}) as r:
                    assert (await r.json())["state"] == "ENABLED"
                async with http.post(f"{base}/internal/service/STOP", headers={INTERNAL_TOKEN_HEADER: TOKEN}) as r:
                    assert r.status == 409 and "not a member of an HA pair" in (await r.json())["message"]
        asyncio.run(go())


class Echo(Service):
    component = "echo"
    api_prefixes = ("/api",)
    api_paths = ("/",)

    def setup_routes(self, app):
        app.router.add_route("*", "/api/{tail:.*}", self.handle)
        app.router.add_route("*", "/", self.handle)

    async def handle(self, request):
        body = await request.read()
        return web.json_response({"host": self.host, "method": request.method, "path": request.path_qs,
                                  "host_header": request.headers.get("Host"), "body": body.decode(),
                                  "signed": request.headers.get("Authorization")})


def test_during_a_switchover_requests_are_held_then_forwarded_unchanged_to_the_new_primary(tmp_path):
    async def go():
        runners = []
        ports = []
        services = []
        for name in ("old", "new"):
            svc = Echo({"host": name, "port": 0, "data_dir": str(tmp_path), "events_path": str(tmp_path / f"{name}.jsonl")})
            runner = web.AppRunner(svc.app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            svc.config["port"] = port
            runners.append(runner), ports.append(port), services.append(svc)
        old, new = services
        old.config["port"] = ports[1]  # forwarded to the same port at the successor's address
        h = Handover(epoch=2, started=0.0, phase="holding")
        old.ha = type("HA", (), {"handover": h})()
        try:
            async with aiohttp.ClientSession() as http:
                call = asyncio.ensure_future(http.post(f"http://127.0.0.1:{ports[0]}/api/x?Action=Y", data=b"payload",
                                                       headers={"Host": "10.0.0.10:8773", "Authorization": "sig"}))
                await asyncio.sleep(0.05)
                assert not call.done()  # held while the successor takes the pair
                h.successor = "127.0.0.1"
                h.settled.set()
                r = await asyncio.wait_for(call, 5)
                answer = await r.json()
                assert r.status == 200 and answer == {"host": "new", "method": "POST", "path": "/api/x?Action=Y",
                                                      "host_header": "10.0.0.10:8773", "body": "payload",
                                                      "signed": "sig"}
                async with http.get(f"http://127.0.0.1:{ports[0]}/?Action=Z") as r:  # the API at / too
                    assert (await r.json())["host"] == "new"
                assert old.counts == {"in_flight": 0, "forwarding": 0}
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(go())


def test_eucalab_services_reads_the_answer_and_says_which_pairs_are_redundant(cloud):
    from experiments.testbed.services import pairs, parse_services, reached

    base, members = cloud
    members.states["c1sc2"] = "STOPPED"
    status, text = raw_call(base, {"Action": "DescribeServices", **V})
    rows = parse_services(text.encode())
    assert [(r["name"], r["state"], r["epoch"]) for r in rows][:2] == [("clc1", "ENABLED", 4), ("clc2", "DISABLED", 4)]
    view = {(p["type"], p["partition"]): p["redundant"] for p in pairs(rows)}
    assert view == {("eucalyptus", "eucalyptus"): True, ("storage", "cluster1"): False}  # one in maintenance
    assert reached(rows, "c1sc2", "STOP") and not reached(rows, "c1sc2", "START")
    assert not reached(rows, "clc1", "DISABLE")  # a switchover is done when the pair has turned around
    rows[0]["state"], rows[1]["state"] = "DISABLED", "ENABLED"
    assert reached(rows, "clc1", "DISABLE") and reached(rows, "clc2", "ENABLE")
