"""The HA agent's packets: ICMP echo for arbitrators and gratuitous ARP for VIP takeover.

Raw sockets (emulated hosts run as root); nothing here blocks the event loop: the
pinger reads replies from a loop reader, and a gratuitous ARP is one non-blocking
send on a packet socket (microseconds, where ``arping`` costs a fork and an exec).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


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

    async def ping(self, target: str, timeout: float) -> bool:
        """One echo request; True when its reply came within ``timeout`` seconds."""
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        payload = b"eucalab-arbitrator"
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
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


def garp_frame(mac: bytes, ip: str) -> bytes:
    """A gratuitous ARP request (sender = target = ``ip``), as ``arping -U`` sends it."""
    addr = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, addr, BROADCAST, addr)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def send_garp(interface: str, ip: str) -> None:
    """Announce that ``ip`` is at ``interface``'s MAC to everyone on its segment.

    Raises OSError when the interface is missing or down (the caller reports it).
    """
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((interface, 0))
        mac = sock.getsockname()[4]  # the interface's hardware address, in this namespace
        sock.send(garp_frame(mac, ip))
