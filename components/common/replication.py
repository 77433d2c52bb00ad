"""Replication inside an HA pair: what the CLC, Walrus and the SC share.

The ENABLED member ships every write to its DISABLED peer before the client hears
success (the push); a DISABLED member that is behind its ENABLED peer (after a restart,
a cut or a reset) pulls what it lacks (the catch-up). Both go over HTTP to the peer's
service port with the run's internal token, on one client session per member.

This module holds the part that is the same for the three: the peer's URL, the session,
the supervised catch-up loop (``<component>.catch_up``) with the test of whether a round
has work, the discard of an ex-primary's state that a newer primary superseded, the
refusal of a write the peer did not take, and the events all three write. A component's
own module (components/clc/replication.py, components/sc/replication.py,
components/walrus/replication.py) says what it ships and pulls and how it applies it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from .supervise import supervise

# How often a DISABLED member looks whether it is behind its ENABLED peer. A round that
# finds nothing to do reads only the HA agent's view of the peer. The SC's catch-up
# copies every volume whole, so it looks a little less often.
CATCH_UP_POLL_S = {"clc": 0.2, "walrus": 0.2, "sc": 0.3}

# The events of replication, the same names in every component.
CAUGHT_UP = "ha.caught_up"  # a catch-up round reached the peer's position
CATCH_UP_FAILED = "ha.catch_up_failed"  # a catch-up round failed (the next round tries again)
CATCH_UP_ABANDONED = "ha.catch_up_abandoned"  # a round's copy was dropped: things changed under it
REPLICATION_FAILED = "ha.replication_failed"  # a push got no answer from the peer
REPLICATION_REFUSED = "ha.replication_refused"  # the peer answered a push with an error
WRITE_NOT_ACKNOWLEDGED = "ha.write_not_acknowledged"  # a write refused: the peer may not have it
STATE_RESET = "ha.state_reset"  # an ex-primary dropped its state for the new primary's


def after_param(request: web.Request) -> int:
    """``?after=N`` of a catch-up request (the last change the asking peer holds), or 400."""
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        after = -1
    if after < 0:
        raise web.HTTPBadRequest(text=json.dumps({"error": "after: a sequence number (0 or more)"}),
                                 content_type="application/json")
    return after


class Replication:
    """One member's side of its pair's replication; a component subclasses it.

    A subclass gives ``position`` (the last change this member holds) and ``pull`` (one
    catch-up round's transfer); one that drops a superseded ex-primary's state sets
    ``discards_superseded`` and gives ``reset_state``. The client session is the
    service's ``replica`` attribute (None without HA).
    """

    discards_superseded = False

    def __init__(self, svc, timeout: aiohttp.ClientTimeout):
        self.svc = svc
        self.timeout = timeout
        self._task: asyncio.Task | None = None

    # -- the peer ---------------------------------------------------------------------------

    def peer_url(self) -> str:
        """The peer's service port, where its replication endpoints answer."""
        return f"http://{self.svc.ha.peer_address()}:{self.svc.config['port']}"

    async def start(self) -> None:
        """Under HA: open the session to the peer and start the catch-up loop."""
        svc = self.svc
        if svc.ha is None:
            return
        svc.replica = aiohttp.ClientSession(headers={"X-Eucalab-Internal-Token": svc.config["internal_token"]},
                                            timeout=self.timeout)
        self._task = asyncio.create_task(self.catch_up_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.svc.replica is not None:
            await self.svc.replica.close()

    # -- the push ---------------------------------------------------------------------------

    async def refuse_unless_acknowledged(self, refused: bool | None, upto: int, error: Exception,
                                         **fields) -> None:
        """After a push that did not reach the peer (``refused``: it said no, or False: no
        answer; None: nothing to say), raise ``error`` unless the HA agent lets the write be
        acknowledged all the same (HAAgent.may_acknowledge_unreplicated)."""
        if refused is None or await self.svc.ha.may_acknowledge_unreplicated(refused, upto):
            return
        self.svc.events.emit(WRITE_NOT_ACKNOWLEDGED, **fields, refused=refused)
        raise error

    # -- the catch-up -----------------------------------------------------------------------

    async def catch_up_loop(self) -> None:
        """``catch_up_once`` every CATCH_UP_POLL_S[component], supervised (``<component>.catch_up``)."""
        component = self.svc.component
        await supervise(self.svc.events, f"{component}.catch_up", self.catch_up_once,
                        pause=CATCH_UP_POLL_S[component])

    async def catch_up_once(self) -> None:
        """One round: a DISABLED member behind its ENABLED peer pulls what it lacks.

        A failure is a ``ha.catch_up_failed`` event, and the next round tries again."""
        svc, ha = self.svc, self.svc.ha
        if svc.state.value == "ENABLED" or not ha.peer_alive() or ha.peer.state != "ENABLED":
            return
        if self.discards_superseded and ha.discard_pending:
            await self.discard_if_superseded("a newer primary to catch up from")
            if ha.discard_pending:
                return  # never mix a kept ex-primary's state with the peer's
        if ha.peer.last_seq <= self.position():
            return
        try:
            done = await self.pull()
        except Exception as exc:
            svc.events.emit(CATCH_UP_FAILED, error=repr(exc))
            return
        if done is not None:
            svc.events.emit(CAUGHT_UP, last_seq=self.position(), **done)

    async def discard_if_superseded(self, reason: str) -> None:
        """An ex-primary may hold writes nobody acknowledged, whatever made it step down; the
        new primary's state wins: start again from it (the catch-up). Only once an ENABLED
        peer holds a newer position (HAAgent.may_discard_state); until then the state is kept."""
        ha = self.svc.ha
        if not ha.may_discard_state():
            return
        await self.reset_state()
        ha.discard_pending = False
        self.svc.events.emit(STATE_RESET, reason=reason)

    def position(self) -> int:
        """The last change this member holds (its replication position)."""
        raise NotImplementedError

    async def pull(self) -> dict | None:
        """Take what the ENABLED peer has and this member lacks; the ``ha.caught_up`` event's
        other fields, or None when the round gave up its copy (and said why)."""
        raise NotImplementedError

    async def reset_state(self) -> None:
        """Drop this member's state (``discards_superseded`` members)."""
        raise NotImplementedError
