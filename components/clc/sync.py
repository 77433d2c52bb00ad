"""The CLC follows its CCs: a supervised loop (``clc.sync``) reads each zone's
view of its instances, takes their progress (pending -> running, addresses,
failures), brings a CC's elastic IPs back in line with the CLC's, now and then sends
the security groups a CC lacks, and retires instances terminated long ago.
"""

from __future__ import annotations

import asyncio
import time

from components.common.supervise import supervise

from .instances import LIVE
from .manager import Manager

RETIRE_BATCH = 1000  # instances retired per op at most (one op stays small)


class ClusterSync(Manager):
    """The CLC following its CCs' view of instances."""

    def __init__(self, clc):
        super().__init__(clc)
        self.rounds = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.loop())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def loop(self) -> None:
        """``once`` every ``cluster_poll_s`` (0.1 s), supervised (``clc.sync``)."""
        await supervise(self.events, "clc.sync", self.once, pause=float(self.config.get("cluster_poll_s", 0.1)))

    async def once(self) -> None:
        """One round of the supervised loop ``clc.sync``: follow the CCs' view of instances
        (pending -> running, addresses, failures), bring a CC that lost an address
        association back in line (``_repair_addresses``), and retire what has been
        terminated for longer than ``terminated_retention_s``."""
        if not self.clc.may_serve():
            return
        self.rounds += 1
        if self.rounds % 20 == 0:
            # Now and then, a group a CC lacks (a CC that restarted with nothing) or
            # holds differently is sent again (Eucalyptus's CLC re-sent network config
            # too). Only those: re-sending all of them, one request per group and CC,
            # kept the CLC, both CCs and the datapath busy for 100 ms every 2 s once
            # the experiments had made a hundred groups.
            await self.clc.groups.resend()
            self._retire_terminated()
        zones = sorted({r["zone"] for r in self.store.q(f"SELECT DISTINCT zone FROM instances WHERE {LIVE}")})
        for zone in zones:
            view = await self.cluster.describe(zone)
            if view is None:
                continue
            # Read after the CC answered: a change made meanwhile is not undone.
            live = self.store.q("SELECT id, state, private_ip, public_ip, reason FROM instances "
                                f"WHERE zone=? AND {LIVE}", zone)
            for r in live:
                got = view.get(r["id"])
                if got is None:
                    continue
                change = {}
                if got["state"] != r["state"]:
                    change["state"] = got["state"]
                    if got.get("reason"):
                        change["reason"] = got["reason"]
                if got.get("ip") and got["ip"] != r["private_ip"]:
                    change["private_ip"] = got["ip"]
                if change:
                    self._apply({"type": "instance.update", "id": r["id"], **change})
                    if change.get("state") == "terminated":
                        for a in self.store.q("SELECT public_ip FROM addresses WHERE instance=?", r["id"]):
                            self._apply({"type": "address.disassociate", "ip": a["public_ip"]})
            await self._repair_addresses(zone, view)

    async def _repair_addresses(self, zone: str, view: dict[str, dict]) -> None:
        """The CLC's addresses are the truth: an instance the zone's CC routes with another
        elastic IP than the CLC records (or none) is told the CLC's again.

        A CC that took over from a peer whose last changes never reached it (the pair's
        link was cut) comes back in line this way within a round. Each instance is read
        again just before its repair is sent (no await in between): one whose address a
        request is changing right now is left to that request, and an address the CLC has
        meanwhile given to another instance is not taken from it."""
        for iid, got in view.items():
            if got.get("state") == "terminated" or iid in self.clc.addresses.busy:
                continue
            row = self.store.one(f"SELECT public_ip FROM instances WHERE id=? AND zone=? AND {LIVE}", iid, zone)
            held = got.get("public_ip")
            if row is None or row["public_ip"] == held:
                continue
            if row["public_ip"]:
                self.events.emit("clc.address_repaired", instance=iid, zone=zone, cc_has=held, clc_has=row["public_ip"])
                await self.cluster.associate(zone, row["public_ip"], iid)
            elif self.store.one("SELECT 1 FROM addresses WHERE public_ip=? AND instance IS NOT NULL", held) is None:
                self.events.emit("clc.address_repaired", instance=iid, zone=zone, cc_has=held, clc_has=None)
                await self.cluster.disassociate(zone, held)

    def _retire_terminated(self) -> None:
        """Forget the instances terminated longer than ``terminated_retention_s`` ago (EC2
        shows a terminated instance for about an hour, then it is gone): one replicated op."""
        cutoff = time.time() - self.clc.retention_s
        # One a volume still names (attached when it ended) stays until the volume lets go.
        old = [r["id"] for r in self.store.q(
            "SELECT id FROM instances WHERE state='terminated' AND ended < ? AND id NOT IN "
            "(SELECT instance FROM volumes WHERE instance IS NOT NULL) LIMIT ?", cutoff, RETIRE_BATCH)]
        if old:
            self._apply({"type": "instances.retire", "ids": old})
