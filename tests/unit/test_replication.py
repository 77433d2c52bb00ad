"""components/common/replication.py: when a catch-up round has work, and what it reports.

The service and its HA agent are stand-ins here; the CLC's, SC's and Walrus's own
replication run for real in test_clc_replication.py, test_sc.py and test_walrus_replication.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import pytest

from components.common.replication import CATCH_UP_POLL_S, Replication


class Events:
    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def emit(self, name: str, **fields) -> None:
        self.seen.append((name, fields))


class Pulling(Replication):
    """Holds ``position``; a pull takes it to the peer's, or raises ``fail``."""

    def __init__(self, svc, discards: bool = False):
        super().__init__(svc, aiohttp.ClientTimeout(total=1))
        self.discards_superseded = discards
        self.at, self.pulls, self.fail, self.resets = 0, 0, None, 0

    def position(self) -> int:
        return self.at

    async def pull(self):
        self.pulls += 1
        if self.fail:
            raise self.fail
        self.at = self.svc.ha.peer.last_seq
        return {"batches": 1}

    async def reset_state(self) -> None:
        self.resets += 1
        self.at = 0


def _member(state="DISABLED", peer_state="ENABLED", peer_seq=5, alive=True, discard=False, may_discard=True):
    ha = SimpleNamespace(peer_alive=lambda: alive, peer=SimpleNamespace(state=peer_state, last_seq=peer_seq),
                         discard_pending=discard, may_discard_state=lambda: may_discard)
    return SimpleNamespace(component="clc", state=SimpleNamespace(value=state), ha=ha, events=Events(),
                           config={"port": 8773})


@pytest.mark.parametrize("member", [_member(state="ENABLED"), _member(peer_state="DISABLED"), _member(alive=False),
                                    _member(peer_seq=0)], ids=["enabled", "peer-not-enabled", "peer-dead", "in-step"])
def test_a_round_without_work_pulls_nothing_and_says_nothing(member):
    rep = Pulling(member)
    asyncio.run(rep.catch_up_once())
    assert rep.pulls == 0 and member.events.seen == []


def test_a_round_behind_the_peer_pulls_and_says_so_and_a_failure_is_reported_not_raised():
    member = _member()
    rep = Pulling(member)
    asyncio.run(rep.catch_up_once())
    assert rep.pulls == 1 and member.events.seen == [("ha.caught_up", {"last_seq": 5, "batches": 1})]
    member.ha.peer.last_seq, rep.fail = 9, OSError("peer gone")
    asyncio.run(rep.catch_up_once())
    assert member.events.seen[-1] == ("ha.catch_up_failed", {"error": "OSError('peer gone')"})


def test_a_kept_ex_primary_state_is_never_mixed_with_the_peers():
    member = _member(discard=True, may_discard=False)
    rep = Pulling(member, discards=True)
    rep.at = 3
    asyncio.run(rep.catch_up_once())
    assert (rep.pulls, rep.resets, rep.at) == (0, 0, 3)  # kept, and nothing pulled onto it
    member.ha.may_discard_state = lambda: True  # a newer primary is there now
    asyncio.run(rep.catch_up_once())
    assert (rep.resets, rep.pulls, rep.at, member.ha.discard_pending) == (1, 1, 5, False)
    assert [name for name, _ in member.events.seen] == ["ha.state_reset", "ha.caught_up"]


def test_every_replicating_component_has_its_poll_interval():
    assert set(CATCH_UP_POLL_S) == {"clc", "walrus", "sc"}


def test_a_write_the_peer_did_not_take_is_refused_unless_the_agent_lets_it_through():
    member = _member()
    asked = []

    async def may_acknowledge(refused, upto):
        asked.append((refused, upto))
        return upto < 10

    member.ha.may_acknowledge_unreplicated = may_acknowledge
    rep = Pulling(member)
    error = RuntimeError("retry")
    asyncio.run(rep.refuse_unless_acknowledged(None, 12, error))  # the peer has it: nothing asked
    asyncio.run(rep.refuse_unless_acknowledged(False, 7, error, seq=7))
    assert asked == [(False, 7)] and member.events.seen == []
    with pytest.raises(RuntimeError):
        asyncio.run(rep.refuse_unless_acknowledged(True, 12, error, seq=12))
    assert member.events.seen == [("ha.write_not_acknowledged", {"seq": 12, "refused": True})]
