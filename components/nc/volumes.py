"""The NC's volumes: block sessions to the SC, and each instance's virtio disk channel.

An attachment is a block session to the SC (components/sc/blockproto.py), logged in
with the attachment's secret; the NC's API reads and writes through it, and so does the
instance's workload over its disk channel, ``data_dir/instances/{id}/disk.sock``: a
Unix socket serving the volumes attached to that instance, and only those (the workload
reaches it through the shared filesystem, whatever network namespace it sits in).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from components.common.service import MAX_BODY
from components.sc.blockproto import BAD_REQUEST, OUT_OF_RANGE, BlockClient, BlockError, BlockUnavailable

from .instances import RUNNING

DISK_SOCKET = "disk.sock"
# sun_path holds 108 bytes with its terminating NUL.
UNIX_PATH_MAX = 107


@contextmanager
def _bindable(path: Path):
    """A name for ``path`` short enough for a Unix socket address: the path itself, or
    the same file reached through an open descriptor of its directory."""
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _block_error(exc: BlockError) -> web.Response:
    """The SC's refusal of a block request: the caller's mistake (out of range) is a 400."""
    if exc.status in (OUT_OF_RANGE, BAD_REQUEST):
        return web.json_response({"error": "InvalidParameterValue", "message": str(exc)}, status=400)
    return web.json_response({"error": "VolumeIOError", "message": str(exc)}, status=502)


def _still_wanted(request: web.Request):
    """Whether the request's client still waits: a request it abandoned (its connection
    closed) is not sent to the SC when its turn on the session comes."""
    return lambda: request.transport is not None and not request.transport.is_closing()


async def _block_request(io) -> web.Response:
    """One block request: ``io()`` makes it and gives the answer; a bad parameter is a
    400, the SC out of reach a 503, its refusal ``_block_error``."""
    try:
        return await io()
    except (KeyError, ValueError) as exc:
        return web.json_response({"error": "InvalidParameterValue", "message": str(exc)}, status=400)
    except BlockUnavailable as exc:
        return web.json_response({"error": "VolumeUnavailable", "message": str(exc)}, status=503)
    except BlockError as exc:
        return _block_error(exc)


class Volumes:
    """The attachments and disk channels of the ``NodeController`` ``nc``."""

    def __init__(self, nc):
        self.nc = nc
        self.attachments: dict[str, BlockClient] = {}  # volume id -> block session
        self.disks: dict[str, web.AppRunner] = {}  # instance id -> its disk channel

    # -- attachments --------------------------------------------------------------------

    async def handle_attach(self, request: web.Request) -> web.Response:
        nc = self.nc
        nc.require_internal(request, "cc")
        inst = nc.instances.get(request.match_info["id"])
        if inst is None or inst["state"] != RUNNING:
            return web.json_response({"error": "IncorrectState", "message": "instance not running here"},
                                     status=409)
        try:
            body = await request.json()
            target = body["target"]
            vid, host, port, secret = str(body["volume"]), str(target["host"]), int(target["port"]), str(target["secret"])
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": "InvalidParameterValue", "message": str(exc)}, status=400)
        client = BlockClient(host, port, vid, secret, nc.session_timeouts,
                             on_relogin=lambda info: nc.events.emit("volume.relogin", **info))
        try:
            await client.connect()
        except (OSError, BlockError, BlockUnavailable, asyncio.IncompleteReadError) as exc:
            await client.close()
            return web.json_response({"error": "VolumeAttachFailed", "message": str(exc)}, status=502)
        old = self.attachments.pop(vid, None)
        if old:
            await old.close()
        self.attachments[vid] = client
        for other in nc.instances.values():  # a volume is attached to one instance at a time
            other.get("volumes", {}).pop(vid, None)
        inst.setdefault("volumes", {})[vid] = {"host": host, "port": port}
        nc._save()
        await self.open_disk(inst)
        nc.events.emit("volume.attached", instance=inst["id"], volume=vid)
        return web.json_response({"volume": vid, "instance": inst["id"], "state": "attached"})

    async def handle_detach(self, request: web.Request) -> web.Response:
        nc = self.nc
        nc.require_internal(request, "cc")
        vid = request.match_info["volume"]
        client = self.attachments.pop(vid, None)
        if client:
            await client.close()
        inst = nc.instances.get(request.match_info["id"])
        if inst:
            inst.get("volumes", {}).pop(vid, None)
            nc._save()
        nc.events.emit("volume.detached", volume=vid)
        return web.json_response({"volume": vid, "state": "detached"})

    async def end_sessions(self, inst: dict) -> None:
        """Close the block sessions of the volumes attached to ``inst`` (it ends)."""
        for vid in inst.get("volumes", {}):
            client = self.attachments.pop(vid, None)
            if client:
                await client.close()

    def _session(self, request: web.Request) -> BlockClient:
        client = self.attachments.get(request.match_info["volume"])
        if client is None:
            raise web.HTTPNotFound(text="volume not attached here")
        return client

    async def handle_read(self, request: web.Request) -> web.Response:
        self.nc.require_internal(request)  # the operator's: experiments read through an attachment
        return await self._read_blocks(request, self._session(request))

    async def handle_write(self, request: web.Request) -> web.Response:
        self.nc.require_internal(request)  # the operator's
        return await self._write_blocks(request, self._session(request))

    async def _read_blocks(self, request: web.Request, client: BlockClient) -> web.Response:
        async def io() -> web.Response:
            offset, length = int(request.query["offset"]), int(request.query["length"])
            data = await client.read(offset, length, wanted=_still_wanted(request))
            return web.Response(body=data, content_type="application/octet-stream")

        return await _block_request(io)

    async def _write_blocks(self, request: web.Request, client: BlockClient) -> web.Response:
        async def io() -> web.Response:
            offset = int(request.query["offset"])
            await client.write(offset, await request.read(), wanted=_still_wanted(request))
            return web.json_response({"written": True})

        return await _block_request(io)

    # -- the virtio disk channel ------------------------------------------------------

    def disk_path(self, iid: str) -> Path:
        """Where instance ``iid``'s disk channel listens."""
        return self.nc.data / "instances" / iid / DISK_SOCKET

    def _disk_app(self, iid: str) -> web.Application:
        """The block routes of the NC API, limited to the volumes attached to ``iid``.
        No token: the socket is reachable only through the NC's own filesystem."""

        def session(request: web.Request) -> BlockClient:
            vid = request.match_info["volume"]
            inst = self.nc.instances.get(iid)
            client = self.attachments.get(vid)
            if inst is None or vid not in inst.get("volumes", {}) or client is None:
                raise web.HTTPNotFound(text=f"volume {vid} is not attached to {iid}")
            return client

        async def read(request: web.Request) -> web.Response:
            return await self._read_blocks(request, session(request))

        async def write(request: web.Request) -> web.Response:
            return await self._write_blocks(request, session(request))

        app = web.Application(client_max_size=self.nc.config.get("max_body", MAX_BODY))
        app.router.add_get("/volumes/{volume}/blocks", read)
        app.router.add_put("/volumes/{volume}/blocks", write)
        return app

    async def open_disk(self, inst: dict) -> None:
        """Listen on the instance's disk channel (once; a stale socket file is replaced)."""
        iid = inst["id"]
        if iid in self.disks:
            return
        path = self.disk_path(iid)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A request hanging on the SC must not hold up a termination for long.
        runner = web.AppRunner(self._disk_app(iid), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            with _bindable(path) as name:
                await web.UnixSite(runner, name).start()
        except OSError as exc:
            # The instance runs on without a disk: its workload answers disk requests 503.
            await runner.cleanup()
            self.nc.events.emit("disk.failed", instance=iid, path=str(path), error=str(exc))
            return
        self.disks[iid] = runner
        self.nc.events.emit("disk.open", instance=iid, path=str(path))

    async def close_disk(self, iid: str) -> None:
        runner = self.disks.pop(iid, None)
        if runner is not None:
            await runner.cleanup()
        path = self.disk_path(iid)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass

    async def close(self) -> None:
        """Close every disk channel and block session (the NC stops)."""
        for iid in list(self.disks):
            await self.close_disk(iid)
        for client in self.attachments.values():
            await client.close()
