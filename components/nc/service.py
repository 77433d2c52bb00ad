"""The NC (port 8775): boots instances into VM slots and answers its CC.

Booting an instance:
1. download the image from Walrus (real bytes, verified against the ETag, cached
   on the NC by ETag in a cache of bounded size; a stalled or cut download resumes
   with a Range request: components/nc/images.py, config ``images``);
2. configure the slot's interface (MAC, IP, default route) by entering the slot's
   network namespace, whose path the testbed gives in the config; the slot stays
   untagged. VLAN membership is Open vSwitch's business (``vlan_tagging: switch``) or,
   with ``vlan_tagging: host``, the NC's own: it puts the slot's port (config
   ``slots[].port``, the NC's end of the slot's link) into the Linux bridge of the
   instance's VLAN, with a sub-interface ``<private_interface>.<vlan>`` as the uplink
   (components/common/vlan.py), and takes it out again when the instance ends;
3. start the instance's workload inside the slot (an HTTP server answering its id);
4. report ``running``.

Instance records live in ``data_dir/instances.json``: an NC restart finds its
instances (whose workloads run on in their slots) and carries on.

Each instance has a directory ``data_dir/instances/{id}/`` holding its virtio disk
channel, ``disk.sock``: a Unix socket on which the NC serves the volumes attached to
that instance, and only those (the workload reaches it through the shared filesystem,
whatever network namespace it sits in). It exists from boot to termination:
    GET    /volumes/{volume}/blocks?offset=&length=
    PUT    /volumes/{volume}/blocks?offset=

Internal API (header X-Eucalab-Internal-Token):
    GET    /instances                 every instance with its state
    POST   /instances                 {id, slot, image:{bucket,key}, mac, ip, prefix, gateway}
    DELETE /instances/{id}            terminate: stop the workload, free the slot
    GET    /capacity                  slots, free slots
    POST   /instances/{id}/volumes    {volume, target:{host,port,secret}}: attach (a block session to
                                      the SC, logged in with the attachment's secret)
    DELETE /instances/{id}/volumes/{volume}
    GET    /volumes/{volume}/blocks?offset=&length=   read through the attachment
    PUT    /volumes/{volume}/blocks?offset=           write through the attachment

A block request not answered by the SC within its deadline (an SC failover under way)
gets 503, and one whose client has closed its connection is not sent to the SC at
all; the attachment's session logs in again through the SC's VIP meanwhile
(``volume.relogin`` events). Config ``block_session``: the fields of
``components.sc.blockproto.SessionTimeouts`` (seconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common import vlan as vlans
from components.common.config import ConfigError
from components.common.files import write_atomic
from components.common.modes import NC_ENFORCED_MODES
from components.common.service import INTERNAL_TOKEN_HEADER, MAX_BODY, Service
from components.nc import images

from .metadata import MetadataRelay
from components.sc.blockproto import (BAD_REQUEST, OUT_OF_RANGE, BlockClient, BlockError, BlockUnavailable,
                                      SessionTimeouts)

# Instance states, as DescribeInstances names them.
PENDING, RUNNING, SHUTTING_DOWN, TERMINATED = "pending", "running", "shutting-down", "terminated"
DISK_SOCKET = "disk.sock"
# sun_path holds 108 bytes with its terminating NUL.
UNIX_PATH_MAX = 107


class BootError(Exception):
    """An instance could not boot; the reason ends up on the instance."""


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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


class NodeController(Service):
    component = "nc"

    def __init__(self, config: dict):
        super().__init__(config)
        self.slots = {s["name"]: s for s in config.get("slots", [])}
        self.data = Path(config["data_dir"])
        try:
            self.image_settings = images.ImageSettings(**config.get("images", {}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"images: {exc}") from None
        self.image_cache = images.ImageCache(self.data / "images", self.image_settings.max_bytes,
                                             emit=lambda event, **f: self.events.emit(event, **f))
        self.state_file = self.data / "instances.json"
        self.instances: dict[str, dict] = self._load()
        walrus = config.get("endpoints", {}).get("walrus") or ""
        self.walrus_base = walrus.split("/services/")[0]
        self.workload_port = int(config.get("workload_port", 80))
        self._tasks: dict[str, asyncio.Task] = {}
        self._image_locks: dict[str, asyncio.Lock] = {}
        self.http: aiohttp.ClientSession | None = None
        self.attachments: dict[str, BlockClient] = {}  # volume id -> block session
        self.disks: dict[str, web.AppRunner] = {}  # instance id -> its disk channel
        self.session_timeouts = SessionTimeouts(**config.get("block_session", {}))
        self.vlan_tagging = config.get("vlan_tagging", "switch")
        self.private_interface = config.get("private_interface")
        self._vlan_lock = asyncio.Lock()  # two boots must not both add one VLAN's interfaces
        self.metadata: MetadataRelay | None = None
        clc = config.get("endpoints", {}).get("clc") or ""
        if config.get("mode") in NC_ENFORCED_MODES and clc:
            # EDGE: this NC serves its instances' metadata (components/nc/metadata.py).
            self.metadata = MetadataRelay(clc.split("/services/")[0], config.get("internal_token", ""),
                                          self._hosts_instance)

    # -- persistence ------------------------------------------------------------------

    def _load(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self) -> None:
        write_atomic(self.state_file, json.dumps(self.instances, indent=1, sort_keys=True))

    def _set(self, iid: str, state: str, reason: str = "", **fields) -> None:
        inst = self.instances[iid]
        inst.update(fields, state=state)
        if reason:
            inst["reason"] = reason
        self._save()
        self.events.emit(f"instance.{state.replace('-', '_')}", instance=iid, slot=inst.get("slot"),
                         **({"reason": reason} if reason else {}))

    # -- lifecycle ----------------------------------------------------------------------

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/instances", self.handle_list)
        app.router.add_post("/instances", self.handle_run)
        app.router.add_delete("/instances/{id}", self.handle_terminate)
        app.router.add_get("/capacity", self.handle_capacity)
        app.router.add_post("/instances/{id}/volumes", self.handle_attach)
        app.router.add_delete("/instances/{id}/volumes/{volume}", self.handle_detach)
        app.router.add_get("/volumes/{volume}/blocks", self.handle_read)
        app.router.add_put("/volumes/{volume}/blocks", self.handle_write)

    async def on_start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        # After a restart: instances whose workload still runs stay running; a boot
        # that was cut short is finished as terminated, and its slot freed.
        for iid, inst in list(self.instances.items()):
            if inst["state"] == RUNNING and not self._workload_alive(inst):
                self._set(iid, TERMINATED, "workload exited while the NC was down")
            elif inst["state"] in (PENDING, SHUTTING_DOWN):
                await self._teardown_slot(inst)
                self._set(iid, TERMINATED, "NC restarted during " +
                          ("boot" if inst["state"] == PENDING else "termination"))
            if inst["state"] == RUNNING:
                await self._open_disk(inst)
        self.events.emit("nc.recovered", instances={i: v["state"] for i, v in self.instances.items()})
        if self.metadata is not None:
            await self.metadata.start()

    def _hosts_instance(self, ip: str) -> bool:
        """Whether ``ip`` is the address of an instance running here."""
        return any(i.get("ip") == ip and i["state"] == RUNNING for i in self.instances.values())

    async def on_stop(self) -> None:
        if self.metadata is not None:
            await self.metadata.stop()
        for task in self._tasks.values():
            task.cancel()
        for iid in list(self.disks):
            await self._close_disk(iid)
        for client in self.attachments.values():
            await client.close()
        if self.http:
            await self.http.close()

    def status_extra(self) -> dict:
        return {"slots": len(self.slots), "free": len(self._free_slots())}

    # -- API ----------------------------------------------------------------------------

    def _free_slots(self) -> list[str]:
        busy = {i["slot"] for i in self.instances.values() if i["state"] != TERMINATED}
        return [s for s in self.slots if s not in busy]

    async def handle_list(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
        return web.json_response({"instances": list(self.instances.values())})

    async def handle_capacity(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
        return web.json_response({"slots": list(self.slots), "free": self._free_slots()})

    async def handle_run(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
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
        if slot not in self.slots:
            return web.json_response({"error": "InvalidSlot",
                                      "message": f"{self.host} has no VM slot {slot}"}, status=400)
        if iid in self.instances and self.instances[iid]["state"] != TERMINATED:
            return web.json_response({"error": "InstanceExists", "message": f"{iid} already here"},
                                     status=409)
        if slot not in self._free_slots():
            return web.json_response({"error": "SlotBusy", "message": f"slot {slot} is in use"}, status=409)
        # What the CC said about the instance's network is kept too: a restarted CC
        # rebuilds its view from these records.
        extra = {k: body.get(k) for k in ("group", "vlan", "account")}
        if self.vlan_tagging == "host":
            try:
                vlans.vlan_interface(self.private_interface, extra["vlan"])
            except ValueError as exc:
                return web.json_response({"error": "InvalidParameterValue",
                                          "message": f"vlan: {exc} (this NC tags each group's VLAN)"}, status=400)
        self.instances[iid] = {"id": iid, "slot": slot, "image": image, **net, **extra, "state": PENDING,
                               "reason": "", "pid": None}
        self._save()
        self.events.emit("instance.pending", instance=iid, slot=slot)
        self._tasks[iid] = asyncio.create_task(self._boot(iid))
        return web.json_response(self.instances[iid], status=202)

    async def handle_terminate(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
        iid = request.match_info["id"]
        inst = self.instances.get(iid)
        if inst is None:
            return web.json_response({"error": "InvalidInstanceID.NotFound", "message": iid}, status=404)
        if inst["state"] != TERMINATED:
            task = self._tasks.pop(iid, None)
            if task:
                task.cancel()
            self._set(iid, SHUTTING_DOWN)
            await self._teardown_slot(inst)
            for vid in inst.get("volumes", {}):  # its block sessions end with it
                client = self.attachments.pop(vid, None)
                if client:
                    await client.close()
            self._set(iid, TERMINATED, inst.get("reason") or "terminated by request", pid=None)
        return web.json_response(inst)

    # -- volumes ------------------------------------------------------------------------

    async def handle_attach(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
        inst = self.instances.get(request.match_info["id"])
        if inst is None or inst["state"] != RUNNING:
            return web.json_response({"error": "IncorrectState", "message": "instance not running here"},
                                     status=409)
        try:
            body = await request.json()
            target = body["target"]
            vid, host, port, secret = str(body["volume"]), str(target["host"]), int(target["port"]), str(target["secret"])
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": "InvalidParameterValue", "message": str(exc)}, status=400)
        client = BlockClient(host, port, vid, secret, self.session_timeouts,
                             on_relogin=lambda info: self.events.emit("volume.relogin", **info))
        try:
            await client.connect()
        except (OSError, BlockError, BlockUnavailable, asyncio.IncompleteReadError) as exc:
            await client.close()
            return web.json_response({"error": "VolumeAttachFailed", "message": str(exc)}, status=502)
        old = self.attachments.pop(vid, None)
        if old:
            await old.close()
        self.attachments[vid] = client
        for other in self.instances.values():  # a volume is attached to one instance at a time
            other.get("volumes", {}).pop(vid, None)
        inst.setdefault("volumes", {})[vid] = {"host": host, "port": port}
        self._save()
        await self._open_disk(inst)
        self.events.emit("volume.attached", instance=inst["id"], volume=vid)
        return web.json_response({"volume": vid, "instance": inst["id"], "state": "attached"})

    async def handle_detach(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
        vid = request.match_info["volume"]
        client = self.attachments.pop(vid, None)
        if client:
            await client.close()
        inst = self.instances.get(request.match_info["id"])
        if inst:
            inst.get("volumes", {}).pop(vid, None)
            self._save()
        self.events.emit("volume.detached", volume=vid)
        return web.json_response({"volume": vid, "state": "detached"})

    def _session(self, request: web.Request) -> BlockClient:
        client = self.attachments.get(request.match_info["volume"])
        if client is None:
            raise web.HTTPNotFound(text="volume not attached here")
        return client

    async def handle_read(self, request: web.Request) -> web.Response:
        self.require_internal(request)  # the operator's: experiments read through an attachment
        return await self._read_blocks(request, self._session(request))

    async def handle_write(self, request: web.Request) -> web.Response:
        self.require_internal(request)  # the operator's
        return await self._write_blocks(request, self._session(request))

    @staticmethod
    def _still_wanted(request: web.Request):
        """Whether the request's client still waits: a request it abandoned (its connection
        closed) is not sent to the SC when its turn on the session comes."""
        return lambda: request.transport is not None and not request.transport.is_closing()

    async def _read_blocks(self, request: web.Request, client: BlockClient) -> web.Response:
        try:
            offset, length = int(request.query["offset"]), int(request.query["length"])
            data = await client.read(offset, length, wanted=self._still_wanted(request))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": "InvalidParameterValue", "message": str(exc)}, status=400)
        except BlockUnavailable as exc:
            return web.json_response({"error": "VolumeUnavailable", "message": str(exc)}, status=503)
        except BlockError as exc:
            return _block_error(exc)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _write_blocks(self, request: web.Request, client: BlockClient) -> web.Response:
        try:
            offset = int(request.query["offset"])
            await client.write(offset, await request.read(), wanted=self._still_wanted(request))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": "InvalidParameterValue", "message": str(exc)}, status=400)
        except BlockUnavailable as exc:
            return web.json_response({"error": "VolumeUnavailable", "message": str(exc)}, status=503)
        except BlockError as exc:
            return _block_error(exc)
        return web.json_response({"written": True})

    # -- the virtio disk channel ------------------------------------------------------

    def disk_path(self, iid: str) -> Path:
        """Where instance ``iid``'s disk channel listens."""
        return self.data / "instances" / iid / DISK_SOCKET

    def _disk_app(self, iid: str) -> web.Application:
        """The block routes of the NC API, limited to the volumes attached to ``iid``.
        No token: the socket is reachable only through the NC's own filesystem."""

        def session(request: web.Request) -> BlockClient:
            vid = request.match_info["volume"]
            inst = self.instances.get(iid)
            client = self.attachments.get(vid)
            if inst is None or vid not in inst.get("volumes", {}) or client is None:
                raise web.HTTPNotFound(text=f"volume {vid} is not attached to {iid}")
            return client

        async def read(request: web.Request) -> web.Response:
            return await self._read_blocks(request, session(request))

        async def write(request: web.Request) -> web.Response:
            return await self._write_blocks(request, session(request))

        app = web.Application(client_max_size=self.config.get("max_body", MAX_BODY))
        app.router.add_get("/volumes/{volume}/blocks", read)
        app.router.add_put("/volumes/{volume}/blocks", write)
        return app

    async def _open_disk(self, inst: dict) -> None:
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
            self.events.emit("disk.failed", instance=iid, path=str(path), error=str(exc))
            return
        self.disks[iid] = runner
        self.events.emit("disk.open", instance=iid, path=str(path))

    async def _close_disk(self, iid: str) -> None:
        runner = self.disks.pop(iid, None)
        if runner is not None:
            await runner.cleanup()
        path = self.disk_path(iid)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass

    # -- booting ------------------------------------------------------------------------

    async def _fetch_image_retrying(self, image: dict, attempts: int = 3) -> Path:
        """Walrus unreachable for the HEAD (a congested path, a Walrus failover): tried
        again. A download cut or stalled midway resumes by itself (components/nc/images.py)."""
        for attempt in range(attempts):
            try:
                return await self._fetch_image(image)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise BootError(f"image download failed {attempts} times: {exc}") from None
                self.events.emit("image.retry", image=f"{image['bucket']}/{image['key']}", error=str(exc))
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _boot(self, iid: str) -> None:
        inst = self.instances[iid]
        try:
            path = await self._fetch_image_retrying(inst["image"])
            await self._join_vlan(inst)
            await self._configure_slot(inst)
            await self._open_disk(inst)
            pid = await self._start_workload(inst, path)
            self._set(iid, RUNNING, pid=pid, pid_start=_start_time(pid))
        except asyncio.CancelledError:
            raise
        except BootError as exc:
            await self._teardown_slot(inst)
            self._set(iid, TERMINATED, str(exc), pid=None)
        except Exception as exc:  # a boot must never leave a slot half-used
            await self._teardown_slot(inst)
            self._set(iid, TERMINATED, f"boot failed: {exc}", pid=None)
        finally:
            self._tasks.pop(iid, None)

    async def _fetch_image(self, image: dict) -> Path:
        """Download (or reuse the cached copy of) an image, verified against its ETag."""
        key = f"{image['bucket']}/{image['key']}"
        url = f"{self.walrus_base}/internal/object"
        headers = {INTERNAL_TOKEN_HEADER: self.config.get("internal_token", "")}
        params = {"bucket": image["bucket"], "key": image["key"]}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.image_settings.idle_timeout_s,
                                        sock_read=self.image_settings.idle_timeout_s)
        async with self.http.head(url, params=params, headers=headers, timeout=timeout) as r:
            if r.status == 404:
                raise BootError(f"image {key} not found in Walrus")
            if r.status != 200:
                raise BootError(f"Walrus answered {r.status} for image {key}")
            etag = r.headers.get("ETag", "").strip('"')
            size = int(r.headers.get("Content-Length", "0"))
        if not etag or "/" in etag or etag.startswith("."):
            raise BootError(f"Walrus gave image {key} no usable ETag ({etag!r})")
        # One download per image at a time: a second boot waits for the first one's file.
        async with self._image_locks.setdefault(etag, asyncio.Lock()):
            cached = self.image_cache.get(etag)
            if cached is not None:
                self.events.emit("image.cached", image=key, etag=etag)
                return cached
            try:
                path, resumed = await images.download(self.http, url, params, headers, etag, size, self.image_cache,
                                                      self.image_settings, name=key)
            except images.DownloadError as exc:
                raise BootError(str(exc)) from None
            self.events.emit("image.downloaded", image=key, etag=etag, size=size, resumed=resumed)
            return path

    async def _join_vlan(self, inst: dict) -> None:
        """Host tagging: the slot's port into the bridge of the instance's VLAN (made if missing)."""
        if self.vlan_tagging != "host":
            return
        async with self._vlan_lock:
            existing = vlans.link_names(await self._here("ip", "-o", "link", "show"))
            port = self.slots[inst["slot"]]["port"]
            await self._here("ip", "-batch", "-", stdin="\n".join(
                vlans.attach_commands(self.private_interface, inst["vlan"], port, existing)) + "\n")
        self.events.emit("vlan.joined", instance=inst["id"], vlan=inst["vlan"], port=port,
                         bridge=vlans.vlan_bridge(inst["vlan"]))

    async def _leave_vlan(self, slot: dict) -> None:
        if self.vlan_tagging == "host":
            await self._here("ip", "-batch", "-", stdin="\n".join(vlans.release_commands(slot["port"])) + "\n")

    async def _here(self, *argv: str, stdin: str | None = None) -> str:
        """A command in the NC's own network namespace."""
        return await self._in_slot(None, *argv, stdin=stdin)

    async def _in_slot(self, slot: dict | None, *argv: str, stdin: str | None = None) -> str:
        """A command in ``slot``'s network namespace (None: the NC's own)."""
        enter = [] if slot is None else ["nsenter", f"--net={slot['netns']}"]
        proc = await asyncio.create_subprocess_exec(
            *enter, *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate(stdin.encode() if stdin else None)
        if proc.returncode != 0:
            where = f"slot {slot['name']}" if slot else "the NC's VLAN bridge"
            raise BootError(f"configuring {where} failed: {out.decode().strip()[:300]}")
        return out.decode()

    async def _configure_slot(self, inst: dict) -> None:
        slot = self.slots[inst["slot"]]
        intf = slot["interface"]
        await self._in_slot(slot, "ip", "-batch", "-", stdin="\n".join([
            f"link set dev {intf} down",
            f"link set dev {intf} address {inst['mac']}",
            f"addr flush dev {intf}",
            f"addr add {inst['ip']}/{inst['prefix']} dev {intf}",
            f"link set dev {intf} up",
            "link set dev lo up",
            f"route replace default via {inst['gateway']}",
        ]) + "\n")
        # A booting VM speaks first (DHCP, ARP). A silent slot would leave the switches
        # sending its MAC, derived from its address and so an earlier instance's too, to
        # the port where they last saw it. arping lingers after sending: not waited for.
        await asyncio.create_subprocess_exec(
            "nsenter", f"--net={slot['netns']}", "arping", "-q", "-U", "-c", "1", "-I", intf, inst["ip"],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def _start_workload(self, inst: dict, image: Path) -> int:
        slot = self.slots[inst["slot"]]
        log = open(self.data / f"{inst['id']}.log", "ab")
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={slot['netns']}", sys.executable, "-S", str(Path(__file__).with_name("workload.py")),
            "--instance-id", inst["id"], "--port", str(self.workload_port),
            "--disk", str(self.disk_path(inst["id"])),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env=dict(os.environ, EUCALAB_IMAGE=str(image)))
        log.close()
        # The workload answers once it listens; waiting for that makes "running" true.
        for _ in range(200):
            out = await self._in_slot(slot, "cat", "/proc/net/tcp")
            if f":{self.workload_port:04X} 00000000:0000 0A" in out:
                return proc.pid
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        raise BootError(f"the workload of {inst['id']} did not start listening")

    def _workload_alive(self, inst: dict) -> bool:
        pid = inst.get("pid")
        return bool(pid) and _start_time(pid) == inst.get("pid_start") and _start_time(pid) is not None

    async def _teardown_slot(self, inst: dict) -> None:
        """Stop the workload, close its disk channel and clear the slot's interface; safe on
        a half-booted slot."""
        await self._close_disk(inst["id"])
        pid = inst.get("pid")
        if pid and self._workload_alive(inst):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if _start_time(pid) is None:
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
        slot = self.slots.get(inst["slot"])
        if slot:
            try:
                await self._in_slot(slot, "ip", "-batch", "-", stdin=(
                    f"addr flush dev {slot['interface']}\nroute flush dev {slot['interface']}\n"))
            except BootError:
                pass
            try:
                await self._leave_vlan(slot)
            except BootError as exc:
                self.events.emit("vlan.release_failed", instance=inst["id"], error=str(exc))
