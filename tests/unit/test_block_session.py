"""The NC's block session (components/sc/blockproto.py BlockClient) through SC failovers,
against a scripted target on loopback: the SC process dies (its sessions close), its
address refuses connections until the peer takes over, a member stops answering, a
standby refuses logins. No root, no network namespaces."""

from __future__ import annotations

import asyncio

import pytest

from components.sc import blockproto as bp
from tests.support.util import free_port

VOLUME = "vol-0000abcd"
SECRET = "attachment-secret"
# Failovers here take tens of milliseconds; the timeouts are the defaults scaled to match
# (with room for a loaded machine: loopback connections can take a while then too).
FAST = bp.SessionTimeouts(connect_s=0.3, reply_s=0.3, retry_interval_s=0.01, request_s=0.6)


class ScriptedSC:
    """A block target on one address that can crash, come back, hang and refuse: what the
    SC's service VIP looks like to an NC during a failover. Records every request it read."""

    def __init__(self, port: int):
        self.port = port
        self.server: asyncio.AbstractServer | None = None
        self.sessions: set[asyncio.StreamWriter] = set()
        self.requests: list[tuple[str, bytes, float]] = []  # (member, op, when)
        self.member = "sc1"
        self.serving = True  # False: a standby, refusing logins
        self.silent = False  # True: reads requests, answers none (a hung member)
        self.blocks = bytearray(4096)

    async def start(self, member: str | None = None) -> None:
        if member is not None:
            self.member = member
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def crash(self) -> None:
        """The process dies: no more listener (connections are refused), its sessions closed."""
        self.server.close()
        for w in list(self.sessions):
            w.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions.add(writer)
        member = self.member
        try:
            while True:
                op, offset, length = bp.HEADER.unpack(await reader.readexactly(bp.HEADER.size))
                data = await reader.readexactly(length) if op in (b"L", b"A", b"W") and length else b""
                self.requests.append((member, op, asyncio.get_running_loop().time()))
                if self.silent:
                    continue
                if op == b"L" and not self.serving:
                    writer.write(bp.REPLY.pack(bp.NOT_PRIMARY, 0))
                    return
                if op == b"L":  # a challenge (this target takes any answer)
                    writer.write(bp.REPLY.pack(bp.OK, bp.CHALLENGE_BYTES) + b"c" * bp.CHALLENGE_BYTES)
                elif op == b"R":
                    out = bytes(self.blocks[offset:offset + length])
                    writer.write(bp.REPLY.pack(bp.OK, len(out)) + out)
                else:
                    if op == b"W":
                        self.blocks[offset:offset + length] = data
                    writer.write(bp.REPLY.pack(bp.OK, 0))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.sessions.discard(writer)
            writer.close()


def run(scenario):
    async def main():
        sc = ScriptedSC(free_port())
        await sc.start()
        relogins: list[dict] = []
        client = bp.BlockClient("127.0.0.1", sc.port, VOLUME, SECRET, FAST, on_relogin=relogins.append)
        await client.connect()
        try:
            await scenario(sc, client, relogins)
        finally:
            await client.close()
            if sc.server is not None:
                await sc.crash()
    asyncio.run(main())


def ops(sc: ScriptedSC, member: str | None = None) -> list[bytes]:
    return [op for m, op, _ in sc.requests if member is None or m == member]


def test_a_crashed_session_is_noticed_before_a_request_is_written_into_it():
    async def scenario(sc, client, relogins):
        sc.blocks[0:5] = b"hello"
        assert await client.read(0, 5) == b"hello"
        await sc.crash()
        await sc.start("sc2")  # the peer answers on the VIP at once
        await asyncio.sleep(0.01)  # the NC's kernel has seen the session close
        assert await client.read(0, 5) == b"hello"
        # Nothing was written into the dead session: sc2's first request is the login.
        assert ops(sc, "sc2") == [b"L", b"A", b"R"] and ops(sc, "sc1") == [b"L", b"A", b"R"]
        assert [(r["volume"], r["reason"], r["attempts"]) for r in relogins] == \
            [(VOLUME, "closed by the SC", 1)]
    run(scenario)


def test_the_session_comes_back_within_a_retry_interval_of_the_takeover():
    async def scenario(sc, client, relogins):
        loop = asyncio.get_running_loop()
        await sc.crash()
        t_crash = loop.time()

        async def takeover():  # the peer's VIP comes up 150 ms later; refused until then
            await asyncio.sleep(0.15)
            await sc.start("sc2")
            return loop.time()

        task = asyncio.create_task(takeover())
        assert await client.read(0, 4) == b"\0" * 4
        t_served, t_takeover = loop.time(), await task
        assert t_served - t_takeover < 0.25, "not a 1 s SYN retransmission, nor a long connect timeout"
        (r,) = relogins
        assert r["attempts"] > 3 and 0.14 < r["down_s"] < 0.4 and r["lost_at"] >= t_crash
    run(scenario)


def test_requests_queued_behind_a_failover_give_up_at_their_deadlines():
    async def scenario(sc, client, relogins):
        loop = asyncio.get_running_loop()
        await sc.crash()
        # A probe every 10 ms while nobody answers on the VIP for 1 s (longer than a deadline).
        results: list[tuple[float, float, object]] = []

        async def probe():
            sent = loop.time()
            try:
                out = await client.read(0, 4)
            except bp.BlockUnavailable as exc:
                out = exc
            results.append((sent, loop.time(), out))

        tasks = []
        for _ in range(100):
            tasks.append(asyncio.create_task(probe()))
            await asyncio.sleep(0.01)
        t_takeover = loop.time()
        await sc.start("sc2")
        for _ in range(20):
            tasks.append(asyncio.create_task(probe()))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        for sent, done, out in results:
            assert done - sent < FAST.request_s + FAST.reply_s + 0.1  # answered or given up in time
        served = [(sent, done) for sent, done, out in results if out == b"\0" * 4]
        early = [sent for sent, _, out in results if isinstance(out, bp.BlockUnavailable)]
        assert served and early and client.given_up == len(early)
        # Requests whose clients had gone were never sent: sc2 saw only the fresh ones, and
        # the first probe after the takeover was answered within a few retry intervals.
        assert len(ops(sc, "sc2")) - 1 <= 20 + FAST.request_s / 0.01
        first_after = min(done for sent, done in served if sent >= t_takeover)
        assert first_after - t_takeover < 0.25
        # (the oldest, waiting when the session came back, may still be given up after it)
        assert len(relogins) == 1 and 0 < relogins[0]["given_up"] <= len(early)
    run(scenario)


def test_a_member_that_stops_answering_is_left_for_the_vip():
    async def scenario(sc, client, relogins):
        loop = asyncio.get_running_loop()
        sc.silent = True  # hung: the session stays open, nothing comes back
        t = loop.time()

        async def takeover():
            await asyncio.sleep(0.1)
            sc.silent = False  # the next session reaches a member that answers
            sc.member = "sc2"

        asyncio.create_task(takeover())
        await client.write(100, b"still written")
        assert FAST.reply_s <= loop.time() - t < FAST.reply_s + 0.1
        assert sc.blocks[100:113] == b"still written"
        assert relogins[0]["reason"].startswith("request failed: TimeoutError")
    run(scenario)


def test_a_standby_answering_on_the_vip_is_asked_again_until_the_primary_does():
    async def scenario(sc, client, relogins):
        await sc.crash()
        sc.serving = False  # the old primary restarted as a standby and holds the address
        await sc.start("sc1")

        async def takeover():
            await asyncio.sleep(0.05)
            sc.serving = True

        asyncio.create_task(takeover())
        assert await client.read(0, 2) == b"\0\0"
        assert ops(sc).count(b"L") >= 3
    run(scenario)


def test_a_request_whose_deadline_passed_is_not_sent():
    async def scenario(sc, client, relogins):
        loop = asyncio.get_running_loop()
        before = len(sc.requests)
        with pytest.raises(bp.BlockUnavailable):
            await client.read(0, 4, deadline=loop.time() - 0.001)
        assert len(sc.requests) == before and client.given_up == 1
        assert await client.read(0, 4) == b"\0" * 4  # the session was left alone
        assert not relogins
    run(scenario)


def test_a_login_the_primary_refuses_is_an_error_at_once():
    async def scenario(sc, client, relogins):
        other = bp.BlockClient("127.0.0.1", sc.port, "vol-00000bad", SECRET, FAST)
        sc.serving = True

        async def no_volume(reader, writer):
            await reader.readexactly(bp.HEADER.size + len("vol-00000bad"))
            writer.write(bp.REPLY.pack(bp.LOGIN_REFUSED, 0))
            writer.close()
        await sc.crash()
        server = await asyncio.start_server(no_volume, "127.0.0.1", sc.port, reuse_address=True)
        try:
            with pytest.raises(bp.BlockError) as exc:
                await other.connect(timeout=2.0)
            assert exc.value.status == bp.LOGIN_REFUSED
        finally:
            server.close()
            await server.wait_closed()
    run(scenario)


def test_requests_abandoned_by_their_clients_are_not_sent_when_their_turn_comes():
    async def scenario(sc, client, relogins):
        await sc.crash()
        gone = {n: False for n in range(30)}
        tasks = [asyncio.create_task(client.read(n, 1, wanted=lambda n=n: not gone[n])) for n in range(30)]
        await asyncio.sleep(0.1)
        for n in range(25):  # their clients timed out while the SC was failing over
            gone[n] = True
        await sc.start("sc2")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, bp.BlockUnavailable) for r in results[:25])
        assert results[25:] == [b"\0"] * 5
        assert ops(sc, "sc2") == [b"L", b"A"] + [b"R"] * 5
    run(scenario)


def test_of_the_requests_waiting_the_newest_goes_next():
    async def main():
        turns, order = bp.Turns(), []
        await turns.acquire()  # a request on the session

        async def request(n):
            await turns.acquire()
            order.append(n)
            turns.release()

        waiting = []
        for n in range(4):
            waiting.append(asyncio.create_task(request(n)))
            await asyncio.sleep(0)
        given_up = asyncio.create_task(request("timed out"))
        await asyncio.sleep(0)
        given_up.cancel()
        await asyncio.sleep(0)
        turns.release()
        await asyncio.gather(*waiting)
        assert order == [3, 2, 1, 0]
        # A turn handed to a request cancelled at that very moment is passed on, not lost.
        await turns.acquire()
        late = asyncio.create_task(turns.acquire())
        await asyncio.sleep(0)
        turns.release()
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)
        await asyncio.wait_for(turns.acquire(), 1)

    asyncio.run(main())
