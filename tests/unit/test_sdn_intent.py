"""The intent API contract: validation, epochs, persistence, HTTP over a Unix socket (no OVS, no root)."""

from __future__ import annotations

import copy
import http.client
import json
import socket

import pytest

from controllers.api import IntentAPI, serve
from controllers.intent import IntentError, IntentStore, validate

from .test_sdn_flows import intent, topology


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("controller", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@pytest.fixture(scope="module")
def topo():
    return topology()


@pytest.fixture
def api(tmp_path, topo):
    applied = []
    store = IntentStore(tmp_path, topo)
    api = IntentAPI(store, lambda new, prev: applied.append((new, prev)) or {"installed": True})
    server = serve(tmp_path / "control.sock", api)
    api.applied = applied
    yield api, tmp_path
    server.shutdown()
    server.server_close()


def request(path, method, url, body=None):
    conn = UnixHTTP(str(path / "control.sock"))
    conn.request(method, url, body=None if body is None else (body if isinstance(body, bytes) else json.dumps(body)))
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def test_accept_then_refuse_a_stale_epoch(api):
    a, path = api
    it = intent()
    it["epoch"] = 3
    assert request(path, "PUT", "/intent/clusters/1", it) == (200, {"accepted": True, "epoch": 3, "installed": True})
    it["epoch"] = 3  # the same epoch again: the primary's own update
    assert request(path, "PUT", "/intent/clusters/1", it)[0] == 200
    it["epoch"] = 2
    assert request(path, "PUT", "/intent/clusters/1", it) == (409, {"error": "stale epoch", "current": 3})
    assert len(a.applied) == 2
    status, body = request(path, "GET", "/intent")
    assert status == 200 and body["clusters"]["1"]["epoch"] == 3
    assert request(path, "GET", "/health")[1]["status"] == "ok"


def test_malformed_intents_change_nothing(api):
    a, path = api
    assert request(path, "PUT", "/intent/clusters/1", intent())[0] == 200
    for body in (b"{", [], dict(intent(), cluster=2)):
        status, answer = request(path, "PUT", "/intent/clusters/1", body)
        assert status == 400 and answer["error"]
    assert request(path, "PUT", "/intent/clusters/9", dict(intent(), cluster=9))[0] == 400
    assert len(a.applied) == 1
    assert request(path, "GET", "/nowhere")[0] == 404


def test_intents_survive_a_restart(tmp_path, topo):
    store = IntentStore(tmp_path, topo)
    it = intent()
    it["epoch"] = 7
    store.put(1, it)
    assert store.flush()  # written off the request path, at once
    again = IntentStore(tmp_path, topo)
    assert again.epoch(1) == 7 and again.snapshot()[1]["primary_cc"] == "c1cc1"


def _broken(mutate) -> str:
    it = copy.deepcopy(intent())
    mutate(it)
    with pytest.raises(IntentError) as exc:
        validate(it, 1, topology())
    return str(exc.value)


@pytest.mark.parametrize("mutate,field", [
    (lambda i: i.pop("epoch"), "intent.epoch: missing"),
    (lambda i: i.update(mode="EDGE"), "intent.mode"),
    (lambda i: i.update(mode="SYSTEM"), "intent.mode: SYSTEM but the deployment runs MANAGED"),
    (lambda i: i.update(primary_cc="c1sc1"), "intent.primary_cc"),
    (lambda i: i.update(extra=1), "unknown field(s) extra"),
    (lambda i: i["groups"][1].update(vlan=10), "groups[1].vlan: VLAN 10 used by two groups"),
    (lambda i: i["groups"][1].update(vlan=None), "groups[1].vlan: MANAGED needs a VLAN"),
    (lambda i: i["groups"][0].update(subnet="10.0.0.0/28"), "outside the cluster's VM space"),
    (lambda i: i["groups"][1].update(subnet="10.101.16.0/27"), "overlaps"),
    (lambda i: i["groups"][0].update(gateway="10.101.16.0"), "groups[0].gateway"),
    (lambda i: i["groups"][0]["rules"].append({"protocol": "gre", "cidr": "0.0.0.0/0"}), "rules[1].protocol"),
    (lambda i: i["groups"][1]["rules"][0].update(cidr="0.0.0.0/0"), "exactly one of cidr and source_group"),
    (lambda i: i["groups"][1]["rules"][0].update(from_port=9000), "from_port 9000 > to_port 8080"),
    (lambda i: i["instances"][0].update(mac="d1:0d:00:00:00:01"), "instances[0].mac"),
    (lambda i: i["instances"][1].update(mac=i["instances"][0]["mac"]), "used by two instances"),
    (lambda i: i["instances"][0].update(ip="10.101.16.1"), "instances[0].ip"),
    (lambda i: i["instances"][0].update(slot="c1n9v1"), "instances[0].slot"),
    (lambda i: i["instances"][0].update(nc="c1n2"), "belongs to c1n1"),
    (lambda i: i["instances"][1].update(slot="c1n1v1", nc="c1n1"), "holds two instances"),
    (lambda i: i["instances"][0].update(group="sg-zz"), "instances[0].group"),
    (lambda i: i["instances"][0].update(public_ip="10.0.5.5"), "instances[0].public_ip"),
    (lambda i: i["instances"][0].update(public_ip="10.0.128.5"), "instances[3].public_ip"),  # c1 holds it too
    (lambda i: i["instances"][0].update(ip=True), "instances[0].ip: expected str"),
])
def test_validation_names_the_field(mutate, field):
    assert field in _broken(mutate)


@pytest.fixture
def standby_api(tmp_path, topo):
    from controllers.intent import StandbyStore

    applied = []
    api = IntentAPI(IntentStore(tmp_path, topo), lambda new, prev: {"installed": True},
                    standbys=StandbyStore(tmp_path, topo),
                    apply_standby=lambda k, rec, staged: applied.append((k, rec, staged)) or {"installed": True})
    server = serve(tmp_path / "control.sock", api)
    api.applied = applied
    yield api, tmp_path
    server.shutdown()
    server.server_close()


def test_a_standby_is_staged_at_the_intents_epoch_and_refused_below_it(standby_api):
    a, path = standby_api
    url = "/intent/clusters/1/standby"
    # Before any intent: accepted, nothing to stage yet.
    assert request(path, "PUT", url, {"host": "c1cc2", "epoch": 0}) == (
        200, {"accepted": True, "epoch": 0, "staged": False, "installed": True})
    assert request(path, "PUT", "/intent/clusters/1", dict(intent(), epoch=3))[0] == 200
    assert request(path, "GET", "/intent/standby") == (200, {"clusters": {"1": {"host": "c1cc2", "epoch": 0,
                                                                               "staged": False}}})
    # A report older than the accepted intent: its sender may have been primary since.
    assert request(path, "PUT", url, {"host": "c1cc2", "epoch": 2}) == (409, {"error": "stale epoch", "current": 3})
    assert request(path, "PUT", url, {"host": "c1cc2", "epoch": 3})[1]["staged"] is True
    # Ahead of the accepted intent: not staged through every promotion up to it, refused.
    assert request(path, "PUT", url, {"host": "c1cc2", "epoch": 10**30}) == (
        409, {"error": "no intent of that epoch yet", "current": 3})
    # The primary itself is never a standby.
    assert request(path, "PUT", url, {"host": "c1cc1", "epoch": 3}) == (
        409, {"error": "c1cc1 is the primary", "current": 3})
    # Malformed: 400 naming the field, before any epoch or primary check.
    for body in ({"host": "c1n1", "epoch": 3}, {"host": "c1cc2"}, {"host": "c1cc2", "epoch": "3"},
                 {"host": "c1cc2", "epoch": True}, {"host": "c1cc1", "epoch": "x"},
                 {"host": "c1cc2", "epoch": 3, "extra": 1}, [], b"{"):
        status, answer = request(path, "PUT", url, body)
        assert status == 400 and answer["error"], body
    assert request(path, "PUT", "/intent/clusters/9/standby", {"host": "c1cc2", "epoch": 3})[0] == 400
    assert [(k, rec["epoch"], staged) for k, rec, staged in a.applied] == [(1, 0, False), (1, 3, True)]
    # A promotion (epoch 4, c1cc2 primary) unstages it; the GET says so.
    assert request(path, "PUT", "/intent/clusters/1", dict(intent(primary="c1cc2"), epoch=4))[0] == 200
    assert request(path, "GET", "/intent/standby")[1]["clusters"]["1"]["staged"] is False


def test_a_report_waiting_on_its_switches_holds_up_no_intent(tmp_path, topo):
    """Checked and stored in order, applied side by side: while a standby report waits on
    a switch's barrier, a takeover's intent is accepted and applied."""
    import threading

    from controllers.intent import StandbyStore

    release, waiting, reported = threading.Event(), threading.Event(), threading.Event()
    applied = []

    def apply_standby(k, rec, staged):
        waiting.set()
        release.wait(2)  # a switch slow to answer its barrier
        reported.set()
        return {"installed": True}

    def apply(new, prev):
        applied.append((new["epoch"], reported.is_set()))
        return {"installed": True}

    api = IntentAPI(IntentStore(tmp_path, topo), apply, standbys=StandbyStore(tmp_path, topo),
                    apply_standby=apply_standby)
    server = serve(tmp_path / "control.sock", api)
    try:
        assert request(tmp_path, "PUT", "/intent/clusters/1", dict(intent(), epoch=3))[0] == 200
        report = threading.Thread(target=request, args=(tmp_path, "PUT", "/intent/clusters/1/standby",
                                                         {"host": "c1cc2", "epoch": 3}))
        report.start()
        assert waiting.wait(5)
        assert request(tmp_path, "PUT", "/intent/clusters/1", dict(intent(primary="c1cc2"), epoch=4)) == (
            200, {"accepted": True, "epoch": 4, "installed": True})
        assert applied == [(3, False), (4, False)]  # the report was still waiting on its switch
    finally:
        release.set()
        report.join(5)
        server.shutdown()
        server.server_close()


def test_standby_reports_survive_a_restart(tmp_path, topo):
    from controllers.intent import StandbyStore

    first = StandbyStore(tmp_path, topo)
    first.put(1, {"host": "c1cc2", "epoch": 5})
    assert first.flush()  # written off the request path, at once
    assert StandbyStore(tmp_path, topo).snapshot() == {1: {"host": "c1cc2", "epoch": 5}}


def test_a_client_gone_before_its_answer_is_an_event_not_a_traceback(tmp_path, topo):
    """A CC whose own timeout ended its request before the answer: the controller's write
    met a closed socket and logged a BrokenPipeError traceback from its API thread."""
    import threading

    from experiments.testbed.timescale import wait_until

    gone, events = threading.Event(), []

    class Events:
        def emit(self, event, **fields):
            events.append((event, fields))

    def apply(new, prev):
        gone.wait(5)  # the client leaves while this runs
        return {"installed": True}

    api = IntentAPI(IntentStore(tmp_path, topo), apply, events=Events())
    server = serve(tmp_path / "control.sock", api)
    try:
        it = intent()
        it["epoch"] = 1
        body = json.dumps(it).encode()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / "control.sock"))
        client.sendall(b"PUT /intent/clusters/1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert wait_until(lambda: any(e == "intent.received" for e, _ in events), 5)
        client.close()
        gone.set()
        assert wait_until(lambda: any(e == "api.client_gone" for e, _ in events), 5)
    finally:
        server.shutdown()
        server.server_close()
    assert api.store.snapshot()[1]["epoch"] == 1  # what it asked for was done
