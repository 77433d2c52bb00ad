"""The fault table on two HA agents joined by a fake network, under a fake clock.

No root, no sockets, no real time: each agent gets an injected clock, a transport
that hands heartbeats to the other agent unless the path is cut, a command runner
that records `ip addr` calls and a gratuitous-ARP recorder. The simulation steps the
clock 5 ms at a time, delivers heartbeats, runs each live member's tick every
interval and an arbitrator round every period, and checks after every step that
never two members may serve at once.
"""

from __future__ import annotations

import asyncio

import pytest

from components.common.events import EventLog, read_events
from components.common.ha import HAAgent
from components.common.states import ServiceState

from tests.support.processes import HA_SECRET

STEP = 0.005
INTERVAL, MISSES = 0.05, 3
WINDOW = INTERVAL * MISSES
ARB_PERIOD = 1.0
ADDR = {"clc1": {"hb": "10.254.1.1", "cloud": "10.0.0.11"}, "clc2": {"hb": "10.254.1.2", "cloud": "10.0.0.12"}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeService:
    def __init__(self, events: EventLog):
        self.state = ServiceState.DISABLED
        self.events = events

    def set_state(self, new, reason=""):
        if new is not self.state:
            self.events.emit("state.change", **{"from": self.state.value, "to": new.value, "reason": reason})
            self.state = new


class Member:
    """One process: its agent, and whether it runs (killed) or is scheduled (stopped)."""

    def __init__(self, sim: "Sim", host: str, phase: float):
        self.sim, self.host = sim, host
        self.dir = sim.tmp / host
        self.alive, self.stopped = True, False
        self.inbox: list[tuple[bytes, tuple]] = []
        self.next_tick = sim.clock.now + phase
        self.next_arb = sim.clock.now + phase * 7  # arbitrator rounds out of step with the peer's
        self.commands: list[tuple] = []
        self.garps: list[tuple] = []
        self.boot()

    def boot(self) -> None:
        role = "primary" if self.host == "clc1" else "secondary"
        peer = "clc2" if self.host == "clc1" else "clc1"
        cfg = {"host": self.host, "role": role, "data_dir": str(self.dir / "data"), "pair": {"name": "clc"},
               "ha": {"peer": peer, "peer_addresses": [ADDR[peer]["hb"], ADDR[peer]["cloud"]],
                      "listen": [ADDR[self.host]["hb"], ADDR[self.host]["cloud"]], "secret": HA_SECRET,
                      "interval_ms": INTERVAL * 1000, "misses": MISSES,
                      "vips": [{"address": "10.0.0.10", "prefix": 16, "interface": f"{self.host}-eth0"}],
                      "arbitrators": [{"name": f"{self.host}-arb1", "target": "10.0.0.1"},
                                      {"name": f"{self.host}-arb2", "target": "203.0.113.10"}],
                      "arbitrator_period_s": ARB_PERIOD, "arbitrator_fail_after": 2}}
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.svc = FakeService(EventLog(self.dir / "events.jsonl", self.host, "clc"))

        async def run(*argv):
            self.commands.append(argv)
            return 0

        self.agent = HAAgent(self.svc, cfg, clock=self.sim.clock, transport=Transport(self.sim, self.host),
                             run=run, garp=lambda intf, ip: self.garps.append((self.sim.clock.now, intf, ip)),
                             offload=_inline)  # file work takes no simulated time
        self.alive, self.stopped, self.inbox = True, False, []
        self.next_tick = self.sim.clock.now

    @property
    def state(self) -> str:
        return self.svc.state.value if self.alive else "DEAD"

    def events(self, name: str | None = None) -> list[dict]:
        evs = read_events(self.dir / "events.jsonl")
        return [e for e in evs if name is None or e["event"] == name]

    def serving(self) -> bool:
        return self.alive and not self.stopped and self.agent.may_serve()


class Transport:
    def __init__(self, sim: "Sim", host: str):
        self.sim, self.host = sim, host

    def sendto(self, data: bytes, addr: tuple) -> None:
        dest = next(h for h, a in ADDR.items() if addr[0] in a.values())
        path = "hb" if addr[0].startswith("10.254.") else "cloud"
        if path in self.sim.cut or (path, self.host) in self.sim.cut or (path, dest) in self.sim.cut:
            return
        member = self.sim.members[dest]
        if member.alive:
            member.inbox.append((data, (ADDR[self.host][path], 7800)))


async def _inline(fn, *args):
    return fn(*args)


class Sim:
    def __init__(self, tmp):
        self.tmp = tmp
        self.clock = Clock()
        self.cut: set = set()  # "hb", "cloud", or (path, host): the host's interface on it is down
        self.users_lost: set[str] = set()  # hosts whose arbitrator targets do not answer
        self.members = {"clc1": Member(self, "clc1", 0.0), "clc2": Member(self, "clc2", 0.013)}
        self.both_served_s = 0.0
        self.served: dict[str, list[float]] = {h: [] for h in self.members}

    def __getitem__(self, host: str) -> Member:
        return self.members[host]

    async def run(self, seconds: float, until=None) -> float | None:
        """Advance ``seconds`` (or until ``until()`` holds); returns when ``until`` held."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now += STEP
            for m in self.members.values():
                if not m.alive or m.stopped:
                    continue
                inbox, m.inbox = m.inbox, []
                for data, addr in inbox:
                    m.agent.on_heartbeat(data, addr)
                if self.clock.now >= m.next_arb or m.agent.confirm_wanted is not None:
                    m.next_arb = self.clock.now + ARB_PERIOD
                    ok = m.host not in self.users_lost and ("cloud", m.host) not in self.cut
                    m.agent.record_arbitration([ok and not a.stopped for a in m.agent.arbitrators])
                if self.clock.now >= m.next_tick:
                    m.next_tick = self.clock.now + INTERVAL
                    m.agent.tick()
                await drain()
            serving = [h for h, m in self.members.items() if m.serving()]
            for h in serving:
                self.served[h].append(self.clock.now)
            if len(serving) > 1:
                self.both_served_s += STEP
            if until is not None and until():
                return self.clock.now
        return None

    def enabled(self) -> list[str]:
        return [h for h, m in self.members.items() if m.state == "ENABLED"]

    async def settle(self) -> None:
        """Both members up: the configured primary ends ENABLED, the secondary DISABLED."""
        await self.run(1.5)
        assert self.enabled() == ["clc1"] and self["clc2"].state == "DISABLED"


async def drain() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


@pytest.fixture
def sim(tmp_path):
    return Sim(tmp_path)


def simulate(coro_fn):
    """Run an async test body; pending GARP repeats (real-time sleeps) are cancelled at the end."""
    def wrapper(sim):
        asyncio.run(coro_fn(sim))
    wrapper.__name__ = coro_fn.__name__
    return wrapper


@simulate
async def test_primary_crash_secondary_takes_over_within_the_window(sim):
    await sim.settle()
    epoch = sim["clc1"].agent.epoch
    last_heard = sim.clock.now
    sim["clc1"].alive = False  # kill -9
    t = await sim.run(2.0, until=lambda: sim["clc2"].serving())
    assert t is not None and t - last_heard <= WINDOW + INTERVAL + 2 * STEP
    assert sim.enabled() == ["clc2"] and sim["clc2"].agent.epoch == epoch + 1
    promote = sim["clc2"].events("ha.promote")[-1]
    assert promote["reason"] == "peer dead" and promote["garp_sent"] and "detected_at" in promote
    assert sim["clc2"].events("ha.peer_dead") and sim["clc2"].events("ha.vip_acquired")[-1]["garp_sent"]
    assert ("ip", "addr", "replace", "10.0.0.10/16", "dev", "clc2-eth0") in sim["clc2"].commands
    assert [g[1:] for g in sim["clc2"].garps] == [("clc2-eth0", "10.0.0.10")]
    assert (sim["clc2"].dir / "data" / "ha-epoch").read_text() == str(epoch + 1)


@pytest.mark.parametrize("first", ["heartbeats", "tick"])
def test_hung_primary_is_replaced_and_steps_down_without_serving(sim, first):
    async def body():
        await sim.settle()
        a = sim["clc1"]
        a.stopped = True  # SIGSTOP
        assert await sim.run(1.0, until=lambda: sim["clc2"].serving()) is not None
        await sim.run(1.0)
        resumed_at = sim.clock.now
        if first == "tick":  # the ticker's timer fires before the queued heartbeats are read
            a.next_tick = sim.clock.now
        a.stopped = False  # SIGCONT
        await sim.run(1.0)
        assert not [t for t in sim.served["clc1"] if t >= resumed_at], "the resumed primary served"
        assert a.state == "DISABLED" and sim.enabled() == ["clc2"]
        assert a.events("ha.demote") and sim.both_served_s == 0.0
    asyncio.run(body())


@simulate
async def test_heartbeat_link_cut_alone_is_no_failover(sim):
    await sim.settle()
    sim.cut.add("hb")
    await sim.run(5.0)
    assert sim.enabled() == ["clc1"] and sim["clc2"].state == "DISABLED"
    assert not sim["clc2"].events("ha.peer_dead") and not sim["clc2"].events("ha.promote")[1:]
    assert sim["clc2"].agent.status()["peer"]["paths"] == ["10.0.0.11"]


@simulate
async def test_cloud_path_cut_alone_is_no_failover_either(sim):
    await sim.settle()
    sim.cut.add("cloud")  # heartbeats on the dedicated link only; arbitrators still answer
    sim.users_lost.clear()
    await sim.run(3.0)
    assert sim.enabled() == ["clc1"]


@simulate
async def test_one_arbitrator_failing_is_advisory_only(sim):
    await sim.settle()
    sim["clc1"].agent.set_arbitrator_stopped("clc1-arb1", True)  # maintenance
    await sim.run(4.0)
    assert sim.enabled() == ["clc1"]
    assert sim["clc1"].events("arbitrator.advisory") and not sim["clc1"].events("ha.demote")


@simulate
async def test_primary_losing_its_users_fails_over(sim):
    await sim.settle()
    sim.cut.add(("cloud", "clc1"))  # its uplink: heartbeats still cross the heartbeat link
    t0 = sim.clock.now
    t = await sim.run(5.0, until=lambda: sim.enabled() == ["clc2"])
    assert t is not None and t - t0 <= 2 * ARB_PERIOD + 0.2
    assert sim["clc1"].state == "NOTREADY" and sim["clc1"].events("arbitrator.all_failed")
    assert ("ip", "addr", "del", "10.0.0.10/16", "dev", "clc1-eth0") in sim["clc1"].commands
    assert sim["clc2"].events("ha.promote")[-1]["reason"].startswith("peer NOTREADY")
    assert sim.both_served_s == 0.0
    sim.cut.discard(("cloud", "clc1"))  # uplink back: the ex-primary stands by
    await sim.run(3.0)
    assert sim["clc1"].state == "DISABLED" and sim.enabled() == ["clc2"]


@simulate
async def test_all_arbitrators_of_both_failing_is_no_failover(sim):
    await sim.settle()
    sim.users_lost.update({"clc1", "clc2"})  # the gateway stops answering
    await sim.run(5.0)
    assert sim.enabled() == ["clc1"] and sim["clc2"].state == "DISABLED"
    assert sim["clc1"].events("ha.no_failover")


@simulate
async def test_secondary_losing_its_users_first_blocks_nothing(sim):
    await sim.settle()
    sim.users_lost.add("clc2")
    await sim.run(3.0)
    sim["clc1"].alive = False
    await sim.run(2.0)
    assert sim["clc2"].state == "DISABLED"  # users cannot reach it: promoting would not help


@simulate
async def test_secondary_crash_keeps_the_primary_enabled_and_reports_lost_redundancy(sim):
    await sim.settle()
    sim["clc2"].alive = False
    await sim.run(2.0)
    assert sim.enabled() == ["clc1"] and sim["clc1"].serving()
    assert sim["clc1"].events("ha.peer_dead") and sim["clc1"].events("ha.redundancy_lost")


@simulate
async def test_both_restart_together_exactly_one_enabled(sim):
    await sim.settle()
    sim["clc1"].alive = False
    await sim.run(1.0)  # clc2 took over: its epoch is now the highest
    for m in sim.members.values():
        m.alive = False
    for m in sim.members.values():
        m.boot()
    await sim.run(2.0)
    assert sim.enabled() == ["clc2"], "the member with the highest epoch wins"
    assert sim.both_served_s == 0.0


@simulate
async def test_fresh_pair_started_together_elects_the_configured_primary(sim):
    await sim.run(2.0)
    assert sim.enabled() == ["clc1"] and sim.both_served_s == 0.0


@simulate
async def test_secondary_started_first_keeps_the_role(sim):
    sim["clc1"].alive = False
    await sim.run(1.0)
    assert sim.enabled() == ["clc2"]
    sim["clc1"].boot()
    await sim.run(2.0)
    assert sim.enabled() == ["clc2"] and sim["clc1"].state == "DISABLED"


@simulate
async def test_primary_restarting_during_takeover_ends_with_one_enabled(sim):
    await sim.settle()
    sim["clc1"].alive = False
    await sim.run(WINDOW - 0.02)  # clc2 has not declared it dead yet
    sim["clc1"].boot()
    await sim.run(2.0)
    assert len(sim.enabled()) == 1 and sim.both_served_s == 0.0


@simulate
async def test_partition_of_both_paths_heals_to_one_enabled(sim):
    await sim.settle()
    sim.cut.update({"hb", "cloud"})
    await sim.run(1.0)  # both believe the other dead: the secondary promotes (split brain)
    assert sorted(sim.enabled()) == ["clc1", "clc2"]
    sim.cut.clear()
    await sim.run(1.0)
    assert sim.enabled() == ["clc2"], "the higher epoch wins after the partition"


@simulate
async def test_enabled_member_hearing_a_higher_epoch_steps_down_at_once(sim):
    await sim.settle()
    sim["clc2"].agent.epoch = sim["clc1"].agent.epoch + 5
    sim["clc2"].svc.set_state(ServiceState.ENABLED, "test: a stale view")
    t = await sim.run(1.0, until=lambda: sim["clc1"].state == "DISABLED")
    assert t is not None and sim.enabled() == ["clc2"]
