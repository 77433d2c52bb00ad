"""The metadata service as an EDGE NC offers it: 169.254.169.254:80 on the NC itself.

In EDGE no CC is on an instance's path, so nothing between the instance and the CLC
could redirect 169.254.169.254 as the MANAGED CC does. The flows of the NC's bridge
send an instance's TCP to 169.254.169.254:80 to the NC instead (controllers/flows.py,
``edge_flows``), which holds that address on its loopback and relays each GET to the
CLC's ``/latest/...`` through the CLC's virtual IP, naming the instance by the address
it spoke from (header ``X-Eucalab-Instance-Address``, with the NC's internal
credential: the CLC takes the header from the nc role only). The bridge's
anti-spoofing guarantees that address, and the relay refuses any address that is not
one of this NC's running instances, so an instance learns its own metadata and nobody
else's. Replies go back from 169.254.169.254, as the instance expects.

A relay rather than a NAT: a DNAT on the NC would hide the instance's address from
the CLC (the answer must come back through the NC, so the NC would have to SNAT too).
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Callable

import aiohttp
from aiohttp import web

from components.common.service import INSTANCE_HEADER, INTERNAL_TOKEN_HEADER

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80


def hold_address() -> None:
    """Put 169.254.169.254 on this host's loopback (idempotent), so the kernel takes what
    the bridge steers here."""
    subprocess.run(["ip", "addr", "replace", f"{METADATA_IP}/32", "dev", "lo"], check=True,
                   capture_output=True, timeout=10)


class MetadataRelay:
    """An HTTP server on 169.254.169.254:80 relaying instances' GETs to the CLC."""

    def __init__(self, clc_base: str, token: str, is_instance: Callable[[str], bool], timeout_s: float = 5.0):
        self.clc_base = clc_base.rstrip("/")
        self.token = token
        self.is_instance = is_instance
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.http: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The relay's HTTP application (``start`` serves it on 169.254.169.254:80)."""
        app = web.Application()
        app.router.add_get("/latest/{path:.*}", self.handle)
        return app

    async def start(self, host: str = METADATA_IP, port: int = METADATA_PORT) -> None:
        if host == METADATA_IP:
            hold_address()
        self.http = aiohttp.ClientSession(timeout=self.timeout)
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()

    async def handle(self, request: web.Request) -> web.Response:
        source = request.remote or ""
        if not self.is_instance(source):
            return web.Response(status=404, text="not an instance of this node\n")
        headers = {INTERNAL_TOKEN_HEADER: self.token, INSTANCE_HEADER: source}
        try:
            async with self.http.get(f"{self.clc_base}/latest/{request.match_info['path']}",
                                     headers=headers) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="text/plain")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return web.Response(status=503, text=f"metadata service unavailable: {exc.__class__.__name__}\n")
