"""An HA agent's epochs and incarnations on disk: the newest epoch used, the reservation ahead
of it (so a takeover writes nothing), and this process's boot number (docs/ha.md, "Election
and epochs")."""

from __future__ import annotations

import asyncio
import time

from ..files import write_atomic
from .model import EPOCH_LOW_WATER, EPOCH_RESERVE, MAX_EPOCH, Part, _read_int


class Epochs(Part):
    """The epoch files; sets ``agent.epoch`` and ``agent.rejoining`` from them at start."""

    SHARED = frozenset({
        "_offload", "_spawn", "data", "epoch", "peer", "rejoining", "superseded"})

    def __init__(self, agent):
        super().__init__(agent)
        self.epoch_file = self.data / "ha-epoch"  # the newest epoch this member used (or 1)
        self.epoch = min(_read_int(self.epoch_file) or 1, MAX_EPOCH)
        # Every epoch this member (in any incarnation) used is <= the reservation on disk:
        # its next promotion starts above it, so a restart never reuses an epoch even when
        # ha-epoch, written after the promotion, missed the newest one.
        self.reserve_file = self.data / "ha-epoch-reserved"
        self.floor = max(self.epoch, min(_read_int(self.reserve_file) or 1, MAX_EPOCH))
        self.reserved = self.floor  # what may be used without writing first
        self._reserve_lock = asyncio.Lock()
        # A member that has been primary before holds state its peer may have moved past
        # (the peer took over and acknowledged writes while this one was down): after a
        # restart it never claims the pair without hearing the peer first (EUCA-8110).
        # Only a member with no history (never primary, never heard its peer) may start the
        # pair alone.
        self.joined_file = self.data / "ha-joined"
        self.rejoining = self.epoch_file.exists() or self.joined_file.exists()

    def reserve_if_low(self) -> None:
        """The peer's epoch rose: extend the reservation past it now (in the background)."""
        if self._next_epoch() + EPOCH_LOW_WATER > self.reserved and not self._reserve_lock.locked():
            self._spawn(self._reserve_epochs())

    def _new_boot(self) -> int:
        """This incarnation's number, above every earlier one's (``ha-boot`` keeps the last):
        the peer refuses heartbeats of an older incarnation, so recorded ones cannot be
        replayed after a restart. The wall clock in microseconds, or the last one plus one."""
        path = self.data / "ha-boot"
        boot = max(time.time_ns() // 1000, (_read_int(path) or 0) + 1)
        self.data.mkdir(parents=True, exist_ok=True)
        write_atomic(path, str(boot))
        return boot

    def _next_epoch(self) -> int:
        return max(self.epoch, self.peer.epoch, self.superseded or 0, self.floor) + 1

    async def _reserve_epochs(self, needed: int = 0) -> None:
        """Keep the reservation on disk EPOCH_RESERVE past the next epoch this member would use.

        In a worker thread: on a busy disk a rename can wait hundreds of ms for the
        filesystem journal, and the loop must go on sending heartbeats meanwhile (a stalled
        loop fences itself). One write at a time.
        """
        async with self._reserve_lock:
            if max(needed, self._next_epoch()) + EPOCH_LOW_WATER <= self.reserved:
                return
            target = max(needed, self._next_epoch()) + EPOCH_RESERVE
            await self._offload(write_atomic, self.reserve_file, str(target))
            self.reserved = max(self.reserved, target)

    async def _record_epoch(self, epoch: int) -> None:
        """After the takeover: ha-epoch (what a restart advertises) and the reservation ahead."""
        async with self._reserve_lock:
            if self.epoch == epoch:
                await self._offload(write_atomic, self.epoch_file, str(epoch))
        await self._reserve_epochs()
