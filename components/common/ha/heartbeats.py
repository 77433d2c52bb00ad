"""An HA agent's heartbeats: sealed with the pair's key, sent on every path, and taken only
when they come from the peer's planned addresses and are newer than the last one heard
(docs/ha.md, docs/security.md); refusals are counted and reported at a bounded rate."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading

from ..files import write_atomic
from .model import (DISABLED, ENABLED, GARP_SCHEDULE_S, MAX_COUNTER, MAX_EPOCH, REJECT_REPORT_S, STATES,
                    TAG_BYTES, Part, _read_int)


def seal(secret: bytes, body: bytes) -> bytes:
    """A heartbeat on the wire: HMAC-SHA256 of the whole body under the pair's secret, then the body."""
    return hmac.new(secret, body, hashlib.sha256).digest() + body


def unseal(secret: bytes, data: bytes) -> bytes | None:
    """The body of a heartbeat sealed with ``secret``; None when the tag does not match
    (compared in constant time: the answer takes as long whatever bytes match)."""
    tag, body = data[:TAG_BYTES], data[TAG_BYTES:]
    if len(tag) < TAG_BYTES or not hmac.compare_digest(tag, hmac.new(secret, body, hashlib.sha256).digest()):
        return None
    return body


class Heartbeats(Part):
    """Builds, sends, receives and judges heartbeats; what a heartbeat says updates ``agent.peer``."""

    SHARED = frozenset({
        "_announce", "_arm_deadline", "_decide", "_endpoints", "_offload", "_redirect", "_spawn",
        "_transport", "agent", "all_arbitrators_failed", "arb_confirm", "arbitrators", "boot", "cfg",
        "clock", "confirm_wanted", "epoch", "events", "fenced_since", "handover", "host", "joined_file",
        "last_sent", "last_seq", "pair", "peer", "peer_addresses", "peer_alive", "peer_dead_reported",
        "port", "priority", "rejoining", "sdn_vips", "secret", "seq", "standby_ready", "svc", "window"})

    def __init__(self, agent):
        super().__init__(agent)
        self.rejected: dict[str, int] = {}  # heartbeats refused, by reason (status, ha.heartbeat_rejected)
        self._rejected_since_report: dict[str, int] = {}
        self._last_rejected_from: str | None = None
        self._last_reject_report = float("-inf")
        self._last_reannounce = float("-inf")
        # The peer's newest incarnation heard, kept across restarts: a heartbeat of an older
        # one (captured and replayed) is refused even by a member that just restarted.
        self.peer_boot_file = agent.data / "ha-peer-boot"
        self.peer_boot_floor = _read_int(self.peer_boot_file)
        # What a heartbeat says, as the loop last published it: the heartbeat thread sends it
        # again every interval with a fresh sequence number. One sender at a time, in order.
        self._latest: dict | None = None
        self._send_lock = threading.Lock()

    def open(self) -> None:
        """One UDP socket per listening address (unless a transport was given), non-blocking:
        the heartbeat thread (heartbeat_thread.py) sends and receives on them."""
        for address in self.cfg.listen:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, self.port))
            sock.setblocking(False)
            self._endpoints.append(sock)
        self._transport = self._endpoints[0]

    def _fields(self) -> dict:
        """What this member's heartbeat says now (on the loop: the component's ``last_seq``)."""
        return {"pair": self.pair, "member": self.host, "epoch": self.epoch, "state": self.svc.state.value,
                "boot": self.boot, "last_seq": self.last_seq(), "priority": self.priority,
                "arb_ok": not self.all_arbitrators_failed(), "arb_confirm": list(self.arb_confirm),
                "fenced": self.fenced_since is not None, "ready": bool(self.standby_ready()),
                "handover": self.handover is not None and self.handover.phase == "offered"}

    def _message(self, now: float, fields: dict) -> bytes:
        self.seq += 1
        return seal(self.secret, json.dumps({
            **fields, "seq": self.seq, "t_mono": now, "ack": [self.peer.boot, self.peer.seq]}).encode())

    def send_heartbeat(self) -> None:
        """One heartbeat on every path, at once (on the loop); renews the lease when at least
        one path took it. What it says is what the heartbeat thread repeats from now on."""
        if self._transport is None:
            return
        with self._send_lock:
            self._latest = self._fields()
            self._send(self._latest)

    def publish(self) -> None:
        """Refresh what the heartbeat thread sends, without sending (the loop's tick)."""
        with self._send_lock:
            self._latest = self._fields()

    def send_latest(self) -> None:
        """The heartbeat thread's send: the newest content the loop published."""
        with self._send_lock:
            if self._latest is not None:
                self._send(self._latest)

    def _send(self, fields: dict) -> None:
        now = self.clock()
        msg = self._message(now, fields)
        sent = False
        for i, addr in enumerate(self.peer_addresses):
            try:
                self._sender(i).sendto(msg, (addr, self.port))
                sent = True
            except OSError:
                pass  # a cut path: the other one carries the heartbeat
        if sent:
            self.last_sent = now

    def _sender(self, path: int):
        """The socket for the peer's ``path``-th address: the one bound to this member's own
        address on that network (listen and peer_addresses go path by path), so the peer
        sees the heartbeat come from the address it expects on the path it took."""
        if len(self._endpoints) == len(self.peer_addresses):
            return self._endpoints[path]
        return self._transport

    def _reject(self, reason: str, addr) -> None:
        """Count a refused heartbeat; said in an event at most every REJECT_REPORT_S (the
        ticker says what is left once that has passed)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._rejected_since_report[reason] = self._rejected_since_report.get(reason, 0) + 1
        self._last_rejected_from = addr[0]
        self._report_rejections()

    def _report_rejections(self) -> None:
        now = self.clock()
        if self._rejected_since_report and now - self._last_reject_report >= REJECT_REPORT_S:
            self._last_reject_report = now
            self.events.emit("ha.heartbeat_rejected", last_from=self._last_rejected_from,
                             counts=self._rejected_since_report)
            self._rejected_since_report = {}

    def _read_heartbeat(self, data: bytes, addr) -> dict | None:
        """The heartbeat in ``data`` if it is one the peer sent: from one of its planned
        addresses, sealed with the pair's secret, well formed and within bounds; else None
        (and the refusal counted). Replays are judged by the caller, against the peer's boot."""
        if addr[0] not in self.peer_addresses:
            self._reject("address", addr)
            return None
        body = unseal(self.secret, data)
        if body is None:
            self._reject("tag", addr)
            return None
        try:
            m = json.loads(body)
            m["boot"], m["seq"], m["epoch"] = int(m["boot"]), int(m["seq"]), int(m["epoch"])
            m["last_seq"] = int(m.get("last_seq", 0))
            ack, confirm = m.get("ack") or [None, 0], m.get("arb_confirm") or [0, False]
            m["ack"] = [None if ack[0] is None else int(ack[0]), int(ack[1])]
            m["arb_confirm"] = [int(confirm[0]), bool(confirm[1])]
            m["priority"], m["t_mono"] = int(m.get("priority", 0)), float(m.get("t_mono", 0.0))
            ok = (m.get("pair") == self.pair and m["member"] != self.host and m["state"] in STATES
                  and (self.cfg.peer is None or m["member"] == self.cfg.peer)
                  and 0 < m["epoch"] <= MAX_EPOCH and 0 <= m["seq"] < MAX_COUNTER
                  and 0 <= m["last_seq"] < MAX_COUNTER and 0 < m["boot"] < MAX_COUNTER)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            ok = False
        if not ok:
            self._reject("malformed", addr)  # sealed with the secret, yet not a heartbeat of this pair
            return None
        return m

    def on_heartbeat(self, data: bytes, addr, arrived: float | None = None) -> None:
        """A datagram from the network, judged on the loop; ``arrived``: when the heartbeat
        thread took it in (the peer counts as heard from then), else now."""
        m = self._read_heartbeat(data, addr)
        if m is None:
            return
        member, boot, seq = m["member"], m["boot"], m["seq"]
        now = self.clock() if arrived is None else arrived
        p = self.peer
        ack = m["ack"]
        newest = p.boot if p.boot is not None else self.peer_boot_floor or 0
        if boot < newest or (boot == p.boot and seq < p.seq):
            self._reject("replay", addr)  # an older incarnation's, or overtaken long ago
            return
        if p.boot is None and boot == newest and ack[0] != self.boot:
            # The incarnation this member heard before it restarted: its heartbeats may have
            # been recorded then. Only one that answers this incarnation's heartbeats (the
            # peer's ack names our boot, unknown before this start) is fresh.
            self._reject("unacknowledged", addr)
            return
        p.paths[addr[0]] = now
        if boot == p.boot and seq == p.seq:
            return  # the same heartbeat on the other path
        was_alive = self.peer_alive(now)
        if boot != p.boot:
            p.boot, p.acked = boot, 0  # a new incarnation of the peer
            self.peer_boot_floor = boot
            self._spawn(self._offload(write_atomic, self.peer_boot_file, str(boot)))
        p.member, p.seq, p.heard = member, seq, now
        if not self.rejoining:
            # From now on this member holds the pair's state (or will, once caught up): after
            # a restart it must hear its peer before it may claim the pair.
            self.joined_file.write_text(f"{member}\n")
            self.rejoining = True
        p.state, p.epoch, p.sent = m["state"], m["epoch"], m["t_mono"]
        self.agent.epochs.reserve_if_low()
        p.last_seq, p.priority = m["last_seq"], m["priority"]
        arb_was_ok = p.arb_ok
        p.arb_ok, p.fenced = bool(m.get("arb_ok", True)), bool(m.get("fenced", False))
        p.ready = bool(m.get("ready", True))
        p.handover = bool(m.get("handover", False)) and p.state == "DISABLED"
        h = self.handover
        if h is not None and p.state == "ENABLED" and p.epoch > h.epoch:
            h.taken.set()
        p.arb_confirm = tuple(m["arb_confirm"]) if ack[0] == self.boot else (0, False)
        if arb_was_ok and not p.arb_ok and self.arbitrators:
            # The peer's users look gone: probe ours now, so it learns within milliseconds
            # whether stepping down would help (it stays ENABLED if we cannot do better).
            self.confirm_wanted = seq
            self.agent.arbitration.wake()
        if ack[0] == self.boot:
            p.acked = max(p.acked, ack[1])
        self._arm_deadline(None if arrived is None else self.window - (self.clock() - arrived))
        if not was_alive or (self.peer_dead_reported and self.peer_alive()):
            # Alive again: also when it was alive at the heartbeat's stamp but the loop had
            # judged its silence before taking the heartbeat in (ha.peer_dead is out), as
            # long as that stamp is still within the window now (a staler one says nothing).
            self.peer_dead_reported = False
            self.events.emit("ha.peer_alive", peer=member, epoch=p.epoch, state=p.state,
                             my_state=self.svc.state.value)
        if self.svc.state is ENABLED and self.fenced_since is None and (p.state == "ENABLED" or p.fenced) \
                and now - self._last_reannounce > 1.0:
            # A peer that believes (or believed) it is primary may have answered ARP for
            # our VIPs: announce them again so nobody keeps its stale location.
            self._last_reannounce = now
            self._spawn(self._announce(GARP_SCHEDULE_S[:1]))
            if self.sdn_vips:
                self._spawn(self._redirect())
        urgent = (self.fenced_since is not None
                  or (self.svc.state is ENABLED and (p.state == "ENABLED" or p.epoch > self.epoch
                                                     or self.all_arbitrators_failed()))
                  or (self.svc.state is DISABLED and p.state != "ENABLED"))
        if urgent:
            self._spawn(self._decide("heartbeat"))

    def peer_address(self) -> str:
        """Where to reach the peer now: the first of its addresses heard from within the
        window (the heartbeat link while it works, else the cloud network), else the first."""
        now = self.clock()
        for address in self.peer_addresses:
            heard = self.peer.paths.get(address)
            if heard is not None and now - heard <= self.window:
                return address
        return self.peer_addresses[0]
