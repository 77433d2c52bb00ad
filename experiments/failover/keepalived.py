"""The keepalived baseline: the same crash (or planned switchover) measured on keepalived
(VRRP) fronting a trivial HTTP responder on the CLC pair's hosts and VIP, beside
eucalab's own pairs, with the same prober; and keepalived soaked under the soak's
stresses (experiments/failover/soak.py), for its false failovers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ..analysis.measures import outage_span, resolution
from ..testbed.deployment import Deployment, wait_until
from .experiment import TrialSet
from .faults import PLANNED_SWITCHOVER
from .probes import Prober, mono
from .stress import CpuHog, loss_figures, loss_rules, rule_counters

if TYPE_CHECKING:
    from .runner import Runner

MAINTENANCE_WEIGHT = 30  # keepalived's planned switchover: priorities are 100 and 90

KEEPALIVED_VIP = "10.0.0.10"  # the CLC's VIP: the baseline runs on the CLC pair's hosts


def keepalived_conf(dep: Deployment, host: str, advert_ms: float, priority: int,
                    rt_priority: int | None = None, planned: bool = False) -> Path:
    """keepalived's configuration on ``host``: one VRRP instance holding the CLC's VIP
    (VRRPv3 below 1 s adverts), ``nopreempt``; ``rt_priority`` runs its VRRP process at
    SCHED_FIFO (``vrrp_rt_priority``), as eucalab's HA members run. For planned
    switchovers (``planned``) the members preempt and the priority follows a track file
    (``maintenance``: 1 lowers it by MAINTENANCE_WEIGHT, 0 restores it), the way operators
    move a VRRP master on purpose."""
    intf = dep.plan.hosts[host].intf("cloud").name
    d = dep.host_dir(host, "keepalived")
    version = "3" if advert_ms < 1000 else "2"
    advert = f"{advert_ms / 1000:g}"
    rt = f"\n    vrrp_rt_priority {int(rt_priority)}" if rt_priority else ""
    conf = d / "keepalived.conf"
    track = d / "maintenance"
    if planned:
        track.write_text("0\n")
    tracking = (f"""track_file maintenance {{
    file {track}
    weight -{MAINTENANCE_WEIGHT}
}}
""" if planned else "")
    preemption = "track_file {\n        maintenance\n    }" if planned else "nopreempt"
    conf.write_text(f"""global_defs {{
    router_id {host}
    vrrp_version {version}{rt}
}}
{tracking}vrrp_instance EUCALAB {{
    state BACKUP
    {preemption}
    interface {intf}
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {KEEPALIVED_VIP}/16 dev {intf}
    }}
}}
""")
    return conf


def start_keepalived(dep: Deployment, host: str, advert_ms: float, priority: int,
                     rt_priority: int | None = None, planned: bool = False) -> None:
    conf = keepalived_conf(dep, host, advert_ms, priority, rt_priority, planned)
    d = conf.parent
    for stale in ("keepalived.pid", "vrrp.pid"):  # left by a crashed instance
        (d / stale).unlink(missing_ok=True)
    dep.start("keepalived", host, label="keepalived", wait=False, argv=[
        "keepalived", "-n", "-l", "-P", "-f", str(conf), "-p", str(d / "keepalived.pid"),
        "-r", str(d / "vrrp.pid")])


def start_http(dep: Deployment, host: str) -> None:
    """The trivial service keepalived fronts: an HTTP responder on port 8080."""
    dep.start("http8080", host, label="http8080", wait=False,
              argv=[os.sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"])
    wait_until(lambda: dep.listening(host, 8080), 10, 0.05)


def drop_keepalived_vip(dep: Deployment, host: str) -> None:
    dep[host].cmd(f"ip addr del {KEEPALIVED_VIP}/16 dev {dep.plan.hosts[host].intf('cloud').name} 2>/dev/null")


def keepalived_holders(dep: Deployment, hosts: list[str]) -> list[str]:
    """The hosts that hold the baseline's VIP now."""
    return [h for h in hosts if f"{KEEPALIVED_VIP}/16" in dep[h].cmd("ip -o -4 addr show")]


def settled_master(dep: Deployment, hosts: list[str], advert_ms: float, adverts: int = 20,
                   timeout_s: float = 30) -> str | None:
    """The one host holding the baseline's VIP once it has held it alone for ``adverts``
    adverts (at least 0.5 s; with 0, the one holder now), or None. Right after the pair
    starts both may hold it until one yields: a trial must not take that host for the master."""
    settle = max(0.5, adverts * advert_ms / 1000) if adverts else 0.0
    held: list = [None, time.monotonic()]

    def settled() -> bool:
        now_held = keepalived_holders(dep, hosts)
        if now_held != held[0]:
            held[:] = [now_held, time.monotonic()]
        return len(now_held) == 1 and time.monotonic() - held[1] >= settle

    return held[0][0] if wait_until(settled, timeout_s, step=0.05) else None


def start_keepalived_pair(dep: Deployment, advert_ms: float, rt_priority: int | None = None,
                          planned: bool = False) -> list[str]:
    """keepalived and its HTTP responder on the CLC pair's hosts, with the eucalab CLC out
    of the way (the same hosts and VIP); returns the hosts."""
    hosts = dep.plan.pair("clc").members
    dep.admit(KEEPALIVED_VIP, 8080)  # the site's firewall lets users reach the baseline's service
    for h in hosts:
        if (h, "clc") in dep.processes and dep.process(h, "clc").alive():
            dep.stop(h, "clc")
        drop_keepalived_vip(dep, h)
        if (h, "http8080") not in dep.processes or not dep.processes[(h, "http8080")].alive():
            start_http(dep, h)
    for i, h in enumerate(hosts):
        start_keepalived(dep, h, advert_ms, 100 - 10 * i, rt_priority, planned)
    return hosts


def stop_keepalived_pair(dep: Deployment, hosts: list[str]) -> None:
    for h in hosts:
        dep.stop(h, "keepalived")
        drop_keepalived_vip(dep, h)



class KeepalivedBaseline:
    """One keepalived trial set on a runner's deployment: its trials are written like eucalab's."""

    def __init__(self, runner: "Runner"):
        self.runner = runner

    def run_set(self, dep: Deployment, ts: TrialSet, bar, point: dict | None = None) -> list[dict]:
        rt = ts.params.get("rt_priority")
        hosts = start_keepalived_pair(dep, ts.advert_ms, rt, planned=ts.fault == PLANNED_SWITCHOVER)
        records = []

        for n in range(ts.trials):
            # The pair's start settles for 20 adverts; later, the restored member rejoins as
            # backup (nopreempt) or the master took its VIP back (planned): one holder suffices.
            master = settled_master(dep, hosts, ts.advert_ms, adverts=20 if n == 0 else 0)
            record = {"set": ts.name, "target": "keepalived", "fault": ts.fault, "trial": n, "primary": master}
            if point:
                record["point"] = point
            if master is None:
                record.update(status="invalid", error="no keepalived master")
                self.runner.write(record, bar)
                records.append(record)
                continue
            backup = next(h for h in hosts if h != master)
            probe = self.runner.prober(dep, f"http://{KEEPALIVED_VIP}:8080/", {}, ("contains", b""))
            try:
                self._trial(dep, ts, n, master, backup, probe, record)
            except Exception as exc:  # recorded, never silently dropped
                record.update(status="error", error=repr(exc))
            finally:
                probe.stop()
            records.append(record)
            self.runner.write(record, bar)
        stop_keepalived_pair(dep, hosts)
        return records

    def _trial(self, dep: Deployment, ts: TrialSet, n: int, master: str, backup: str,
               probe: Prober, record: dict) -> None:
        psutil.cpu_percent(None)
        time.sleep(0.3)
        wait_until(lambda: sum(p.ok for p in probe.snapshot()) >= 3, 5, 0.01)  # warm-up
        time.sleep(self.runner.rng.uniform(0, ts.advert_ms / 1000))
        t_fault = mono()
        track = dep.host_dir(master, "keepalived") / "maintenance"
        if ts.fault == PLANNED_SWITCHOVER:
            track.write_text("1\n")  # the master's priority drops below the backup's: it preempts
        else:
            # The service crashes with its keepalived (the daemon and its VRRP child), as
            # eucalab's component does with its HA agent.
            dep.kill(master, "keepalived", group=True)
            dep.kill(master, "http8080")
        # keepalived killed with SIGKILL leaves its VIP behind: the host still answers
        # ARP for it until the backup's gratuitous ARP wins, as in a real crash.
        ok = wait_until(lambda: any(p.ok and p.sent >= t_fault for p in probe.snapshot()) and
                        keepalived_holders(dep, [backup]), 15)
        time.sleep(0.1)
        probes = probe.stop()
        span = outage_span(probes, t_fault)
        out = span[1] - span[0] if span else None
        record.update(status="ok" if ok and out is not None else "no-recovery", t_fault=t_fault,
                      outage_s=out, served_again_s=(span[1] - t_fault) if span else None,
                      new_primary=backup, probes=len(probes),
                      cpu_percent=psutil.cpu_percent(None), load1=os.getloadavg()[0],
                      lost_writes=None, prober=probe.overhead,
                      **{f"probe_{k}": v for k, v in resolution(probes).items()})
        self.runner.write_probes(ts.name, n, t_fault, probes)
        if ts.fault == PLANNED_SWITCHOVER:
            record["failed_probes"] = sum(1 for p in probes if p.sent >= t_fault and not p.ok)
            # Restore: the master's priority back; it preempts again (outside the measured span).
            track.write_text("0\n")
            wait_until(lambda: keepalived_holders(dep, [master]), 15)
            return
        # Restore: the crashed master's host drops the stale VIP and rejoins as backup.
        dep.process(master, "keepalived").popen.wait(timeout=5)
        dep.process(master, "http8080").popen.wait(timeout=5)
        drop_keepalived_vip(dep, master)
        start_http(dep, master)
        start_keepalived(dep, master, ts.advert_ms, 90, ts.params.get("rt_priority"))


# keepalived says each transition on its log; one to MASTER after the pair settled is a takeover.
KEEPALIVED_MASTER = b"Entering MASTER STATE"


def keepalived_masters(log: bytes) -> int:
    """Transitions to MASTER in (a part of) keepalived's console log."""
    return sum(1 for line in log.splitlines() if KEEPALIVED_MASTER in line)


def keepalived_soak(dep, advert_ms: float, seconds: float, loss_pct: float, cores: list[int],
                    rt_priority: int | None) -> dict:
    """keepalived on the CLC pair's hosts for ``seconds`` under advert loss and the CPU hog:
    its false failovers and the samples in which both hosts held the VIP."""
    from .soak import SAMPLE_S

    hosts = start_keepalived_pair(dep, advert_ms, rt_priority)
    try:
        if settled_master(dep, hosts, advert_ms) is None:
            raise RuntimeError(f"keepalived: no single master at start-up: {keepalived_holders(dep, hosts)}")
        logs = {h: dep.process(h, "keepalived").dir / "stdout.log" for h in hosts}
        offsets = {h: logs[h].stat().st_size for h in hosts}
        for h in hosts:
            intf = dep.plan.hosts[h].intf("cloud").name
            for rule in loss_rules(intf, loss_pct / 100, None, "vrrp", protocol="vrrp"):
                out = dep[h].cmd("iptables -w " + " ".join(rule) + " 2>&1; echo rc=$?")
                if not out.strip().endswith("rc=0"):
                    raise RuntimeError(f"{h}: iptables {' '.join(rule)}: {out.strip()}")
        before = rule_counters(dep, hosts)
        hog = CpuHog(cores)
        dual, none, n = [], 0, 0
        try:
            hog.start()
            t0 = time.monotonic()
            next_at = t0
            while time.monotonic() - t0 < seconds:
                holders = keepalived_holders(dep, hosts)
                n += 1
                if len(holders) > 1:
                    dual.append({"t_mono": time.clock_gettime(time.CLOCK_MONOTONIC), "holders": holders})
                none += not holders
                next_at += SAMPLE_S
                time.sleep(max(0.0, next_at - time.monotonic()))
            wall = time.monotonic() - t0
        finally:
            hog.stop()
        after = rule_counters(dep, hosts)
        masters = {}
        for h in hosts:
            with open(logs[h], "rb") as f:
                f.seek(offsets[h])
                masters[h] = keepalived_masters(f.read())
        diff = {h: {k: after[h].get(k, 0) - before[h].get(k, 0) for k in after[h]} for h in hosts}
        vrrp = loss_figures({h: {k: v for k, v in c.items() if k.endswith("-vrrp")} for h, c in diff.items()})
        return {"advert_ms": advert_ms, "rt_priority": rt_priority, "ok": not any(masters.values()) and not dual,
                "false_failovers": sum(masters.values()), "masters_by_host": masters,
                "dual_holder_samples": len(dual), "dual_holders": dual[:100], "no_holder_samples": none,
                "samples": n, "soak_s": round(wall, 2), "adverts": vrrp.get("vrrp")}
    finally:
        stop_keepalived_pair(dep, hosts)
