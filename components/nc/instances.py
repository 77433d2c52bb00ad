"""The NC's instances: run, boot, list, terminate, each in a VM slot of its own.

Booting: the image fetched (components/nc/images.py), the slot joined to the instance's
VLAN and configured (components/nc/slots.py), its disk channel opened
(components/nc/volumes.py), its workload started in the slot (workload.py), and the
instance ``running`` once the workload listens. A boot that fails leaves the slot free.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from components.common import vlan as vlans
from components.common.procs import process_start_time

# Instance states, as DescribeInstances names them.
PENDING, RUNNING, SHUTTING_DOWN, TERMINATED = "pending", "running", "shutting-down", "terminated"


class BootError(Exception):
    """An instance could not boot; the reason ends up on the instance."""


class Instances:
    """The instances of the ``NodeController`` ``nc`` and its API for them."""

    def __init__(self, nc):
        self.nc = nc
        self.tasks: dict[str, asyncio.Task] = {}  # instance id -> its boot

    def free_slots(self) -> list[str]:
        busy = {i["slot"] for i in self.nc.instances.values() if i["state"] != TERMINATED}
        return [s for s in self.nc.slots if s not in busy]

    # -- API ----------------------------------------------------------------------------

    async def handle_list(self, request: web.Request) -> web.Response:
        self.nc.require_internal(request, "cc")
        return web.json_response({"instances": list(self.nc.instances.values())})

    async def handle_capacity(self, request: web.Request) -> web.Response:
        self.nc.require_internal(request, "cc")
        return web.json_response({"slots": list(self.nc.slots), "free": self.free_slots()})

    async def handle_run(self, request: web.Request) -> web.Response:
        nc = self.nc
        nc.require_internal(request, "cc")
        try:
            body = await request.json()
            iid, slot = str(body["id"]), str(body["slot"])
            image = body["image"]
            net = {k: body[k] for k in ("mac", "ip", "prefix", "gateway")}
            if not (isinstance(image, dict) and image.get("bucket") and image.get("key")):
                raise ValueError("image needs bucket and key")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": "InvalidParameterValue", "message": f"bad request: {exc}"},
                                     status=400)
        if slot not in nc.slots:
            return web.json_response({"error": "InvalidSlot",
                                      "message": f"{nc.host} has no VM slot {slot}"}, status=400)
        if iid in nc.instances and nc.instances[iid]["state"] != TERMINATED:
            return web.json_response({"error": "InstanceExists", "message": f"{iid} already here"},
                                     status=409)
        if slot not in self.free_slots():
            return web.json_response({"error": "SlotBusy", "message": f"slot {slot} is in use"}, status=409)
        # What the CC said about the instance's network is kept too: a restarted CC
        # rebuilds its view from these records.
        extra = {k: body.get(k) for k in ("group", "vlan", "account")}
        if nc.vlan_tagging == "host":
            try:
                vlans.vlan_interface(nc.private_interface, extra["vlan"])
            except ValueError as exc:
                return web.json_response({"error": "InvalidParameterValue",
                                          "message": f"vlan: {exc} (this NC tags each group's VLAN)"}, status=400)
        nc.instances[iid] = {"id": iid, "slot": slot, "image": image, **net, **extra, "state": PENDING,
                             "reason": "", "pid": None}
        nc._save()
        nc.events.emit("instance.pending", instance=iid, slot=slot)
        self.tasks[iid] = asyncio.create_task(self._boot(iid))
        return web.json_response(nc.instances[iid], status=202)

    async def handle_terminate(self, request: web.Request) -> web.Response:
        nc = self.nc
        nc.require_internal(request, "cc")
        iid = request.match_info["id"]
        inst = nc.instances.get(iid)
        if inst is None:
            return web.json_response({"error": "InvalidInstanceID.NotFound", "message": iid}, status=404)
        if inst["state"] != TERMINATED:
            task = self.tasks.pop(iid, None)
            if task:
                task.cancel()
            nc._set(iid, SHUTTING_DOWN)
            await self.teardown(inst)
            await nc.volumes.end_sessions(inst)  # its block sessions end with it
            nc._set(iid, TERMINATED, inst.get("reason") or "terminated by request", pid=None)
        return web.json_response(inst)

    # -- booting ------------------------------------------------------------------------

    async def _boot(self, iid: str) -> None:
        nc = self.nc
        inst = nc.instances[iid]
        try:
            path = await nc.fetcher.fetch_retrying(inst["image"])
            await nc.slotnet.join_vlan(inst)
            await nc.slotnet.configure(inst)
            await nc.volumes.open_disk(inst)
            pid = await self._start_workload(inst, path)
            nc._set(iid, RUNNING, pid=pid, pid_start=process_start_time(pid))
        except asyncio.CancelledError:
            raise
        except BootError as exc:
            await self.teardown(inst)
            nc._set(iid, TERMINATED, str(exc), pid=None)
        except Exception as exc:  # a boot must never leave a slot half-used
            await self.teardown(inst)
            nc._set(iid, TERMINATED, f"boot failed: {exc}", pid=None)
        finally:
            self.tasks.pop(iid, None)

    async def _start_workload(self, inst: dict, image: Path) -> int:
        nc = self.nc
        slot = nc.slots[inst["slot"]]
        log = open(nc.data / f"{inst['id']}.log", "ab")
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={slot['netns']}", sys.executable, "-S", str(Path(__file__).with_name("workload.py")),
            "--instance-id", inst["id"], "--port", str(nc.workload_port),
            "--disk", str(nc.volumes.disk_path(inst["id"])),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env=dict(os.environ, EUCALAB_IMAGE=str(image)))
        log.close()
        # The workload answers once it listens; waiting for that makes "running" true.
        for _ in range(200):
            out = await nc.slotnet.in_slot(slot, "cat", "/proc/net/tcp")
            if f":{nc.workload_port:04X} 00000000:0000 0A" in out:
                return proc.pid
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        raise BootError(f"the workload of {inst['id']} did not start listening")

    @staticmethod
    def workload_alive(inst: dict) -> bool:
        pid = inst.get("pid")
        return bool(pid) and process_start_time(pid) == inst.get("pid_start") and process_start_time(pid) is not None

    async def teardown(self, inst: dict) -> None:
        """Stop the workload, close its disk channel and clear the slot's interface; safe on
        a half-booted slot."""
        await self.nc.volumes.close_disk(inst["id"])
        pid = inst.get("pid")
        if pid and self.workload_alive(inst):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if process_start_time(pid) is None:
                    break
                await asyncio.sleep(0.01)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        await self.nc.slotnet.clear(inst)
