"""Internal routes under per-role credentials: each role calls what it needs and nothing
else (403), tokens compared in constant time, and the replication handlers refuse names
that would reach the disk outside their store.

One token sat in every component's config, the NCs' included: whoever read an NC's
config could write Walrus's and the CLC's replicated state (and files, as root, anywhere).
"""

from __future__ import annotations

import asyncio
import hmac
import json

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from components.clc.service import CloudController
from components.common import service as service_mod
from components.common.config import validate_config
from components.common.service import INTERNAL_TOKEN_HEADER, ROLES, token_digest
from components.sc.service import StorageController
from components.walrus.service import ReplicaError, Walrus, check_replica

from tests.support.processes import ADMIN, HA_SECRET
from tests.support.util import free_port

TOKENS = {role: f"{role}-token-{i:02d}" * 2 for i, role in enumerate(ROLES)}
CALLERS = {role: token_digest(t) for role, t in TOKENS.items()}


def config(tmp_path, component: str, **extra) -> dict:
    return validate_config({
        "host": f"{component}2", "component": component, "port": free_port(), "listen_host": "127.0.0.1",
        "role": "secondary", "state": "DISABLED", "data_dir": str(tmp_path / component),
        "events_path": str(tmp_path / f"{component}.jsonl"), "admin": ADMIN,
        "internal_token": TOKENS[component], "internal_callers": CALLERS, "pair": {"name": component},
        "ha": {"peer_addresses": ["127.0.0.1"], "listen": ["127.0.0.1"], "secret": HA_SECRET}, **extra})


async def statuses(svc, calls: list[tuple[str, str]], tokens: dict[str, str | None]) -> dict:
    """{(method, path): {caller: status}} for every call with every caller's token."""
    server = TestServer(svc.app, host="127.0.0.1", port=free_port())
    await server.start_server()
    out: dict = {}
    try:
        async with ClientSession() as http:
            for method, path in calls:
                for who, token in tokens.items():
                    headers = {INTERNAL_TOKEN_HEADER: token} if token is not None else {}
                    async with http.request(method, f"http://127.0.0.1:{server.port}{path}", headers=headers,
                                            data=b"{}") as r:
                        out.setdefault((method, path), {})[who] = r.status
    finally:
        await server.close()
    return out


REPLICATION = {
    "clc": [("POST", "/internal/ha/ops"), ("GET", "/internal/ha/ops?after=0")],
    "walrus": [("POST", "/internal/ha/apply"), ("GET", "/internal/ha/ops"),
               ("GET", "/internal/ha/file/0123456789abcdef0123456789abcdef")],
    "sc": [("POST", "/internal/ha/sc"), ("GET", "/internal/ha/sc/state"),
           ("GET", "/internal/ha/sc/volume/vol-00000001")],
}
SERVICES = {"clc": CloudController, "walrus": Walrus, "sc": StorageController}


@pytest.mark.parametrize("component", sorted(REPLICATION))
def test_replication_answers_its_own_role_and_the_operator_only(tmp_path, component):
    svc = SERVICES[component](config(tmp_path, component))
    tokens = {**TOKENS, "none": None, "forged": "x" * 64}
    got = asyncio.run(statuses(svc, REPLICATION[component], tokens))
    for call, by in got.items():
        refused = {who for who, status in by.items() if status == 403}
        assert refused == set(tokens) - {component, "operator"}, (call, by)


def test_each_role_reaches_what_it_needs(tmp_path):
    """The NC fetches images from Walrus, Walrus resolves keys at the CLC, the CLC drives
    the SC: allowed. The NC at the SC's volume API, or the SC at Walrus's images: 403."""
    walrus, clc, sc = Walrus(config(tmp_path, "walrus")), CloudController(config(tmp_path, "clc")), \
        StorageController(config(tmp_path, "sc", nc_addresses={"c1n1": ["127.0.0.1"]}))
    image = [("GET", "/internal/object?bucket=images&key=tiny.img")]
    lookup = [("GET", "/internal/accounts/AKIAADMIN0000000TEST")]
    volumes = [("GET", "/volumes")]
    who = {r: TOKENS[r] for r in ("nc", "sc", "walrus", "clc", "cc")}
    got = {**asyncio.run(statuses(walrus, image, who)), **asyncio.run(statuses(clc, lookup, who)),
           **asyncio.run(statuses(sc, volumes, who))}
    allowed = {call: {r for r, status in by.items() if status != 403} for call, by in got.items()}
    assert allowed == {image[0]: {"nc"}, lookup[0]: {"walrus"}, volumes[0]: {"clc"}}


def test_tokens_are_compared_in_constant_time_against_every_role(tmp_path, monkeypatch):
    """``!=`` stops at the first differing byte; every role's digest is compared, whatever matched."""
    svc = StorageController(config(tmp_path, "sc"))
    compared, real = [], hmac.compare_digest

    def compare(a, b):
        compared.append(len(a))
        return real(a, b)
    monkeypatch.setattr(service_mod.hmac, "compare_digest", compare)
    request = type("R", (), {"headers": {INTERNAL_TOKEN_HEADER: TOKENS["nc"]}})()
    assert svc.caller_role(request) == "nc" and compared == [32] * len(ROLES)
    assert all(TOKENS["nc"] not in json.dumps(v) for v in svc.config["internal_callers"].values())


def test_a_component_run_alone_takes_its_one_token_as_the_operator_s(tmp_path):
    svc = StorageController(validate_config({
        "host": "sc1", "component": "sc", "port": free_port(), "listen_host": "127.0.0.1",
        "data_dir": str(tmp_path / "d"), "internal_token": "solo"}))
    assert svc.internal_callers == {"operator": bytes.fromhex(token_digest("solo"))}


@pytest.mark.parametrize("op", [
    {"type": "object.put", "bucket": "images", "key": "k", "size": 1, "file": "../../../../tmp/pwned"},
    {"type": "object.put", "bucket": "images", "key": "k", "size": 1, "file": "/etc/passwd"},
    {"type": "object.put", "bucket": "images", "key": "k", "size": 1},
    {"type": "object.put", "bucket": "../x", "key": "k", "size": 1, "file": "0" * 32},
    {"type": "bucket.create", "bucket": "a/b", "account": "1"},
    {"type": "upload.complete", "bucket": "images", "key": "k", "size": 1, "file": "0" * 32,
     "parts": [[1, "../../../../etc/shadow"]]},
    {"type": "upload.complete", "bucket": "images", "key": "k", "size": 1, "file": "0" * 32, "parts": "x"},
])
def test_walrus_refuses_a_replicated_name_that_is_not_its_format(tmp_path, op):
    with pytest.raises(ReplicaError):
        check_replica({"seq": 1, "epoch": 1, "op": op})
    walrus = Walrus(config(tmp_path, "walrus"))

    async def post():
        server = TestServer(walrus.app, host="127.0.0.1", port=free_port())
        await server.start_server()
        try:
            async with ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{server.port}/internal/ha/apply", data=b"x", headers={
                        INTERNAL_TOKEN_HEADER: TOKENS["walrus"], "X-Eucalab-Epoch": "9",
                        "X-Eucalab-Op": json.dumps({"seq": 1, "epoch": 9, "op": op})}) as r:
                    return r.status
        finally:
            await server.close()
    assert asyncio.run(post()) == 400
    assert walrus.store.last_seq == 0 and list(walrus.store.objects.iterdir()) == []
    assert not (tmp_path / "tmp").exists()


def test_a_relayed_metadata_request_names_its_instance_with_the_ncs_credential_only(tmp_path):
    """EDGE: an NC relays an instance's metadata request naming the instance's address
    (components/nc/metadata.py). Anyone else naming an address would read any instance's
    metadata: 403 without the nc role's token, 400 for an address that is not one."""
    clc = CloudController(config(tmp_path, "clc"))
    clc.may_serve = lambda: True  # as the ENABLED member

    async def ask_all(calls: list[tuple[str | None, str]]) -> list[int]:
        server = TestServer(clc.app, host="127.0.0.1", port=free_port())
        await server.start_server()
        out = []
        try:
            async with ClientSession() as http:
                for token, address in calls:
                    headers = {service_mod.INSTANCE_HEADER: address}
                    if token is not None:
                        headers[INTERNAL_TOKEN_HEADER] = token
                    async with http.get(f"http://127.0.0.1:{server.port}/latest/meta-data/instance-id",
                                        headers=headers) as r:
                        out.append(r.status)
        finally:
            await server.close()
        return out

    who = ("nc", "cc", "walrus", "none")
    got = asyncio.run(ask_all([(TOKENS.get(w), "10.101.2.5") for w in who] + [(TOKENS["nc"], "10.101.2.5x")]))
    assert dict(zip(who, got)) == {"nc": 404, "cc": 403, "walrus": 403, "none": 403}  # 404: no instance there
    assert got[-1] == 400


@pytest.mark.parametrize("component", ["clc", "walrus"])
@pytest.mark.parametrize("after", ["x", "1.5", "-1", ""])
def test_a_malformed_catch_up_position_is_a_400_not_a_server_error(tmp_path, component, after):
    """GET /internal/ha/ops?after=N from the peer: N that is no sequence number is refused
    as the caller's error (Walrus answered 500 with a ValueError traceback)."""
    svc = SERVICES[component](config(tmp_path, component))
    got = asyncio.run(statuses(svc, [("GET", f"/internal/ha/ops?after={after}")], {component: TOKENS[component]}))
    assert set(got.popitem()[1].values()) == {400}
