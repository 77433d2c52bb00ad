"""The coordinator CLC (spec ``ha.detector: coordinator``): Eucalyptus 3.x's central failover.

Both CLCs run a round every ``coordinator_check_s`` seconds (the source's
``COORDINATOR_CHECK_BACKOFF_SECS``, 10 s); only the coordinator acts: the ENABLED CLC, or
a CLC whose group view (components/clc/membership.py) no longer holds its peer. A round:

1. checks every member of every HA service (the CLC pair, Walrus, each CC and SC) at once,
   over the network, ``GET /internal/service`` with the CLC role's token and
   ``HOST_CHECK_TIMEOUT_S`` (no answer in time, or a garbled one, fails that member's
   check only); its own CLC member is checked in-process;
2. judges each member's arbitrators by what the member said of them in the previous round
   (the source judges the pings its previous check started: an arbitrator failure is acted on
   one cycle late);
3. decides with ``check_round`` (components/common/coordinator.py, the same function the
   model of the source computes outages with) and carries out its actions in order: DISABLE
   each NOTREADY member (one whose check went unanswered only in the coordinator's view: an
   order would wait out the same timeout), then ENABLE the DISABLED member of each service
   left without an ENABLED one, through ``POST /internal/ha/order/{DISABLE,ENABLE}``. The member obeys
   only the CLC's token and never takes the pair beside an alive ENABLED peer
   (components/common/ha/switchover.py, ``coordinator_order``): never two ENABLED.

Each round is a ``coordinator.round`` event (its actions, what each order answered, how long
it took).
"""

from __future__ import annotations

import asyncio

import aiohttp

from components.common.coordinator import HOST_CHECK_TIMEOUT_S, ServiceView, check_round, is_coordinator
from components.common.ha import TransitionError
from components.common.states import ServiceState
from components.common.supervise import supervise

from .membership import Membership
from .services import Member

ORDER_FOR_ACTION = {"disable": "DISABLE", "enable": "ENABLE"}
STATES = frozenset(s.value for s in ServiceState)


def member_said(answer) -> dict | None:
    """A check's answer as the round reads it (``state``, ``arbitrators``), or None when it is
    none: a garbled answer fails that member's check, as silence does, and the round goes on
    for every other member."""
    if not isinstance(answer, dict) or answer.get("state") not in STATES:
        return None
    arbitrators = answer.get("arbitrators") or []
    if not isinstance(arbitrators, list) or not all(isinstance(a, bool) for a in arbitrators):
        return None
    return {"state": answer["state"], "arbitrators": arbitrators}


class Coordinator:
    """Runs the check rounds of one CLC (``clc`` is the CloudController, with HA)."""

    def __init__(self, clc, membership: Membership | None = None):
        self.clc = clc
        cfg = clc.ha.cfg
        self.period = cfg.coordinator_check_s
        self.membership = membership or Membership(clc.events, cfg.listen[0], cfg.peer_addresses[0])
        self.arbitrators: dict[str, list[bool]] = {}  # each member's, as its previous check said
        self.known: dict[str, str] = {}  # each member's state, as its last answered check said
        self.rounds = 0
        self._task: asyncio.Task | None = None

    @property
    def acting(self) -> bool:
        return is_coordinator(self.clc.state.value == "ENABLED", self.membership.peer_in_view)

    async def start(self) -> None:
        await self.membership.start()
        self._task = asyncio.create_task(supervise(self.clc.events, "coordinator.rounds", self.once,
                                                   pause=self.period))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.membership.stop()

    async def once(self) -> None:
        """One RunChecks round (every CLC runs them; only the coordinator acts)."""
        if not self.acting:
            return
        t0 = self.clc.ha.clock()
        members = self.clc.services.members
        answers = await asyncio.gather(*(self.check(m) for m in members))
        pairs: dict[str, dict[str, ServiceView]] = {}
        for m, answer in zip(members, (member_said(a) for a in answers)):
            seen = self.arbitrators.get(m.name, [])
            if answer is None:  # its last known state, made NOTREADY by check_round
                view = ServiceView(self.known.get(m.name, "DISABLED"), answered=False, arbitrators=seen)
            else:
                view = ServiceView(answer["state"], arbitrators=seen)
                self.known[m.name] = answer["state"]
                self.arbitrators[m.name] = answer["arbitrators"]
            pairs.setdefault(m.pair, {})[m.name] = view
        # What the members said before the round decides (for the event).
        said = {n: v.state if v.answered else None for ms in pairs.values() for n, v in ms.items()}
        actions = check_round(pairs)
        by_name = {m.name: m for m in members}
        done = []
        for action, name, reason in actions:
            if action not in ORDER_FOR_ACTION:
                continue
            # A member whose check went unanswered is disabled in the coordinator's own view
            # only: an order would wait out the same timeout before the peer's ENABLE.
            answer = "unreachable: not sent" if said[name] is None and action == "disable" \
                else await self.order(by_name[name], ORDER_FOR_ACTION[action])
            done.append({"action": action, "member": name, "reason": reason, "answer": answer})
        self.rounds += 1
        self.clc.events.emit("coordinator.round", round=self.rounds, states=said,
                             actions=[list(a) for a in actions], orders=done,
                             took_s=round(self.clc.ha.clock() - t0, 4))

    async def check(self, m: Member) -> dict | None:
        """What the member says of itself, or None when its check fails (no answer in time)."""
        if m.name == self.clc.host:
            return self.clc.service_status()
        try:
            async with self.clc.services._session().get(
                    f"{m.internal}/internal/service",
                    timeout=aiohttp.ClientTimeout(total=HOST_CHECK_TIMEOUT_S)) as r:
                if r.status == 200:
                    return await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
        return None

    async def order(self, m: Member, order: str) -> str:
        """Send one order; what the member answered (or why it did not)."""
        if m.name == self.clc.host:
            try:
                return self.clc.ha.coordinator_order(order)
            except TransitionError as exc:
                return f"refused: {exc.message}"
        try:
            async with self.clc.services._session().post(
                    f"{m.internal}/internal/ha/order/{order}",
                    timeout=aiohttp.ClientTimeout(total=HOST_CHECK_TIMEOUT_S)) as r:
                answer = await r.json(content_type=None)
                if not isinstance(answer, dict):
                    return f"garbled answer ({r.status})"
                return answer.get("done", "") if r.status == 200 else f"refused: {answer.get('message', r.status)}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return f"no answer: {exc or type(exc).__name__}"
