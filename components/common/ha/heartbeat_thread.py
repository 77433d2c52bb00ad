"""The heartbeats' own thread: it sends this member's heartbeat every interval and takes in the
peer's, whatever else the component's event loop is doing (a slow request, a long synchronous
call, a busy disk). The decisions stay on the loop: each heartbeat received is handed to it
thread-safely with the moment it arrived, so the peer counts as heard from then on, not from
when the loop got to it. Runs at SCHED_FIFO where the process may (root), else at normal
priority; the ``ha.heartbeat_thread`` event says which.

What the thread sends is the newest heartbeat content the loop published (its state, epoch,
replicated-state position...; the loop's ticker refreshes it every interval and every
immediate heartbeat replaces it) with a fresh sequence number. A loop that has not ticked for
LOOP_STALL_S is wedged, not busy: the thread then stops speaking for it, and the peer takes
over as it would from a dead member. When no heartbeat went out for a window (the process was
stopped, or the loop wedged), the thread sends nothing more until the loop has ticked since:
the tick judges the freeze first (it fences an ENABLED member), so a stale heartbeat never
renews the lease of a member whose peer may have taken over.
"""

from __future__ import annotations

import math
import os
import select
import threading

# A loop that has not ticked for this long is wedged: its heartbeats stop (the peer takes over).
LOOP_STALL_S = 1.0
# SCHED_FIFO priority of the thread where the process may raise it (1..99: low, above every
# normal thread; the kernel's real-time throttling still leaves the rest of the host its share).
# Above the members' own processes (their event loops, at SCHED_FIFO 10 on a deployment) and
# the experiments' prober (10), below ovs-vswitchd (20), which forwards the heartbeats:
# realtime threads of one priority do not preempt each other, so at 10 a heartbeat waited
# behind any loop or prober busy on its core (a member serving a burst of requests) until
# that one blocked, 100-170 ms under 500 requests a second, past the 150 ms window.
FIFO_PRIORITY = 15
# Datagrams taken in per wake-up before the thread checks its send schedule again.
RECEIVE_BATCH = 64


class HeartbeatThread:
    """Sends on the agent's heartbeat sockets every interval and receives on them; hands what
    arrives to the agent's loop (``agent.on_heartbeat(data, addr, arrived)``)."""

    def __init__(self, agent, loop):
        self.agent = agent
        self.loop = loop
        self.policy: str | None = None  # "SCHED_FIFO" or "normal", once the thread runs
        self.error: str | None = None  # why SCHED_FIFO was refused
        self.ready = threading.Event()
        self._late = 0.0  # the longest gap between two heartbeats sent since the ticker last asked
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"ha-heartbeats-{agent.pair}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (it closes nothing: the agent owns the sockets)."""
        if self._wake_w is None:
            return
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=2.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = None

    def take_late(self) -> float:
        """How late this member's heartbeats ran since the last call: the longest gap between
        two sent, or since the last one sent until now (the pause detector's measure: on its own
        thread, a heartbeat misses its time only when the process was not scheduled or the
        loop is wedged)."""
        sent = self.agent.last_sent
        with self._lock:
            late, self._late = self._late, 0.0
        return max(late, 0.0 if sent is None else self.agent.clock() - sent)

    def _realtime(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))  # 0: this thread
            self.policy = "SCHED_FIFO"
        except (OSError, AttributeError) as exc:
            self.policy, self.error = "normal", str(exc)

    def _run(self) -> None:
        self._realtime()
        self.ready.set()
        agent = self.agent
        clock, interval = agent.clock, agent.interval
        sockets = {s.fileno(): s for s in agent._endpoints}
        poller = select.poll()
        for fd in (*sockets, self._wake_r):
            poller.register(fd, select.POLLIN)
        next_send = clock()
        held_since: float | None = None  # no heartbeat for a window: the loop ticks first
        while True:
            now = clock()
            if now >= next_send:
                gap = 0.0 if agent.last_sent is None else now - agent.last_sent
                with self._lock:
                    self._late = max(self._late, gap)
                if gap > agent.window and held_since is None:
                    held_since = now
                elif held_since is not None and agent.last_tick >= held_since:
                    held_since = None
                if held_since is None and now - agent.last_tick <= LOOP_STALL_S:
                    agent.heartbeats.send_latest()
                next_send += interval
                if next_send <= now:
                    next_send = now + interval  # ran late: no burst to catch up
            wait_ms = max(0, math.ceil((next_send - clock()) * 1000))
            for fd, ev in poller.poll(wait_ms):
                if fd == self._wake_r or ev & select.POLLNVAL:
                    return
                if not self._receive(sockets[fd]):
                    return

    def _receive(self, sock) -> bool:
        """What waits on ``sock``, each handed to the loop with its arrival time, at most
        RECEIVE_BATCH at a time (a flood of datagrams must not keep the thread from its next
        send: poll() wakes it again for the rest); False once the loop is gone."""
        for _ in range(RECEIVE_BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return True  # a closed socket (the agent stops): the wake pipe ends the thread
            arrived = self.agent.clock()
            try:
                self.loop.call_soon_threadsafe(self.agent.on_heartbeat, data, addr, arrived)
            except RuntimeError:
                return False  # the loop is closed
        return True
