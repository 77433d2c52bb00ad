"""The CC (cluster controller, port 8774): schedules instances onto NCs and runs the cluster network.

Internal API the CLC calls (header X-Eucalab-Internal-Token), under /cluster:
    POST   /cluster/instances           {instances: [{id, account, image:{bucket,key}, group:{id,name,rules}}]}
                                        -> {placements: [...]}, once every NC holds its instance
                                        (one an NC refused is terminated, with the reason),
                                        or 409 InsufficientInstanceCapacity
    GET    /cluster/instances           every instance with state, NC, slot, address, VLAN, reason
                                        (a terminated one for terminated_retention_s, 1 h by default)
    DELETE /cluster/instances/{id}      terminate
    PUT    /cluster/groups/{id}         {name, account, rules}: a security group's rules changed
    GET    /cluster/groups              {groups: {id: digest}}: what the CLC checks it still holds
    PUT    /cluster/addresses/{ip}      {instance}: associate an elastic IP
    DELETE /cluster/addresses/{ip}      disassociate
    GET    /cluster/capacity            VM slots in the zone, free slots, per NC

The CC keeps the cluster's network intent (instances with MAC, IP, NC, slot, VLAN,
group; group rules; elastic IPs; which CC is primary, with the pair's epoch) and
publishes it to the SDN controller over the run directory's Unix socket
(docs/intent.md). After a restart it rebuilds its view from its NCs, as Eucalyptus did;
an instance it had terminated stays terminated, and an NC still running one (it did not
answer the hand-off or the terminate in time) is told again to end it.

Under HA the primary sends its whole view to the standby after every change, in order,
to the address the peer is heard on, and answers the CLC once the standby has it
(docs/ha.md, "CC replication"). A terminated instance is forgotten
``terminated_retention_s`` after it ended, so the view stays as large as what runs. The
NC polls, the standby reports and the retirement are supervised loops
(components/common/supervise.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common import control
from components.common.files import write_atomic
from components.common.groups import digest as group_digest
from components.common.modes import MANAGED_MODES
from components.common.service import INTERNAL_TOKEN_HEADER, Service
from components.common.supervise import supervise

from . import router
from .netalloc import AllocationError, NetworkAllocator
from .scheduler import InsufficientCapacity, NodeState, Scheduler

POLL_S = 0.1  # how often the CC asks its NCs for instance states
# How long an NC has to accept an instance. The CC's answer to a run waits on this after
# its intent push (milliseconds; seconds with the SDN controller stalled, each push taking
# up to 5 s and the intent lock held by one push at a time). The CLC waits 15 s for the
# answer (cluster_run_timeout_s) and then withdraws the run: it terminates the ids it sent.
HANDOFF_S = 2.0
# An instance this CC terminated while its NC may still run it (a hand-off or a terminate
# the NC did not answer) is terminated on the NC when the NC lists it; one the NC does
# not list is forgotten after RECALL_S.
RECALL_S = 30.0
# Default of config ``terminated_retention_s``: how long a terminated instance stays in the
# view (and in GET /cluster/instances, which the CLC follows) before it is forgotten.
TERMINATED_RETENTION_S = 3600.0
# How long a change waits for the standby to acknowledge its copy of the view before the
# CC answers all the same (the standby is slow or cut off; the CLC repairs what a
# takeover lacks, docs/ha.md "CC replication").
REPLICATE_WAIT_S = 1.0


class ClusterController(Service):
    component = "cc"
    api_prefixes = ("/cluster",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.cluster = int(config.get("cluster") or 1)
        self.zone = f"cluster{self.cluster}"
        self.mode = config.get("mode", "MANAGED")
        self.ncs: dict[str, dict] = config.get("ncs", {})
        self.scheduler, self.alloc = self._empty_placement(config.get("schedule_policy", "ROUNDROBIN"))
        self.data = Path(config["data_dir"])
        self.state_file = self.data / "cluster.json"
        saved = self._load()
        self.instances: dict[str, dict] = saved.get("instances", {})
        self.groups: dict[str, dict] = saved.get("groups", {})
        self.addresses: dict[str, str] = saved.get("addresses", {})  # public ip -> instance
        self.epoch = int(saved.get("epoch", 1))
        self.retention_s = float(config.get("terminated_retention_s", TERMINATED_RETENTION_S))
        # The view's version within the epoch: one more per change the primary makes. The
        # standby takes a replicated view only if it is newer than the one it holds, and
        # the primary waits for its acknowledgement (``_replicated``) before answering.
        self.version = int(saved.get("version", 0))
        self._acked = 0  # the newest version the standby acknowledged
        self._replicator: asyncio.Task | None = None
        self._replication = asyncio.Condition()
        # Instance id -> since when (wall clock): terminated here while its NC may still run
        # it (a hand-off or terminate the NC did not answer); ``_recall_from``, RECALL_S.
        self._recall: dict[str, float] = dict(saved.get("recall", {}))
        self.token = config.get("internal_token", "")
        self.http: aiohttp.ClientSession | None = None
        # The SDN controller's socket (MANAGED modes with takeover sdn; components/common/control.py).
        self.control_socket: str | None = config.get("control_socket") or None
        self._poller: asyncio.Task | None = None
        self._retirer: asyncio.Task | None = None
        self._intent_lock = asyncio.Lock()
        self._router_lock = asyncio.Lock()  # router changes never interleave
        self._tasks: set[asyncio.Task] = set()
        self._pending: str | None = None  # the newest view not yet on disk
        self._writer: asyncio.Task | None = None
        # Standby (MANAGED with the controller): this member holds no router address, and the
        # controller keeps it ready beside the primary as of this epoch (None: not reported).
        self._withdrawn = False
        self._standby_epoch: int | None = None
        self._standby_unstaged: tuple | None = None  # (epoch, status, error) of the last answer not staging it
        self._standby_task: asyncio.Task | None = None
        self._arm_pending = False  # a replicated view not armed yet (``_rearm``)
        self._armer: asyncio.Task | None = None
        self._retrier: asyncio.Task | None = None  # pushes a failed intent again (``_push_again``)
        self._retrier_epoch: int | None = None
        if self.ha is not None:
            self.ha.on_promote = self._on_promote
            self.ha.on_demote = self._on_demote

    # -- persistence --------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _snapshot(self) -> dict:
        return {"instances": self.instances, "groups": self.groups, "addresses": self.addresses,
                "epoch": self.epoch, "version": self.version, "recall": self._recall}

    def _save(self) -> None:
        if self.ha is not None and self.state.value == "ENABLED" and self.http is not None:
            # The DISABLED peer keeps a copy, so a takeover starts from the same view.
            self.version += 1
            if self._replicator is None or self._replicator.done():
                self._replicator = self._background(self._replicate_pending())
        self._persist()

    def _persist(self) -> None:
        """Write the view to disk in a worker thread, newest snapshot last.

        Never on the event loop: a rename can wait hundreds of ms for the filesystem
        journal, and a DISABLED CC stalled 573 ms that way (its heartbeats stopped, one CC
        failover took 778 ms). The file is a cache: a CC rebuilds from its NCs anyway.
        """
        self._pending = json.dumps(self._snapshot(), sort_keys=True)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending is not None:
            text, self._pending = self._pending, None
            try:
                await asyncio.to_thread(write_atomic, self.state_file, text)
            except OSError as exc:
                self.events.emit("cc.save_failed", error=str(exc))

    async def _replicate_pending(self) -> None:
        """Send the standby the newest view until it has acknowledged the newest version:
        one request at a time, so views arrive in order, each to the address the peer is
        heard on (the heartbeat link, else the cloud network). Ends while the peer is dead
        (it rebuilds from the NCs when it returns, and gets the next change) or refuses."""
        try:
            while self._acked < self.version and self.state.value == "ENABLED" and self.ha.peer_alive():
                sent, snap = self.version, json.dumps(self._snapshot())
                url = f"http://{self.ha.peer_address()}:{self.config['port']}/internal/ha/state"
                try:
                    async with self.http.put(url, data=snap, headers={"Content-Type": "application/json"},
                                             timeout=aiohttp.ClientTimeout(total=REPLICATE_WAIT_S)) as r:
                        answer = await r.json(content_type=None)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    self.events.emit("cc.replication_failed", version=sent, error=repr(exc)[:300])
                    await asyncio.sleep(self.ha.interval)
                    continue
                if r.status != 200:
                    self.events.emit("cc.replication_refused", version=sent, status=r.status, answer=answer)
                    return
                self._acked = max(self._acked, sent)
                async with self._replication:
                    self._replication.notify_all()
        finally:
            async with self._replication:
                self._replication.notify_all()

    async def _replicated(self) -> None:
        """Wait (at most REPLICATE_WAIT_S) until the standby holds this member's view as of
        now; a change is answered to the CLC only then, unless the standby is dead or slow
        (an event says so: the CLC's repair brings a new primary in line)."""
        if self.ha is None or self.state.value != "ENABLED":
            return
        upto = self.version

        def settled() -> bool:
            return self._acked >= upto or self._replicator is None or self._replicator.done()

        try:
            async with self._replication:
                await asyncio.wait_for(self._replication.wait_for(settled), REPLICATE_WAIT_S)
        except asyncio.TimeoutError:
            pass
        if self._acked < upto:
            self.events.emit("cc.replication_unacknowledged", version=upto, acked=self._acked,
                             peer_alive=self.ha.peer_alive())

    async def handle_peer_state(self, request: web.Request) -> web.Response:
        self.require_internal(request, "cc")
        if self.state.value == "ENABLED":
            return self._error("Conflict", "this CC is the primary", 409)
        snap = await request.json()
        if int(snap.get("epoch", 0)) < self.epoch:
            return self._error("StaleEpoch", f"epoch {snap.get('epoch')} < {self.epoch}", 409)
        position = (int(snap["epoch"]), int(snap.get("version", 0)))
        if position < (self.epoch, self.version):
            # Overtaken by a newer view already taken (views are sent in order; this is a
            # late duplicate): acknowledged, and the newer view stays.
            return web.json_response({"ok": True, "version": self.version})
        self.instances, self.groups = snap["instances"], snap["groups"]
        self.addresses, (self.epoch, self.version) = snap["addresses"], position
        self._recall = dict(snap.get("recall", {}))
        self._persist()
        self._rearm()
        return web.json_response({"ok": True})

    async def _on_promote(self, epoch: int) -> None:
        """Take the cluster over, before the VIPs move here.

        Route first, from the view the old primary replicated to this member: users'
        traffic waits on it. Then ask the NCs what they run, in the background, and route
        again if that differs (an instance placed after the last replicated change).
        Rebuilding from the NCs first put 5-15 ms of HTTP in every takeover.
        """
        # Staged: the controller keeps this member ready at the newest epoch it knows of,
        # so the switches carry its routing already and the takeover need not wait on them.
        staged = self._standby_epoch is not None and self._standby_epoch >= self._known_epoch(own=False)
        self._withdrawn, self._standby_epoch = False, None
        self.epoch = epoch
        self.scheduler, self.alloc = self._empty_placement(self.scheduler.policy)
        self._restore_view()
        await self.publish_intent("promoted", force=True, staged=staged)
        self._background(self._reconcile(epoch))

    async def _reconcile(self, epoch: int) -> None:
        before = self.intent()
        await self.rebuild_from_ncs()
        if self.epoch == epoch and self.state.value == "ENABLED" and self.intent() != before:
            await self.publish_intent("reconciled with the NCs")

    async def _on_demote(self, reason: str) -> None:
        await self._withdraw_router()

    # -- lifecycle ----------------------------------------------------------------------

    def setup_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/cluster/instances", self.handle_run)
        r.add_get("/cluster/instances", self.handle_describe)
        r.add_delete("/cluster/instances/{id}", self.handle_terminate)
        r.add_put("/cluster/groups/{id}", self.handle_group)
        r.add_get("/cluster/groups", self.handle_group_digests)
        r.add_put("/cluster/addresses/{ip}", self.handle_associate)
        r.add_delete("/cluster/addresses/{ip}", self.handle_disassociate)
        r.add_get("/cluster/capacity", self.handle_capacity)
        r.add_put("/internal/ha/state", self.handle_peer_state)
        r.add_post("/cluster/instances/{id}/volumes", self.handle_attach)
        r.add_delete("/cluster/instances/{id}/volumes/{volume}", self.handle_detach)

    async def on_start(self) -> None:
        self.http = aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: self.token},
                                          timeout=aiohttp.ClientTimeout(total=10))
        await self.rebuild_from_ncs()
        self._poller = asyncio.create_task(self._poll_ncs())
        self._retirer = asyncio.create_task(supervise(self.events, "cc.retire", self._retire_once,
                                                      pause=min(max(self.retention_s / 4, 0.05), 60.0)))
        if self.ha is not None and self.mode in MANAGED_MODES:
            # A CC restarting after a crash may have left routes and addresses in its
            # kernel: a member starts clean and routes only once elected.
            await self._withdraw_router()
            if self.control_socket is not None and self.mode == "MANAGED":
                self._standby_task = asyncio.create_task(self._standby_loop())
        elif self.state.value == "ENABLED":
            await self.publish_intent("start")

    async def on_stop(self) -> None:
        tasks = [t for t in (self._poller, self._retirer, self._standby_task, *self._tasks) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            await self._writer  # the newest view reaches the disk before the process ends
        if self.http:
            await self.http.close()

    def status_extra(self) -> dict:
        return {"zone": self.zone, "instances": len(self.instances), "epoch": self.epoch,
                "capacity": self.scheduler.capacity()}

    def unavailable(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "ServiceUnavailable",
                                  "message": f"{self.host} is {self.state.value}"}, status=503)

    # -- the view of the cluster ------------------------------------------------------------

    async def rebuild_from_ncs(self) -> None:
        """Rebuild placements and addresses from what the NCs run (Eucalyptus did the same)."""
        found = 0
        for nc, info in self.ncs.items():
            try:
                async with self.http.get(f"{info['url']}/instances") as r:
                    listing = (await r.json())["instances"]
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
                continue
            for inst in listing:
                if inst.get("state") == "terminated":
                    continue
                iid = inst["id"]
                if self.instances.get(iid, {}).get("state") == "terminated":
                    # Terminated here (a hand-off or terminate its NC did not answer): the
                    # CC's word stands; the poller ends it on the NC.
                    self._recall.setdefault(iid, time.time())
                    continue
                rec = self.instances.setdefault(iid, {
                    "id": iid, "nc": nc, "slot": inst["slot"], "ip": inst["ip"], "mac": inst["mac"],
                    "prefix": inst.get("prefix"), "gateway": inst.get("gateway"),
                    "group": inst.get("group") or "default", "vlan": inst.get("vlan"),
                    "account": inst.get("account"),
                    "image": inst.get("image"), "public_ip": None, "reason": ""})
                rec["state"] = inst["state"]
                found += 1
        self._restore_view()
        self._save()
        self.events.emit("cc.rebuilt", instances=found)

    def _restore_view(self) -> None:
        """Occupy the slots and addresses of the instances this CC knows (idempotent)."""
        for iid, why in self._occupy(self.scheduler, self.alloc).items():
            self.instances[iid].update(state="terminated", reason=why, ended=time.time())

    def _occupy(self, scheduler: Scheduler, alloc: NetworkAllocator) -> dict[str, str]:
        """Occupy the known instances' slots in ``scheduler`` and addresses in ``alloc``;
        returns those that do not fit (id -> why), for the caller to terminate."""
        misfits = {}
        for iid, rec in self.instances.items():
            if rec.get("state") == "terminated":
                continue
            try:
                scheduler.occupy(rec["nc"], rec["slot"], iid)
                alloc.restore(iid, rec.get("group") or "default", rec["ip"])
            except (KeyError, ValueError, AllocationError) as exc:
                misfits[iid] = f"inconsistent after restart: {exc}"
        return misfits

    def _empty_placement(self, policy: str) -> tuple[Scheduler, NetworkAllocator]:
        """A scheduler over this cluster's NCs and a network allocator, both holding nothing."""
        return (Scheduler([NodeState(n, list(v["slots"])) for n, v in self.ncs.items()], policy),
                NetworkAllocator(self.mode, self.cluster, int(self.config.get("addrs_per_net", 32))))

    async def _poll_ncs(self) -> None:
        """Every NC asked for its instances' states, each on a loop of its own: an NC that
        hangs (each request waits up to 10 s) delays no other NC's news."""
        await asyncio.gather(*(self._poll_nc(nc) for nc in self.ncs))

    async def _poll_nc(self, nc: str) -> None:
        """One NC's loop (supervised, ``cc.poll``): an unexpected error (a malformed listing,
        a failed intent) is a ``loop.failed`` event, and the loop goes on."""
        await supervise(self.events, "cc.poll", lambda: self._poll_once(nc), pause=POLL_S, nc=nc)

    async def _poll_once(self, nc: str) -> None:
        mine = [i for i in self.instances.values() if i["nc"] == nc and i["state"] not in ("terminated",)]
        if not mine and not (self.state.value == "ENABLED" and self._recalls_on(nc)):
            return
        try:
            async with self.http.get(f"{self.ncs[nc]['url']}/instances") as r:
                states = {i["id"]: i for i in (await r.json())["instances"]}
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            return  # down or busy: asked again next round
        changed = False
        for rec in mine:
            if rec["state"] == "terminated" or rec["id"] in self._recall:
                continue  # terminated during the request: the NC's listing predates that
            got = states.get(rec["id"])
            if got and got["state"] != rec["state"]:
                rec["state"] = got["state"]
                rec["reason"] = got.get("reason", "")
                changed = True
                if got["state"] == "terminated":
                    rec["ended"] = time.time()
                    self._release(rec)
        await self._recall_from(nc, states)
        if changed:
            self._save()
            await self.publish_intent("instance state")

    async def _recall_from(self, nc: str, states: dict[str, dict]) -> None:
        """End on ``nc`` the instances to recall there (terminated here) that its listing
        ``states`` shows live; forget those it lists terminated, or has not listed for
        RECALL_S. The primary only: a DISABLED member holds the list for its takeover."""
        if self.state.value != "ENABLED":
            return
        for iid in [i for i in self._recall if i not in self.instances]:
            del self._recall[iid]  # not in the view (replaced by a replicated one)
        for iid in self._recalls_on(nc):
            got = states.get(iid)
            if iid not in self._recall or self.instances.get(iid, {}).get("state") != "terminated":
                self._recall.pop(iid, None)  # forgotten meanwhile, or not terminated: not ours to end
            elif got is not None and got.get("state") != "terminated":
                try:
                    async with self.http.delete(f"{self.ncs[nc]['url']}/instances/{iid}") as r:
                        await r.read()
                        if r.status < 300:
                            self.events.emit("cc.recalled", instance=iid, nc=nc)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass  # next round
            elif got is not None or time.time() - self._recall[iid] > RECALL_S:
                del self._recall[iid]

    def _recalls_on(self, nc: str) -> list[str]:
        """The instances to recall whose NC is ``nc`` (a copy: recalling changes the list)."""
        return [i for i in self._recall if self.instances.get(i, {}).get("nc") == nc]

    def _end(self, rec: dict, reason: str) -> None:
        """Terminate ``rec`` in the view: its slot, address and elastic IP are free again,
        and it is forgotten ``terminated_retention_s`` from now (``_retire_once``)."""
        rec["state"], rec["reason"], rec["ended"] = "terminated", reason, time.time()
        self._release(rec)

    async def _retire_once(self) -> None:
        """Forget instances terminated longer than ``terminated_retention_s`` ago (a round of
        the supervised loop ``cc.retire``; the primary only, and its standby gets the view).
        One still to be recalled from its NC stays until that is done."""
        if self.state.value != "ENABLED":
            return
        cutoff = time.time() - self.retention_s
        old = [iid for iid, rec in self.instances.items()
               if rec["state"] == "terminated" and rec.get("ended", 0) < cutoff and iid not in self._recall]
        for iid in old:
            del self.instances[iid]
        if old:
            self.events.emit("cc.retired", instances=len(old))
            self._save()

    def _release(self, rec: dict) -> None:
        self.scheduler.release(rec["id"])
        self.alloc.release(rec["id"])
        for ip, iid in list(self.addresses.items()):
            if iid == rec["id"]:
                del self.addresses[ip]

    # -- API ------------------------------------------------------------------------------

    def _error(self, code: str, message: str, status: int = 400) -> web.Response:
        return web.json_response({"error": code, "message": message}, status=status)

    async def handle_run(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        try:
            body = await request.json()
            wanted = body["instances"]
            for w in wanted:
                str(w["id"]), w["image"]["bucket"], w["image"]["key"], w["group"]["id"]
        except (ValueError, KeyError, TypeError) as exc:
            return self._error("InvalidParameterValue", f"bad request: {exc}")
        if any(w["id"] in self.instances and self.instances[w["id"]]["state"] != "terminated" for w in wanted):
            return self._error("InvalidParameterValue", "instance id already known", 409)
        try:
            placed = self.scheduler.place([w["id"] for w in wanted])
        except InsufficientCapacity as exc:
            return self._error("InsufficientInstanceCapacity", f"{self.zone}: {exc}", 409)
        placements = []
        try:
            for w in wanted:
                group = w["group"]
                self.groups.setdefault(group["id"], {"id": group["id"], "name": group.get("name", group["id"]),
                                                     "account": w.get("account"), "rules": group.get("rules", [])})
                ip, mac, gateway, vlan, prefix = self.alloc.allocate(w["id"], group["id"])
                nc, slot = placed[w["id"]]
                rec = {"id": w["id"], "account": w.get("account"), "image": w["image"], "group": group["id"],
                       "nc": nc, "slot": slot, "ip": ip, "mac": mac, "gateway": gateway, "vlan": vlan,
                       "prefix": prefix, "state": "pending", "reason": "", "public_ip": None}
                self.instances[w["id"]] = rec
                placements.append(rec)
        except AllocationError as exc:
            for w in wanted:
                self.scheduler.release(w["id"])
                self.alloc.release(w["id"])
                self.instances.pop(w["id"], None)
            return self._error("InsufficientAddressCapacity", str(exc), 409)
        self._save()
        self.events.emit("cc.scheduled", instances=[(p["id"], p["nc"], p["slot"], p["ip"]) for p in placements])
        # Network first, so the instance's traffic flows the moment it boots.
        await self.publish_intent("run")
        # Then hand each instance to its NC, and answer only once every NC has it (or has
        # refused it): an instance the CLC was told about is on an NC, so a CC that crashes
        # right after answering rebuilds it from the NCs. Handing off in the background let
        # a crash in between lose the instance, left pending at the CLC for good.
        # Not one terminated meanwhile (the CLC withdraws a run it stopped waiting for).
        handed = await asyncio.gather(*(self._boot_on_nc(rec) for rec in placements if rec["state"] == "pending"))
        if not all(handed):
            self._save()
            self._background(self.publish_intent("boot failed"))  # the answer does not wait on it
        await self._replicated()
        return web.json_response({"placements": placements})

    async def _boot_on_nc(self, rec: dict) -> bool:
        """Hand ``rec`` to its NC, which accepts at once and boots in the background; whether
        it took it. One the NC refuses or does not take within HANDOFF_S is terminated here;
        one it did not answer for may have arrived all the same, and is recalled."""
        url = self.ncs[rec["nc"]]["url"]
        body = {k: rec[k] for k in ("id", "slot", "image", "mac", "ip", "prefix", "gateway", "group", "vlan",
                                    "account")}
        try:
            async with self.http.post(f"{url}/instances", json=body,
                                      timeout=aiohttp.ClientTimeout(total=HANDOFF_S)) as r:
                if r.status < 300:
                    if rec["state"] == "terminated":  # withdrawn meanwhile: end it on the NC too
                        self._recall[rec["id"]] = time.time()
                    return True
                answer = await r.json(content_type=None)
                why = f"{rec['nc']} refused: {answer.get('error')}: {answer.get('message')}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            why = f"{rec['nc']} did not answer: {exc or type(exc).__name__}"
            self._recall[rec["id"]] = time.time()
        self._end(rec, f"boot request failed: {why}")
        self.events.emit("instance.failed", instance=rec["id"], reason=rec["reason"])
        return False

    async def handle_describe(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        return web.json_response({"zone": self.zone, "instances": list(self.instances.values())})

    async def handle_terminate(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        rec = self.instances.get(request.match_info["id"])
        if rec is None:
            return self._error("InvalidInstanceID.NotFound", request.match_info["id"], 404)
        if rec["state"] != "terminated":
            try:
                async with self.http.delete(f"{self.ncs[rec['nc']]['url']}/instances/{rec['id']}") as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self._recall[rec["id"]] = time.time()  # ended on the NC when it lists it
            self._end(rec, "terminated by request")
            self._save()
            await self.publish_intent("terminate")
            await self._replicated()
        return web.json_response(rec)

    async def handle_group(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        try:
            body = await request.json()
            rules = list(body.get("rules", []))
        except (ValueError, TypeError) as exc:
            return self._error("InvalidParameterValue", str(exc))
        gid = request.match_info["id"]
        group = {"id": gid, "name": body.get("name", gid), "account": body.get("account"), "rules": rules}
        if self.groups.get(gid) != group:
            self.groups[gid] = group
            self._save()
            await self.publish_intent("group rules")
            await self._replicated()
        return web.json_response(group)

    async def handle_group_digests(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        return web.json_response({"groups": {gid: group_digest(g) for gid, g in self.groups.items()}})

    async def handle_associate(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        ip = request.match_info["ip"]
        try:
            iid = (await request.json())["instance"]
        except (ValueError, KeyError, TypeError) as exc:
            return self._error("InvalidParameterValue", str(exc))
        rec = self.instances.get(iid)
        if rec is None or rec["state"] == "terminated":
            return self._error("InvalidInstanceID.NotFound", iid, 404)
        for other in self.instances.values():
            if other.get("public_ip") == ip:
                other["public_ip"] = None
        # An instance has one elastic IP: the one it held before is let go (the CLC does the same).
        for held, holder in list(self.addresses.items()):
            if holder == iid and held != ip:
                del self.addresses[held]
        rec["public_ip"] = ip
        self.addresses[ip] = iid
        self._save()
        await self.publish_intent("associate")
        await self._replicated()
        return web.json_response({"public_ip": ip, "instance": iid})

    async def handle_disassociate(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        ip = request.match_info["ip"]
        iid = self.addresses.pop(ip, None)
        if iid and iid in self.instances:
            self.instances[iid]["public_ip"] = None
        self._save()
        await self.publish_intent("disassociate")
        await self._replicated()
        return web.json_response({"public_ip": ip, "instance": None})

    async def handle_capacity(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        return web.json_response({"zone": self.zone, **self.scheduler.capacity()})

    async def handle_attach(self, request: web.Request) -> web.Response:
        """Relay a volume attachment to the instance's NC (the CLC never talks to NCs)."""
        self.require_internal(request, "clc")
        rec = self.instances.get(request.match_info["id"])
        if rec is None or rec["state"] != "running":
            return self._error("IncorrectState", "instance not running in this cluster", 409)
        body = await request.read()
        try:
            async with self.http.post(f"{self.ncs[rec['nc']]['url']}/instances/{rec['id']}/volumes", data=body,
                                      headers={"Content-Type": "application/json"}) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return self._error("Unavailable", f"{rec['nc']}: {exc}", 503)

    async def handle_detach(self, request: web.Request) -> web.Response:
        self.require_internal(request, "clc")
        rec = self.instances.get(request.match_info["id"])
        if rec is None:
            return self._error("InvalidInstanceID.NotFound", request.match_info["id"], 404)
        url = f"{self.ncs[rec['nc']]['url']}/instances/{rec['id']}/volumes/{request.match_info['volume']}"
        try:
            async with self.http.delete(url) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return self._error("Unavailable", f"{rec['nc']}: {exc}", 503)

    # -- network intent -----------------------------------------------------------------------

    def intent(self, alloc: NetworkAllocator | None = None, leave_out=()) -> dict:
        """The cluster's network intent in the schema of docs/intent.md (the groups' subnets
        from ``alloc``, by default this member's allocator; the instances in ``leave_out``
        counted as terminated)."""
        alloc = alloc if alloc is not None else self.alloc
        live = [i for i in self.instances.values() if i["state"] != "terminated" and i["id"] not in leave_out]
        used_groups = {i["group"] for i in live}
        groups = []
        for gid in sorted(used_groups):
            net = alloc.group_net(gid)
            g = self.groups.get(gid, {"name": gid, "account": None, "rules": []})
            groups.append({"id": gid, "name": g["name"], "account": g.get("account"), "vlan": net.vlan,
                           "subnet": net.subnet, "gateway": net.gateway, "rules": g.get("rules", [])})
        return {"cluster": self.cluster, "epoch": self.epoch, "mode": self.mode, "primary_cc": self.host,
                "groups": groups,
                "instances": [{"id": i["id"], "mac": i["mac"], "ip": i["ip"], "nc": i["nc"], "slot": i["slot"],
                               "group": i["group"], "public_ip": i.get("public_ip")} for i in live]}

    async def publish_intent(self, reason: str, force: bool = False, staged: bool = False) -> None:
        """Push the intent to the SDN controller and apply the routing on this host.

        ``staged``: a promotion whose switches hold this member ready (the controller
        accepted its standby report at the newest epoch): it routes at once and tells
        the controller in the background, which fences the old primary."""
        if self.state.value != "ENABLED" and not force:
            return
        intent = self.intent()
        controller = self.control_socket is not None and Path(self.control_socket).exists()
        async with self._intent_lock:
            if reason == "promoted" and controller and (staged or self.mode == "MANAGED-NOVLAN"):
                # Nothing to wait for: MANAGED-NOVLAN switches forward anything, and a
                # staged member's frames are in the groups' VLANs already. Pushing after
                # the router keeps the controller's work out of this host's takeover
                # (60 CC failovers: 5.5 ms p50, 8.9 max, against 10.6 and 23.0 waiting).
                await self._apply_router(intent, force, inline=True)
                self._push_again(reason)
                return
            # A new primary not staged pushes its intent and takes the router (rules,
            # addresses, every instance's neighbour entry) at the same time. Until the
            # controller has the intent the switches drop this host's frames in the groups'
            # VLANs; that loses nothing: the controller announces the group gateways itself
            # once its flows are in, and the first routed packet needs no ARP request (the
            # neighbour entries are set). Pushing first and taking the addresses after made
            # the takeover 14.0 ms p50, 24.8 ms max over 60 CC failovers; both at once,
            # 10.6 and 23.0.
            if reason == "promoted" and controller:
                status, _ = await asyncio.gather(self._push_intent(intent, reason),
                                                 self._apply_router(intent, force, inline=True))
            else:
                await self._apply_router(intent, force, inline=reason == "promoted")
                status = await self._push_intent(intent, reason) if controller else None
            published = status == 200
        if published:
            self.events.emit("intent.published", epoch=self.epoch, reason=reason,
                             instances=len(intent["instances"]), groups=len(intent["groups"]))
        elif status == 0 or (status or 0) >= 500:
            # Not answered (the controller stopped or restarting) or failed: the switches
            # keep the previous intent, and for a takeover that is the old primary in the
            # groups' VLANs, so it is pushed again until taken (nothing else would).
            self._push_again(reason)

    def _push_again(self, reason: str) -> None:
        """Push the newest intent again until the controller takes it (``_publish_later``);
        one such task per epoch: it pushes the newest view, whatever changed meanwhile."""
        if self._retrier is None or self._retrier.done() or self._retrier_epoch != self.epoch:
            self._retrier_epoch = self.epoch
            self._retrier = self._background(self._publish_later(reason))

    def _background(self, coro) -> asyncio.Task:
        """Run a coroutine beside the service; an exception is a ``cc.task_failed`` event."""
        return self.events.spawn(coro, self._tasks, "cc.task_failed")

    async def _publish_later(self, reason: str) -> None:
        """A staged takeover's intent, pushed after the router, or an intent whose push was
        not taken (``_push_again``): until the controller has it the old primary stays in
        the groups' VLANs, so it is pushed again (paced, doubling up to a second) until the
        controller answers it, for as long as this member is the primary of this epoch."""
        epoch, pause = self.epoch, self.ha.interval if self.ha is not None else 0.05
        while True:
            async with self._intent_lock:
                if self.state.value != "ENABLED" or self.epoch != epoch:
                    return
                if Path(self.control_socket).exists():
                    intent = self.intent()  # the newest view: a change made meanwhile is not undone
                    status = await self._push_intent(intent, reason)
                else:
                    status = 0  # no controller now (restarting): push once its socket is back
            if status == 200:
                self.events.emit("intent.published", epoch=intent["epoch"], reason=reason,
                                 instances=len(intent["instances"]), groups=len(intent["groups"]))
                return
            if 0 < status < 500:
                return  # an answer, not a failure (a 409 names a newer epoch: the HA agent steps down)
            await asyncio.sleep(pause)
            pause = min(2 * pause, 1.0)

    async def _push_intent(self, intent: dict, reason: str) -> int:
        """PUT the intent to the SDN controller; the answer's status (200 accepted), 0 when
        none came. Refused for a stale epoch: the pair moved on without this member hearing
        of it, and its HA agent learns the controller's epoch (an ENABLED member steps down)."""
        try:
            status, answer = await control.call(self.control_socket, "PUT", f"/intent/clusters/{self.cluster}",
                                                intent, timeout=5.0)
        except (OSError, ValueError) as exc:
            self.events.emit("intent.failed", error=str(exc), reason=reason)
            return 0
        if status != 200:
            self.events.emit("intent.refused", status=status, answer=answer, reason=reason)
            current = answer.get("current") if isinstance(answer, dict) else None
            if status == 409 and type(current) is int and self.ha is not None:
                self.ha.learn_epoch(current, "the SDN controller refused the intent")
        return status

    async def _apply_router(self, intent: dict, force: bool = False, inline: bool = False) -> None:
        """Make this host the cluster's router for the intent (MANAGED modes only); ``inline``:
        a takeover's, in the event loop's own thread (``router.apply_router_async``)."""
        if self.mode not in MANAGED_MODES:
            return
        config = router.render_router(intent, router.RouterHost.from_cc_config(self.config))
        async with self._router_lock:
            # A demotion may have withdrawn the router while this intent waited.
            if self.state.value != "ENABLED" and not force:
                return
            try:
                # A takeover announces every address, also those this host still held.
                result = await router.apply_router_async(config, primary=True, inline=inline, announce_held=inline)
            except (OSError, RuntimeError) as exc:
                self.events.emit("router.error", error=str(exc)[:500])
                return
        self.events.emit("router.applied", gateways=len(config.gateways),
                         elastic_ips=len(config.public_addresses), added=result["added"], ms=result.get("ms"))
        loop = asyncio.get_running_loop()
        for delay in router.ANNOUNCE_AGAIN_S:
            for intf, addresses in result["announced"].items():
                loop.call_later(delay, self._announce_again, intf, addresses)

    def _announce_again(self, intf: str, addresses: list[str]) -> None:
        """Gratuitous ARP once more for addresses still ours (neighbours ignore an update to an
        entry changed less than a second ago); a demoted CC holds them no longer."""
        if self.state.value == "ENABLED":
            router.announce(intf, addresses)

    def _standby_router(self) -> router.RouterConfig:
        """The router this member would apply if promoted now: the view its primary
        replicated here, placed as ``_on_promote`` places it (a fresh scheduler and
        allocator holding the view's instances; one that does not fit left out, as the
        promotion terminates it). Nothing of this member's own state changes."""
        scheduler, alloc = self._empty_placement(self.scheduler.policy)
        misfits = self._occupy(scheduler, alloc)
        return router.render_router(self.intent(alloc, leave_out=misfits), router.RouterHost.from_cc_config(self.config))

    async def _withdraw_router(self, rearm: bool = False) -> None:
        """Hold none of the router's addresses (this CC is not, or no longer, primary) and
        the rules of its view armed, so a promotion to that view moves addresses only
        (components/cc/router.py). ``rearm``: the view changed (replicated by the primary);
        done only while this member is still a withdrawn secondary."""
        if self.mode not in MANAGED_MODES:
            return
        config = self._standby_router()
        async with self._router_lock:
            if rearm and (self.state.value == "ENABLED" or not self._withdrawn):
                return  # promoted meanwhile: the promotion routes
            try:
                result = await router.apply_router_async(config, primary=False, armed=True)
            except (OSError, RuntimeError) as exc:
                self.events.emit("router.error", error=str(exc)[:500])
                return
        self._withdrawn = True
        self.events.emit("router.armed" if rearm else "router.withdrawn", gateways=len(config.gateways),
                         elastic_ips=len(config.public_addresses), ms=result.get("ms"))

    def _rearm(self) -> None:
        """Arm the rules of the view just replicated here, beside the request; views that
        arrive meanwhile are armed after it, the newest last."""
        self._arm_pending = True
        if self._armer is None or self._armer.done():
            self._armer = self._background(self._arm_pending_views())

    async def _arm_pending_views(self) -> None:
        while self._arm_pending:
            self._arm_pending = False
            await self._withdraw_router(rearm=True)

    def _known_epoch(self, own: bool = True) -> int:
        """The newest epoch of this pair this member knows of: its view's (replicated by the
        primary), its peer's (heartbeats), the controller's (a refusal), and with ``own``
        its HA agent's (during a promotion that is already the new one)."""
        ha = self.ha
        return max(self.epoch, ha.peer.epoch, ha.superseded or 0, ha.epoch if own else 0)

    async def _standby_loop(self) -> None:
        """While this member is a secondary with its router withdrawn, have the controller
        keep it ready (docs/intent.md, "Standby"), again whenever it learns a newer epoch.

        Recorded only once staged with the flows in; an answer that is not that (no intent
        of that epoch yet, or this member still its primary) is asked again after a few
        intervals and logged once per answer. Supervised (``cc.standby``): an unexpected
        error is a ``loop.failed`` event and the reports go on."""
        await supervise(self.events, "cc.standby", self._standby_once, pause=self.ha.interval)

    async def _standby_once(self) -> float | None:
        """One round of ``_standby_loop``; the pause before the next when not the usual."""
        if self.state.value == "ENABLED" or not self._withdrawn:
            return None
        known = self._known_epoch()
        if self._standby_epoch == known or not Path(self.control_socket).exists():
            return None
        status, answer = await self._put_standby(known)
        if self.state.value == "ENABLED" or not self._withdrawn:
            return None  # promoted meanwhile: the report is the past
        staged = status == 200 and answer.get("staged") is True and answer.get("installed") is not False
        if staged:
            self._standby_epoch, self._standby_unstaged = known, None
            self.events.emit("intent.standby", epoch=known, staged=True)
            return None
        if self._standby_unstaged != (known, status, answer.get("error")):
            self._standby_unstaged = (known, status, answer.get("error"))
            self.events.emit("intent.standby_not_staged", epoch=known, status=status, answer=answer)
        current = answer.get("current")
        if status == 409 and type(current) is int and current > known:
            self.ha.learn_epoch(current, "the SDN controller holds a newer intent")
        return 4 * self.ha.interval

    async def _put_standby(self, epoch: int) -> tuple[int, dict]:
        """One standby report; (status, answer), status 0 when the controller did not answer."""
        try:
            status, answer = await control.call(self.control_socket, "PUT",
                                                f"/intent/clusters/{self.cluster}/standby",
                                                {"host": self.host, "epoch": epoch}, timeout=5.0)
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}
        return status, answer if isinstance(answer, dict) else {"error": f"not an object: {answer!r}"[:200]}
