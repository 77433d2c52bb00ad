"""The CC's view kept: on disk, and under HA on the standby (docs/ha.md, "CC replication").

The view is the CC's instances, groups, elastic IPs, epoch, version and instances to
recall (the state of ``ClusterController``). Every change is written to
``data_dir/cluster.json`` off the event loop, and on an ENABLED member of a pair sent to
the standby, one request at a time, so views arrive in order; the primary answers the
CLC once the standby acknowledged the change (``replicated``).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from components.common.files import write_atomic

from .api import error_response

# How long a change waits for the standby to acknowledge its copy of the view before the
# CC answers all the same (the standby is slow or cut off; the CLC repairs what a
# takeover lacks, docs/ha.md "CC replication").
REPLICATE_WAIT_S = 1.0


class Replication:
    """The view on disk and on the standby, for the ``ClusterController`` ``cc``."""

    def __init__(self, cc):
        self.cc = cc
        self.acked = 0  # the newest version the standby acknowledged
        self.replicator: asyncio.Task | None = None
        self.condition = asyncio.Condition()
        self.pending: str | None = None  # the newest view not yet on disk
        self.writer: asyncio.Task | None = None

    def load(self) -> dict:
        try:
            return json.loads(self.cc.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def snapshot(self) -> dict:
        cc = self.cc
        return {"instances": cc.instances, "groups": cc.groups, "addresses": cc.addresses,
                "epoch": cc.epoch, "version": cc.version, "recall": cc._recall}

    def save(self) -> None:
        cc = self.cc
        if cc.ha is not None and cc.state.value == "ENABLED" and cc.http is not None:
            # The DISABLED peer keeps a copy, so a takeover starts from the same view.
            cc.version += 1
            if self.replicator is None or self.replicator.done():
                self.replicator = cc._background(self._replicate_pending())
        self.persist()

    def persist(self) -> None:
        """Write the view to disk in a worker thread, newest snapshot last.

        Never on the event loop: a rename can wait hundreds of ms for the filesystem
        journal, and a DISABLED CC stalled 573 ms that way (its heartbeats stopped, one CC
        failover took 778 ms). The file is a cache: a CC rebuilds from its NCs anyway.
        """
        self.pending = json.dumps(self.snapshot(), sort_keys=True)
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self.pending is not None:
            text, self.pending = self.pending, None
            try:
                await asyncio.to_thread(write_atomic, self.cc.state_file, text)
            except OSError as exc:
                self.cc.events.emit("cc.save_failed", error=str(exc))

    async def _replicate_pending(self) -> None:
        """Send the standby the newest view until it has acknowledged the newest version:
        one request at a time, so views arrive in order, each to the address the peer is
        heard on (the heartbeat link, else the cloud network). Ends while the peer is dead
        (it rebuilds from the NCs when it returns, and gets the next change) or refuses."""
        cc = self.cc
        try:
            while self.acked < cc.version and cc.state.value == "ENABLED" and cc.ha.peer_alive():
                sent, snap = cc.version, json.dumps(self.snapshot())
                url = f"http://{cc.ha.peer_address()}:{cc.config['port']}/internal/ha/state"
                try:
                    async with cc.http.put(url, data=snap, headers={"Content-Type": "application/json"},
                                           timeout=aiohttp.ClientTimeout(total=REPLICATE_WAIT_S)) as r:
                        answer = await r.json(content_type=None)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    cc.events.emit("cc.replication_failed", version=sent, error=repr(exc)[:300])
                    await asyncio.sleep(cc.ha.interval)
                    continue
                if r.status != 200:
                    cc.events.emit("cc.replication_refused", version=sent, status=r.status, answer=answer)
                    return
                self.acked = max(self.acked, sent)
                async with self.condition:
                    self.condition.notify_all()
        finally:
            async with self.condition:
                self.condition.notify_all()

    async def replicated(self) -> None:
        """Wait (at most REPLICATE_WAIT_S) until the standby holds this member's view as of
        now; a change is answered to the CLC only then, unless the standby is dead or slow
        (an event says so: the CLC's repair brings a new primary in line)."""
        cc = self.cc
        if cc.ha is None or cc.state.value != "ENABLED":
            return
        upto = cc.version

        def settled() -> bool:
            return self.acked >= upto or self.replicator is None or self.replicator.done()

        try:
            async with self.condition:
                await asyncio.wait_for(self.condition.wait_for(settled), REPLICATE_WAIT_S)
        except asyncio.TimeoutError:
            pass
        if self.acked < upto:
            cc.events.emit("cc.replication_unacknowledged", version=upto, acked=self.acked,
                           peer_alive=cc.ha.peer_alive())

    async def handle_peer_state(self, request: web.Request) -> web.Response:
        """PUT /internal/ha/state: the primary's view, taken by the standby if newer."""
        cc = self.cc
        cc.require_internal(request, "cc")
        if cc.state.value == "ENABLED":
            return error_response("Conflict", "this CC is the primary", 409)
        snap = await request.json()
        if int(snap.get("epoch", 0)) < cc.epoch:
            return error_response("StaleEpoch", f"epoch {snap.get('epoch')} < {cc.epoch}", 409)
        position = (int(snap["epoch"]), int(snap.get("version", 0)))
        if position < (cc.epoch, cc.version):
            # Overtaken by a newer view already taken (views are sent in order; this is a
            # late duplicate): acknowledged, and the newer view stays.
            return web.json_response({"ok": True, "version": cc.version})
        cc.instances, cc.groups = snap["instances"], snap["groups"]
        cc.addresses, (cc.epoch, cc.version) = snap["addresses"], position
        cc._recall = dict(snap.get("recall", {}))
        self.persist()
        cc.routing.rearm()
        return web.json_response({"ok": True})
