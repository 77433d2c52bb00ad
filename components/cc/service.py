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
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common.modes import MANAGED_MODES
from components.common.service import INTERNAL_TOKEN_HEADER, Service
from components.common.supervise import supervise

from .api import ClusterAPI
from .intent import Intents
from .netalloc import NetworkAllocator
from .nodes import TERMINATED_RETENTION_S, Nodes
from .replication import Replication
from .routing import Routing
from .scheduler import Scheduler
from .takeover import Takeover


def _kept_by(manager: str, name: str) -> property:
    """An attribute a manager keeps, read and set through the service under its old name
    (tests reach these)."""
    return property(lambda self: getattr(getattr(self, manager), name),
                    lambda self, value: setattr(getattr(self, manager), name, value))


class ClusterController(Service):
    component = "cc"
    api_prefixes = ("/cluster",)

    def __init__(self, config: dict):
        # One manager per concern, built first: Service's constructor sets up their routes.
        self.replication = Replication(self)
        self.nodes = Nodes(self)
        self.intents = Intents(self)
        self.routing = Routing(self)
        self.takeover = Takeover(self)
        self.api = ClusterAPI(self)
        super().__init__(config)
        self.cluster = int(config.get("cluster") or 1)
        self.zone = f"cluster{self.cluster}"
        self.mode = config.get("mode", "MANAGED")
        self.ncs: dict[str, dict] = config.get("ncs", {})
        self.data = Path(config["data_dir"])
        self.state_file = self.data / "cluster.json"
        self.retention_s = float(config.get("terminated_retention_s", TERMINATED_RETENTION_S))
        self.token = config.get("internal_token", "")
        self.http: aiohttp.ClientSession | None = None
        # The SDN controller's socket (MANAGED modes with takeover sdn; components/common/control.py).
        self.control_socket: str | None = config.get("control_socket") or None
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._retirer: asyncio.Task | None = None
        self._standby_task: asyncio.Task | None = None
        # The view (replication.py sends it to the standby and keeps it on disk).
        saved = self.replication.load()
        self.instances: dict[str, dict] = saved.get("instances", {})
        self.groups: dict[str, dict] = saved.get("groups", {})
        self.addresses: dict[str, str] = saved.get("addresses", {})  # public ip -> instance
        self.epoch = int(saved.get("epoch", 1))
        # The view's version within the epoch: one more per change the primary makes. The
        # standby takes a replicated view only if it is newer than the one it holds, and
        # the primary waits for its acknowledgement (``Replication.replicated``) before answering.
        self.version = int(saved.get("version", 0))
        # Instance id -> since when (wall clock): terminated here while its NC may still run
        # it (a hand-off or terminate the NC did not answer); nodes.py, RECALL_S.
        self._recall: dict[str, float] = dict(saved.get("recall", {}))
        self.scheduler, self.alloc = self._empty_placement(config.get("schedule_policy", "ROUNDROBIN"))
        if self.ha is not None:
            self.ha.on_promote = self.takeover.on_promote
            self.ha.on_demote = self.takeover.on_demote
            self.ha.standby_ready = self.takeover.ready

    # What the managers keep, under the names the service had for them.
    _acked = _kept_by("replication", "acked")
    _writer = _kept_by("replication", "writer")
    _retrier = _kept_by("intents", "retrier")
    _withdrawn = _kept_by("routing", "withdrawn")
    _armer = _kept_by("routing", "armer")
    _standby_epoch = _kept_by("takeover", "standby_epoch")
    _standby_unstaged = _kept_by("takeover", "standby_unstaged")

    # -- lifecycle ----------------------------------------------------------------------

    def setup_routes(self, app: web.Application) -> None:
        r, api = app.router, self.api
        r.add_post("/cluster/instances", api.handle_run)
        r.add_get("/cluster/instances", api.handle_describe)
        r.add_delete("/cluster/instances/{id}", api.handle_terminate)
        r.add_put("/cluster/groups/{id}", api.handle_group)
        r.add_get("/cluster/groups", api.handle_group_digests)
        r.add_put("/cluster/addresses/{ip}", api.handle_associate)
        r.add_delete("/cluster/addresses/{ip}", api.handle_disassociate)
        r.add_get("/cluster/capacity", api.handle_capacity)
        r.add_put("/internal/ha/state", self.replication.handle_peer_state)
        r.add_post("/cluster/instances/{id}/volumes", api.handle_attach)
        r.add_delete("/cluster/instances/{id}/volumes/{volume}", api.handle_detach)

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
            if self.takeover.kept_ready():
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

    def _background(self, coro) -> asyncio.Task:
        """Run a coroutine beside the service; an exception is a ``cc.task_failed`` event."""
        return self.events.spawn(coro, self._tasks, "cc.task_failed")

    # -- the managers' work, under the service's names -------------------------------------

    def intent(self, alloc: NetworkAllocator | None = None, leave_out=()) -> dict:
        """The cluster's network intent (docs/intent.md): ``Intents.intent``."""
        return self.intents.intent(alloc, leave_out)

    async def publish_intent(self, reason: str, force: bool = False, staged: bool = False) -> None:
        """Route on this host and push the intent to the SDN controller: ``Intents.publish``."""
        await self.intents.publish(reason, force, staged)

    async def rebuild_from_ncs(self) -> None:
        """Rebuild placements and addresses from what the NCs run: ``Nodes.rebuild``."""
        await self.nodes.rebuild()

    def _empty_placement(self, policy: str) -> tuple[Scheduler, NetworkAllocator]:
        return self.nodes.empty_placement(policy)

    def _restore_view(self) -> None:
        self.nodes.restore_view()

    async def _poll_ncs(self) -> None:
        await self.nodes.poll()

    def _end(self, rec: dict, reason: str) -> None:
        self.nodes.end(rec, reason)

    async def _retire_once(self) -> None:
        await self.nodes.retire_once()

    def _snapshot(self) -> dict:
        return self.replication.snapshot()

    async def _on_promote(self, epoch: int) -> None:
        await self.takeover.on_promote(epoch)

    async def _standby_loop(self) -> None:
        await self.takeover.standby_loop()

    async def _withdraw_router(self, rearm: bool = False) -> None:
        await self.routing.withdraw(rearm)

    def _rearm(self) -> None:
        self.routing.rearm()
