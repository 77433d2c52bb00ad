"""The CLC's replication to its DISABLED peer and its catch-up (docs/ha.md, "CLC replication").

What moves is the state store's op log (state.py): batches of ops, or, when the log no
longer reaches back to the peer's position, a snapshot of the whole state first. The
push (``replicate``) and the catch-up (``pull``) send and take the same body, made by
``export_from``; the peer's endpoint is /internal/ha/ops (POST takes, GET exports).
What every replicating component shares is in components/common/replication.py.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from components.common.replication import REPLICATION_FAILED, REPLICATION_REFUSED, Replication, after_param
from components.common.routes import route

from .ec2 import EC2Error
from .state import Compacted, StoreError, snapshot_from_lines, snapshot_lines

# Replication and catch-up move ops in batches of at most this many ops and (past the
# first op) this much op text per request. Measured here (docs/ha.md, "CLC replication"): a
# batch of 500 ops exports in ~6 ms on the sender's loop and applies in ~7 ms in the
# receiver's worker thread, so one request stays far inside the replica session's 1 s
# timeout on a loaded machine and far below the HA agent's 100 ms pause threshold,
# and a 50,000-op backlog is 100 round trips of ~15 ms instead of one 2 s stall.
BATCH_OPS = 500
BATCH_BYTES = 256 * 1024
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


class ClcReplication(Replication):
    """The CLC's side of its pair's replication; the service builds one and routes to it."""

    discards_superseded = True

    def __init__(self, svc):
        super().__init__(svc, SESSION_TIMEOUT)
        # One writer of what the peer sends at a time (pushes, catch-up, the reset on
        # demotion), and none left running once this member is ENABLED (on_promote).
        self.lock = asyncio.Lock()
        # One push stream to the peer at a time: concurrent writes wait, and most find
        # their op already sent by the push before them (a group commit).
        self._push_lock = asyncio.Lock()

    @property
    def store(self):
        return self.svc.store

    def position(self) -> int:
        return self.store.last_seq

    # -- the push to the DISABLED peer --------------------------------------------------------

    async def replicate(self, upto: int) -> None:
        """Before a write is acknowledged, the DISABLED peer has it too (when it is alive);
        raises ServiceUnavailable when the write may not be acknowledged."""
        ha = self.svc.ha
        if ha is None or not ha.peer_alive():
            return
        refused = ha.peer_took_over()
        if not refused and (ha.peer.state != "DISABLED" or ha.peer.last_seq >= upto):
            return  # it has it, or (NOTREADY and the like) catches up before it may take over
        if not refused:
            try:
                if await self._push(upto):
                    return
                refused = True
            except Exception as exc:
                self.svc.events.emit(REPLICATION_FAILED, error=repr(exc), upto=upto)
        await self.refuse_unless_acknowledged(
            refused, upto, EC2Error("ServiceUnavailable", "the write could not be replicated to the peer; retry", 503),
            upto=upto)

    async def _push(self, upto: int) -> bool:
        """Send the peer every op up to ``upto`` in bounded requests, a snapshot first when
        its position is older than the log; False when it refuses."""
        ha = self.svc.ha
        async with self._push_lock:
            pos = ha.peer.last_seq  # from here on ours: a heartbeat sent before a batch landed says less
            while pos < upto:
                body = await self.export_from(pos, epoch=ha.epoch)
                async with self.svc.replica.post(f"{self.peer_url()}/internal/ha/ops", data=body,
                                                 headers={"Content-Type": "application/json"}) as r:
                    answer = await r.json()
                if r.status != 200:
                    self.svc.events.emit(REPLICATION_REFUSED, status=r.status, answer=answer)
                    return False
                if int(answer["last_seq"]) <= pos:
                    raise StoreError(f"the peer stayed at {answer['last_seq']} after a batch from {pos}")
                pos = int(answer["last_seq"])
                ha.peer.last_seq = max(ha.peer.last_seq, pos)
        return True

    async def export_from(self, after: int, **envelope) -> bytes:
        """What a peer at ``after`` needs next: a JSON line with ``envelope``'s keys and
        ``"ops"`` (one batch), or, when the log no longer reaches back to it,
        ``"snapshot": true`` followed by the snapshot's lines. A snapshot is as large as the
        state (3 MB for 17,000 instances took 0.1 s to read and encode here), so it is read
        and encoded in a worker thread."""
        try:
            ops = self.store.export_ops(after, limit=BATCH_OPS, max_bytes=BATCH_BYTES)
        except Compacted:
            def encode() -> bytes:
                head = json.dumps({**envelope, "snapshot": True})
                return "\n".join((head, *snapshot_lines(self.store.snapshot()))).encode()

            return await asyncio.to_thread(encode)
        return json.dumps({**envelope, "ops": ops}).encode()

    # -- what the peer sends ------------------------------------------------------------------

    @staticmethod
    async def _decode(raw: bytes) -> dict:
        """A body ``export_from`` made, decoded a line at a time in a worker thread."""
        def decode() -> dict:
            head, _, rest = raw.partition(b"\n")
            data = json.loads(head)
            if data.get("snapshot"):
                data["snapshot"] = snapshot_from_lines(rest.split(b"\n"))
            return data

        return await asyncio.to_thread(decode)

    def _refusal(self, epoch: int) -> web.Response | None:
        """Why this member may not take replicated state from a sender at ``epoch``, if it may not."""
        ha = self.svc.ha
        if ha is None or self.svc.state.value == "ENABLED":
            return web.json_response({"error": "not a secondary"}, status=409)
        if epoch < max(ha.epoch, ha.peer.epoch):
            return web.json_response({"error": "stale epoch", "current": max(ha.epoch, ha.peer.epoch)}, status=409)
        return None

    async def _take(self, data: dict) -> int:
        """Apply one batch of ops or install a snapshot, in a worker thread: the loop keeps
        sending heartbeats meanwhile. The caller holds the lock."""
        if "snapshot" in data:
            last = await asyncio.to_thread(self.store.install_snapshot, data["snapshot"])
            self.svc.events.emit("ha.snapshot_installed", last_seq=last, epoch=data["snapshot"]["epoch"])
            return last
        return await asyncio.to_thread(self.store.apply_ops, data["ops"])

    @route("POST", "/internal/ha/ops")
    async def handle_replicate(self, request: web.Request) -> web.Response:
        """POST /internal/ha/ops: the ENABLED peer's push."""
        self.svc.require_internal(request, "clc")
        try:
            body = await self._decode(await request.read())
            epoch = int(body["epoch"])
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"malformed replication body: {exc!r}"}, status=400)
        async with self.lock:
            refusal = self._refusal(epoch)
            if refusal is not None:
                return refusal
            try:
                last = await self._take(body)
            except Exception as exc:
                return web.json_response({"error": str(exc), "last_seq": self.store.last_seq}, status=409)
        return web.json_response({"last_seq": last})

    @route("GET", "/internal/ha/ops")
    async def handle_export(self, request: web.Request) -> web.Response:
        """GET /internal/ha/ops?after=N: what a peer at N lacks (its catch-up)."""
        self.svc.require_internal(request, "clc")
        after = after_param(request)
        ha = self.svc.ha
        body = await self.export_from(after, epoch=ha.epoch if ha else 0, last_seq=self.store.last_seq)
        return web.Response(body=body, content_type="application/json")

    # -- the catch-up -----------------------------------------------------------------------

    async def pull(self) -> dict:
        """One bounded batch per request until this member has the peer's position."""
        ha = self.svc.ha
        batches, target = 0, ha.peer.last_seq
        while self.store.last_seq < target:
            before = self.store.last_seq
            async with self.svc.replica.get(f"{self.peer_url()}/internal/ha/ops", params={"after": str(before)}) as r:
                raw = await r.read()
            if r.status != 200:
                raise StoreError(f"the peer answered {r.status}: {raw[:200]!r}")
            data = await self._decode(raw)
            async with self.lock:
                refusal = self._refusal(int(data["epoch"]))
                if refusal is not None:
                    raise StoreError(f"not taking the peer's state: {refusal.text}")
                last = await self._take(data)
            batches += 1
            if last <= before:
                raise StoreError(f"no progress from {before} (the peer is at {data['last_seq']})")
            target = max(target, int(data["last_seq"]))
        return {"batches": batches}

    async def reset_state(self) -> None:
        async with self.lock:
            self.store.reset()

    async def on_promote(self, epoch: int) -> None:
        # A batch from the old primary may still be committing in a worker thread: let it
        # finish (one bounded batch) so that the API's writes never wait for its lock, and
        # every batch after this sees ENABLED and is refused.
        async with self.lock:
            pass

    async def on_demote(self, reason: str) -> None:
        await self.discard_if_superseded(reason)
