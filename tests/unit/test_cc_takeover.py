"""A promoted CC routes first, from the view its old primary replicated to it, and asks
its NCs what they run only after that (their answers were 5-15 ms of HTTP in every
takeover); what the NCs add is routed in a second step. No root: the router is recorded,
the NC is an HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from components.cc import router
from components.cc.service import ClusterController

from tests.support.util import until

REPLICATED = {"id": "i-old", "nc": "c1n1", "slot": "c1n1v1", "ip": "10.101.16.2", "mac": "d0:0d:0a:65:10:02",
              "prefix": 27, "gateway": "10.101.16.1", "group": "sg-a", "vlan": 10, "account": "a",
              "image": None, "public_ip": "10.0.128.5", "reason": "", "state": "running"}
# Placed after the old primary's last replicated change: only the NC knows it.
NEWER = {"id": "i-new", "slot": "c1n1v2", "ip": "10.101.16.3", "mac": "d0:0d:0a:65:10:03", "prefix": 27,
         "gateway": "10.101.16.1", "group": "sg-a", "vlan": 10, "account": "a", "state": "running"}


def test_the_router_moves_before_the_ncs_are_asked_and_again_with_what_they_add(tmp_path, monkeypatch):
    log: list[tuple[str, object]] = []

    async def apply(config, primary, armed=False, inline=False, announce_held=False):
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

    async def apply(config, primary, armed=False, inline=False, announce_held=False):
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
        cc.http = aiohttp.ClientSession()
        try:
            await cc._on_promote(7)
            await asyncio.gather(*cc._tasks)
            log.append("--")
            await cc.publish_intent("group rules", force=True)  # any later change: route, then tell
        finally:
            await cc.http.close()
            await runner.cleanup()

    asyncio.run(main())
    assert log == ["addresses", "controller c1cc2", "--", "addresses", "controller c1cc2"]


def test_a_secondary_arms_each_replicated_view_and_its_promotion_loads_no_rules(tmp_path, monkeypatch):
    """The rules a secondary holds armed are the ones its promotion renders from the same
    view, so the takeover's router finds them loaded; a view replicated after the
    promotion began arms nothing."""
    from aiohttp.test_utils import TestClient, TestServer

    from components.common.service import INTERNAL_TOKEN_HEADER, ServiceState

    log: list = []

    async def apply(config, primary, armed=False, inline=False, announce_held=False):
        role = "primary" if primary else "armed" if armed else "withdrawn"
        log.append((role + (", inline" if inline else ""), config.ruleset,
                    sorted(config.public_addresses + config.private_addresses)))
        return {"added": [], "announced": {}}

    monkeypatch.setattr(router, "apply_router_async", apply)

    async def main():
        closed = "http://127.0.0.1:9"  # nothing listens: the NC and the peer never answer
        cc = ClusterController({"host": "c1cc2", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "ncs": {"c1n1": {"url": closed, "slots": ["c1n1v1", "c1n1v2"]}},
                                "state": "DISABLED", "internal_token": "t", "port": 9,
                                "private_interface": "c1cc2-eth1", "public_interface": "c1cc2-eth0"})
        cc.ha, cc.config["ha"] = FakeHA(epoch=1, peer_epoch=2), {"peer_addresses": ["127.0.0.1"]}
        cc.http = aiohttp.ClientSession()
        client = TestClient(TestServer(cc.app))
        await client.start_server()
        try:
            await cc._withdraw_router()  # as it starts: nothing to route yet
            snap = {"instances": {"i-old": dict(REPLICATED)}, "groups": {}, "addresses": {"10.0.128.5": "i-old"},
                    "epoch": 2}
            r = await client.put("/internal/ha/state", json=snap, headers={INTERNAL_TOKEN_HEADER: "t"})
            assert r.status == 200
            await cc._armer
            await cc._on_promote(3)
            cc.set_state(ServiceState.ENABLED, "test")
            cc._rearm()  # a late view: the member routes now
            await asyncio.gather(*cc._tasks)
        finally:
            await client.close()
            await cc.http.close()

    asyncio.run(main())
    assert [(role, addresses) for role, _, addresses in log] == [
        ("armed", []), ("armed", ["10.0.128.5/16", "10.101.16.1/27"]),
        ("primary, inline", ["10.0.128.5/16", "10.101.16.1/27"])]  # a takeover: no hand-off to a thread
    assert "dnat to 10.101.16.2" in log[1][1] and log[1][1] == log[2][1]


class FakeHA:
    """What the CC reads of its HA agent: the epochs it knows, and whom it tells of a newer one."""

    def __init__(self, epoch: int, peer_epoch: int):
        from types import SimpleNamespace

        self.interval, self.epoch, self.superseded = 0.005, epoch, None
        self.peer = SimpleNamespace(epoch=peer_epoch)
        self.learned: list[int] = []
        self.heartbeats = 0  # sent at once (what the heartbeat says changed)

    def send_heartbeat(self) -> None:
        self.heartbeats += 1

    def learn_epoch(self, epoch: int, why: str) -> None:
        self.learned.append(epoch)
        self.superseded = max(self.superseded or 0, epoch)


def controller_app(log: list, answers: dict) -> web.Application:
    """A fake controller: records each request; ``answers`` maps a path ending to (status, body)."""

    async def put(request):
        body = await request.json()
        kind = "standby" if request.path.endswith("/standby") else "intent"
        if kind == "intent":
            await asyncio.sleep(0.05)  # installing flows
        log.append((kind, body.get("primary_cc") or body.get("host"), body["epoch"]))
        status, answer = answers.get(kind, (200, {"accepted": True, "staged": True}))
        return web.json_response(answer, status=status)

    async def no_instances(request):
        return web.json_response({"instances": []})

    app = web.Application()
    app.router.add_put("/intent/clusters/{k}", put)
    app.router.add_put("/intent/clusters/{k}/standby", put)
    app.router.add_get("/instances", no_instances)
    return app


def run_cc(tmp_path, monkeypatch, log, answers, body, ha: FakeHA):
    """A CC on a fake controller (Unix socket) and a recorded router; ``body(cc)`` drives it."""
    from components.common.service import ServiceState

    async def apply(config, primary, armed=False, inline=False, announce_held=False):
        log.append(("router", "primary" if primary else "withdrawn"))
        return {"added": [], "announced": {}}

    monkeypatch.setattr(router, "apply_router_async", apply)
    sock = tmp_path / "control.sock"

    async def main():
        runner = web.AppRunner(controller_app(log, answers))
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        cc = ClusterController({"host": "c1cc2", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "ncs": {}, "control_socket": str(sock), "state": "DISABLED",
                                "private_interface": "c1cc2-eth1", "public_interface": "c1cc2-eth0"})
        cc.ha = ha
        cc.instances = {"i-old": dict(REPLICATED)}
        cc.http = aiohttp.ClientSession()
        cc.ServiceState = ServiceState
        try:
            await body(cc)
        finally:
            if cc._standby_task:
                cc._standby_task.cancel()
            await cc.http.close()
            await runner.cleanup()

    asyncio.run(main())


async def promote(cc, standby_epoch: int, epoch: int) -> None:
    """The HA agent's promotion of a withdrawn member the controller staged: on_promote,
    then ENABLED with no await between (components/common/ha/decision.py, _promote)."""
    cc._withdrawn, cc._standby_epoch = True, standby_epoch
    await cc._on_promote(epoch)
    cc.set_state(cc.ServiceState.ENABLED, "test")


def test_a_withdrawn_secondary_reports_itself_standby_at_the_newest_epoch_it_knows(tmp_path, monkeypatch):
    log: list = []
    ha = FakeHA(epoch=3, peer_epoch=4)

    async def body(cc):
        await cc._withdraw_router()
        cc._standby_task = asyncio.create_task(cc._standby_loop())
        await until(lambda: cc._standby_epoch == 4)
        ha.peer.epoch = 6  # the peer promoted again: report again
        await until(lambda: cc._standby_epoch == 6)

    run_cc(tmp_path, monkeypatch, log, {}, body, ha)
    assert log == [("router", "withdrawn"), ("standby", "c1cc2", 4), ("standby", "c1cc2", 6)]


def test_a_secondary_is_ready_for_a_planned_switchover_only_once_staged_at_the_newest_epoch(tmp_path, monkeypatch):
    """A CC still routing (within a switchover's drain) or not staged at the controller would
    lose instance traffic while the controller moves the groups' VLANs to it: its heartbeat
    says it is not ready until the controller staged it, and says so at once when it is."""
    log: list = []
    ha = FakeHA(epoch=3, peer_epoch=4)
    seen: list = []

    async def body(cc):
        seen.append(cc.takeover.ready())  # DISABLED, its router not withdrawn yet
        await cc._withdraw_router()
        seen.append(cc.takeover.ready())  # withdrawn, not reported yet
        cc._standby_task = asyncio.create_task(cc._standby_loop())
        await until(lambda: cc._standby_epoch == 4)
        seen.append((cc.takeover.ready(), ha.heartbeats))
        ha.peer.epoch = 6  # the peer promoted again: not staged at that epoch yet
        seen.append(cc.takeover.ready())
        await until(lambda: cc._standby_epoch == 6)
        seen.append((cc.takeover.ready(), ha.heartbeats))

    run_cc(tmp_path, monkeypatch, log, {}, body, ha)
    # A heartbeat at each change: ready at 4, not ready once 6 is known, ready at 6.
    assert seen == [False, False, (True, 1), False, (True, 3)]


@pytest.mark.parametrize("mode, controller", [("MANAGED", False), ("EDGE", True), ("MANAGED-NOVLAN", True)])
def test_where_the_controller_keeps_no_standby_a_secondary_is_always_ready(tmp_path, mode, controller):
    """No standby report there (the controller stages only MANAGED's CCs): nothing to wait for."""
    cc = ClusterController({"host": "c1cc2", "data_dir": str(tmp_path), "cluster": 1, "mode": mode, "ncs": {},
                            "control_socket": str(tmp_path / "control.sock") if controller else None,
                            "state": "DISABLED", "private_interface": "c1cc2-eth1",
                            "public_interface": "c1cc2-eth0"})
    assert cc.takeover.ready() and not cc.takeover.kept_ready()


def test_a_refused_standby_report_teaches_the_agent_the_controllers_epoch(tmp_path, monkeypatch):
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=1)
    answers = {"standby": (409, {"error": "stale epoch", "current": 5})}

    async def body(cc):
        await cc._withdraw_router()
        cc._standby_task = asyncio.create_task(cc._standby_loop())
        await until(lambda: ha.learned)
        answers["standby"] = (200, {"accepted": True, "staged": True})
        await until(lambda: cc._standby_epoch == 5)

    run_cc(tmp_path, monkeypatch, log, answers, body, ha)
    assert ha.learned == [5]
    reports = [e[2] for e in log if e[0] == "standby"]
    assert reports[0] == 1 and reports[-1] == 5 and set(reports) == {1, 5}  # paced: a few, not one per tick
    assert len(reports) <= 4


def test_a_staged_secondary_takes_over_without_waiting_for_the_controller(tmp_path, monkeypatch):
    """Staged at the newest epoch: the router moves and the promotion returns; the intent
    (which fences the old primary) reaches the controller after, in the background."""
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=4)

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=5)
        log.append("promoted")
        await asyncio.gather(*cc._tasks)

    run_cc(tmp_path, monkeypatch, log, {}, body, ha)
    assert log[:3] == [("router", "primary"), "promoted", ("intent", "c1cc2", 5)]


def test_a_standby_report_older_than_the_peers_epoch_makes_the_takeover_wait_for_the_controller(
        tmp_path, monkeypatch):
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=6)  # the peer promoted again since this member's report

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=7)
        log.append("promoted")

    run_cc(tmp_path, monkeypatch, log, {}, body, ha)
    assert log[:3] == [("router", "primary"), ("intent", "c1cc2", 7), "promoted"]


def test_an_intent_refused_as_stale_makes_the_primary_learn_the_newer_epoch(tmp_path, monkeypatch):
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=4)

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=5)
        await asyncio.gather(*cc._tasks)

    run_cc(tmp_path, monkeypatch, log, {"intent": (409, {"error": "stale epoch", "current": 8})}, body, ha)
    assert ha.learned == [8]


def test_a_garbled_controller_answer_neither_stops_the_reports_nor_counts_as_staged(tmp_path, monkeypatch):
    log: list = []
    ha = FakeHA(epoch=2, peer_epoch=2)
    answers = {"standby": (500, ["not", "an", "object"])}

    async def body(cc):
        await cc._withdraw_router()
        cc._standby_task = asyncio.create_task(cc._standby_loop())
        await until(lambda: cc._standby_unstaged is not None)  # the garbled answer, taken in
        assert cc._standby_epoch is None and not cc._standby_task.done()
        answers["standby"] = (200, {"accepted": True, "staged": True})
        await until(lambda: cc._standby_epoch == 2)

    run_cc(tmp_path, monkeypatch, log, answers, body, ha)
    assert ha.learned == []


def test_a_staged_takeovers_intent_is_pushed_again_until_the_controller_takes_it(tmp_path, monkeypatch):
    """The old primary stays in the groups' VLANs until the controller has the new intent:
    a push that fails (the controller restarting, here a 503) is made again."""
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=4)
    answers = {"intent": (503, {"error": "restarting"})}

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=5)
        await until(lambda: any(e[0] == "intent" for e in log))  # the first push, refused
        answers["intent"] = (200, {"accepted": True})
        await asyncio.wait_for(asyncio.gather(*cc._tasks), 5)

    run_cc(tmp_path, monkeypatch, log, answers, body, ha)
    pushes = [e for e in log if e[0] == "intent"]
    assert len(pushes) >= 2 and set(pushes) == {("intent", "c1cc2", 5)}


def test_an_unstaged_takeovers_intent_the_controller_did_not_take_is_pushed_again(tmp_path, monkeypatch):
    """Not staged, the takeover pushes its intent beside the router; a push the controller
    does not take (restarting, here a 503) is made again, not left for the next change:
    until it is in, the switches keep the old primary in the groups' VLANs."""
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=6)  # the report is older than the peer's epoch: not staged
    answers = {"intent": (503, {"error": "restarting"})}

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=7)
        log.append("promoted")
        answers["intent"] = (200, {"accepted": True})
        await until(lambda: sum(e[0] == "intent" for e in log) >= 2)
        await asyncio.wait_for(asyncio.gather(*cc._tasks), 5)

    run_cc(tmp_path, monkeypatch, log, answers, body, ha)
    assert log[:3] == [("router", "primary"), ("intent", "c1cc2", 7), "promoted"]
    assert [e for e in log if e[0] == "intent"] == [("intent", "c1cc2", 7)] * 2


def test_a_later_change_the_controller_did_not_take_is_pushed_again(tmp_path, monkeypatch):
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=4)
    answers: dict = {}

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=5)
        await asyncio.wait_for(asyncio.gather(*cc._tasks), 5)
        log.append("--")
        answers["intent"] = (500, {"error": "boom"})
        await cc.publish_intent("group rules")
        await cc.publish_intent("instance state")  # one retry task for both: it pushes the newest
        answers["intent"] = (200, {"accepted": True})
        await asyncio.wait_for(asyncio.gather(*cc._tasks), 5)

    run_cc(tmp_path, monkeypatch, log, answers, body, ha)
    after = log[log.index("--") + 1:]
    assert [e for e in after if e[0] == "intent"] == [("intent", "c1cc2", 5)] * 3


def test_pushing_again_waits_out_a_controller_restart(tmp_path, monkeypatch):
    """A controller that stops removes its socket, and the next one starts from the intent
    it stored (the old primary's): the pushes wait for the socket and go on, rather than
    end and leave the switches on the old primary."""
    log: list = []
    ha = FakeHA(epoch=1, peer_epoch=6)
    answers = {"intent": (503, {"error": "restarting"})}
    sock = tmp_path / "control.sock"

    async def body(cc):
        await promote(cc, standby_epoch=4, epoch=7)
        await until(lambda: sum(e[0] == "intent" for e in log) >= 2)  # retrying
        sock.unlink()  # the controller stopped
        pushed = sum(e[0] == "intent" for e in log)
        await asyncio.sleep(0.5)
        assert sum(e[0] == "intent" for e in log) == pushed and not cc._retrier.done()  # waiting
        answers["intent"] = (200, {"accepted": True})
        runner = web.AppRunner(controller_app(log, answers))  # the next controller
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        try:
            await asyncio.wait_for(asyncio.gather(*cc._tasks), 5)
        finally:
            await runner.cleanup()

    run_cc(tmp_path, monkeypatch, log, answers, body, ha)
    assert log[-1] == ("intent", "c1cc2", 7)
