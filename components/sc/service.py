"""The SC (storage controller), one per cluster: volumes as files, served to NCs over TCP.

Internal API (port 8773, header X-Eucalab-Internal-Token):
    GET    /volumes                      every volume
    POST   /volumes                      {id, size_mib}            create (a sparse file)
    DELETE /volumes/{id}                 delete (refused while attached: VolumeInUse)
    POST   /volumes/{id}/attach          {instance, nc}  -> {target: {host, port, secret}}
    POST   /volumes/{id}/detach
Block service (port 3260, blockservice.py): an NC logs in to an attached volume
with the attachment's secret and reads and writes it; written data is on the SC's disk.
Under HA every change reaches the DISABLED peer before it is acknowledged
(replication.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path

from aiohttp import web

from components.common.files import write_atomic
from components.common.routes import add_routes, route
from components.common.service import Service

from .blockservice import BlockService
from .replication import ScReplication

VOLUME_ID = re.compile(r"^vol-[0-9a-f]{8}$")


def public(vol: dict) -> dict:
    """A volume as the API shows it: without its attachment's secret."""
    att = vol.get("attachment")
    return {**vol, "attachment": {k: v for k, v in att.items() if k != "secret"} if att else att}


class NotAcknowledged(web.HTTPServiceUnavailable):
    """A change the peer did not take: never acknowledged (503 on the API)."""


class StorageController(Service):
    component = "sc"

    def __init__(self, config: dict):
        # Before the base class sets up the routes, some of which lead to it.
        self.replication = ScReplication(self, VOLUME_ID, NotAcknowledged)
        super().__init__(config)
        self.vol_dir = Path(config["data_dir"]) / "volumes"
        self.vol_dir.mkdir(parents=True, exist_ok=True)
        self.meta_file = Path(config["data_dir"]) / "volumes.json"
        self.volumes: dict[str, dict] = {}
        self.wseq = 0  # how many changes this SC's volumes have seen (HA replication position)
        self._load()
        self.block = BlockService(self, config, NotAcknowledged)
        self.max_size_mib = int(config.get("max_volume_mib", 1024))
        self.replica = None  # the session to the HA peer, opened in on_start when HA is on
        self._disk = asyncio.Lock()  # one change at a time reaches the disk, in order
        if self.ha is not None:
            self.ha.last_seq = lambda: self.wseq

    def _load(self) -> None:
        try:
            data = json.loads(self.meta_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        self.volumes, self.wseq = data.get("volumes", {}), int(data.get("wseq", 0))

    async def _save(self) -> None:
        """volumes.json as of now, written off the event loop (the caller holds ``_disk``)."""
        text = json.dumps({"wseq": self.wseq, "volumes": self.volumes}, indent=1, sort_keys=True)
        await asyncio.to_thread(self._write_meta, text)

    def _write_meta(self, text: str) -> None:
        write_atomic(self.meta_file, text)

    # -- every change goes through here: applied locally, then to the DISABLED peer ---------------

    async def _apply(self, op: dict, data: bytes = b"", seq: int | None = None) -> int:
        """Apply one change: its files in a worker thread, then this SC's view, then volumes.json.

        The disk work never runs on the event loop: a rename or a write there waited for the
        filesystem's journal while a restarted peer's catch-up fsynced a whole volume, and a
        primary's loop stalled 330 and 924 ms (its heartbeats with it: the peer took over).
        Changes reach the disk one at a time, in order (``_disk``). Returns the change's
        sequence number; with ``seq`` (a change replicated from the primary) it applies only
        as the next change, and returns 0 otherwise.
        """
        kind, vid = op["type"], op["id"]
        if kind not in ("create", "delete", "meta", "write"):
            raise ValueError(f"unknown volume operation {kind!r}")
        if not isinstance(vid, str) or not VOLUME_ID.match(vid):
            raise ValueError(f"malformed volume id {vid!r}")  # before it names a file
        async with self._disk:
            if seq is not None and seq != self.wseq + 1:
                return 0
            if kind in ("meta", "write") and vid not in self.volumes:
                raise ValueError(f"no volume {vid}")
            if kind == "write" and not 0 <= int(op["offset"]) <= self.volumes[vid]["size_mib"] * 2**20 - len(data):
                raise ValueError(f"a write at {op['offset']} is outside {vid}")
            if kind != "meta":
                await asyncio.to_thread(self._apply_files, op, data)
            if kind == "create":
                self.volumes[vid] = {"id": vid, "size_mib": op["size_mib"], "state": "available",
                                     "attachment": None}
            elif kind == "delete":
                self.volumes.pop(vid, None)
            elif kind == "meta":
                self.volumes[vid].update(state=op["state"], attachment=op["attachment"])
            if kind in ("delete", "meta"):
                self.block.end_sessions(vid)  # detached, attached anew, or gone: its logins no longer hold
            self.wseq += 1
            await self._save()
            return self.wseq

    def _apply_files(self, op: dict, data: bytes) -> None:
        kind, path = op["type"], self._path(op["id"])
        if kind == "create":
            with open(path, "wb") as f:
                f.truncate(op["size_mib"] * 2**20)  # sparse: the SC's disk holds only written blocks
        elif kind == "delete":
            path.unlink(missing_ok=True)
        elif kind == "write":
            with open(path, "r+b") as f:
                f.seek(op["offset"])
                f.write(data)  # in the page cache: it survives a crash of this process, and the
                # peer has it before the client hears OK; FLUSH (the F operation) makes it durable

    async def _mutate(self, op: dict, data: bytes = b"") -> None:
        """Apply a change and, under HA, have the DISABLED peer apply it before answering (ScReplication.mutate)."""
        await self.replication.mutate(op, data)

    def _path(self, vid: str) -> Path:
        return self.vol_dir / f"{vid}.img"

    def setup_routes(self, app: web.Application) -> None:
        add_routes(app, self, self.replication)

    async def on_start(self) -> None:
        await self.replication.start()
        await self.block.start()

    async def on_stop(self) -> None:
        self.block.stop()
        await self.replication.stop()

    @property
    def block_port(self) -> int:
        """Where the block service listens."""
        return self.block.port

    def status_extra(self) -> dict:
        return {"volumes": len(self.volumes), "block_port": self.block.port, "block_listen": self.block.listen}

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

    @route("GET", "/volumes")
    async def handle_list(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        return web.json_response({"volumes": [public(v) for v in self.volumes.values()]})

    @route("POST", "/volumes")
    async def handle_create(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
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
        await self._mutate({"type": "create", "id": vid, "size_mib": size})
        self.events.emit("volume.create", volume=vid, size_mib=size)
        return web.json_response(public(self.volumes[vid]), status=201)

    @route("DELETE", "/volumes/{id}")
    async def handle_delete(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        vol = self._volume(request)
        if vol["attachment"]:
            return self._error("VolumeInUse", f"{vol['id']} is attached to {vol['attachment']['instance']}")
        await self._mutate({"type": "delete", "id": vol["id"]})
        self.events.emit("volume.delete", volume=vol["id"])
        return web.json_response({"id": vol["id"], "state": "deleted"})

    @route("POST", "/volumes/{id}/attach")
    async def handle_attach(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        vol = self._volume(request)
        try:
            body = await request.json()
            instance, nc = str(body["instance"]), str(body["nc"])
        except (ValueError, KeyError, TypeError) as exc:
            return self._error("InvalidParameterValue", f"bad request: {exc}")
        if vol["attachment"] and vol["attachment"]["instance"] != instance:
            return self._error("VolumeInUse", f"{vol['id']} is attached to {vol['attachment']['instance']}")
        if nc not in self.block.nc_addresses:
            return self._error("InvalidParameterValue", f"no NC {nc!r} in this cluster")
        secret = secrets.token_hex(32)  # this attachment's: the NC answers login challenges with it
        await self._mutate({"type": "meta", "id": vol["id"], "state": "in-use",
                            "attachment": {"instance": instance, "nc": nc, "secret": secret}})
        self.events.emit("volume.attach", volume=vol["id"], instance=instance, nc=nc)
        target_host = self.config.get("block_address") or request.host.split(":")[0]
        return web.json_response({**public(vol), "target": {"host": target_host, "port": self.block.port,
                                                             "secret": secret}})

    @route("POST", "/volumes/{id}/detach")
    async def handle_detach(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        vol = self._volume(request)
        await self._mutate({"type": "meta", "id": vol["id"], "state": "available", "attachment": None})
        self.events.emit("volume.detach", volume=vol["id"])
        return web.json_response(public(vol))
