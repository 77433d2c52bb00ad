"""The SC (storage controller), one per cluster: volumes as files, served to NCs over TCP.

Internal API (port 8773, header X-Eucalab-Internal-Token):
    GET    /volumes                      every volume
    POST   /volumes                      {id, size_mib}            create (a sparse file)
    DELETE /volumes/{id}                 delete (refused while attached: VolumeInUse)
    POST   /volumes/{id}/attach          {instance, nc}  -> {target: {host, port}}
    POST   /volumes/{id}/detach
Block service (port 3260, see blockproto.py): an NC logs in to an attached volume
and reads and writes it; written data is on the SC's disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
from pathlib import Path

from aiohttp import web

from components.common.service import Service

from . import blockproto as bp

VOLUME_ID = re.compile(r"^vol-[0-9a-f]{8}$")


class StorageController(Service):
    component = "sc"

    def __init__(self, config: dict):
        super().__init__(config)
        self.vol_dir = Path(config["data_dir"]) / "volumes"
        self.vol_dir.mkdir(parents=True, exist_ok=True)
        self.meta_file = Path(config["data_dir"]) / "volumes.json"
        self.volumes: dict[str, dict] = self._load()
        self.block_port = int(config.get("block_port", bp.BLOCK_PORT))
        self.max_size_mib = int(config.get("max_volume_mib", 1024))
        self._block_server: asyncio.AbstractServer | None = None

    def _load(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self) -> None:
        tmp = self.meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.volumes, indent=1, sort_keys=True))
        os.replace(tmp, self.meta_file)

    def _path(self, vid: str) -> Path:
        return self.vol_dir / f"{vid}.img"

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/volumes", self.handle_list)
        app.router.add_post("/volumes", self.handle_create)
        app.router.add_delete("/volumes/{id}", self.handle_delete)
        app.router.add_post("/volumes/{id}/attach", self.handle_attach)
        app.router.add_post("/volumes/{id}/detach", self.handle_detach)

    async def on_start(self) -> None:
        self._block_server = await asyncio.start_server(
            self._serve_block, self.config.get("listen_host", "0.0.0.0"), self.block_port,
            reuse_address=True)

    async def on_stop(self) -> None:
        if self._block_server is not None:
            self._block_server.close()

    def status_extra(self) -> dict:
        return {"volumes": len(self.volumes), "block_port": self.block_port}

    # -- volumes API ----------------------------------------------------------------------

    def _error(self, code: str, message: str, status: int = 400) -> web.Response:
        return web.json_response({"error": code, "message": message}, status=status)

    def _volume(self, request: web.Request) -> dict:
        vid = request.match_info["id"]
        vol = self.volumes.get(vid)
        if vol is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "InvalidVolume.NotFound", "message": vid}),
                                   content_type="application/json")
        return vol

    async def handle_list(self, request: web.Request) -> web.Response:
        self.require_internal(request)
        return web.json_response({"volumes": list(self.volumes.values())})

    async def handle_create(self, request: web.Request) -> web.Response:
        self.require_internal(request)
        try:
            body = await request.json()
            vid, size = str(body["id"]), int(body["size_mib"])
        except (ValueError, KeyError, TypeError) as exc:
            return self._error("InvalidParameterValue", f"bad request: {exc}")
        if not VOLUME_ID.match(vid):
            return self._error("InvalidParameterValue", f"malformed volume id {vid!r}")
        if not 1 <= size <= self.max_size_mib:
            return self._error("InvalidParameterValue", f"size must be 1..{self.max_size_mib} MiB")
        if vid in self.volumes:
            return self._error("VolumeExists", vid, 409)
        with open(self._path(vid), "wb") as f:
            f.truncate(size * 2**20)  # sparse: the SC's disk holds only written blocks
        self.volumes[vid] = {"id": vid, "size_mib": size, "state": "available", "attachment": None}
        self._save()
        self.events.emit("volume.create", volume=vid, size_mib=size)
        return web.json_response(self.volumes[vid], status=201)

    async def handle_delete(self, request: web.Request) -> web.Response:
        self.require_internal(request)
        vol = self._volume(request)
        if vol["attachment"]:
            return self._error("VolumeInUse", f"{vol['id']} is attached to {vol['attachment']['instance']}")
        self._path(vol["id"]).unlink(missing_ok=True)
        del self.volumes[vol["id"]]
        self._save()
        self.events.emit("volume.delete", volume=vol["id"])
        return web.json_response({"id": vol["id"], "state": "deleted"})

    async def handle_attach(self, request: web.Request) -> web.Response:
        self.require_internal(request)
        vol = self._volume(request)
        try:
            body = await request.json()
            instance, nc = str(body["instance"]), str(body["nc"])
        except (ValueError, KeyError, TypeError) as exc:
            return self._error("InvalidParameterValue", f"bad request: {exc}")
        if vol["attachment"] and vol["attachment"]["instance"] != instance:
            return self._error("VolumeInUse", f"{vol['id']} is attached to {vol['attachment']['instance']}")
        vol["attachment"] = {"instance": instance, "nc": nc}
        vol["state"] = "in-use"
        self._save()
        self.events.emit("volume.attach", volume=vol["id"], instance=instance, nc=nc)
        target_host = self.config.get("block_address") or request.host.split(":")[0]
        return web.json_response({**vol, "target": {"host": target_host, "port": self.block_port}})

    async def handle_detach(self, request: web.Request) -> web.Response:
        self.require_internal(request)
        vol = self._volume(request)
        vol["attachment"] = None
        vol["state"] = "available"
        self._save()
        self.events.emit("volume.detach", volume=vol["id"])
        return web.json_response(vol)

    # -- block service ----------------------------------------------------------------------

    async def _serve_block(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        volume: str | None = None
        f = None

        async def reply(status: int, data: bytes = b"") -> None:
            writer.write(bp.REPLY.pack(status, len(data)) + data)
            await writer.drain()

        try:
            while True:
                try:
                    op, offset, length = bp.HEADER.unpack(await reader.readexactly(bp.HEADER.size))
                except asyncio.IncompleteReadError:
                    return
                if length > bp.MAX_IO:
                    await reply(bp.BAD_REQUEST, b"request too large")
                    return
                payload = await reader.readexactly(length) if op in (b"L", b"W") and length else b""
                if op == b"L":
                    vid = payload.decode(errors="replace")
                    vol = self.volumes.get(vid)
                    if vol is None:
                        await reply(bp.NO_VOLUME, f"no volume {vid}".encode())
                        return
                    if not vol["attachment"]:
                        await reply(bp.NOT_ATTACHED, f"{vid} is not attached".encode())
                        return
                    volume, f = vid, open(self._path(vid), "r+b")
                    await reply(bp.OK)
                    continue
                if f is None or volume not in self.volumes or not self.may_serve():
                    await reply(bp.NOT_ATTACHED, b"log in to an attached volume first")
                    return
                size = self.volumes[volume]["size_mib"] * 2**20
                if op in (b"R", b"W") and offset + length > size:
                    await reply(bp.OUT_OF_RANGE, b"beyond the end of the volume")
                    continue
                if op == b"R":
                    f.seek(offset)
                    await reply(bp.OK, f.read(length))
                elif op == b"W":
                    f.seek(offset)
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())  # acknowledged writes are on disk
                    await reply(bp.OK)
                elif op == b"F":
                    os.fsync(f.fileno())
                    await reply(bp.OK)
                else:
                    await reply(bp.BAD_REQUEST, b"unknown operation")
                    return
        except (ConnectionError, struct.error, asyncio.IncompleteReadError):
            return
        finally:
            if f is not None:
                f.close()
            writer.close()
