"""The fault catalogue: every fault a trial can inject, as data, each with its restore and
the outcome the HA design promises for it (the table in docs/ha.md).

A fault is injected into one HA pair of a running deployment. ``inject`` acts at once
and registers, on the context, the actions that undo it; ``FaultContext.restore`` runs
them newest first (IPMininet's failure plan and ``restoreIntfs``, made seeded and
timestamped by the caller). ``expect`` says what a correct HA layer does:

* ``failover``: the peer becomes ENABLED, the faulty member stops serving;
* ``no-failover``: the primary stays ENABLED for the whole fault (users may still see an
  outage, e.g. when the border gateway itself is dead);
* ``no-outage``: no failover and not one failed user request;
* ``one-enabled``: whatever happens meanwhile, exactly one member is ENABLED once the
  fault is restored, and no acknowledged write is lost;
* ``switchover``: a failover on purpose (the operator's ModifyService): the peer becomes
  ENABLED and not one user request fails.

Every fault, whatever it expects, must keep "never two ENABLED" and "no lost write".
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from topologies.plan import CLOUD_NET, EXTERNAL_NET, USER_NET
from topologies.shaping import added_delay, interface_shape

FAILOVER, NO_FAILOVER, NO_OUTAGE, ONE_ENABLED = "failover", "no-failover", "no-outage", "one-enabled"
SWITCHOVER = "switchover"
PLANNED_SWITCHOVER = "planned-switchover"
FAULT_CHAIN = "EUCALAB_FAULT"  # an iptables chain of the faulty host's own namespace


@dataclass
class FaultContext:
    """What a fault acts on, and what it must undo."""

    dep: object  # experiments.testbed.deployment.Deployment (not imported: this module stays pure data)
    pair: object  # topologies.plan.ServicePair
    primary: str
    peer: str
    params: dict = field(default_factory=dict)
    silenced: dict[str, float] = field(default_factory=dict)  # member -> when it stopped serving
    notes: dict = field(default_factory=dict)  # facts a fault records for the trial record
    undo: list[Callable[[], None]] = field(default_factory=list)
    write_marker: Callable[[], str | None] | None = None  # an acknowledged write, for double faults
    markers: list[str] = field(default_factory=list)

    def restore(self) -> None:
        """Undo the fault, newest action first; every action runs even if one fails."""
        errors = []
        while self.undo:
            action = self.undo.pop()
            try:
                action()
            except Exception as exc:  # recorded by the caller
                errors.append(repr(exc))
        if errors:
            raise RuntimeError("restore failed: " + "; ".join(errors))


@dataclass(frozen=True)
class Fault:
    name: str
    expect: str
    summary: str
    inject: Callable[[FaultContext], None]
    requires: str | None = None  # "netem" or "sdn": refused where the deployment lacks it


# -- building blocks ---------------------------------------------------------------------------------


def _restart(ctx: FaultContext, member: str) -> None:
    """A crashed member comes back (it rejoins as DISABLED and catches up)."""
    proc = ctx.dep.process(member)
    proc.popen.wait(timeout=10)
    ctx.dep.start(ctx.pair.kind, member, wait=False)


def _crash(ctx: FaultContext, member: str) -> None:
    ctx.dep.kill(member, sig=signal.SIGKILL)
    ctx.silenced.setdefault(member, time.monotonic())
    ctx.undo.append(lambda: _restart(ctx, member))


def _iptables(ctx: FaultContext, member: str, rules: list[str]) -> None:
    """Rules in a chain of the member's own namespace, jumped to from INPUT, OUTPUT and
    FORWARD (a CC forwards its cluster's traffic), removed as a whole on restore."""
    node = ctx.dep[member]

    def undo():
        node.cmd("; ".join([f"iptables -D {c} -j {FAULT_CHAIN}" for c in ("INPUT", "OUTPUT", "FORWARD")]
                           + [f"iptables -F {FAULT_CHAIN}", f"iptables -X {FAULT_CHAIN}"]) + " 2>/dev/null")
    ctx.undo.append(undo)  # first: whatever part of the rules applied is removed on restore
    cmds = ([f"iptables -N {FAULT_CHAIN}"] + [f"iptables -A {FAULT_CHAIN} {r}" for r in rules]
            + [f"iptables -I {c} 1 -j {FAULT_CHAIN}" for c in ("INPUT", "OUTPUT", "FORWARD")])
    # Every command's exit status, not its wording, says whether it applied.
    out = node.cmd(" ; ".join(f"{c} 2>&1 || echo FAILED: {c}" for c in cmds))
    if "FAILED:" in out:
        raise RuntimeError(f"{member}: iptables refused the fault's rules: {out.strip()[:400]}")


def _fault_counters(ctx: FaultContext, member: str) -> dict:
    """Packets matched by the fault chain's rules (proof that a loss fault dropped something)."""
    out = ctx.dep[member].cmd(f"iptables -nvxL {FAULT_CHAIN} 2>/dev/null")
    dropped = 0
    for line in out.splitlines()[2:]:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "DROP":
            dropped += int(parts[0])
    return {"dropped_packets": dropped}


def _intfs(ctx: FaultContext, member: str, network: str) -> list[str]:
    net = ctx.pair.heartbeat_network if network == "heartbeat" else network
    names = [i.name for i in ctx.dep.plan.hosts[member].interfaces if i.network == net]
    if not names:
        raise ValueError(f"{member} has no interface on network {network!r}")
    return names


def _link(ctx: FaultContext, member: str, network: str | None) -> None:
    net = ctx.pair.heartbeat_network if network == "heartbeat" else network
    ctx.dep.set_link(member, net, up=False)
    ctx.undo.append(lambda: ctx.dep.set_link(member, net, up=True))


def _arbitrators(ctx: FaultContext, member: str, count: int | None) -> None:
    """Stop arbitrators for maintenance, the way an operator does: the flag file the HA
    agent reads (<data_dir>/arbitrators/<name>.stopped)."""
    names = [a.name for a in ctx.dep.plan.arbitrators if a.host == member]
    names = names if count is None else names[:count]
    if not names:
        raise ValueError(f"{member} has no arbitrators (arbitrators.per_host is 0)")
    flag_dir = Path(ctx.dep.process(member).config["data_dir"]) / "arbitrators"
    flag_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        (flag_dir / f"{n}.stopped").write_text("stopped by a fault injection\n")
    ctx.notes["arbitrators_stopped"] = names
    ctx.undo.append(lambda: [(flag_dir / f"{n}.stopped").unlink(missing_ok=True) for n in names])


# -- the faults ----------------------------------------------------------------------------------------


def sigkill(ctx: FaultContext) -> None:
    _crash(ctx, ctx.primary)


def sigstop(ctx: FaultContext) -> None:
    ctx.dep.kill(ctx.primary, sig=signal.SIGSTOP)
    ctx.silenced[ctx.primary] = time.monotonic()
    ctx.undo.append(lambda: ctx.dep.kill(ctx.primary, sig=signal.SIGCONT))


def host(ctx: FaultContext) -> None:
    _link(ctx, ctx.primary, None)
    _crash(ctx, ctx.primary)


def uplink(ctx: FaultContext) -> None:
    _link(ctx, ctx.primary, "cloud")


def partition(ctx: FaultContext) -> None:
    """Users and the border gateway lose the primary; its peer (same network) does not."""
    nets = [str(USER_NET), str(EXTERNAL_NET), f"{CLOUD_NET[1]}/32"]
    _iptables(ctx, ctx.primary, [f"-s {n} -j DROP" for n in nets] + [f"-d {n} -j DROP" for n in nets])


def heartbeat(ctx: FaultContext) -> None:
    _link(ctx, ctx.primary, "heartbeat")


def arbitrator_one(ctx: FaultContext) -> None:
    _arbitrators(ctx, ctx.primary, 1)


def arbitrators_all(ctx: FaultContext) -> None:
    _arbitrators(ctx, ctx.primary, None)


def gateway(ctx: FaultContext) -> None:
    """The border gateway dies: every arbitrator of both members fails, users reach nothing."""
    ctx.dep.set_link("gw", None, up=False)
    ctx.undo.append(lambda: ctx.dep.set_link("gw", None, up=True))


def loss(ctx: FaultContext) -> None:
    """Random loss on the primary's links to one network, both directions (iptables
    statistic: works on any kernel, unlike netem)."""
    pct = float(ctx.params.get("loss_percent", 10))
    if not 0 < pct <= 100:
        raise ValueError("loss_percent must be in (0, 100]")
    rules = []
    for intf in _intfs(ctx, ctx.primary, ctx.params.get("network", "heartbeat")):
        for d in ("-i", "-o"):
            rules.append(f"{d} {intf} -m statistic --mode random --probability {pct / 100:.6f} -j DROP")
    _iptables(ctx, ctx.primary, rules)
    # Restored newest first: the counters are read before the chain goes.
    ctx.undo.append(lambda: ctx.notes.update(_fault_counters(ctx, ctx.primary)))


def delay(ctx: FaultContext) -> None:
    """Delay on the primary's links to one network with netem (only where the kernel has it),
    added to the shaping the spec gives those links (its rate, delay, jitter and loss stay);
    restore puts exactly the spec's shaping back."""
    ms = float(ctx.params.get("delay_ms", 20))
    node = ctx.dep[ctx.primary]
    for intf in _intfs(ctx, ctx.primary, ctx.params.get("network", "heartbeat")):
        more, back = added_delay(intf, interface_shape(ctx.dep.plan, ctx.primary, intf), ms)
        _tc(node, ctx.primary, more, "netem refused the delay")
        ctx.undo.append(lambda back=back: _tc(node, ctx.primary, back, "the link's own shaping was not restored"))


def _tc(node, member: str, lines: list[str], what: str) -> None:
    """tc batch lines in the member's namespace, each checked by its exit status."""
    out = node.cmd(" ; ".join(f"tc {line} 2>&1 || echo FAILED: {line}" for line in lines))
    if "FAILED:" in out:
        raise RuntimeError(f"{member}: {what}: {out.strip()[:300]}")


def cpu(ctx: FaultContext) -> None:
    """CPU starvation: busy processes on the primary's host, one per core, at normal priority."""
    import os
    import sys

    n = int(ctx.params.get("hogs", os.cpu_count() or 1))
    for i in range(n):
        label = f"hog{i}"
        ctx.dep.start("hog", ctx.primary, label=label, wait=False,
                      argv=[sys.executable, "-S", "-c", "while True: pass"])

        def undo(label=label):
            ctx.dep.kill(ctx.primary, label)
            ctx.dep.process(ctx.primary, label).popen.wait(timeout=5)
        ctx.undo.append(undo)


def slow_replica(ctx: FaultContext) -> None:
    """The DISABLED replica runs slow: stalled (SIGSTOP) for stall_ms of every period_ms,
    below the detection bound, so it keeps acknowledging replication, late."""
    stall = float(ctx.params.get("stall_ms", 100)) / 1000
    period = float(ctx.params.get("period_ms", 300)) / 1000
    if stall >= period:
        raise ValueError("stall_ms must be below period_ms")
    pid = ctx.dep.process(ctx.peer).pid
    stop = threading.Event()

    def run():
        import os
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stall)
            os.kill(pid, signal.SIGCONT)
            stop.wait(period - stall)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def undo():
        stop.set()
        t.join(timeout=2)
        import os
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    ctx.undo.append(undo)


def secondary(ctx: FaultContext) -> None:
    _crash(ctx, ctx.peer)


def _restart_if_dead(ctx: FaultContext, member: str) -> None:
    if not ctx.dep.process(member).alive():
        _restart(ctx, member)


def both(ctx: FaultContext) -> None:
    """Both members crash and restart together."""
    for m in (ctx.primary, ctx.peer):
        ctx.undo.append(lambda m=m: _restart_if_dead(ctx, m))  # should the restart below not happen
        ctx.dep.kill(m, sig=signal.SIGKILL)
        ctx.silenced.setdefault(m, time.monotonic())
    for m in (ctx.primary, ctx.peer):
        ctx.dep.process(m).popen.wait(timeout=10)
    for m in (ctx.primary, ctx.peer):
        ctx.dep.start(ctx.pair.kind, m, wait=False)


def double(ctx: FaultContext) -> None:
    """The primary crashes; once its peer has taken over and acknowledged a new write, the
    crashed member restarts (catching up) and the new primary crashes in its turn."""
    from ..testbed.deployment import wait_until

    dep = ctx.dep
    _crash(ctx, ctx.primary)  # its restart stays registered until it has happened
    if not wait_until(lambda: dep.member_state(ctx.peer) == "ENABLED", 10):
        raise RuntimeError("the peer did not take over after the first crash")
    if ctx.write_marker is not None:
        ctx.markers.append(ctx.write_marker())
    ctx.undo.pop()
    ctx.undo.append(lambda: _restart_if_dead(ctx, ctx.primary))
    dep.process(ctx.primary).popen.wait(timeout=10)
    dep.start(ctx.pair.kind, ctx.primary, wait=False)
    # The restarted member has heard its peer (it is catching up) when the peer dies.
    dep.wait_event(dep.process(ctx.primary), "ha.peer_alive", timeout=20)
    _crash(ctx, ctx.peer)


def planned_switchover(ctx: FaultContext) -> None:
    """The operator moves the pair: ModifyService DISABLE of the ENABLED member, sent to the
    CLC from the user host as euca-modify-service would (the member hands over; nothing to
    restore: the pair is redundant the other way round)."""
    from ..testbed.services import ServiceAPI

    t0 = time.monotonic()
    status, body = ServiceAPI(ctx.dep.run_dir, ctx.dep.net["user"].pid).call(
        {"Action": "ModifyService", "Name": ctx.primary, "State": "DISABLE"})
    ctx.notes["modify_service_s"] = round(time.monotonic() - t0, 4)
    if status != 200:
        raise RuntimeError(f"ModifyService {ctx.primary} DISABLE answered {status}: {body[:300]!r}")


def controller(ctx: FaultContext) -> None:
    """The SDN controller crashes: switches keep their flows (fail-secure) until it returns."""
    ctx.dep.crash_controller()
    ctx.undo.append(ctx.dep.restart_controller)


CATALOGUE: dict[str, Fault] = {f.name: f for f in [
    Fault("sigkill", FAILOVER, "primary process crash (SIGKILL); restore: restart it", sigkill),
    Fault("sigstop", FAILOVER, "primary process hang (SIGSTOP); restore: SIGCONT (it must step down)", sigstop),
    Fault("host", FAILOVER, "primary host failure: every link down, its process killed", host),
    Fault("uplink", FAILOVER, "primary's cloud-network uplink cut (heartbeat link intact)", uplink),
    Fault("partition", FAILOVER, "primary partitioned from the border gateway and users; its peer reaches it",
          partition),
    Fault("heartbeat", NO_FAILOVER, "primary's heartbeat-network link cut, both members reach users", heartbeat),
    Fault("arbitrator", NO_FAILOVER, "one arbitrator of the primary stopped (maintenance)", arbitrator_one),
    Fault("arbitrators", FAILOVER, "every arbitrator of the primary stopped", arbitrators_all),
    Fault("gateway", NO_FAILOVER, "the border gateway dies: every arbitrator of both members fails", gateway),
    Fault("loss", NO_FAILOVER, "random packet loss on the primary's links to a network (iptables statistic)", loss),
    Fault("delay", NO_FAILOVER, "delay on the primary's links to a network (netem)", delay, requires="netem"),
    Fault("cpu", NO_FAILOVER, "CPU starvation: busy processes on the primary's host", cpu),
    Fault("slow-replica", NO_OUTAGE, "the DISABLED replica stalls for part of every period", slow_replica),
    Fault("secondary", NO_OUTAGE, "secondary process crash: loss of redundancy only", secondary),
    Fault("both", ONE_ENABLED, "both members crash and restart together", both),
    Fault("double", ONE_ENABLED, "the new primary crashes while the old one catches up", double),
    Fault(PLANNED_SWITCHOVER, SWITCHOVER, "planned switchover: ModifyService DISABLE of the ENABLED member "
          "(keepalived: the master's priority lowered below the backup's)", planned_switchover),
    Fault("controller", NO_OUTAGE, "the SDN controller crashes (switches keep their flows)", controller,
          requires="sdn"),
]}


def check_available(fault: Fault, *, netem: bool, sdn: bool) -> None:
    """Refuse, with the reason, a fault this machine or deployment cannot inject."""
    if fault.requires == "netem" and not netem:
        raise ValueError(f"fault {fault.name!r} needs netem (sch_netem), which this kernel does not have; "
                         "link delay cannot be emulated here (use 'loss', which works everywhere)")
    if fault.requires == "sdn" and not sdn:
        raise ValueError(f"fault {fault.name!r} needs the SDN controller: set 'sdn: true' in the experiment or its spec")


def judge(expect: str, *, promoted: bool, primary_enabled_after: bool, failed_probes: int,
          two_enabled_s: float, lost_writes: int, settled: bool, recovered: bool) -> list[str]:
    """What went differently from what the fault expects (empty: as expected)."""
    flags = []
    if expect in (FAILOVER, SWITCHOVER) and not promoted:
        flags.append("no failover")
    if expect in (FAILOVER, SWITCHOVER) and promoted and not recovered:
        flags.append("failover but users were not served again")
    if expect in (NO_FAILOVER, NO_OUTAGE) and promoted:
        flags.append("false failover")
    if expect in (NO_FAILOVER, NO_OUTAGE) and not promoted and not primary_enabled_after:
        flags.append("the primary stopped serving")
    if expect in (NO_OUTAGE, SWITCHOVER) and failed_probes:
        flags.append(f"{failed_probes} failed user requests")
    if two_enabled_s > 0:
        flags.append(f"two ENABLED for {1000 * two_enabled_s:.0f} ms")
    if lost_writes:
        flags.append(f"{lost_writes} acknowledged write(s) lost")
    if not settled:
        flags.append("not exactly one ENABLED and one DISABLED after the restore")
    return flags


def enabled_intervals(events: list[dict], end: float, silenced_at=None) -> list[tuple[float, float]]:
    """A member's ENABLED intervals from its event log (CLOCK_MONOTONIC), each cut where the
    member stopped serving: a state change, a restart, a fence, or the fault silencing its
    process. A fenced member that is unfenced and carries on (no demotion right after)
    serves again from the unfencing."""
    spans, since, fenced = [], None, False
    for i, e in enumerate(events):
        kind = e["event"]
        if kind == "service.start":  # a restart: the previous process served no longer
            if since is not None:
                spans.append((since, e["t_mono"]))
            since, fenced = (e["t_mono"] if e.get("state") == "ENABLED" else None), False
        elif kind == "state.change":
            fenced = False
            if e["to"] == "ENABLED" and since is None:
                since = e["t_mono"]
            elif e["to"] != "ENABLED" and since is not None:
                spans.append((since, e["t_mono"]))
                since = None
        elif kind == "ha.frozen" and e.get("fenced") and since is not None:
            # A stalled loop answers nothing, and once it runs again the member fenced itself
            # (its lease had run out): it served until the tick that came late, not until it
            # noticed (the peer may rightly have taken over meanwhile).
            spans.append((since, max(since, e["t_mono"] - float(e.get("late_s") or 0.0))))
            since, fenced = None, True
        elif kind == "ha.unfenced" and fenced:
            fenced = False
            following = next((x for x in events[i + 1:] if x["event"] in ("state.change", "service.start",
                                                                             "ha.frozen")), None)
            demoted = following is not None and following["event"] == "state.change" and \
                following["to"] != "ENABLED" and following["t_mono"] - e["t_mono"] < 0.05
            if not demoted:
                since = e["t_mono"]
    if since is not None:
        spans.append((since, end))
    # A crashed or stopped process serves nothing from then on (it logs nothing either): each
    # interval ends at the first time the process was silenced (one time, or several).
    times = sorted([silenced_at] if isinstance(silenced_at, (int, float)) else (silenced_at or []))
    return [(a, min([b] + [t for t in times if a < t < b])) for a, b in spans]


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total time two sets of intervals overlap."""
    return sum(max(0.0, min(x2, y2) - max(x1, y1)) for x1, x2 in a for y1, y2 in b)
