"""The CLCs' group membership under the coordinator detector: who is in the view, so that the
surviving CLC learns that the coordinator died and becomes the coordinator itself.

Eucalyptus 3.x kept its CLCs in a JGroups group (``setup_membership.groovy``); the three of its
failure-detection protocols that decide how soon a dead member leaves the view are modelled,
with their 2.x defaults as named in components/common/coordinator.py:

* FD_SOCK: each member holds a TCP connection to the member it watches; when that process
  dies its kernel closes the connection and the watcher suspects it at once.
* FD: every ``FD_TIMEOUT_S`` the watcher asks "are you alive" on that connection; a member
  that answered none of ``FD_MAX_TRIES`` asks in a row (a silent host: nothing closes the
  connection) is suspected.
* VERIFY_SUSPECT: a suspect is asked again, on a fresh connection, for
  ``VERIFY_SUSPECT_TIMEOUT_S``; only if it never answers does it leave the view.

Each CLC listens on ``MEMBERSHIP_PORT`` (TCP, its heartbeat-link address) and watches its peer's,
connecting from its own heartbeat-link address. What travels is one line each way ("alive?" /
"alive"). A connection from any address but the peer's is closed unanswered, and a line over
the stream's limit ends its connection, so a stranger on the port can neither hold it nor
fill the log; one that takes the peer's address on the heartbeat link can still make this CLC
believe its peer alive for as long as it answers, which is what an attacker on the heartbeat
link can do to JGroups too (docs/ha.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from components.common.coordinator import FD_MAX_TRIES, FD_TIMEOUT_S, VERIFY_SUSPECT_TIMEOUT_S
from components.common.events import EventLog

MEMBERSHIP_PORT = 7801
ASK, ANSWER = b"alive?\n", b"alive\n"
RETRY_S = 0.1  # between connection attempts while the peer is not there (joining, verifying)


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Membership:
    """This CLC's view of its peer: ``peer_in_view`` turns True once the peer answers an ask and False
    once it was suspected and not verified (events ``membership.*`` say when and why)."""

    def __init__(self, events: EventLog, listen: str, peer: str, port: int = MEMBERSHIP_PORT, *,
                 fd_timeout_s: float = FD_TIMEOUT_S, fd_max_tries: int = FD_MAX_TRIES,
                 verify_s: float = VERIFY_SUSPECT_TIMEOUT_S, clock: Callable[[], float] = _mono):
        self.events, self.listen, self.peer, self.port = events, listen, peer, port
        self.fd_timeout_s, self.fd_max_tries, self.verify_s = fd_timeout_s, fd_max_tries, verify_s
        self.clock = clock
        self.peer_in_view = False
        self.left_at: float | None = None  # when the peer last left the view
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, self.listen, self.port, reuse_address=True)
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            self._server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer every ask on the peer's watching connection, until it closes; a connection
        from another address is closed unanswered."""
        try:
            if (writer.get_extra_info("peername") or ("",))[0] != self.peer:
                return
            while await reader.readline() == ASK:
                writer.write(ANSWER)
                await writer.drain()
        except (OSError, ValueError):  # ValueError: a line over the stream's limit
            pass
        finally:
            writer.close()

    async def _connect(self, timeout: float):
        """A connection to the peer's port from this CLC's own heartbeat-link address (the
        only source the peer answers)."""
        return await asyncio.wait_for(
            asyncio.open_connection(self.peer, self.port, local_addr=(self.listen, 0)), timeout)

    async def _watch(self) -> None:
        while True:
            try:
                reader, writer = await self._connect(self.fd_timeout_s)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(RETRY_S)
                continue
            try:
                why = await self._monitor(reader, writer)
            finally:
                writer.close()
            if not self.peer_in_view:
                # Never answered on this connection: a kernel that accepts for a hung process
                # (SIGSTOP, a wedged loop) does not make it a member.
                await asyncio.sleep(RETRY_S)
                continue
            suspected = self.clock()
            self.events.emit("membership.suspect", peer=self.peer, why=why)
            if await self._verify():
                self.events.emit("membership.unsuspect", peer=self.peer)
                continue
            self.peer_in_view = False
            self.left_at = self.clock()
            self.events.emit("membership.leave", peer=self.peer, why=why,
                             verify_s=round(self.left_at - suspected, 4))

    def _join(self) -> None:
        """The peer answered: it is in the view (it joins on its first answer, not on a connection)."""
        if not self.peer_in_view:
            self.peer_in_view = True
            self.events.emit("membership.join", peer=self.peer)

    async def _monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Watch one connection until the peer is suspected; returns why (FD_SOCK or FD)."""
        misses = 0
        while True:
            deadline, answered = self.clock() + self.fd_timeout_s, False
            try:
                writer.write(ASK)
                await writer.drain()
                while (left := deadline - self.clock()) > 0:
                    try:
                        line = await asyncio.wait_for(reader.readline(), left)
                    except asyncio.TimeoutError:
                        break
                    if not line:
                        return "connection closed (FD_SOCK)"
                    if line == ANSWER:
                        answered = True
                        self._join()
            except (OSError, ValueError):  # ValueError: a line over the stream's limit
                return "connection closed (FD_SOCK)"
            misses = 0 if answered else misses + 1
            if misses >= self.fd_max_tries:
                return f"no answer to {misses} asks, {self.fd_timeout_s} s apart (FD)"

    async def _verify(self) -> bool:
        """VERIFY_SUSPECT: True when the suspect answers within ``verify_s``; the full wait otherwise."""
        deadline = self.clock() + self.verify_s
        while (left := deadline - self.clock()) > 0:
            try:
                reader, writer = await self._connect(left)
                try:
                    writer.write(ASK)
                    await writer.drain()
                    if await asyncio.wait_for(reader.readline(), max(deadline - self.clock(), 0.001)) == ANSWER:
                        return True
                finally:
                    writer.close()
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(min(RETRY_S, max(deadline - self.clock(), 0)))
        return False
