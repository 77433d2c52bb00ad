"""The CC's internal API under /cluster, which the CLC calls (components/cc/service.py lists it).

Each change is made in the view, published (``Intents.publish``) and replicated to the
standby before it is answered. Volume attachments are relayed to the instance's NC: the
CLC never talks to NCs.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from components.common.groups import digest as group_digest

from .netalloc import AllocationError
from .scheduler import InsufficientCapacity


def error_response(code: str, message: str, status: int = 400) -> web.Response:
    """An error answer of the CC's API, with AWS's error code."""
    return web.json_response({"error": code, "message": message}, status=status)


class ClusterAPI:
    """The /cluster handlers of the ``ClusterController`` ``cc``."""

    def __init__(self, cc):
        self.cc = cc

    def _named(self, request: web.Request) -> dict | None:
        """The record of the instance a request of the CLC names (the caller checked first),
        None when this CC does not know it."""
        self.cc.require_internal(request, "clc")
        return self.cc.instances.get(request.match_info["id"])

    async def _commit(self, reason: str) -> None:
        """A change made in the view: saved, published, and on the standby before the answer."""
        self.cc.replication.save()
        await self.cc.intents.publish(reason)
        await self.cc.replication.replicated()

    async def handle_run(self, request: web.Request) -> web.Response:
        cc = self.cc
        cc.require_internal(request, "clc")
        try:
            body = await request.json()
            wanted = body["instances"]
            for w in wanted:
                str(w["id"]), w["image"]["bucket"], w["image"]["key"], w["group"]["id"]
        except (ValueError, KeyError, TypeError) as exc:
            return error_response("InvalidParameterValue", f"bad request: {exc}")
        if any(w["id"] in cc.instances and cc.instances[w["id"]]["state"] != "terminated" for w in wanted):
            return error_response("InvalidParameterValue", "instance id already known", 409)
        try:
            placed = cc.scheduler.place([w["id"] for w in wanted])
        except InsufficientCapacity as exc:
            return error_response("InsufficientInstanceCapacity", f"{cc.zone}: {exc}", 409)
        placements = []
        try:
            for w in wanted:
                group = w["group"]
                cc.groups.setdefault(group["id"], {"id": group["id"], "name": group.get("name", group["id"]),
                                                   "account": w.get("account"), "rules": group.get("rules", [])})
                ip, mac, gateway, vlan, prefix = cc.alloc.allocate(w["id"], group["id"])
                nc, slot = placed[w["id"]]
                rec = {"id": w["id"], "account": w.get("account"), "image": w["image"], "group": group["id"],
                       "nc": nc, "slot": slot, "ip": ip, "mac": mac, "gateway": gateway, "vlan": vlan,
                       "prefix": prefix, "state": "pending", "reason": "", "public_ip": None}
                cc.instances[w["id"]] = rec
                placements.append(rec)
        except AllocationError as exc:
            for w in wanted:
                cc.scheduler.release(w["id"])
                cc.alloc.release(w["id"])
                cc.instances.pop(w["id"], None)
            return error_response("InsufficientAddressCapacity", str(exc), 409)
        cc.replication.save()
        cc.events.emit("cc.scheduled", instances=[(p["id"], p["nc"], p["slot"], p["ip"]) for p in placements])
        # Network first, so the instance's traffic flows the moment it boots.
        await cc.intents.publish("run")
        # Then hand each instance to its NC, and answer only once every NC has it (or has
        # refused it): an instance the CLC was told about is on an NC, so a CC that crashes
        # right after answering rebuilds it from the NCs. Handing off in the background let
        # a crash in between lose the instance, left pending at the CLC for good.
        # Not one terminated meanwhile (the CLC withdraws a run it stopped waiting for).
        handed = await asyncio.gather(*(cc.nodes.hand_off(rec) for rec in placements if rec["state"] == "pending"))
        if not all(handed):
            cc.replication.save()
            cc._background(cc.intents.publish("boot failed"))  # the answer does not wait on it
        await cc.replication.replicated()
        return web.json_response({"placements": placements})

    async def handle_describe(self, request: web.Request) -> web.Response:
        self.cc.require_internal(request, "clc")
        return web.json_response({"zone": self.cc.zone, "instances": list(self.cc.instances.values())})

    async def handle_terminate(self, request: web.Request) -> web.Response:
        cc, rec = self.cc, self._named(request)
        if rec is None:
            return error_response("InvalidInstanceID.NotFound", request.match_info["id"], 404)
        if rec["state"] != "terminated":
            try:
                async with cc.http.delete(f"{cc.ncs[rec['nc']]['url']}/instances/{rec['id']}") as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                cc._recall[rec["id"]] = time.time()  # ended on the NC when it lists it
            cc.nodes.end(rec, "terminated by request")
            await self._commit("terminate")
        return web.json_response(rec)

    async def handle_group(self, request: web.Request) -> web.Response:
        cc = self.cc
        cc.require_internal(request, "clc")
        try:
            body = await request.json()
            rules = list(body.get("rules", []))
        except (ValueError, TypeError) as exc:
            return error_response("InvalidParameterValue", str(exc))
        gid = request.match_info["id"]
        group = {"id": gid, "name": body.get("name", gid), "account": body.get("account"), "rules": rules}
        if cc.groups.get(gid) != group:
            cc.groups[gid] = group
            await self._commit("group rules")
        return web.json_response(group)

    async def handle_group_digests(self, request: web.Request) -> web.Response:
        self.cc.require_internal(request, "clc")
        return web.json_response({"groups": {gid: group_digest(g) for gid, g in self.cc.groups.items()}})

    async def handle_associate(self, request: web.Request) -> web.Response:
        cc = self.cc
        cc.require_internal(request, "clc")
        ip = request.match_info["ip"]
        try:
            iid = (await request.json())["instance"]
        except (ValueError, KeyError, TypeError) as exc:
            return error_response("InvalidParameterValue", str(exc))
        rec = cc.instances.get(iid)
        if rec is None or rec["state"] == "terminated":
            return error_response("InvalidInstanceID.NotFound", iid, 404)
        for other in cc.instances.values():
            if other.get("public_ip") == ip:
                other["public_ip"] = None
        # An instance has one elastic IP: the one it held before is let go (the CLC does the same).
        for held, holder in list(cc.addresses.items()):
            if holder == iid and held != ip:
                del cc.addresses[held]
        rec["public_ip"] = ip
        cc.addresses[ip] = iid
        await self._commit("associate")
        return web.json_response({"public_ip": ip, "instance": iid})

    async def handle_disassociate(self, request: web.Request) -> web.Response:
        cc = self.cc
        cc.require_internal(request, "clc")
        ip = request.match_info["ip"]
        iid = cc.addresses.pop(ip, None)
        if iid and iid in cc.instances:
            cc.instances[iid]["public_ip"] = None
        await self._commit("disassociate")
        return web.json_response({"public_ip": ip, "instance": None})

    async def handle_capacity(self, request: web.Request) -> web.Response:
        self.cc.require_internal(request, "clc")
        return web.json_response({"zone": self.cc.zone, **self.cc.scheduler.capacity()})

    async def handle_attach(self, request: web.Request) -> web.Response:
        """Relay a volume attachment to the instance's NC (the CLC never talks to NCs)."""
        cc, rec = self.cc, self._named(request)
        if rec is None or rec["state"] != "running":
            return error_response("IncorrectState", "instance not running in this cluster", 409)
        body = await request.read()
        try:
            async with cc.http.post(f"{cc.ncs[rec['nc']]['url']}/instances/{rec['id']}/volumes", data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return error_response("Unavailable", f"{rec['nc']}: {exc}", 503)

    async def handle_detach(self, request: web.Request) -> web.Response:
        cc, rec = self.cc, self._named(request)
        if rec is None:
            return error_response("InvalidInstanceID.NotFound", request.match_info["id"], 404)
        url = f"{cc.ncs[rec['nc']]['url']}/instances/{rec['id']}/volumes/{request.match_info['volume']}"
        try:
            async with cc.http.delete(url) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return error_response("Unavailable", f"{rec['nc']}: {exc}", 503)
