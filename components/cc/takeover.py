"""A CC of an HA pair changing role: promotion, demotion, and a standby kept ready.

On promotion the new primary routes from the view its old primary replicated here, then
asks its NCs what they run and routes again if that differs. On demotion it withdraws
the router. A withdrawn secondary reports itself to the SDN controller, which keeps it
ready beside the primary (docs/intent.md, "Standby").
"""

from __future__ import annotations

from pathlib import Path

from components.common.supervise import supervise


class Takeover:
    """The role changes of the ``ClusterController`` ``cc`` (its HA agent calls them)."""

    def __init__(self, cc):
        self.cc = cc
        # The controller keeps this member ready beside the primary as of this epoch
        # (None: not reported).
        self.standby_epoch: int | None = None
        self.standby_unstaged: tuple | None = None  # (epoch, status, error) of the last answer not staging it

    async def on_promote(self, epoch: int) -> None:
        """Take the cluster over, before the VIPs move here.

        Route first, from the view the old primary replicated to this member: users'
        traffic waits on it. Then ask the NCs what they run, in the background, and route
        again if that differs (an instance placed after the last replicated change).
        Rebuilding from the NCs first put 5-15 ms of HTTP in every takeover.
        """
        cc = self.cc
        # Staged: the controller keeps this member ready at the newest epoch it knows of,
        # so the switches carry its routing already and the takeover need not wait on them.
        staged = self.standby_epoch is not None and self.standby_epoch >= self.known_epoch(own=False)
        cc.routing.withdrawn, self.standby_epoch = False, None
        cc.epoch = epoch
        cc.scheduler, cc.alloc = cc.nodes.empty_placement(cc.scheduler.policy)
        cc.nodes.restore_view()
        await cc.intents.publish("promoted", force=True, staged=staged)
        cc._background(self._reconcile(epoch))

    async def _reconcile(self, epoch: int) -> None:
        cc = self.cc
        before = cc.intents.intent()
        await cc.nodes.rebuild()
        if cc.epoch == epoch and cc.state.value == "ENABLED" and cc.intents.intent() != before:
            await cc.intents.publish("reconciled with the NCs")

    async def on_demote(self, reason: str) -> None:
        await self.cc.routing.withdraw()

    def known_epoch(self, own: bool = True) -> int:
        """The newest epoch of this pair this member knows of: its view's (replicated by the
        primary), its peer's (heartbeats), the controller's (a refusal), and with ``own``
        its HA agent's (during a promotion that is already the new one)."""
        cc, ha = self.cc, self.cc.ha
        return max(cc.epoch, ha.peer.epoch, ha.superseded or 0, ha.epoch if own else 0)

    async def standby_loop(self) -> None:
        """While this member is a secondary with its router withdrawn, have the controller
        keep it ready (docs/intent.md, "Standby"), again whenever it learns a newer epoch.

        Recorded only once staged with the flows in; an answer that is not that (no intent
        of that epoch yet, or this member still its primary) is asked again after a few
        intervals and logged once per answer. Supervised (``cc.standby``): an unexpected
        error is a ``loop.failed`` event and the reports go on."""
        await supervise(self.cc.events, "cc.standby", self._standby_once, pause=self.cc.ha.interval)

    def kept_ready(self) -> bool:
        """Whether the SDN controller keeps this member ready as a standby: MANAGED, the
        groups' VLANs switched by the controller."""
        return self.cc.control_socket is not None and self.cc.mode == "MANAGED"

    def ready(self) -> bool:
        """Whether this member could take the cluster at once (``HAAgent.standby_ready``):
        where the controller keeps it ready, withdrawn and staged at the newest epoch it
        knows of (the switches hold it in the groups' VLANs already); elsewhere, always."""
        if not self.kept_ready():
            return True
        return not self._serving() and self.standby_epoch is not None and self.standby_epoch == self.known_epoch()

    def _serving(self) -> bool:
        """Whether this member routes (primary, or not withdrawn): it reports no standby."""
        return self.cc.state.value == "ENABLED" or not self.cc.routing.withdrawn

    async def _standby_once(self) -> float | None:
        """One round of ``standby_loop``; the pause before the next when not the usual."""
        cc = self.cc
        if self._serving():
            return None
        known = self.known_epoch()
        if self.standby_epoch is not None and self.standby_epoch != known:
            # Staged at an older epoch: no longer ready. Say so at once, so that a planned
            # switchover does not go by the heartbeat that said it was.
            self.standby_epoch = None
            cc.ha.send_heartbeat()
        if self.standby_epoch == known or not Path(cc.control_socket).exists():
            return None
        status, answer = await cc.intents.put_standby(known)
        if self._serving():
            return None  # promoted meanwhile: the report is the past
        staged = status == 200 and answer.get("staged") is True and answer.get("installed") is not False
        if staged:
            self.standby_epoch, self.standby_unstaged = known, None
            cc.events.emit("intent.standby", epoch=known, staged=True)
            cc.ha.send_heartbeat()  # ready: the peer may hand the cluster over (a planned switchover)
            return None
        if self.standby_unstaged != (known, status, answer.get("error")):
            self.standby_unstaged = (known, status, answer.get("error"))
            cc.events.emit("intent.standby_not_staged", epoch=known, status=status, answer=answer)
        current = answer.get("current")
        if status == 409 and type(current) is int and current > known:
            cc.ha.learn_epoch(current, "the SDN controller holds a newer intent")
        return 4 * cc.ha.interval
