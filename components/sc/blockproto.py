"""A small block protocol over TCP between an NC (initiator) and the SC (target).

Eucalyptus exported volumes with iSCSI (port 3260); this keeps the shape (a
long-lived TCP session per attachment, reads and writes at byte offsets, a flush
that makes writes durable) without the SCSI layers.

    request : op (1 byte: L login, R read, W write, F flush), offset (u64), length (u32)
              [L: the volume id, length bytes] [W: length bytes of data]
    response: status (1 byte: 0 ok, 1 no such volume, 2 out of range, 3 bad request,
              4 not attached), length (u32), data
"""

from __future__ import annotations

import asyncio
import struct

HEADER = struct.Struct("!cQI")
REPLY = struct.Struct("!BI")
OK, NO_VOLUME, OUT_OF_RANGE, BAD_REQUEST, NOT_ATTACHED = 0, 1, 2, 3, 4
MAX_IO = 4 * 2**20
BLOCK_PORT = 3260


class BlockError(Exception):
    def __init__(self, status: int, message: str = ""):
        self.status = status
        super().__init__(message or f"block protocol status {status}")


class BlockClient:
    """The NC's side of an attachment: one session, requests one at a time."""

    def __init__(self, host: str, port: int, volume: str):
        self.host, self.port, self.volume = host, port, volume
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def connect(self, timeout: float = 5.0) -> None:
        async with self.lock:
            await self._login(timeout)

    async def _login(self, timeout: float = 5.0) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), timeout)
        vid = self.volume.encode()
        await self._exchange(b"L", 0, len(vid), vid)

    async def _exchange(self, op: bytes, offset: int, length: int, data: bytes = b"") -> bytes:
        self.writer.write(HEADER.pack(op, offset, length) + data)
        await self.writer.drain()
        status, n = REPLY.unpack(await self.reader.readexactly(REPLY.size))
        payload = await self.reader.readexactly(n) if n else b""
        if status != OK:
            raise BlockError(status, payload.decode(errors="replace"))
        return payload

    async def _call(self, op: bytes, offset: int, length: int, data: bytes = b"") -> bytes:
        """One request; a session broken (the SC failed over to its peer) is logged into
        again, once, through the same address: the SC's service VIP."""
        async with self.lock:
            try:
                return await self._exchange(op, offset, length, data)
            except (ConnectionError, asyncio.IncompleteReadError, OSError, BlockError) as exc:
                if isinstance(exc, BlockError) and exc.status != NOT_ATTACHED:
                    raise
                if self.writer is not None:
                    self.writer.close()
                await self._login()
                return await self._exchange(op, offset, length, data)

    async def read(self, offset: int, length: int) -> bytes:
        return await self._call(b"R", offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        await self._call(b"W", offset, len(data), data)

    async def flush(self) -> None:
        await self._call(b"F", 0, 0)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None
