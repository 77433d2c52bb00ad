"""The SC's replication to its DISABLED peer and its catch-up.

Every change to the volumes (create, delete, attach or detach, a block write) is applied
here, then shipped to the DISABLED peer with its sequence number before the caller hears
success (POST /internal/ha/sc, the op in the X-Eucalab-Op header, a write's bytes as the
body). A member behind its ENABLED peer copies the peer's volumes whole
(GET /internal/ha/sc/state, then /internal/ha/sc/volume/{id} each). What every
replicating component shares is in components/common/replication.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
from aiohttp import web

from components.common.replication import CATCH_UP_ABANDONED, REPLICATION_FAILED, REPLICATION_REFUSED, Replication
from components.common.routes import route

SESSION_TIMEOUT = aiohttp.ClientTimeout(total=30)


def _flush_and_sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


class ScReplication(Replication):
    """The SC's side of its pair's replication; the service builds one and routes to it."""

    def __init__(self, svc, volume_id, not_acknowledged: type[Exception]):
        super().__init__(svc, SESSION_TIMEOUT)
        self.volume_id = volume_id  # the pattern of a volume id
        self.not_acknowledged = not_acknowledged
        self._replicating = asyncio.Lock()
        self._peer_took: tuple | None = None  # (peer boot, peer epoch, change) the peer last answered 200 to

    def position(self) -> int:
        return self.svc.wseq

    # -- the push ---------------------------------------------------------------------------

    async def mutate(self, op: dict, data: bytes = b"") -> None:
        """Apply a change and, under HA, have the DISABLED peer apply it before answering.

        One change at a time is applied and shipped (``_replicating``), so each reaches the
        peer with its own sequence number, in order: two concurrent changes (block writes to
        two volumes) could otherwise ship one change under the other's number.
        """
        svc, ha = self.svc, self.svc.ha
        async with self._replicating:
            seq = await svc._apply(op, data)
            if ha is None or svc.replica is None or not ha.peer_alive():
                return
            if ha.peer_took_over():
                refused = True  # the peer is primary now: never acknowledged
            elif ha.peer.state != "DISABLED":
                return  # NOTREADY and the like: it catches up before it may take over
            elif self._peer_position() != seq - 1:
                refused = False  # the peer is behind: acknowledged once its catch-up has this change
            else:
                refused = await self._replicate_op(op, data, seq)
        await self.refuse_unless_acknowledged(
            refused, seq, self.not_acknowledged(text="the change could not be replicated to the peer; retry"), seq=seq)

    async def _replicate_op(self, op: dict, data: bytes, seq: int) -> bool | None:
        """Ship change ``seq`` to the DISABLED peer: None taken, True refused, False no answer."""
        ha = self.svc.ha
        refused = None
        try:
            async with self.svc.replica.post(f"{self.peer_url()}/internal/ha/sc", data=data, headers={
                    "X-Eucalab-Op": json.dumps({"seq": seq, "epoch": ha.epoch, "op": op})}) as r:
                if r.status == 200:
                    ha.peer.last_seq = seq
                    self._peer_took = (ha.peer.boot, ha.peer.epoch, seq)
                else:
                    refused = True
                    self.svc.events.emit(REPLICATION_REFUSED, status=r.status, answer=await r.text())
        except Exception as exc:
            refused = False
            self.svc.events.emit(REPLICATION_FAILED, error=repr(exc))
        return refused

    def _peer_position(self) -> int:
        """The change the DISABLED peer has last applied.

        Its heartbeat says so, but a heartbeat sent before a change landed can arrive after
        the peer's answer to it and say one less: the next change would then not be shipped
        but left to the peer's catch-up (a copy of every volume), and, not caught up within
        the HA window, refused with 503 although the peer was in step. So a change the same
        incarnation of the peer, at the same epoch, answered 200 to counts as well.
        """
        peer = self.svc.ha.peer
        took = self._peer_took
        if took is not None and took[:2] == (peer.boot, peer.epoch):
            return max(peer.last_seq, took[2])
        return peer.last_seq

    # -- the peer's endpoints -----------------------------------------------------------------

    @route("POST", "/internal/ha/sc")
    async def handle_apply(self, request: web.Request) -> web.Response:
        """POST /internal/ha/sc: one change from the ENABLED peer, applied only as the next one."""
        svc = self.svc
        svc.require_internal(request, "sc")
        ha = svc.ha
        if ha is None or svc.state.value == "ENABLED":
            return svc._error("Conflict", "not a secondary", 409)
        try:
            entry = json.loads(request.headers["X-Eucalab-Op"])
            epoch, seq, op = int(entry["epoch"]), int(entry["seq"]), dict(entry["op"])
        except (ValueError, KeyError, TypeError) as exc:
            return svc._error("InvalidParameterValue", f"bad change: {exc!r}")
        if epoch < max(ha.epoch, ha.peer.epoch):
            return svc._error("StaleEpoch", "a stale primary's change", 409)
        data = await request.read()
        try:
            applied = await svc._apply(op, data, seq=seq)
        except (ValueError, KeyError, TypeError) as exc:
            return svc._error("InvalidParameterValue", f"bad change: {exc!r}")
        if not applied:
            return svc._error("Gap", f"have {svc.wseq}, got {entry['seq']}: catching up instead", 409)
        return web.json_response({"wseq": svc.wseq})

    @route("GET", "/internal/ha/sc/state")
    async def handle_state(self, request: web.Request) -> web.Response:
        """GET /internal/ha/sc/state: this member's position and volumes."""
        self.svc.require_internal(request, "sc")
        return web.json_response({"wseq": self.svc.wseq, "volumes": self.svc.volumes})

    @route("GET", "/internal/ha/sc/volume/{id}")
    async def handle_volume(self, request: web.Request) -> web.StreamResponse:
        """GET /internal/ha/sc/volume/{id}: a volume's file."""
        self.svc.require_internal(request, "sc")
        vid = request.match_info["id"]
        if not self.volume_id.match(vid) or vid not in self.svc.volumes:
            return web.Response(status=404)
        return web.FileResponse(self.svc._path(vid))

    # -- the catch-up -----------------------------------------------------------------------

    async def pull(self) -> dict | None:
        """Copy the ENABLED peer's volumes whole.

        Everything is downloaded before anything is replaced, and nothing is replaced if
        this member was promoted meanwhile (the peer died during the copy: its own state
        is the pair's now) or the peer no longer serves: a copy cut short leaves the
        member as it was, never half-updated."""
        svc, ha = self.svc, self.svc.ha
        parts: dict[str, Path] = {}
        try:
            async with svc.replica.get(f"{self.peer_url()}/internal/ha/sc/state") as r:
                r.raise_for_status()
                state = await r.json()
            bad = [v for v in state["volumes"] if not self.volume_id.match(v)]
            if bad:
                raise ValueError(f"the peer lists malformed volume ids {bad[:3]!r}")
            for vid in state["volumes"]:
                async with svc.replica.get(f"{self.peer_url()}/internal/ha/sc/volume/{vid}") as r:
                    r.raise_for_status()
                    parts[vid] = tmp = svc.vol_dir / f".{vid}.part"
                    with open(tmp, "wb") as f:  # every write and the fsync off the loop
                        async for chunk in r.content.iter_chunked(1 << 20):
                            await asyncio.to_thread(f.write, chunk)
                        await asyncio.to_thread(_flush_and_sync, f)
            async with svc._disk:
                # Checked once the disk is this copy's: nothing may have changed since.
                if svc.state.value == "ENABLED" or ha.peer.state != "ENABLED" or int(state["wseq"]) <= svc.wseq:
                    svc.events.emit(CATCH_UP_ABANDONED, state=svc.state.value, peer_state=ha.peer.state,
                                    peer_seq=int(state["wseq"]), last_seq=svc.wseq)
                    return None
                gone = set(svc.volumes) - set(state["volumes"])
                await asyncio.to_thread(self._install, dict(parts), gone)
                parts.clear()
                svc.volumes, svc.wseq = state["volumes"], int(state["wseq"])
                await svc._save()
            return {}
        finally:
            for tmp in parts.values():
                tmp.unlink(missing_ok=True)

    def _install(self, parts: dict[str, Path], gone: set[str]) -> None:
        """A finished catch-up's copies in place of the volumes, and the volumes the peer no longer has gone."""
        for vid, tmp in parts.items():
            os.replace(tmp, self.svc._path(vid))
        for vid in gone:
            self.svc._path(vid).unlink(missing_ok=True)
