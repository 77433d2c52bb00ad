"""This CC host as its cluster's router, through components/cc/router.py.

The primary applies the router of its intent (gateways, elastic IPs, the rules); a
secondary holds none of the addresses and the rules of its view armed, so that a
promotion to that view moves addresses only, and arms again each view its primary
replicates to it. MANAGED modes only: in the others the CC routes nothing.
"""

from __future__ import annotations

import asyncio

from components.common.modes import MANAGED_MODES

from . import router


class Routing:
    """The router of the ``ClusterController`` ``cc`` on its own host."""

    def __init__(self, cc):
        self.cc = cc
        self.lock = asyncio.Lock()  # router changes never interleave
        # Standby (MANAGED with the controller): this member holds no router address.
        self.withdrawn = False
        self.arm_pending = False  # a replicated view not armed yet (``rearm``)
        self.armer: asyncio.Task | None = None

    async def apply(self, intent: dict, force: bool = False, inline: bool = False) -> None:
        """Make this host the cluster's router for the intent (MANAGED modes only); ``inline``:
        a takeover's, in the event loop's own thread (``router.apply_router_async``)."""
        cc = self.cc
        if cc.mode not in MANAGED_MODES:
            return
        config = router.render_router(intent, router.RouterHost.from_cc_config(cc.config))
        async with self.lock:
            # A demotion may have withdrawn the router while this intent waited.
            if cc.state.value != "ENABLED" and not force:
                return
            try:
                # A takeover announces every address, also those this host still held.
                result = await router.apply_router_async(config, primary=True, inline=inline, announce_held=inline)
            except (OSError, RuntimeError) as exc:
                cc.events.emit("router.error", error=str(exc)[:500])
                return
        cc.events.emit("router.applied", gateways=len(config.gateways),
                       elastic_ips=len(config.public_addresses), added=result["added"], ms=result.get("ms"))
        loop = asyncio.get_running_loop()
        for delay in router.ANNOUNCE_AGAIN_S:
            for intf, addresses in result["announced"].items():
                loop.call_later(delay, self._announce_again, intf, addresses)

    def _announce_again(self, intf: str, addresses: list[str]) -> None:
        """Gratuitous ARP once more for addresses still ours (neighbours ignore an update to an
        entry changed less than a second ago); a demoted CC holds them no longer."""
        if self.cc.state.value == "ENABLED":
            router.announce(intf, addresses)

    def standby_router(self) -> router.RouterConfig:
        """The router this member would apply if promoted now: the view its primary
        replicated here, placed as a promotion places it (a fresh scheduler and
        allocator holding the view's instances; one that does not fit left out, as the
        promotion terminates it). Nothing of this member's own state changes."""
        cc = self.cc
        scheduler, alloc = cc.nodes.empty_placement(cc.scheduler.policy)
        misfits = cc.nodes.occupy(scheduler, alloc)
        return router.render_router(cc.intents.intent(alloc, leave_out=misfits),
                                    router.RouterHost.from_cc_config(cc.config))

    async def withdraw(self, rearm: bool = False) -> None:
        """Hold none of the router's addresses (this CC is not, or no longer, primary) and
        the rules of its view armed, so a promotion to that view moves addresses only
        (components/cc/router.py). ``rearm``: the view changed (replicated by the primary);
        done only while this member is still a withdrawn secondary."""
        cc = self.cc
        if cc.mode not in MANAGED_MODES:
            return
        config = self.standby_router()
        async with self.lock:
            if rearm and (cc.state.value == "ENABLED" or not self.withdrawn):
                return  # promoted meanwhile: the promotion routes
            try:
                result = await router.apply_router_async(config, primary=False, armed=True)
            except (OSError, RuntimeError) as exc:
                cc.events.emit("router.error", error=str(exc)[:500])
                return
        self.withdrawn = True
        cc.events.emit("router.armed" if rearm else "router.withdrawn", gateways=len(config.gateways),
                       elastic_ips=len(config.public_addresses), ms=result.get("ms"),
                       **({"errors": result["errors"]} if result.get("errors") else {}))

    def rearm(self) -> None:
        """Arm the rules of the view just replicated here, beside the request; views that
        arrive meanwhile are armed after it, the newest last."""
        self.arm_pending = True
        if self.armer is None or self.armer.done():
            self.armer = self.cc._background(self._arm_pending_views())

    async def _arm_pending_views(self) -> None:
        while self.arm_pending:
            self.arm_pending = False
            await self.withdraw(rearm=True)
