"""Account lookups at the CLC (Walrus's client side of GET /internal/accounts/{access_key}), loopback only."""

from __future__ import annotations

import asyncio
import sys

import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.config import Config
from botocore.exceptions import ClientError

from components.common import accounts
from components.common.accounts import AccountResolver, AccountsUnavailable

from tests.support.processes import ADMIN, TOKEN, component
from tests.support.util import free_port

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

KNOWN = {"AKIAUSER000000000001": {"account_id": "000000000042", "secret_key": "usersecret"}}


class FakeCLC:
    """Answers account lookups like the CLC; ``status`` forces an answer (e.g. 503 while failing over)."""

    def __init__(self):
        self.calls: list[str] = []
        self.status: int | None = None
        self.delay = 0.0
        app = web.Application()
        app.router.add_get("/internal/accounts/{ak}", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=free_port())

    async def handle(self, request):
        ak = request.match_info["ak"]
        self.calls.append(ak)
        await asyncio.sleep(self.delay)
        if request.headers.get("X-Eucalab-Internal-Token") != TOKEN:
            return web.json_response({"error": "token"}, status=403)
        if self.status is not None:
            return web.json_response({"error": "forced"}, status=self.status)
        if ak not in KNOWN:
            return web.json_response({"error": "NoSuchEntity"}, status=404)
        return web.json_response(KNOWN[ak])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def run_with_clc(scenario):
    async def main():
        clc = FakeCLC()
        await clc.server.start_server()
        resolver = AccountResolver({"admin": ADMIN, "internal_token": TOKEN}, clc.base)
        try:
            await scenario(clc, resolver)
        finally:
            await resolver.close()
            await clc.server.close()

    asyncio.run(main())


def test_known_key_is_asked_once_even_by_concurrent_requests():
    async def scenario(clc, resolver):
        clc.delay = 0.05
        ak = "AKIAUSER000000000001"
        await asyncio.gather(*(resolver.ensure(ak) for _ in range(5)))
        await resolver.ensure(ak)
        assert resolver.lookup(ak) == ("usersecret", "000000000042")
        assert clc.calls == [ak]
        await resolver.ensure(ADMIN["access_key"])  # the admin comes from the config
        assert clc.calls == [ak] and resolver.lookup(ADMIN["access_key"])[1] == ADMIN["account_id"]

    run_with_clc(scenario)


def test_unknown_key_is_cached_as_unknown_but_an_unavailable_clc_is_not():
    async def scenario(clc, resolver):
        await resolver.ensure("AKIANOBODY000000")
        await resolver.ensure("AKIANOBODY000000")
        assert resolver.lookup("AKIANOBODY000000") is None and clc.calls == ["AKIANOBODY000000"]
        clc.status = 503  # the CLC is failing over
        for _ in range(2):
            with pytest.raises(AccountsUnavailable, match="503"):
                await resolver.ensure("AKIAUSER000000000001")
        assert clc.calls.count("AKIAUSER000000000001") == 2  # not remembered as unknown
        clc.status = None
        await resolver.ensure("AKIAUSER000000000001")
        assert resolver.lookup("AKIAUSER000000000001") is not None

    run_with_clc(scenario)


def test_wrong_token_and_unreachable_clc_are_unavailable_not_unknown():
    async def scenario(clc, resolver):
        resolver.token = "wrong"
        with pytest.raises(AccountsUnavailable, match="403"):
            await resolver.ensure("AKIAUSER000000000001")
        dead = AccountResolver({"internal_token": TOKEN}, f"http://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(AccountsUnavailable, match="cannot reach"):
                await dead.ensure("AKIAUSER000000000001")
        finally:
            await dead.close()

    run_with_clc(scenario)


def test_walrus_answers_503_while_the_clc_cannot_be_asked(tmp_path):
    cfg = Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})
    dead_clc = f"http://127.0.0.1:{free_port()}/services/Eucalyptus"
    with component("walrus", tmp_path, endpoints={"clc": dead_clc}) as (base, _, proc):
        def client(ak, sk):
            return boto3.client("s3", endpoint_url=f"{base}/services/Walrus", aws_access_key_id=ak,
                                aws_secret_access_key=sk, region_name="eucalyptus", config=cfg)

        with pytest.raises(ClientError) as err:
            client("AKIAUSER000000000001", "usersecret").list_buckets()
        assert err.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert client(ADMIN["access_key"], ADMIN["secret_key"]).list_buckets()["Buckets"] == []
        assert proc.poll() is None


def test_the_cache_of_unknown_keys_expires_and_is_bounded(monkeypatch):
    monkeypatch.setattr(accounts, "MAX_CACHED", 3)
    monkeypatch.setattr(accounts, "NEGATIVE_TTL", 0.2)

    async def scenario(clc, resolver):
        keys = [f"AKIAUNKNOWN{n:09d}" for n in range(5)]
        for ak in keys:
            await resolver.ensure(ak)
        assert list(resolver._missing) == keys[2:]  # the oldest let go first
        await resolver.ensure(keys[4])
        assert clc.calls == keys  # still cached: not asked again
        await asyncio.sleep(0.25)  # the negative entries' lifetime passes
        await resolver.ensure(keys[4])
        assert clc.calls == keys + [keys[4]] and list(resolver._missing) == [keys[4]]

    run_with_clc(scenario)


def test_the_cache_of_known_keys_is_bounded_and_the_admin_stays(monkeypatch):
    monkeypatch.setattr(accounts, "MAX_CACHED", 1)
    extra = {f"AKIAUSER00000000000{n}": {"account_id": f"00000000004{n}", "secret_key": f"s{n}"} for n in (2, 3)}
    monkeypatch.setattr(sys.modules[__name__], "KNOWN", {**KNOWN, **extra})

    async def scenario(clc, resolver):
        for ak in ("AKIAUSER000000000001", *extra):
            await resolver.ensure(ak)
        assert list(resolver.known) == ["AKIAUSER000000000003"]
        assert resolver.lookup(ADMIN["access_key"]) == (ADMIN["secret_key"], ADMIN["account_id"])
        await resolver.ensure("AKIAUSER000000000001")  # let go: asked again, found again
        assert resolver.lookup("AKIAUSER000000000001") == ("usersecret", "000000000042")

    run_with_clc(scenario)


def test_a_key_that_is_no_access_key_is_never_looked_up_and_any_key_is_escaped():
    async def scenario(clc, resolver):
        for ak in ("../../accounts", "AKIA?x=1", "a" * 4000, "AKIA%2F0000000000000"):
            await resolver.ensure(ak)
            assert resolver.lookup(ak) is None
        assert clc.calls == []
        await resolver._ask_clc("AKIA/../x?y#z")  # the URL carries the key, escaped, as one path segment
        assert clc.calls == ["AKIA/../x?y#z"]

    run_with_clc(scenario)
