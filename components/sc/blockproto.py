"""A small block protocol over TCP between an NC (initiator) and the SC (target).

Eucalyptus exported volumes with iSCSI (port 3260) and CHAP; this keeps the shape (a
long-lived TCP session per attachment, a challenge-response login, reads and writes at
byte offsets, a flush that makes writes durable) without the SCSI layers.

    request : op (1 byte: L login, A answer, R read, W write, F flush), offset (u64), length (u32)
              [L: the volume id, length bytes] [A: the answer, 32 bytes] [W: length bytes of data]
    response: status (1 byte: 0 ok, 1 login refused, 2 out of range, 3 bad request,
              4 not attached, 5 not the primary), length (u32), data

Login, CHAP-style (RFC 1994): L names the volume and the SC answers a fresh random
challenge; A carries HMAC-SHA256(attachment secret, challenge + volume id). The secret
is the attachment's (the SC makes one per attachment and gives it to the NC through the
attach call); it never crosses this connection. The SC accepts the answer only on a
connection from the NC the volume is attached to; every other failure (no such volume,
not attached, another NC's volume, a wrong answer) is the same "login refused", so a
stranger learns nothing of which volumes exist. "Not the primary" comes from an SC
member that does not serve (a standby, or a primary that stepped down): the initiator
logs in again through the service VIP. "Not attached" on an open session: the volume
was detached (or attached anew) since the login; the SC closes such sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Callable

HEADER = struct.Struct("!cQI")
REPLY = struct.Struct("!BI")
OK, LOGIN_REFUSED, OUT_OF_RANGE, BAD_REQUEST, NOT_ATTACHED, NOT_PRIMARY = 0, 1, 2, 3, 4, 5
MAX_IO = 4 * 2**20
BLOCK_PORT = 3260
CHALLENGE_BYTES = 16
ANSWER_BYTES = hashlib.sha256().digest_size


def login_answer(secret: str, challenge: bytes, volume: str) -> bytes:
    """The initiator's answer to a login challenge: HMAC-SHA256 under the attachment's secret."""
    return hmac.new(secret.encode(), challenge + volume.encode(), hashlib.sha256).digest()


def check_io(offset: int, length: int) -> None:
    """ValueError unless a read or write fits the protocol (offset u64, length up to MAX_IO)."""
    if not 0 <= offset < 2**64:
        raise ValueError(f"offset {offset} is not between 0 and 2**64 - 1")
    if not 0 <= length <= MAX_IO:
        raise ValueError(f"length {length} is not between 0 and {MAX_IO}")


class BlockError(Exception):
    def __init__(self, status: int, message: str = ""):
        self.status = status
        super().__init__(message or f"block protocol status {status}")


class BlockUnavailable(Exception):
    """No answer from the SC before the request's deadline: it is failing over, or cannot
    be reached. A write given up may or may not have reached the disk; written again, the
    same bytes land at the same offset."""


@dataclass(frozen=True)
class SessionTimeouts:
    """How an attachment's session recovers after an SC failover.

    The takeover moves the SC's service VIP about one heartbeat window after the crash
    (150 ms at the defaults). Until then a connection to the VIP is refused at once (the
    crashed member's host still holds the address) or its SYN is lost (nobody holds it,
    or a neighbour's ARP entry still names the old member): one long attempt would wait
    out its whole timeout, since the kernel retransmits a SYN only after 1 s. Short
    attempts, paced, reach the new primary within about ``retry_interval_s`` of it
    answering."""

    connect_s: float = 0.2  # one TCP handshake
    # One answer on an open session (login, read, write, flush); none by then: the member
    # hangs or its host is gone, and the session is left for the VIP. Generous: an NC
    # starved of CPU for a while (HA members run at realtime priority) must not take its
    # own stall for the SC's.
    reply_s: float = 1.0
    # From one login attempt to the next: a refusal costs a SYN and a RST, so attempts are
    # cheap and the new primary is reached within this of answering (docs/architecture.md
    # has what 10 ms cost).
    retry_interval_s: float = 0.002
    # How long a request may wait for the session (queueing and logging in again). Its
    # answer, once sent, may take reply_s more: together within the 2 s an instance's
    # workload waits for its disk, so a request is answered, or given up, by then.
    request_s: float = 1.0


class Turns:
    """One request at a time on a session; of those waiting, the newest goes next.

    First come, first served turns a backlog into a standing queue when requests arrive
    about as fast as the session serves them (the NC's block path, busy, serves about
    100 a second, the rate the experiments probe at): after an SC takeover every request
    waits behind the ones that piled up meanwhile, past its client's timeout, and the
    queue never drains. Newest first serves the requests whose clients still wait; the
    oldest are given up at their deadlines (or when their clients go). A request that
    waits for its reply before sending the next sees no difference."""

    def __init__(self):
        self._busy = False
        self._waiting: list[asyncio.Future] = []

    async def acquire(self) -> None:
        if not self._busy:
            self._busy = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the turn as it was cancelled: pass it on
            else:
                self._waiting.remove(turn)
            raise

    def release(self) -> None:
        while self._waiting:
            turn = self._waiting.pop()
            if not turn.done():
                turn.set_result(None)  # still busy: the turn passes to it
                return
        self._busy = False


class BlockClient:
    """The NC's side of an attachment: one session, requests one at a time (``Turns``).

    Every request has a deadline. A session found broken (closed by the SC, silent for
    ``reply_s``, or answered by a member that no longer serves) is logged into again
    through the same address, the SC's service VIP, with short attempts until the
    deadline of the request that found it broken; the next request carries on from
    there. A request still waiting for the session at its deadline, or whose client has
    gone (``wanted`` says so), is given up (BlockUnavailable) when its turn comes rather
    than served: clients that retry on their own timeouts keep arriving during a
    failover, and serving the requests they abandoned would keep every fresh one waiting
    past its own timeout long after the SC is back. ``on_relogin`` hears of every
    recovered session."""

    def __init__(self, host: str, port: int, volume: str, secret: str, timeouts: SessionTimeouts | None = None,
                 on_relogin: Callable[[dict], None] | None = None):
        self.host, self.port, self.volume = host, port, volume
        self.secret = secret  # the attachment's: answers the SC's login challenges
        self.timeouts = timeouts or SessionTimeouts()
        self.on_relogin = on_relogin
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.turns = Turns()
        self.given_up = 0  # requests not served: deadline passed, or their clients had gone
        self._lost: dict | None = None  # since the session broke: when, why, login attempts

    async def connect(self, timeout: float = 5.0) -> None:
        """Log in (at attachment), attempt after attempt until ``timeout``."""
        await self.turns.acquire()
        try:
            await self._login(asyncio.get_running_loop().time() + timeout)
        finally:
            self.turns.release()

    def _usable(self) -> bool:
        """Whether the session can carry a request: open on both sides, no error on it.
        (Writing into a transport the SC has closed raises nothing: the bytes are dropped.)"""
        return (self.writer is not None and not self.writer.is_closing() and not self.reader.at_eof()
                and self.reader.exception() is None)

    def _close_session(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def _lose(self, reason: str) -> None:
        """The session is broken: close it and remember since when, and why."""
        self._close_session()
        if self._lost is None:
            self._lost = {"lost_at": asyncio.get_running_loop().time(), "reason": reason, "attempts": 0,
                          "given_up": self.given_up}

    async def _login(self, deadline: float) -> None:
        """Connect and log in, attempt after attempt, until ``deadline`` (then
        BlockUnavailable). A member that serves but refuses the login is final (BlockError)."""
        loop = asyncio.get_running_loop()
        t = self.timeouts
        while True:
            started = loop.time()
            if self._lost is not None:
                self._lost["attempts"] += 1
            try:
                async with asyncio.timeout_at(min(started + t.connect_s, deadline)):
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                vid = self.volume.encode()
                challenge = await self._exchange(b"L", 0, len(vid), vid)
                answer = login_answer(self.secret, challenge, self.volume)
                await self._exchange(b"A", 0, len(answer), answer)
                return
            except BlockError as exc:
                self._close_session()
                if exc.status != NOT_PRIMARY:  # the primary's answer: final
                    raise
                error: Exception = exc  # that member does not serve (any more, or yet)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self._close_session()
                error = exc
            now = loop.time()
            if now + t.retry_interval_s >= deadline:
                raise BlockUnavailable(f"no session to {self.host}:{self.port} for {self.volume} "
                                       f"before the deadline: {error!r}")
            await asyncio.sleep(started + t.retry_interval_s - now)  # pacing; refusals come at once

    async def _relogin(self, deadline: float) -> None:
        await self._login(deadline)
        lost, self._lost = self._lost, None
        if lost is not None and self.on_relogin is not None:
            now = asyncio.get_running_loop().time()
            self.on_relogin({"volume": self.volume, "target": f"{self.host}:{self.port}", "reason": lost["reason"],
                             "lost_at": lost["lost_at"], "down_s": round(now - lost["lost_at"], 4),
                             "attempts": lost["attempts"], "given_up": self.given_up - lost["given_up"]})

    async def _exchange(self, op: bytes, offset: int, length: int, data: bytes = b"") -> bytes:
        try:
            async with asyncio.timeout(self.timeouts.reply_s):
                self.writer.write(HEADER.pack(op, offset, length) + data)
                await self.writer.drain()
                status, n = REPLY.unpack(await self.reader.readexactly(REPLY.size))
                payload = await self.reader.readexactly(n) if n else b""
        except asyncio.CancelledError:
            self._lose("request cancelled")  # its answer would be taken for the next one's
            raise
        if status != OK:
            raise BlockError(status, payload.decode(errors="replace"))
        return payload

    async def _call(self, op: bytes, offset: int, length: int, data: bytes = b"",
                    deadline: float | None = None, wanted: Callable[[], bool] | None = None) -> bytes:
        """One request, sent before ``deadline`` (event-loop time; default now plus
        ``request_s``) while ``wanted()`` holds, or given up (BlockUnavailable)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeouts.request_s
        try:
            if loop.time() >= deadline:
                raise TimeoutError
            async with asyncio.timeout_at(deadline):
                await self.turns.acquire()
        except TimeoutError:
            self.given_up += 1
            raise BlockUnavailable(f"{self.volume}: the session was busy up to the request's deadline") from None
        try:
            while True:
                if loop.time() >= deadline:  # its turn came too late
                    raise BlockUnavailable(f"{self.volume}: no answer before the request's deadline")
                if wanted is not None and not wanted():
                    raise BlockUnavailable(f"{self.volume}: the request's client has gone")
                if not self._usable():
                    if self.writer is not None:
                        self._lose("closed by the SC")
                    await self._relogin(deadline)
                    continue  # is the request still worth sending?
                try:
                    return await self._exchange(op, offset, length, data)
                except BlockError as exc:
                    if exc.status not in (NOT_PRIMARY, NOT_ATTACHED):
                        raise
                    # That member no longer serves (or no longer knows the session): log in
                    # again through the VIP, where the member that took over answers.
                    self._lose(f"SC refused: {exc}")
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    self._lose(f"request failed: {exc!r}")
        except BlockUnavailable:
            self.given_up += 1
            raise
        finally:
            self.turns.release()

    async def read(self, offset: int, length: int, deadline: float | None = None,
                   wanted: Callable[[], bool] | None = None) -> bytes:
        check_io(offset, length)
        return await self._call(b"R", offset, length, deadline=deadline, wanted=wanted)

    async def write(self, offset: int, data: bytes, deadline: float | None = None,
                    wanted: Callable[[], bool] | None = None) -> None:
        check_io(offset, len(data))
        await self._call(b"W", offset, len(data), data, deadline=deadline, wanted=wanted)

    async def flush(self, deadline: float | None = None, wanted: Callable[[], bool] | None = None) -> None:
        await self._call(b"F", 0, 0, deadline=deadline, wanted=wanted)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.reader = self.writer = None
