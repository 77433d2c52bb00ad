"""The instance metadata service (169.254.169.254, forwarded here by the cluster
network): an instance's metadata and user data, for the instance whose private
address sent the request.
"""

from __future__ import annotations

import base64
import ipaddress
import json

from aiohttp import web

from components.common.routes import route
from components.common.service import INSTANCE_HEADER

from .manager import Manager


class Metadata(Manager):
    """The instance metadata service."""

    def _caller_instance(self, request: web.Request):
        """The live instance whose private address sent the request, or None.

        In EDGE the instance's NC relays the request (components/nc/metadata.py) and names
        the instance's address in a header, which is taken from the nc role only."""
        address = request.remote
        relayed = request.headers.get(INSTANCE_HEADER)
        if relayed is not None:
            self.clc.require_internal(request, "nc")
            try:
                address = str(ipaddress.ip_address(relayed))
            except ValueError:
                raise web.HTTPBadRequest(text="bad instance address\n") from None
        return self.store.one("SELECT * FROM instances WHERE private_ip=? AND state IN ('pending', 'running') "
                              "ORDER BY launched DESC LIMIT 1", address)

    @route("GET", "/latest/user-data")
    async def handle_user_data(self, request: web.Request) -> web.Response:
        """The calling instance's user data, as given to RunInstances (404 without any, as EC2)."""
        row = self._caller_instance(request)
        if row is None or row["user_data"] is None:
            return web.Response(status=404, text="not found\n")
        return web.Response(body=base64.b64decode(row["user_data"]), content_type="application/octet-stream")

    @route("GET", "/latest/meta-data/{path:.*}", "/latest/meta-data")
    async def handle_metadata(self, request: web.Request) -> web.Response:
        """Instance metadata for the instance whose private address sent the request (404 for others)."""
        row = self._caller_instance(request)
        if row is None:
            return web.Response(status=404, text="not an instance of this cloud\n")
        names = self.clc.groups.names(row["account"])
        data = {"instance-id": row["id"], "local-ipv4": row["private_ip"] or "",
                "security-groups": "\n".join(names.get(g, g) for g in json.loads(row["groups"])), "placement/availability-zone": row["zone"],
                "ami-id": row["image"], "instance-type": row["type"], "reservation-id": row["reservation"]}
        if row["public_ip"]:  # as in EC2: no public address, no public-ipv4 entry
            data["public-ipv4"] = row["public_ip"]
        path = request.match_info.get("path", "").strip("/")
        if path == "":
            return web.Response(text="\n".join(sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in data})))
        if path == "placement":
            return web.Response(text="availability-zone")
        if path not in data:
            return web.Response(status=404, text="not found\n")
        return web.Response(text=data[path])
