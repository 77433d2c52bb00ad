"""A component's HTTP endpoints, stated on their handlers.

A handler says where it answers with ``@route`` and ``setup_routes`` registers every
marked handler of the objects it names (the service and the managers it delegates to),
object by object, each one's in the order they were written:

    @route("GET", "/volumes")
    async def handle_list(self, request): ...

    def setup_routes(self, app):
        add_routes(app, self, self.replication)

As aiohttp's ``add_get``, a GET route answers HEAD as well unless ``head=False``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from aiohttp import web

_written = itertools.count()  # the order the marks were made in: the order routes are added


def route(method: str, *paths: str, head: bool = True) -> Callable:
    """Mark a handler as answering ``method`` at each of ``paths`` (``head``: a GET takes HEAD too)."""
    def mark(handler: Callable) -> Callable:
        marks = handler.__dict__.setdefault("routes", [])
        marks.extend((next(_written), method, path, head) for path in paths)
        return handler
    return mark


def add_routes(app: web.Application, *owners: object) -> None:
    """Register every ``@route``-marked method of ``owners``, bound to its owner: owner by
    owner, each one's in the order they were written."""
    for owner in owners:
        found = [(order, method, path, head, getattr(owner, name))
                 for name in dir(type(owner))
                 for order, method, path, head in getattr(getattr(type(owner), name), "routes", ())]
        for _, method, path, head, handler in sorted(found, key=lambda r: r[0]):
            if method == "GET":
                app.router.add_get(path, handler, allow_head=head)
            else:
                app.router.add_route(method, path, handler)
