"""The SC's block service (port 3260, the protocol in blockproto.py): NCs read and write
attached volumes over TCP.

An NC logs in to an attached volume with the attachment's secret (challenge-response),
from one of its own addresses (config ``nc_addresses`` {nc: [addresses]}), and reads and
writes it; a write is a change of the SC's (applied, and under HA replicated, before its
OK). Detaching (or attaching anew) closes the volume's sessions. The service listens on
the SC's own addresses and its service VIP (``block_listen``), never on 0.0.0.0. Only the
member that may serve takes a login or a request: another answers NOT_PRIMARY, and the
initiator logs in again through the VIP.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import socket
import struct

from . import blockproto as bp

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
MAX_VOLUME_ID = len("vol-00000000")
REFUSED = b"login refused"  # one answer for every refusal: no such volume, not attached, not yours


class BlockService:
    """The block service of one SC (``svc``): its listening sockets and its sessions."""

    def __init__(self, svc, config: dict, not_acknowledged: type[Exception]):
        self.svc = svc
        self.not_acknowledged = not_acknowledged  # a write the SC could not acknowledge
        self.port = int(config.get("block_port", bp.BLOCK_PORT))
        # This member's own addresses and the pair's VIP (bound before this member holds
        # it, IP_FREEBIND), never the wildcard address.
        self.listen = list(config.get("block_listen") or [config.get("listen_host", "127.0.0.1")])
        if "0.0.0.0" in self.listen:
            raise ValueError("block_listen: the SC's own addresses and VIP, not 0.0.0.0")
        # The cluster's NCs and their addresses: a login is taken only from the NC the
        # volume is attached to.
        self.nc_addresses: dict[str, list[str]] = {n: list(a) for n, a in config.get("nc_addresses", {}).items()}
        self.sessions: dict[str, set[asyncio.StreamWriter]] = {}  # volume -> its open block sessions
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        for address in self.listen:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # the VIP: held by whichever member serves
            sock.bind((address, self.port))
            self.servers.append(await asyncio.start_server(self._serve, sock=sock))

    def stop(self) -> None:
        for server in self.servers:
            server.close()

    def end_sessions(self, vid: str) -> None:
        """Close a volume's sessions (detached, attached anew, or gone: its logins no longer hold)."""
        for writer in self.sessions.pop(vid, set()):
            writer.close()

    def _login(self, vid: str, challenge: bytes, answer: bytes, address: str) -> str | None:
        """The attachment secret a login answer proves, or None: the volume must exist, be
        attached, to the NC at ``address``, and the answer match the challenge under its
        secret (compared in constant time; computed even for a stranger, so a refusal
        takes as long whatever the reason)."""
        vol = self.svc.volumes.get(vid)
        att = (vol or {}).get("attachment") or {}
        secret = att.get("secret") or secrets.token_hex(32)
        right = hmac.compare_digest(answer, bp.login_answer(secret, challenge, vid))
        ours = address in self.nc_addresses.get(att.get("nc"), ())
        return secret if right and ours and att.get("secret") else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        volume: str | None = None
        secret: str | None = None  # the attachment's, proven at login: the session holds while it does
        challenge: tuple[str, bytes] | None = None  # (volume, challenge) of a login under way
        f = None
        address = (writer.get_extra_info("peername") or ("",))[0]

        async def reply(status: int, data: bytes = b"") -> None:
            writer.write(bp.REPLY.pack(status, len(data)) + data)
            await writer.drain()

        try:
            while True:
                try:
                    op, offset, length = bp.HEADER.unpack(await reader.readexactly(bp.HEADER.size))
                except asyncio.IncompleteReadError:
                    return
                if length > bp.MAX_IO:
                    await reply(bp.BAD_REQUEST, b"request too large")
                    return
                payload = await reader.readexactly(length) if op in (b"L", b"A", b"W") and length else b""
                if op in (b"L", b"A"):
                    await self.svc.handover_settled()  # a planned switchover: answered once it is settled
                    if not self.svc.may_serve():
                        # A standby (or a member that lost the pair) takes no session: the
                        # initiator tries the VIP again until the primary answers there.
                        await reply(bp.NOT_PRIMARY, b"not the primary: log in through the service VIP")
                        return
                    if volume is not None:
                        await reply(bp.BAD_REQUEST, b"already logged in")
                        return
                    if op == b"L":
                        if len(payload) > MAX_VOLUME_ID:  # no volume id is longer; nor goes into an event
                            await reply(bp.BAD_REQUEST, b"volume id too long")
                            return
                        challenge = (payload.decode(errors="replace"), os.urandom(bp.CHALLENGE_BYTES))
                        await reply(bp.OK, challenge[1])
                        continue
                    proven = self._login(challenge[0], challenge[1], payload, address) if challenge else None
                    if proven is None:
                        self.svc.events.emit("block.login_refused", volume=challenge[0] if challenge else None,
                                         address=address)
                        await reply(bp.LOGIN_REFUSED, REFUSED)
                        return
                    volume, secret = challenge[0], proven
                    f = open(self.svc._path(volume), "r+b")
                    self.sessions.setdefault(volume, set()).add(writer)
                    await reply(bp.OK)
                    continue
                await self.svc.handover_settled()
                if not self.svc.may_serve():
                    await reply(bp.NOT_PRIMARY, b"no longer the primary: log in through the service VIP")
                    return
                att = self.svc.volumes.get(volume, {}).get("attachment") if volume else None
                if f is None or not att or att.get("secret") != secret:
                    await reply(bp.NOT_ATTACHED, b"log in to an attached volume first")
                    return
                size = self.svc.volumes[volume]["size_mib"] * 2**20
                if op in (b"R", b"W") and offset + length > size:
                    await reply(bp.OUT_OF_RANGE, b"beyond the end of the volume")
                    continue
                if op == b"R":
                    f.seek(offset)
                    await reply(bp.OK, f.read(length))
                elif op == b"W":
                    try:
                        await self.svc._mutate({"type": "write", "id": volume, "offset": offset}, payload)
                    except self.not_acknowledged:
                        # No longer the primary to write through: the client logs in again
                        # through the VIP, reaching the member that took over, and retries.
                        await reply(bp.NOT_PRIMARY, b"this member is no longer primary: log in again")
                        return
                    await reply(bp.OK)
                elif op == b"F":
                    await asyncio.to_thread(os.fsync, f.fileno())  # off the loop: heartbeats keep going
                    await reply(bp.OK)
                else:
                    await reply(bp.BAD_REQUEST, b"unknown operation")
                    return
        except (ConnectionError, struct.error, asyncio.IncompleteReadError):
            return
        finally:
            if f is not None:
                f.close()
            if volume is not None:
                self.sessions.get(volume, set()).discard(writer)
            writer.close()
