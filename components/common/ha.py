"""High availability for a primary/secondary pair: heartbeats, arbitrators, election, takeover.

Every HA component (CLC, Walrus, CC, SC) runs one ``HAAgent`` in its own event loop.
The design and its guarantees are in docs/ha.md; in short:

* Heartbeats every ``interval`` over two paths (the pair's heartbeat link and the
  cloud network). The peer is dead when nothing arrived on any path for
  ``misses x interval``. Cutting one path never causes a failover.
* Arbitrators ping external entities (the border gateway, the external site) with
  ICMP. Some failing: advisory. All failing on the ENABLED member: it goes NOTREADY
  (fail-stop), drops its VIPs and says so at once on the heartbeat link; the peer
  takes over unless its own arbitrators all fail too.
* One ENABLED member. Promotion takes epoch = highest seen + 1 (persisted first);
  a member hearing a higher epoch while ENABLED steps down at once. Elections
  order members by (epoch, replicated state, configured priority): the member with
  the newest data wins, and a member that lacks acknowledged writes never promotes.
* Fencing: a member whose own loop ran late by more than the detection window
  (SIGSTOP, starvation) refuses to serve until it has heard its peer again, so a
  resumed ex-primary never answers after its peer has taken over.
* Takeover adds the VIPs and sends gratuitous ARP (EUCA-2281 forgot this).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from .states import ServiceState

ENABLED, DISABLED, NOTREADY = ServiceState.ENABLED, ServiceState.DISABLED, ServiceState.NOTREADY
# When gratuitous ARPs go out after a takeover: at once, and again past the 1 s ARP locktime.
GARP_SCHEDULE_S = (0.0, 1.1, 2.2)


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- arbitrators ----------------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """ICMP echo over one raw socket, shared by a host's arbitrators (emulated hosts run as root)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.waiters: dict[int, asyncio.Future] = {}
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8:
                continue
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind == 0 and ident == self.ident:
                fut = self.waiters.pop(seq, None)
                if fut and not fut.done():
                    fut.set_result(True)

    async def ping(self, target: str, timeout: float) -> bool:
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
        payload = b"eucalab-arbitrator"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), self.ident, seq) + payload
        fut = asyncio.get_running_loop().create_future()
        self.waiters[seq] = fut
        try:
            self.sock.sendto(packet, (target, 0))
            return await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, OSError):
            return False
        finally:
            self.waiters.pop(seq, None)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


@dataclass
class Arbitrator:
    name: str
    target: str
    fail_after: int = 2
    misses: int = 0
    stopped: bool = False  # administratively stopped (maintenance): counts as failed
    ok: bool = True  # until proven otherwise, so a starting member is not blocked

    @property
    def failed(self) -> bool:
        return self.stopped or not self.ok


# -- the agent ---------------------------------------------------------------------------------

@dataclass
class Peer:
    heard: float | None = None  # t_mono of the last heartbeat on any path
    state: str | None = None
    epoch: int = 0
    last_seq: int = 0
    priority: int = 0
    arb_ok: bool = True
    sent: float = 0.0  # the sender's CLOCK_MONOTONIC when it sent the last heartbeat heard
    paths: dict = field(default_factory=dict)  # address -> t_mono last heard on it


class HAAgent:
    """The HA half of a component: decides when it is ENABLED, and fences it when it must not serve."""

    def __init__(self, service, config: dict):
        ha = config["ha"]
        self.svc = service
        self.events = service.events
        self.pair = config["pair"]["name"]
        self.host = config["host"]
        self.priority = 1 if config.get("role") == "primary" else 0
        self.interval = float(ha.get("interval_ms", 50)) / 1000
        self.misses = int(ha.get("misses", 3))
        self.window = self.interval * self.misses
        self.port = int(ha.get("port", 7800))
        self.peer_addresses: list[str] = list(ha["peer_addresses"])
        self.vips: list[dict] = list(ha.get("vips", []))
        self.arbitrators = [Arbitrator(a["name"], a["target"], int(ha.get("arbitrator_fail_after", 2)))
                            for a in ha.get("arbitrators", [])]
        self.arb_period = float(ha.get("arbitrator_period_s", 1.0))
        self.arb_timeout = float(ha.get("arbitrator_timeout_s", 0.5))
        self.data = Path(config["data_dir"])
        self.epoch_file = self.data / "ha-epoch"
        self.epoch = int(self.epoch_file.read_text()) if self.epoch_file.exists() else 1
        self.peer = Peer()
        self.seq = 0
        self.last_tick = _mono()
        self.fenced_since: float | None = None
        self.hold_until = _mono() + self.window + self.interval  # listen before claiming anything
        self.last_seq: Callable[[], int] = lambda: 0  # the component's replicated-state position
        self.on_promote: Callable[[int], Awaitable[None]] | None = None
        self.on_demote: Callable[[str], Awaitable[None]] | None = None
        self._transport = None
        self._tasks: list[asyncio.Task] = []
        self._pinger: Pinger | None = None
        self._busy = asyncio.Lock()
        self.peer_dead_reported = False
        self._advised: list[str] = []
        self._running: set[asyncio.Task] = set()
        self._deadline: asyncio.TimerHandle | None = None
        self._last_reannounce = 0.0

    # -- what the component asks -----------------------------------------------------------

    def may_serve(self) -> bool:
        """True only while ENABLED, not fenced, and this loop is running on time."""
        if self.svc.state is not ENABLED or self.fenced_since is not None:
            return False
        return _mono() - self.last_tick <= self.window

    def peer_alive(self, now: float | None = None) -> bool:
        now = now if now is not None else _mono()
        return self.peer.heard is not None and now - self.peer.heard <= self.window

    def all_arbitrators_failed(self) -> bool:
        return bool(self.arbitrators) and all(a.failed for a in self.arbitrators)

    def status(self) -> dict:
        return {"epoch": self.epoch, "peer": {"alive": self.peer_alive(), "state": self.peer.state,
                                               "epoch": self.peer.epoch},
                "fenced": self.fenced_since is not None,
                "arbitrators": [{"name": a.name, "target": a.target, "ok": not a.failed, "stopped": a.stopped}
                                for a in self.arbitrators]}

    def set_arbitrator_stopped(self, name: str, stopped: bool) -> bool:
        for a in self.arbitrators:
            if a.name == name:
                a.stopped = stopped
                self.events.emit("arbitrator.stop" if stopped else "arbitrator.start", arbitrator=name)
                return True
        return False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Heartbeats(self), local_addr=("0.0.0.0", self.port), reuse_port=True)
        # Start DISABLED whatever the config said: the election decides (docs/ha.md).
        if self.svc.state is ENABLED:
            self.svc.set_state(DISABLED, "HA start: electing")
        await self._release_vips()
        self._tasks.append(asyncio.create_task(self._ticker()))
        if self.arbitrators:
            self._pinger = Pinger()
            self._tasks.append(asyncio.create_task(self._arbitrate()))
        self.events.emit("ha.start", pair=self.pair, epoch=self.epoch, interval_ms=self.interval * 1000,
                         misses=self.misses, arbitrators=len(self.arbitrators))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._transport:
            self._transport.close()
        if self._pinger:
            self._pinger.close()

    # -- heartbeats ---------------------------------------------------------------------------

    def _message(self) -> bytes:
        self.seq += 1
        return json.dumps({"pair": self.pair, "host": self.host, "epoch": self.epoch, "sent": _mono(),
                           "state": self.svc.state.value, "seq": self.seq, "last_seq": self.last_seq(),
                           "priority": self.priority, "arb_ok": not self.all_arbitrators_failed(),
                           "fenced": self.fenced_since is not None}).encode()

    def send_heartbeat(self) -> None:
        if self._transport is None:
            return
        msg = self._message()
        for addr in self.peer_addresses:
            try:
                self._transport.sendto(msg, (addr, self.port))
            except OSError:
                pass  # a cut path: the other one carries the heartbeat

    def on_heartbeat(self, data: bytes, addr) -> None:
        try:
            m = json.loads(data)
        except ValueError:
            return
        if m.get("pair") != self.pair or m.get("host") == self.host:
            return
        now = _mono()
        was_alive = self.peer_alive(now)
        p = self.peer
        p.heard, p.state, p.epoch = now, m["state"], int(m["epoch"])
        p.sent = float(m.get("sent", 0.0))
        p.last_seq, p.priority, p.arb_ok = int(m.get("last_seq", 0)), int(m.get("priority", 0)), bool(m["arb_ok"])
        p.paths[addr[0]] = now
        # Check for silence exactly one detection window after this heartbeat, not at
        # the next tick: detection then costs misses x interval, not up to one interval more.
        if self._deadline is not None:
            self._deadline.cancel()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_at(loop.time() + self.window + 0.0005, lambda: self._spawn(self._decide("silence")))
        if not was_alive:
            self.peer_dead_reported = False
            self.events.emit("ha.peer_alive", peer=m["host"], epoch=p.epoch, state=p.state)
        if self.svc.state is ENABLED and (p.state == "ENABLED" or m.get("fenced")) and self.fenced_since is None \
                and now - self._last_reannounce > 1.0:
            # A peer that believes (or believed) it is primary may have answered ARP for
            # our VIPs: announce them again so nobody keeps its stale location.
            self._last_reannounce = now
            self._spawn(self._announce())
        if self.fenced_since is not None or (self.svc.state is ENABLED and p.state == "ENABLED"):
            self._spawn(self._decide("heartbeat"))
        elif p.state == "NOTREADY" and self.svc.state is DISABLED:
            self._spawn(self._decide("peer NOTREADY"))

    async def _ticker(self) -> None:
        next_at = _mono()
        while True:
            next_at += self.interval
            delay = next_at - _mono()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = _mono()  # ran late: do not try to catch up with a burst
            now = _mono()
            if now - self.last_tick > self.window and self.svc.state is ENABLED and self.fenced_since is None:
                # This process did not run for a detection window: the peer may have taken
                # over. Stop serving and let go of the VIPs at once, before anything else.
                self.fenced_since = now
                self.events.emit("ha.frozen", late_s=round(now - self.last_tick, 4))
                self._spawn(self._release_vips())
            self.last_tick = now
            self.send_heartbeat()
            # Decisions run beside the ticker: a slow takeover step must never delay a heartbeat.
            self._spawn(self._decide("tick"))

    def _spawn(self, coro) -> None:
        """Run a coroutine beside the ticker; an exception is logged as an event, never lost."""
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)

        def done(t: asyncio.Task) -> None:
            self._running.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.events.emit("ha.error", error=repr(t.exception()))

        task.add_done_callback(done)

    # -- decisions ------------------------------------------------------------------------------

    def _outranks_peer(self) -> bool:
        mine = (self.epoch, self.last_seq(), self.priority)
        theirs = (self.peer.epoch, self.peer.last_seq, self.peer.priority)
        return mine > theirs

    async def _decide(self, why: str) -> None:
        if self._busy.locked():
            return
        async with self._busy:
            now = _mono()
            state = self.svc.state
            alive = self.peer_alive(now)
            if not alive and self.peer.heard is not None and not self.peer_dead_reported:
                self.peer_dead_reported = True
                self.events.emit("ha.peer_dead", last_heard=self.peer.heard, detected_at=now,
                                 silence_s=round(now - self.peer.heard, 4))
            if self.fenced_since is not None:
                # Only a heartbeat *sent* after the freeze tells the truth: older ones
                # queued in the socket while this process was stopped say nothing of now.
                if alive and self.peer.sent > self.fenced_since:
                    if self.peer.state == "ENABLED" or self.peer.epoch > self.epoch:
                        await self._demote("peer took over while this member was frozen")
                    else:
                        await self._acquire_vips()  # the peer did not take over: carry on
                    self.fenced_since = None
                    self.events.emit("ha.unfenced", peer_state=self.peer.state)
                elif now - self.fenced_since > self.window:
                    self.fenced_since = None  # heard nothing for a whole window: the peer is gone
                    await self._acquire_vips()
                    self.events.emit("ha.unfenced", peer_state=None)
                return
            if state is ENABLED:
                if self.all_arbitrators_failed():
                    await self._demote("all arbitrators failed", to=NOTREADY)
                elif alive and self.peer.state == "ENABLED" and not self._outranks_peer():
                    await self._demote("peer is ENABLED with a higher epoch")
                return
            if state is NOTREADY:
                if not self.all_arbitrators_failed():
                    self.svc.set_state(DISABLED, "arbitrators recovered")
                return
            # DISABLED: take over only when users can reach us and the data is ours to serve.
            if now < self.hold_until or self.all_arbitrators_failed():
                return
            if alive:
                if self.peer.state == "ENABLED" and self.peer.arb_ok:
                    return
                if self.last_seq() < self.peer.last_seq:
                    return  # behind: catching up first (never serve older state)
                if self.peer.state == "NOTREADY" or (self.peer.state == "ENABLED" and not self.peer.arb_ok):
                    await self._promote("peer lost its arbitrators")
                elif self.peer.state == "DISABLED" and self._outranks_peer():
                    await self._promote("election")
                return
            if self.peer.heard is not None and self.last_seq() < self.peer.last_seq:
                self.events.emit("ha.cannot_promote", reason="missing replicated state",
                                 mine=self.last_seq(), peer=self.peer.last_seq)
                return
            await self._promote("peer dead" if self.peer.heard is not None else "no peer at start")

    async def _promote(self, reason: str) -> None:
        detected = _mono()
        self.epoch = max(self.epoch, self.peer.epoch) + 1
        tmp = self.epoch_file.with_suffix(".tmp")
        tmp.write_text(str(self.epoch))
        os.replace(tmp, self.epoch_file)
        if self.on_promote is not None:
            await self.on_promote(self.epoch)
        self.svc.set_state(ENABLED, reason)
        self.send_heartbeat()  # tell the peer first: it must not think it is primary
        garp = await self._acquire_vips()
        self.events.emit("ha.promote", epoch=self.epoch, reason=reason, detected_at=detected,
                         vip_at=_mono(), garp_sent=garp)

    async def _demote(self, reason: str, to: ServiceState = DISABLED) -> None:
        self.svc.set_state(to, reason)
        self.send_heartbeat()
        await self._release_vips()
        if self.on_demote is not None:
            await self.on_demote(reason)
        self.events.emit("ha.demote", to=to.value, reason=reason, epoch=self.epoch)

    # -- VIPs ---------------------------------------------------------------------------------------

    async def _run(self, *argv: str) -> int:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    async def _acquire_vips(self) -> bool:
        codes = await asyncio.gather(*(self._run("ip", "addr", "replace", f"{v['address']}/{v['prefix']}",
                                                 "dev", v["interface"]) for v in self.vips))
        await self._announce()
        for v in self.vips:
            self.events.emit("ha.vip_acquired", vip=v["address"], interface=v["interface"])
        return all(c == 0 for c in codes)

    async def _announce(self) -> None:
        """Gratuitous ARP: routers and clients learn the VIPs' location at once.

        Linux ignores an ARP update for an entry changed less than locktime (1 s) ago,
        so the announcement is repeated after that; arping runs on its own, never in
        the way of a heartbeat.
        """
        for delay in GARP_SCHEDULE_S:
            for v in self.vips:
                self._spawn(self._garp(delay, v))

    async def _garp(self, delay: float, vip: dict) -> None:
        if delay:
            await asyncio.sleep(delay)
        # A member that lost the VIP meanwhile must not announce it: that would pull
        # traffic back to a host that drops it.
        if self.svc.state is ENABLED and self.fenced_since is None:
            await self._run("arping", "-q", "-U", "-c", "1", "-I", vip["interface"], vip["address"])

    async def release_vips(self) -> None:
        await self._release_vips()

    async def _release_vips(self) -> None:
        await asyncio.gather(*(self._run("ip", "addr", "del", f"{v['address']}/{v['prefix']}", "dev",
                                         v["interface"]) for v in self.vips))

    # -- arbitrators ---------------------------------------------------------------------------------

    async def _arbitrate(self) -> None:
        # A random phase keeps the arbitrators of a pair from probing in lock step.
        await asyncio.sleep(random.uniform(0, self.arb_period))
        while True:
            t0 = _mono()
            results = await asyncio.gather(*(self._pinger.ping(a.target, self.arb_timeout)
                                             for a in self.arbitrators))
            before = self.all_arbitrators_failed()
            for a, ok in zip(self.arbitrators, results):
                was_failed = a.failed
                a.misses = 0 if ok else a.misses + 1
                a.ok = a.misses < a.fail_after
                if a.failed != was_failed:
                    self.events.emit("arbitrator.fail" if a.failed else "arbitrator.recover",
                                     arbitrator=a.name, target=a.target)
            failed = [a.name for a in self.arbitrators if a.failed]
            if self.all_arbitrators_failed() and not before:
                self.events.emit("arbitrator.all_failed", arbitrators=failed)
                self.send_heartbeat()
                self._spawn(self._decide("arbitrators"))
            elif failed and not self.all_arbitrators_failed() and failed != self._advised:
                # Some arbitrators down (maintenance, a flaky path): advisory only.
                self.events.emit("arbitrator.advisory", failed=failed)
            self._advised = failed
            await asyncio.sleep(max(0.0, self.arb_period - (_mono() - t0)))


class _Heartbeats(asyncio.DatagramProtocol):
    def __init__(self, agent: HAAgent):
        self.agent = agent

    def datagram_received(self, data: bytes, addr) -> None:
        self.agent.on_heartbeat(data, addr)
