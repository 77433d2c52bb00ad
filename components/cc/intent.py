"""The cluster's network intent (docs/intent.md) and the CC's client of the SDN controller.

The intent is rendered from the CC's view; the primary publishes it: it routes on its
own host (``Routing``) and pushes the intent to the controller over the run directory's
Unix socket (components/common/control.py), again until the controller takes it. A
standby reports itself to the controller (``put_standby``) so that it is kept ready.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from components.common import control

from .netalloc import NetworkAllocator


class Intents:
    """The intent of the ``ClusterController`` ``cc``, published to the router and the controller."""

    def __init__(self, cc):
        self.cc = cc
        self.lock = asyncio.Lock()
        self.retrier: asyncio.Task | None = None  # pushes a failed intent again (``push_again``)
        self.retrier_epoch: int | None = None

    def intent(self, alloc: NetworkAllocator | None = None, leave_out=()) -> dict:
        """The cluster's network intent in the schema of docs/intent.md (the groups' subnets
        from ``alloc``, by default this member's allocator; the instances in ``leave_out``
        counted as terminated)."""
        cc = self.cc
        alloc = alloc if alloc is not None else cc.alloc
        live = [i for i in cc.instances.values() if i["state"] != "terminated" and i["id"] not in leave_out]
        used_groups = {i["group"] for i in live}
        groups = []
        for gid in sorted(used_groups):
            net = alloc.group_net(gid)
            g = cc.groups.get(gid, {"name": gid, "account": None, "rules": []})
            groups.append({"id": gid, "name": g["name"], "account": g.get("account"), "vlan": net.vlan,
                           "subnet": net.subnet, "gateway": net.gateway, "rules": g.get("rules", [])})
        return {"cluster": cc.cluster, "epoch": cc.epoch, "mode": cc.mode, "primary_cc": cc.host,
                "groups": groups,
                "instances": [{"id": i["id"], "mac": i["mac"], "ip": i["ip"], "nc": i["nc"], "slot": i["slot"],
                               "group": i["group"], "public_ip": i.get("public_ip")} for i in live]}

    async def publish(self, reason: str, force: bool = False, staged: bool = False) -> None:
        """Push the intent to the SDN controller and apply the routing on this host.

        ``staged``: a promotion whose switches hold this member ready (the controller
        accepted its standby report at the newest epoch): it routes at once and tells
        the controller in the background, which fences the old primary."""
        cc = self.cc
        if cc.state.value != "ENABLED" and not force:
            return
        intent = self.intent()
        controller = cc.control_socket is not None and Path(cc.control_socket).exists()
        async with self.lock:
            if reason == "promoted" and controller and (staged or cc.mode == "MANAGED-NOVLAN"):
                # Nothing to wait for: MANAGED-NOVLAN switches forward anything, and a
                # staged member's frames are in the groups' VLANs already. Pushing after
                # the router keeps the controller's work out of this host's takeover
                # (60 CC failovers: 5.5 ms p50, 8.9 max, against 10.6 and 23.0 waiting).
                await cc.routing.apply(intent, force, inline=True)
                self.push_again(reason)
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
                status, _ = await asyncio.gather(self.push(intent, reason),
                                                 cc.routing.apply(intent, force, inline=True))
            else:
                await cc.routing.apply(intent, force, inline=reason == "promoted")
                status = await self.push(intent, reason) if controller else None
            published = status == 200
        if published:
            cc.events.emit("intent.published", epoch=cc.epoch, reason=reason,
                           instances=len(intent["instances"]), groups=len(intent["groups"]))
        elif status == 0 or (status or 0) >= 500:
            # Not answered (the controller stopped or restarting) or failed: the switches
            # keep the previous intent, and for a takeover that is the old primary in the
            # groups' VLANs, so it is pushed again until taken (nothing else would).
            self.push_again(reason)

    def push_again(self, reason: str) -> None:
        """Push the newest intent again until the controller takes it (``_publish_later``);
        one such task per epoch: it pushes the newest view, whatever changed meanwhile."""
        cc = self.cc
        if self.retrier is None or self.retrier.done() or self.retrier_epoch != cc.epoch:
            self.retrier_epoch = cc.epoch
            self.retrier = cc._background(self._publish_later(reason))

    async def _publish_later(self, reason: str) -> None:
        """A staged takeover's intent, pushed after the router, or an intent whose push was
        not taken (``push_again``): until the controller has it the old primary stays in
        the groups' VLANs, so it is pushed again (paced, doubling up to a second) until the
        controller answers it, for as long as this member is the primary of this epoch."""
        cc = self.cc
        epoch, pause = cc.epoch, cc.ha.interval if cc.ha is not None else 0.05
        while True:
            async with self.lock:
                if cc.state.value != "ENABLED" or cc.epoch != epoch:
                    return
                if Path(cc.control_socket).exists():
                    intent = self.intent()  # the newest view: a change made meanwhile is not undone
                    status = await self.push(intent, reason)
                else:
                    status = 0  # no controller now (restarting): push once its socket is back
            if status == 200:
                cc.events.emit("intent.published", epoch=intent["epoch"], reason=reason,
                               instances=len(intent["instances"]), groups=len(intent["groups"]))
                return
            if 0 < status < 500:
                return  # an answer, not a failure (a 409 names a newer epoch: the HA agent steps down)
            await asyncio.sleep(pause)
            pause = min(2 * pause, 1.0)

    async def push(self, intent: dict, reason: str) -> int:
        """PUT the intent to the SDN controller; the answer's status (200 accepted), 0 when
        none came. Refused for a stale epoch: the pair moved on without this member hearing
        of it, and its HA agent learns the controller's epoch (an ENABLED member steps down)."""
        cc = self.cc
        try:
            status, answer = await control.call(cc.control_socket, "PUT", f"/intent/clusters/{cc.cluster}",
                                                intent, timeout=5.0)
        except (OSError, ValueError) as exc:
            cc.events.emit("intent.failed", error=str(exc), reason=reason)
            return 0
        if status != 200:
            cc.events.emit("intent.refused", status=status, answer=answer, reason=reason)
            current = answer.get("current") if isinstance(answer, dict) else None
            if status == 409 and type(current) is int and cc.ha is not None:
                cc.ha.learn_epoch(current, "the SDN controller refused the intent")
        return status

    async def put_standby(self, epoch: int) -> tuple[int, dict]:
        """One standby report; (status, answer), status 0 when the controller did not answer."""
        cc = self.cc
        try:
            status, answer = await control.call(cc.control_socket, "PUT",
                                                f"/intent/clusters/{cc.cluster}/standby",
                                                {"host": cc.host, "epoch": epoch}, timeout=5.0)
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}
        return status, answer if isinstance(answer, dict) else {"error": f"not an object: {answer!r}"[:200]}
