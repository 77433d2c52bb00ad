"""The CC's NCs: where instances sit, what the NCs say of them, and what ends there.

Placements (the scheduler's slots and the allocator's addresses) rebuilt from the view
or from what the NCs run (as Eucalyptus's CC did after a restart); every NC polled on a
supervised loop of its own; an instance handed to its NC; one terminated here while its
NC may still run it recalled there; terminated instances forgotten after the retention.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from components.common.supervise import supervise

from .netalloc import AllocationError, NetworkAllocator, configured_addrs_per_net
from .scheduler import NodeState, Scheduler

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


class Nodes:
    """The NCs of the ``ClusterController`` ``cc`` and the instances' places on them."""

    def __init__(self, cc):
        self.cc = cc

    def empty_placement(self, policy: str) -> tuple[Scheduler, NetworkAllocator]:
        """A scheduler over this cluster's NCs and a network allocator, both holding nothing."""
        cc = self.cc
        return (Scheduler([NodeState(n, list(v["slots"])) for n, v in cc.ncs.items()], policy),
                NetworkAllocator(cc.mode, cc.cluster, configured_addrs_per_net(cc.config)))

    def occupy(self, scheduler: Scheduler, alloc: NetworkAllocator) -> dict[str, str]:
        """Occupy the known instances' slots in ``scheduler`` and addresses in ``alloc``;
        returns those that do not fit (id -> why), for the caller to terminate."""
        misfits = {}
        for iid, rec in self.cc.instances.items():
            if rec.get("state") == "terminated":
                continue
            try:
                scheduler.occupy(rec["nc"], rec["slot"], iid)
                alloc.restore(iid, rec.get("group") or "default", rec["ip"])
            except (KeyError, ValueError, AllocationError) as exc:
                misfits[iid] = f"inconsistent after restart: {exc}"
        return misfits

    def restore_view(self) -> None:
        """Occupy the slots and addresses of the instances this CC knows (idempotent)."""
        cc = self.cc
        for iid, why in self.occupy(cc.scheduler, cc.alloc).items():
            cc.instances[iid].update(state="terminated", reason=why, ended=time.time())

    async def rebuild(self) -> None:
        """Rebuild placements and addresses from what the NCs run (Eucalyptus did the same)."""
        cc = self.cc
        found = 0
        for nc, info in cc.ncs.items():
            try:
                async with cc.http.get(f"{info['url']}/instances") as r:
                    listing = (await r.json())["instances"]
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
                continue
            for inst in listing:
                if inst.get("state") == "terminated":
                    continue
                iid = inst["id"]
                if cc.instances.get(iid, {}).get("state") == "terminated":
                    # Terminated here (a hand-off or terminate its NC did not answer): the
                    # CC's word stands; the poller ends it on the NC.
                    cc._recall.setdefault(iid, time.time())
                    continue
                rec = cc.instances.setdefault(iid, {
                    "id": iid, "nc": nc, "slot": inst["slot"], "ip": inst["ip"], "mac": inst["mac"],
                    "prefix": inst.get("prefix"), "gateway": inst.get("gateway"),
                    "group": inst.get("group") or "default", "vlan": inst.get("vlan"),
                    "account": inst.get("account"),
                    "image": inst.get("image"), "public_ip": None, "reason": ""})
                rec["state"] = inst["state"]
                found += 1
        self.restore_view()
        cc.replication.save()
        cc.events.emit("cc.rebuilt", instances=found)

    async def poll(self) -> None:
        """Every NC asked for its instances' states, each on a loop of its own: an NC that
        hangs (each request waits up to 10 s) delays no other NC's news."""
        await asyncio.gather(*(self._poll_nc(nc) for nc in self.cc.ncs))

    async def _poll_nc(self, nc: str) -> None:
        """One NC's loop (supervised, ``cc.poll``): an unexpected error (a malformed listing,
        a failed intent) is a ``loop.failed`` event, and the loop goes on."""
        await supervise(self.cc.events, "cc.poll", lambda: self._poll_once(nc), pause=POLL_S, nc=nc)

    async def _poll_once(self, nc: str) -> None:
        cc = self.cc
        mine = [i for i in cc.instances.values() if i["nc"] == nc and i["state"] not in ("terminated",)]
        if not mine and not (cc.state.value == "ENABLED" and self._recalls_on(nc)):
            return
        try:
            async with cc.http.get(f"{cc.ncs[nc]['url']}/instances") as r:
                states = {i["id"]: i for i in (await r.json())["instances"]}
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            return  # down or busy: asked again next round
        changed = False
        for rec in mine:
            if rec["state"] == "terminated" or rec["id"] in cc._recall:
                continue  # terminated during the request: the NC's listing predates that
            got = states.get(rec["id"])
            if got and got["state"] != rec["state"]:
                rec["state"] = got["state"]
                rec["reason"] = got.get("reason", "")
                changed = True
                if got["state"] == "terminated":
                    rec["ended"] = time.time()
                    self.release(rec)
        await self._recall_from(nc, states)
        if changed:
            cc.replication.save()
            await cc.intents.publish("instance state")

    async def _recall_from(self, nc: str, states: dict[str, dict]) -> None:
        """End on ``nc`` the instances to recall there (terminated here) that its listing
        ``states`` shows live; forget those it lists terminated, or has not listed for
        RECALL_S. The primary only: a DISABLED member holds the list for its takeover."""
        cc = self.cc
        if cc.state.value != "ENABLED":
            return
        for iid in [i for i in cc._recall if i not in cc.instances]:
            del cc._recall[iid]  # not in the view (replaced by a replicated one)
        for iid in self._recalls_on(nc):
            got = states.get(iid)
            if iid not in cc._recall or cc.instances.get(iid, {}).get("state") != "terminated":
                cc._recall.pop(iid, None)  # forgotten meanwhile, or not terminated: not ours to end
            elif got is not None and got.get("state") != "terminated":
                try:
                    async with cc.http.delete(f"{cc.ncs[nc]['url']}/instances/{iid}") as r:
                        await r.read()
                        if r.status < 300:
                            cc.events.emit("cc.recalled", instance=iid, nc=nc)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass  # next round
            elif got is not None or time.time() - cc._recall[iid] > RECALL_S:
                del cc._recall[iid]

    def _recalls_on(self, nc: str) -> list[str]:
        """The instances to recall whose NC is ``nc`` (a copy: recalling changes the list)."""
        cc = self.cc
        return [i for i in cc._recall if cc.instances.get(i, {}).get("nc") == nc]

    async def hand_off(self, rec: dict) -> bool:
        """Hand ``rec`` to its NC, which accepts at once and boots in the background; whether
        it took it. One the NC refuses or does not take within HANDOFF_S is terminated here;
        one it did not answer for may have arrived all the same, and is recalled."""
        cc = self.cc
        url = cc.ncs[rec["nc"]]["url"]
        body = {k: rec[k] for k in ("id", "slot", "image", "mac", "ip", "prefix", "gateway", "group", "vlan",
                                    "account")}
        try:
            async with cc.http.post(f"{url}/instances", json=body,
                                    timeout=aiohttp.ClientTimeout(total=HANDOFF_S)) as r:
                if r.status < 300:
                    if rec["state"] == "terminated":  # withdrawn meanwhile: end it on the NC too
                        cc._recall[rec["id"]] = time.time()
                    return True
                answer = await r.json(content_type=None)
                why = f"{rec['nc']} refused: {answer.get('error')}: {answer.get('message')}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            why = f"{rec['nc']} did not answer: {exc or type(exc).__name__}"
            cc._recall[rec["id"]] = time.time()
        self.end(rec, f"boot request failed: {why}")
        cc.events.emit("instance.failed", instance=rec["id"], reason=rec["reason"])
        return False

    def end(self, rec: dict, reason: str) -> None:
        """Terminate ``rec`` in the view: its slot, address and elastic IP are free again,
        and it is forgotten ``terminated_retention_s`` from now (``retire_once``)."""
        rec["state"], rec["reason"], rec["ended"] = "terminated", reason, time.time()
        self.release(rec)

    def release(self, rec: dict) -> None:
        cc = self.cc
        cc.scheduler.release(rec["id"])
        cc.alloc.release(rec["id"])
        for ip, iid in list(cc.addresses.items()):
            if iid == rec["id"]:
                del cc.addresses[ip]

    async def retire_once(self) -> None:
        """Forget instances terminated longer than ``terminated_retention_s`` ago (a round of
        the supervised loop ``cc.retire``; the primary only, and its standby gets the view).
        One still to be recalled from its NC stays until that is done."""
        cc = self.cc
        if cc.state.value != "ENABLED":
            return
        cutoff = time.time() - cc.retention_s
        old = [iid for iid, rec in cc.instances.items()
               if rec["state"] == "terminated" and rec.get("ended", 0) < cutoff and iid not in cc._recall]
        for iid in old:
            del cc.instances[iid]
        if old:
            cc.events.emit("cc.retired", instances=len(old))
            cc.replication.save()
