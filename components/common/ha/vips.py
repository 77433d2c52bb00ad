"""An HA agent's virtual IPs: added and announced with gratuitous ARP (again past the ARP
locktime), or, for a VIP with takeover sdn, redirected by the SDN controller at this epoch."""

from __future__ import annotations

import asyncio
import ipaddress

from .. import ha_net
from ..ha_config import VIP
from .model import ENABLED, GARP_SCHEDULE_S, Part


class Vips(Part):
    """Acquires, announces, redirects and releases the pair's VIPs on this member."""

    SHARED = frozenset({
        "_run_cmd", "_spawn", "clock", "epoch", "events", "fenced_since", "garp_vips", "handover_drain_s",
        "interval", "learn_epoch", "peer_addresses", "sdn_vips", "svc", "vips"})

    def __init__(self, agent, garp=None, redirect=None):
        super().__init__(agent)
        self._garp_sender = ha_net.GarpSender()
        self._garp = garp or self._garp_sender.send
        self._redirect_call = redirect or (lambda epoch: ha_net.redirect_vip(
            agent.cfg.control_socket, agent.pair, epoch, agent.host))

        self._diversion: object | None = None  # the newest diversion of the peer's connections

    def close(self) -> None:
        self._garp_sender.close()

    async def _divert_peer_connections(self) -> None:
        """The new holder after a planned switchover: for ``handover_drain_s`` (while the old
        holder keeps its VIPs and answers), segments of connections the old holder accepted
        that reach this member, as neighbours take its gratuitous ARP mid-connection, go on
        to the old holder instead of being reset here (ha_net.divert_ruleset, docs/ha.md)."""
        routes = []
        for v in self.vips:
            net = ipaddress.ip_network(f"{v.address}/{v.prefix}", strict=False)
            peer = next((a for a in self.peer_addresses if ipaddress.ip_address(a) in net), None)
            if peer is not None:
                routes.append((v.address, peer, v.interface))
        if not routes or not await self._load_rules(ha_net.divert_ruleset(routes)):
            return
        self.events.emit("ha.divert", to=routes[0][1], vips=[r[0] for r in routes], seconds=self.handover_drain_s)
        self._diversion = diversion = object()  # a later switchover's diversion outlives this one's end

        async def end() -> None:
            await asyncio.sleep(self.handover_drain_s)
            if self._diversion is diversion and await self._load_rules(ha_net.undivert_ruleset()):
                self.events.emit("ha.divert_end")
        self._spawn(end())

    async def _load_rules(self, text: str) -> bool:
        """nftables input in this member's namespace (tests: recorded as an ``nft`` command)."""
        try:
            if self._run_cmd is not None:
                return await self._run_cmd("nft", text) == 0
            ha_net.load_rules(text)  # one netlink transaction, well under a millisecond
            return True
        except (OSError, RuntimeError) as exc:
            self.events.emit("ha.divert_failed", error=str(exc))
            return False

    async def _acquire_vips(self) -> bool:
        """Add the VIPs and announce them (gratuitous ARP, or the controller's redirect for a
        VIP with takeover sdn); True when every VIP is up and announced."""
        codes = {v: await self._set_vip(True, v) for v in self.vips}
        ok = True
        for v in self.garp_vips:
            garp = codes[v] == 0 and self._send_garp(v)
            ok = ok and garp
            self.events.emit("ha.vip_acquired", vip=v.address, interface=v.interface, added=codes[v] == 0,
                             garp_sent=garp)
        if self.garp_vips:
            self._spawn(self._announce(GARP_SCHEDULE_S[1:]))
        if self.sdn_vips:
            # The address first (the kernel must accept the VIP's packets), then the flows.
            redirected = await self._redirect()
            for v in self.sdn_vips:
                ok = ok and codes[v] == 0 and redirected
                self.events.emit("ha.vip_acquired", vip=v.address, interface=v.interface, added=codes[v] == 0,
                                 redirected=redirected)
        return ok

    async def _redirect(self) -> bool:
        """Tell the SDN controller this member holds the pair's VIP at this epoch (takeover sdn).

        Refused (409): the controller accepted a newer epoch, the peer took over while this
        member could not hear it; the decision loop steps down. No controller or no answer:
        retried every interval in the background while this member stays ENABLED at this epoch.
        """
        epoch = self.epoch
        done = await self._redirect_once(epoch)
        if done is None:
            self._spawn(self._redirect_retry(epoch))
        return bool(done)

    async def _redirect_once(self, epoch: int) -> bool | None:
        """One redirect request; True accepted, False refused, None not answered."""
        t0 = self.clock()
        try:
            status, body = await self._redirect_call(epoch)
        except (OSError, ValueError) as exc:
            self.events.emit("ha.redirect_failed", epoch=epoch, error=str(exc))
            return None
        if status == 200:
            self.events.emit("ha.vip_redirected", epoch=epoch, seconds=round(self.clock() - t0, 4),
                             installed=body.get("installed"), flows_added=body.get("flows_added"))
            return True
        self.events.emit("ha.redirect_refused", epoch=epoch, status=status, error=body.get("error"),
                         current=body.get("current"))
        if status == 409 and isinstance(body.get("current"), int):
            self.learn_epoch(body["current"], "redirect refused")
        return False

    async def _redirect_retry(self, epoch: int) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.svc.state is not ENABLED or self.fenced_since is not None or self.epoch != epoch:
                return
            if await self._redirect_once(epoch) is not None:
                return

    def _send_garp(self, vip: VIP) -> bool:
        try:
            self._garp(vip.interface, vip.address)
            return True
        except OSError as exc:
            self.events.emit("ha.garp_failed", vip=vip.address, interface=vip.interface, error=str(exc))
            return False

    async def _announce(self, schedule=GARP_SCHEDULE_S) -> None:
        """Gratuitous ARP again: Linux ignores an ARP update for an entry changed less than
        locktime (1 s) ago, so the announcement is repeated past it."""
        start = self.clock()
        for at in schedule:
            delay = start + at - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # A member that lost the VIPs meanwhile must not announce them: that would pull
            # traffic back to a host that drops it.
            if self.svc.state is not ENABLED or self.fenced_since is not None:
                return
            for v in self.garp_vips:
                self._send_garp(v)

    async def release_vips(self) -> None:
        """Drop the VIPs (a member restarting after a crash may still hold them)."""
        await self._release_vips()

    async def _release_vips(self) -> None:
        for v in self.vips:
            await self._set_vip(False, v)

    async def _set_vip(self, add: bool, v: VIP) -> int:
        """Add or delete one VIP; 0 on success (deleting a VIP not held is no error)."""
        if self._run_cmd is not None:
            return await self._run_cmd("ip", "addr", "replace" if add else "del", f"{v.address}/{v.prefix}",
                                       "dev", v.interface)
        try:
            code = ha_net.set_address(add, v.interface, v.address, v.prefix)
        except OSError as exc:
            code = exc.errno or -1
        if add and code:
            self.events.emit("ha.vip_error", vip=v.address, interface=v.interface, errno=code)
        return code
