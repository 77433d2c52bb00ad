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

``NodeController`` is the service's facade: it holds the instance records and builds one
manager per concern, to which it delegates: ``Instances`` (instances.py: run, boot,
terminate, the workloads), ``ImageFetcher`` (images.py: images from the cache or from
Walrus), ``SlotNetwork`` (slots.py: the slots' interfaces and VLANs) and ``Volumes``
(volumes.py: block sessions and disk channels); ``MetadataRelay`` (metadata.py) in EDGE.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common.config import ConfigError
from components.common.files import write_atomic
from components.common.modes import NC_ENFORCED_MODES
from components.common.service import Service
from components.nc import images

from .instances import PENDING, RUNNING, SHUTTING_DOWN, TERMINATED, Instances
from .metadata import MetadataRelay
from .slots import SlotNetwork
from .volumes import Volumes
from components.sc.blockproto import SessionTimeouts


def _handler(manager: str, name: str):
    """The API handler ``name`` of the service's manager ``manager``, as a method of the service."""

    async def handle(self, request: web.Request) -> web.Response:
        return await getattr(getattr(self, manager), name)(request)

    handle.__name__ = handle.__qualname__ = name
    return handle


class NodeController(Service):
    component = "nc"
    # Its instances' workloads and its threads (image work) stay at the normal scheduler:
    # only its own loop, which carries the block sessions, runs at realtime.
    realtime_inherited = False

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
        self.workload_port = int(config.get("workload_port", 80))
        self.http: aiohttp.ClientSession | None = None
        self.session_timeouts = SessionTimeouts(**config.get("block_session", {}))
        self.vlan_tagging = config.get("vlan_tagging", "switch")
        self.private_interface = config.get("private_interface")
        self.lifecycle = Instances(self)
        self.fetcher = images.ImageFetcher(self, self.image_settings, self.image_cache)
        self.slotnet = SlotNetwork(self)
        self.volumes = Volumes(self)
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
        for task in self.lifecycle.tasks.values():
            task.cancel()
        await self.volumes.close()
        if self.http:
            await self.http.close()

    def status_extra(self) -> dict:
        return {"slots": len(self.slots), "free": len(self.lifecycle.free_slots())}

    # -- the managers' work, under the service's names -------------------------------------

    @property
    def attachments(self) -> dict:
        """Volume id -> its block session (``Volumes``)."""
        return self.volumes.attachments

    def disk_path(self, iid: str) -> Path:
        """Where instance ``iid``'s disk channel listens (``Volumes``)."""
        return self.volumes.disk_path(iid)

    # The API's handlers, each a manager's (setup_routes names them on the service).
    handle_list, handle_run, handle_terminate, handle_capacity = (
        _handler("lifecycle", n) for n in ("handle_list", "handle_run", "handle_terminate", "handle_capacity"))
    handle_attach, handle_detach, handle_read, handle_write = (
        _handler("volumes", n) for n in ("handle_attach", "handle_detach", "handle_read", "handle_write"))

    def _workload_alive(self, inst: dict) -> bool:
        return self.lifecycle.workload_alive(inst)

    async def _teardown_slot(self, inst: dict) -> None:
        await self.lifecycle.teardown(inst)

    async def _open_disk(self, inst: dict) -> None:
        await self.volumes.open_disk(inst)
