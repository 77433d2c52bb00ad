"""components/common/routes.py: handlers marked with @route, registered from the objects named."""

from __future__ import annotations

from aiohttp import web

from components.common.routes import add_routes, route


class Manager:
    @route("POST", "/things")
    async def handle_create(self, request):
        return web.Response(text="created")


class Owner:
    def __init__(self):
        self.manager = Manager()

    @route("GET", "/things", "/things/")
    async def handle_list(self, request):
        return web.Response(text="listed")

    @route("GET", "/api", head=False)
    @route("POST", "/api")
    async def handle_api(self, request):
        return web.Response(text="api")

    async def handle_unmarked(self, request):
        return web.Response(text="never routed")


def test_every_marked_handler_of_every_owner_is_routed_bound_owner_by_owner_in_the_order_written():
    app = web.Application()
    owner = Owner()
    add_routes(app, owner, owner.manager)
    routes = [(r.method, r.resource.canonical, r.handler) for r in app.router.routes()]
    assert routes == [
        ("HEAD", "/things", owner.handle_list), ("GET", "/things", owner.handle_list),
        ("HEAD", "/things/", owner.handle_list), ("GET", "/things/", owner.handle_list),
        ("POST", "/api", owner.handle_api), ("GET", "/api", owner.handle_api),
        ("POST", "/things", owner.manager.handle_create)]
