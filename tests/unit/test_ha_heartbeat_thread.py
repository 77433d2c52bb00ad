"""The heartbeats do not wait behind the component's event loop.

A member whose loop is held by a synchronous call (a slow disk, a long computation) for
300 ms, six times its 50 ms heartbeat interval, keeps sending its heartbeats on time (its
peer must not declare it dead: a false failover), and the peer's heartbeats count as heard
when they arrived, so the peer's silence is judged at its real deadline, not a loop's delay
after it. A stand-in peer on loopback (a process of its own) sends and receives.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.common.ha import HAAgent, _mono
from components.common.events import read_events
from components.common.ha.heartbeat_thread import LOOP_STALL_S
from components.common.states import ServiceState

from tests.support.processes import HA_SECRET
from tests.support.util import until

from .test_ha_agent import FakeService

pytestmark = pytest.mark.loopback  # a stand-in peer process on 127.0.0.3

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.05
BLOCK_S = 0.3
ME, PEER = "127.0.0.1", "127.0.0.3"


# The stand-in peer, clc2 on 127.0.0.3, in a process of its own (its clock readings never wait
# for this process's interpreter lock): it sends its heartbeat (in the state it is given) every
# interval until the monotonic time it reads on stdin, records when each of the agent's arrived
# (the kernel's receive timestamp, SO_TIMESTAMPNS: the stand-in's own scheduling on a loaded
# host does not count), and prints both lists as JSON once stdin closes.
PEER_SCRIPT = r"""
import json, os, select, socket, struct, sys, time
from components.common.ha import seal
SO_TIMESTAMPNS = 35  # Linux (asm-generic and x86): a struct timespec with each datagram
port, interval, key, state = int(sys.argv[1]), float(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4]
mono = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.3", port))
sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
print("ready", flush=True)
quiet_at, seq, sent, arrivals, next_send = float("inf"), 0, [], [], mono()
while True:
    now = mono()
    if now >= next_send and now < quiet_at:
        seq += 1
        msg = {"pair": "clc", "member": "clc2", "epoch": 1, "state": state, "seq": seq, "boot": 7,
               "t_mono": now, "ack": [None, 0], "last_seq": 0, "priority": 0, "arb_ok": True}
        sock.sendto(seal(key, json.dumps(msg).encode()), ("127.0.0.1", port))
        sent.append(now)
        next_send += interval
    ready, _, _ = select.select([sock, sys.stdin], [], [], max(0.0, min(next_send - mono(), 0.005)))
    if sock in ready:
        _, ancillary, _, _ = sock.recvmsg(65536, 64)
        stamp = [struct.unpack("qq", d[:16]) for level, kind, d in ancillary if kind == SO_TIMESTAMPNS]
        at = stamp[0][0] + stamp[0][1] / 1e9 - (time.time() - mono()) if stamp else mono()
        arrivals.append(at)
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line:
            break
        quiet_at = float(line)
print(json.dumps({"sent": sent, "arrivals": arrivals}), flush=True)
"""


class StandInPeer:
    def __init__(self, port: int, state: str = "ENABLED", interval: float = INTERVAL):
        self.proc = subprocess.Popen([sys.executable, "-c", PEER_SCRIPT, str(port), str(interval), HA_SECRET, state],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout.readline().strip() == "ready"

    def quiet_at(self, t: float) -> None:
        self.proc.stdin.write(f"{t}\n")
        self.proc.stdin.flush()

    def finish(self) -> dict:
        self.proc.stdin.close()
        out = json.loads(self.proc.stdout.readline())
        self.proc.wait(5)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _with_peer(port: int, go, **peer_args) -> tuple:
    """(what ``go(peer)`` returns, run to its end with a stand-in peer, and what the peer saw)."""
    with StandInPeer(port, **peer_args) as peer:
        result = asyncio.run(go(peer))
        return result, peer.finish()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((ME, 0))
        return probe.getsockname()[1]


def _hold(how: str, seconds: float) -> None:
    """Hold the calling thread (the loop's) for ``seconds``: asleep in a system call, or
    computing in Python (holding the interpreter lock but for its switch interval)."""
    end = time.monotonic() + seconds
    if how == "sleep":
        time.sleep(seconds)
    else:
        while time.monotonic() < end:
            sum(range(1000))


def _assert_sent_on_time(arrivals: list[float], t0: float, t1: float, limit: float = 3 * INTERVAL) -> None:
    """The agent's heartbeats reached the peer from just before ``t0`` to just after ``t1``
    with no gap of ``limit`` or more (by default three intervals: a loaded host's scheduling
    stays under that)."""
    during = [t for t in arrivals if t0 - INTERVAL <= t <= t1 + INTERVAL]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert len(during) >= 5 and max(gaps) < limit, gaps


def _config(tmp_path, port: int) -> dict:
    return {"host": "clc1", "role": "secondary", "data_dir": str(tmp_path), "pair": {"name": "clc"},
            "ha": {"peer": "clc2", "peer_addresses": [PEER], "port": port, "listen": [ME], "secret": HA_SECRET,
                   "interval_ms": INTERVAL * 1000, "misses": 3}}


@pytest.mark.parametrize("how", ["sleep", "busy"])
def test_a_blocked_loop_delays_neither_the_heartbeats_sent_nor_the_peer_s_deadline(tmp_path, how):
    port = _free_port()
    cfg = _config(tmp_path, port)
    svc = FakeService(tmp_path)

    async def go(peer: StandInPeer):
        agent = HAAgent(svc, cfg, run=lambda *a: asyncio.sleep(0, 0), garp=lambda i, a: None)
        await agent.start()
        try:
            await until(lambda: agent.peer.state == "ENABLED", timeout=5)
            await asyncio.sleep(3 * INTERVAL)
            t0 = _mono()
            # The peer falls silent a third of the way into the hold: its deadline (its last
            # heartbeat's arrival plus the 150 ms window) passes while the loop is held.
            peer.quiet_at(t0 + BLOCK_S / 3)
            _hold(how, BLOCK_S)
            t1 = _mono()
            await until(lambda: agent.peer_dead_reported, timeout=2)
            return agent, t0, t1
        finally:
            await agent.stop()

    (agent, t0, t1), seen = _with_peer(port, go)
    # Sent on time while the loop was held: no gap near the hold's 300 ms (a loop-driven
    # sender's gap).
    _assert_sent_on_time(seen["arrivals"], t0, t1)
    last_sent = max(seen["sent"])
    assert t0 < last_sent < t1
    # The peer's last heartbeat counts from its arrival (within a few ms of its sending), not
    # from when the loop was free again...
    assert agent.peer.heard - last_sent < INTERVAL, (agent.peer.heard - last_sent, t1 - last_sent)
    # ...so its death is declared at once after the hold, not a window after it.
    events = read_events(tmp_path / "events.jsonl")
    dead = [e for e in events if e["event"] == "ha.peer_dead"]
    assert len(dead) == 1 and dead[0]["detected_at"] - t1 < INTERVAL, (dead, t1)
    thread = [e for e in events if e["event"] == "ha.heartbeat_thread"]
    assert thread and thread[0]["policy"] in ("SCHED_FIFO", "normal")


def test_a_wedged_loop_falls_silent_and_fences_itself_when_it_comes_back(tmp_path):
    """A loop held past LOOP_STALL_S is wedged, not busy: the thread stops speaking for it (the
    peer may take over), and the loop's first tick after it fences the ENABLED member before
    any heartbeat renews its lease."""
    port = _free_port()
    svc = FakeService(tmp_path)
    hold = LOOP_STALL_S + 0.4

    async def go(peer: StandInPeer):
        agent = HAAgent(svc, _config(tmp_path, port), run=lambda *a: asyncio.sleep(0, 0), garp=lambda i, a: None)
        await agent.start()
        try:
            await until(lambda: svc.state is ServiceState.ENABLED and agent.may_serve(), timeout=5)
            t0 = _mono()
            time.sleep(hold)
            t1 = _mono()
            served_after_hold = agent.may_serve()  # the lease ran out with the heartbeats
            await until(lambda: agent.last_tick > t1, timeout=2)
            return agent, t0, t1, not served_after_hold and agent.fenced_since is not None and not agent.may_serve()
        finally:
            await agent.stop()

    (agent, t0, t1, fenced_at_once), seen = _with_peer(port, go, state="NOTREADY")
    during = [t for t in seen["arrivals"] if t0 <= t <= t1]
    assert during and max(during) < t0 + LOOP_STALL_S + 2 * INTERVAL  # silent for the rest of the hold
    assert fenced_at_once
    frozen = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "ha.frozen"]
    assert frozen and frozen[0]["fenced"] and frozen[0]["late_s"] > agent.window


def test_the_peer_is_heard_after_the_start_is_logged(tmp_path):
    """The peer heard during start-up is logged after ha.start and the service's start
    (``service.start`` is emitted right after ``start()`` returns): readers of the event log
    take service.start for a new process, so an ha.peer_alive before it was forgotten and the
    member never counted as a standby (the runner found the CLC pair not redundant)."""
    port = _free_port()
    svc = FakeService(tmp_path)

    async def go():
        agent = HAAgent(svc, _config(tmp_path, port), run=lambda *a: asyncio.sleep(0, 0), garp=lambda i, a: None)
        await agent.start()
        svc.events.emit("service.start", state=svc.state.value)  # ...as components/common/service.py does
        try:
            await until(lambda: agent.peer.state == "ENABLED", timeout=5)
        finally:
            await agent.stop()

    with StandInPeer(port, interval=0.001):  # a heartbeat every millisecond: some arrive during start()
        asyncio.run(go())
    order = [e["event"] for e in read_events(tmp_path / "events.jsonl")
             if e["event"] in ("ha.start", "service.start", "ha.peer_alive")]
    assert order[:3] == ["ha.start", "service.start", "ha.peer_alive"], order


# A thread computing at the members' own realtime priority (a member's loop serving a burst of
# requests, the prober), pinned to one core for HOG_S, in a process of its own.
HOG_S = 0.4
HOG_SCRIPT = r"""
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(sys.argv[2])))
print("hogging", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    pass
"""


def _realtime_allowed() -> bool:
    """Whether this process may run a thread at SCHED_FIFO (root, with a realtime budget)."""
    code = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.skipif(not _realtime_allowed(), reason="SCHED_FIFO refused here (needs root and a realtime budget)")
def test_a_busy_thread_at_the_members_priority_on_its_core_delays_no_heartbeat(tmp_path):
    """Realtime threads of one priority do not preempt each other: a heartbeat thread at the
    members' SCHED_FIFO 10 waited behind whatever else ran long at 10 on its core. It runs
    above them, so a hog at 10 on its core delays no heartbeat (below it, ovs-vswitchd, which
    forwards them)."""
    from experiments.testbed import vswitchd
    from experiments.testbed.configs import HEARTBEAT_PRIORITY, REALTIME_PRIORITY

    assert REALTIME_PRIORITY < HEARTBEAT_PRIORITY < vswitchd.PRIORITY
    port = _free_port()
    svc = FakeService(tmp_path)
    core = min(os.sched_getaffinity(0))

    async def go(peer: StandInPeer):
        agent = HAAgent(svc, _config(tmp_path, port), run=lambda *a: asyncio.sleep(0, 0), garp=lambda i, a: None)
        await agent.start()
        try:
            await until(lambda: agent.peer.state == "ENABLED", timeout=5)
            tid = agent.heartbeat_thread._thread.native_id
            assert os.sched_getscheduler(tid) == os.SCHED_FIFO
            priority = os.sched_getparam(tid).sched_priority
            os.sched_setaffinity(tid, {core})  # the thread alone: the loop may run anywhere
            await asyncio.sleep(3 * INTERVAL)
            hog = await asyncio.create_subprocess_exec(
                sys.executable, "-c", HOG_SCRIPT, str(core), str(REALTIME_PRIORITY), str(HOG_S),
                stdout=asyncio.subprocess.PIPE)
            assert (await hog.stdout.readline()).strip() == b"hogging"
            t0 = _mono()
            await hog.wait()
            t1 = _mono()
            await asyncio.sleep(3 * INTERVAL)
            return priority, t0, t1
        finally:
            await agent.stop()

    (priority, t0, t1), seen = _with_peer(port, go)
    assert priority == HEARTBEAT_PRIORITY
    assert t1 - t0 >= HOG_S * 0.8  # the hog ran its time
    # On time throughout: no gap near the hog's 400 ms (at the hog's priority the thread sent
    # nothing until it ended, or past the window). Half the hog's time: a virtual machine's
    # hypervisor can take a core for 100 ms at once (docs/ha.md, "What bounds the floor
    # here"), which with one interval is three intervals, and failed this test once.
    _assert_sent_on_time(seen["arrivals"], t0, t1, limit=HOG_S / 2)


def test_a_flood_on_the_heartbeat_socket_is_taken_in_batches_between_sends():
    """A hostile host can send datagrams to the heartbeat port faster than the thread takes
    them in; draining until the socket is empty would keep it from its next send (at
    SCHED_FIFO above the members' loops, for as long as the flood lasts). It takes
    RECEIVE_BATCH, then goes back to its schedule; poll() wakes it for the rest."""
    from types import SimpleNamespace

    from components.common.ha.heartbeat_thread import RECEIVE_BATCH, HeartbeatThread

    handed = []
    agent = SimpleNamespace(pair="clc", clock=_mono, on_heartbeat=None)
    loop = SimpleNamespace(call_soon_threadsafe=lambda fn, data, addr, at: handed.append(data))
    thread = HeartbeatThread(agent, loop)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind((ME, 0))
        rx.setblocking(False)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(3 * RECEIVE_BATCH):
            tx.sendto(b"x%d" % i, rx.getsockname())
        assert thread._receive(rx) is True
        assert len(handed) == RECEIVE_BATCH and handed[0] == b"x0"
        while thread._receive(rx) and len(handed) < 3 * RECEIVE_BATCH:
            pass
        assert len(handed) == 3 * RECEIVE_BATCH  # nothing lost: the rest on the next wake-ups
    thread.stop()
