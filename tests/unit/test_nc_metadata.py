"""The EDGE NC's metadata relay (components/nc/metadata.py), on loopback beside a stand-in CLC."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, TCPConnector, web

from components.common.service import INSTANCE_HEADER, INTERNAL_TOKEN_HEADER
from components.nc.metadata import MetadataRelay

from tests.support.util import free_port


async def _relay_answers(clc_up: bool) -> list[tuple[int, str]]:
    seen: list[dict] = []

    async def clc(request: web.Request) -> web.Response:
        seen.append(dict(request.headers, path=request.path))
        return web.Response(text=f"i-{request.headers[INSTANCE_HEADER]}")

    clc_port = free_port()
    runner = None
    if clc_up:
        app = web.Application()
        app.router.add_get("/latest/{path:.*}", clc)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", clc_port).start()
    relay = MetadataRelay(f"http://127.0.0.1:{clc_port}", "nc-token", lambda ip: ip == "127.0.0.1", timeout_s=1)
    port = free_port()
    await relay.start("127.0.0.1", port)
    out = []
    try:
        for source in ("127.0.0.1", "127.0.0.2"):  # an instance of this NC, and someone else
            async with ClientSession(connector=TCPConnector(local_addr=(source, 0))) as http, \
                    http.get(f"http://127.0.0.1:{port}/latest/meta-data/instance-id") as r:
                out.append((r.status, await r.text()))
    finally:
        await relay.stop()
        if runner is not None:
            await runner.cleanup()
    if clc_up:
        assert [(s["path"], s[INTERNAL_TOKEN_HEADER], s[INSTANCE_HEADER]) for s in seen] == [
            ("/latest/meta-data/instance-id", "nc-token", "127.0.0.1")]
    return out


def test_the_relay_names_its_own_instances_only():
    (status, body), (other, _) = asyncio.run(_relay_answers(clc_up=True))
    assert (status, body) == (200, "i-127.0.0.1")
    assert other == 404  # not an instance of this NC: never relayed


def test_the_relay_answers_503_while_the_clc_is_away():
    (status, body), _ = asyncio.run(_relay_answers(clc_up=False))
    assert status == 503 and "unavailable" in body
