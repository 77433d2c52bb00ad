"""hademo: the smallest HA component, to measure the HA core alone.

``GET /`` answers the host name when the HA agent lets this member serve, else 503.
Everything else (config, events, the HA agent, ``POST /ha/arbitrators/{name}/stop|start``,
realtime priority, SIGTERM) comes from the service skeleton, as for a real component.
"""

from __future__ import annotations

from aiohttp import web

from components.common.service import Service


class HADemo(Service):
    component = "hademo"

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.handle_root)

    async def handle_root(self, request: web.Request) -> web.Response:
        # The gate is checked on every request: a fenced or stepped-down member never answers 200.
        if not self.may_serve():
            return web.Response(status=503, text=f"{self.host} {self.state.value}\n")
        return web.Response(text=f"{self.host}\n")
