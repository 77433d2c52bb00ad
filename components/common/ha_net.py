"""The HA agent's packets: ICMP echo for arbitrators, gratuitous ARP for VIP takeover, and
the SDN controller's VIP redirect (takeover sdn).

Raw sockets (emulated hosts run as root); nothing here blocks the event loop: the
pinger reads replies from a loop reader, a gratuitous ARP is one send on a packet
socket and a VIP one rtnetlink request (microseconds each, where ``arping`` and
``ip addr`` cost a fork and an exec, in the middle of the outage).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct

from . import control

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
SIOCGIFHWADDR = 0x8927


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """ICMP echo over one raw socket, shared by a host's arbitrators."""

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

    async def ping(self, target: str, timeout: float, attempts: int = 3) -> bool:
        """True when the target answered within ``timeout`` seconds.

        Up to ``attempts`` echo requests are spread over the timeout, each new one sent when
        the previous has had its share of it unanswered: one packet lost, or a switch
        stalling for a moment, is not an unreachable target (a miss counts towards a
        failover). Any reply, to any of them, answers the probe.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        answered = loop.create_future()
        sent = []
        try:
            for i in range(attempts):
                self.seq = (self.seq + 1) & 0xFFFF
                seq = self.seq
                payload = b"eucalab-arbitrator"
                header = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
                packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), self.ident, seq) + payload
                self.waiters[seq] = answered
                sent.append(seq)
                try:
                    self.sock.sendto(packet, (target, 0))
                except OSError:
                    pass  # no route now: the next attempt may have one
                share = (deadline - loop.time()) / (attempts - i)
                try:
                    return await asyncio.wait_for(asyncio.shield(answered), max(0.0, share))
                except asyncio.TimeoutError:
                    continue
            return False
        finally:
            for seq in sent:
                self.waiters.pop(seq, None)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def garp_frame(mac: bytes, ip: str) -> bytes:
    """A gratuitous ARP request (sender = target = ``ip``), as ``arping -U`` sends it."""
    addr = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, addr, BROADCAST, addr)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


class GarpSender:
    """Gratuitous ARP from one packet socket kept open for the agent's life.

    Closing a packet socket waits for an RCU grace period (about 10-30 ms here), which
    would land in the takeover; protocol 0 registers no receive hook, so the open
    socket costs nothing while idle.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def send(self, interface: str, ip: str) -> None:
        """Announce that ``ip`` is at ``interface``'s MAC to everyone on its segment.

        Raises OSError when the interface is missing or down (the caller reports it).
        """
        if self._sock is None:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        info = fcntl.ioctl(self._sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", interface.encode()))
        mac = info[18:24]  # struct ifreq: 16 bytes of name, then sa_family (2), then the address
        self._sock.sendto(garp_frame(mac, ip), (interface, ETH_P_ARP))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- addresses over rtnetlink (a VIP is up microseconds after the decision), connections ---------

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWNEIGH = 28
NDA_DST, NDA_LLADDR = 1, 2
NUD_REACHABLE = 0x02
IFF_UP = 0x1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL = 1, 2
# Connection tracking over ctnetlink (nfnetlink subsystem 1): delete, and its mark filter.
NETLINK_NETFILTER = 12
IPCTNL_MSG_CT_DELETE = (1 << 8) | 2
CTA_MARK, CTA_MARK_MASK = 8, 21


def _rtattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _address_request(add: bool, interface: str, ip: str, prefix: int, seq: int) -> bytes:
    addr = socket.inet_aton(ip)
    body = struct.pack("=BBBBI", socket.AF_INET, prefix, 0, 0, socket.if_nametoindex(interface))
    body += _rtattr(IFA_LOCAL, addr) + _rtattr(IFA_ADDRESS, addr)
    flags = NLM_F_REQUEST | NLM_F_ACK | ((NLM_F_CREATE | NLM_F_REPLACE) if add else 0)
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR if add else RTM_DELADDR, flags, seq, 0) + body


def set_address(add: bool, interface: str, ip: str, prefix: int) -> int:
    """``ip addr replace|del IP/PREFIX dev INTERFACE`` in this network namespace.

    Returns 0 or the kernel's errno (EADDRNOTAVAIL deleting an address that is not
    there); raises OSError when the interface does not exist. The kernel answers a
    netlink request synchronously, so this does not wait on anything.
    """
    return _request(_address_request(add, interface, ip, prefix, seq=1))


def set_link(interface: str, up: bool) -> int:
    """``ip link set dev INTERFACE up|down`` in this network namespace, without a process.

    Returns 0 or the kernel's errno; raises OSError when the interface does not exist.
    """
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex(interface),
                       IFF_UP if up else 0, IFF_UP)
    return _request(struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)


def set_neighbour(interface: str, ip: str, mac: str) -> int:
    """``ip neigh replace IP lladdr MAC dev INTERFACE nud reachable``: no ARP needed to send to
    ``ip`` until the entry grows stale (then the kernel checks it the usual way).

    Returns 0 or the kernel's errno; raises OSError when the interface does not exist.
    """
    body = struct.pack("=B3xiHBB", socket.AF_INET, socket.if_nametoindex(interface), NUD_REACHABLE, 0, 0)
    body += _rtattr(NDA_DST, socket.inet_aton(ip)) + _rtattr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return _request(struct.pack("=IHHII", 16 + len(body), RTM_NEWNEIGH, flags, 1, 0) + body)


def forget_connections(mark: int) -> int:
    """``conntrack -D --mark MARK``: delete every connection-tracking entry of this network
    namespace whose mark is ``mark`` (ctnetlink's flush, filtered by mark), in one request.

    Returns 0 or the kernel's errno."""
    return _request(_forget_request(mark, seq=1), NETLINK_NETFILTER)


def _forget_request(mark: int, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)  # nfgenmsg: family, version 0, res_id
    body += _rtattr(CTA_MARK, struct.pack("!I", mark)) + _rtattr(CTA_MARK_MASK, struct.pack("!I", 0xFFFFFFFF))
    return struct.pack("=IHHII", 16 + len(body), IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _request(message: bytes, protocol: int = NETLINK_ROUTE) -> int:
    """Send one netlink request (sequence number 1) and return the errno of its ack (0: done)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol) as sock:
        sock.bind((0, 0))
        sock.send(message)
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == NLMSG_ERROR and seq == 1:
                    return -struct.unpack_from("=i", data, offset + 16)[0]
                offset += max(16, (length + 3) & ~3)


# -- VIP redirects through the SDN controller (takeover sdn) ----------------------------------

async def redirect_vip(control_socket: str, pair: str, epoch: int, primary: str,
                       timeout: float = 3.0) -> tuple[int, dict]:
    """Ask the SDN controller to steer ``pair``'s VIP to ``primary`` (``PUT /vips/{pair}``).

    Through the controller's client (``control.call``), on the event loop: the controller answers once the flows are in the switches, a few milliseconds.
    Returns (status, body): 200 accepted, 409 a newer epoch holds the VIP. Raises
    OSError (no controller, no answer within ``timeout``) or ValueError (not HTTP).
    """
    return await control.call(control_socket, "PUT", f"/vips/{pair}",
                              {"pair": pair, "epoch": epoch, "primary": primary}, timeout)


# -- a planned switchover: the peer's connections stay the peer's ---------------------------

DIVERT_TABLE = "eucalab_handover"  # nftables table ip eucalab_handover, while a handover lasts


def divert_ruleset(routes: list[tuple[str, str, str]]) -> str:
    """nftables input for the new holder of a pair's VIPs right after a planned switchover:
    every TCP segment to a VIP that belongs to a connection this host never saw open (no
    SYN: conntrack picks it up mid-stream as new) is sent on, unchanged, to the old holder,
    which accepted that connection and still holds the VIP; this host would answer it with a
    reset. ``routes``: (VIP, the old holder's address on the VIP's network, interface).

    A neighbour switches to the new holder whenever it takes the gratuitous ARP, which may
    be in the middle of a connection: its next segments (the request after the handshake,
    the acknowledgements of the answer, the FIN) reach the new holder. ``dup to`` resends a
    copy through the routing of this host with the old holder as next hop (the destination
    stays the VIP), and the original is dropped. A SYN, a RST, and any segment of a
    connection this host saw open are not matched: new connections are served here.
    """
    rules = [f'ip daddr {vip} tcp flags & (syn | rst) == 0 ct state new dup to {peer} device "{intf}" drop'
             for vip, peer, intf in routes]
    body = "\n".join(f"    {r}" for r in rules)
    return (f"table ip {DIVERT_TABLE}\ndelete table ip {DIVERT_TABLE}\n"
            f"table ip {DIVERT_TABLE} {{\n  chain divert {{\n"
            f"    type filter hook prerouting priority mangle; policy accept;\n{body}\n  }}\n}}\n")


def undivert_ruleset() -> str:
    """nftables input that ends the diversion (nothing to do if there is none)."""
    return f"table ip {DIVERT_TABLE}\ndelete table ip {DIVERT_TABLE}\n"


_NFT = None


def load_rules(text: str) -> None:
    """Load nftables input in this host's namespace (RuntimeError when nft refuses it)."""
    global _NFT
    if _NFT is None:
        from .nft import Nftables

        _NFT = Nftables()
    _NFT.run(text)
