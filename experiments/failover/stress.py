"""The stresses a soak applies to a running deployment, and what they cost: heartbeat (or
VRRP advert) loss by iptables rules with counters, one arbitrator of each ENABLED member
stopped, busy-looping processes pinned to cores, and the machine's load and CPU use."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from ..testbed.rundir import registry_entries

RULE_TAG = "eucalab-soak"


def loss_rules(interface: str, probability: float, port: int | None, path: str,
               protocol: str = "udp") -> list[list[str]]:
    """iptables arguments, in order, that count and randomly drop heartbeats arriving on ``interface``
    (``protocol`` to ``port``; keepalived's adverts are protocol ``vrrp`` with no port).

    The first rule has no target: its counter is every heartbeat seen; the second's is
    every heartbeat dropped.
    """
    match = ["-i", interface, "-p", protocol, *(["--dport", str(port)] if port is not None else [])]
    return [
        ["-A", "INPUT", *match, "-m", "comment", "--comment", f"{RULE_TAG}-seen-{path}"],
        ["-A", "INPUT", *match, "-m", "comment", "--comment", f"{RULE_TAG}-drop-{path}",
         "-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}", "-j", "DROP"],
    ]


_COUNTER_LINE = re.compile(r"^\[(\d+):(\d+)\] .*--comment \"?(" + RULE_TAG + r"-[\w-]+)\"?")


def parse_counters(iptables_save: str) -> dict[str, int]:
    """Packets counted by each soak rule in ``iptables-save -c`` output: {comment: packets}."""
    out = {}
    for line in iptables_save.splitlines():
        m = _COUNTER_LINE.match(line.strip())
        if m:
            out[m.group(3)] = out.get(m.group(3), 0) + int(m.group(1))
    return out


def loss_figures(counters: dict[str, dict[str, int]]) -> dict:
    """Per path: heartbeats seen and dropped over every host, and the fraction dropped."""
    paths: dict[str, dict[str, int]] = {}
    for per_host in counters.values():
        for comment, packets in per_host.items():
            kind, path = comment[len(RULE_TAG) + 1:].split("-", 1)
            paths.setdefault(path, {"seen": 0, "dropped": 0})[{"seen": "seen", "drop": "dropped"}[kind]] += packets
    for p in paths.values():
        p["drop_fraction"] = p["dropped"] / p["seen"] if p["seen"] else None
    return paths


# -- stresses --------------------------------------------------------------------------------------


class CpuHog:
    """Processes that busy-loop, one pinned to each of ``cores``; ended by PID."""

    # The hog dies with the bench even if the bench is SIGKILLed (PR_SET_PDEATHSIG = 1).
    _LOOP = ("import ctypes, os, signal, sys\n"
             "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
             "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"
             "while True: pass\n")

    def __init__(self, cores: list[int]):
        self.cores = cores
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "CpuHog":
        for core in self.cores:
            p = subprocess.Popen([sys.executable, "-c", self._LOOP, str(os.getpid())], stdin=subprocess.DEVNULL)
            self.procs.append(p)
            os.sched_setaffinity(p.pid, {core})
        return self

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        self.procs = []


def pick_cores(n: int) -> list[int]:
    """The first ``n`` cores this process may run on."""
    available = sorted(os.sched_getaffinity(0))
    if n > len(available):
        raise SystemExit(f"eucalab bench soak: --hog-cores {n}, but only {len(available)} cores are available")
    return available[:n]


def steal_ms() -> list[float]:
    """Milliseconds of CPU each core has had stolen since boot: time the hypervisor ran
    something else while this machine's virtual CPU was ready (0 on bare metal)."""
    return [1000.0 * getattr(c, "steal", 0.0) for c in psutil.cpu_times(percpu=True)]


class LoadSampler:
    """The machine's load every ``period`` seconds, a measurement's context (others may
    share the machine): CPU per core, the load average, other runs on the machine, and
    the CPU the hypervisor stole from each core since the last sample (``steal_ms``)."""

    def __init__(self, path: Path, period: float = 1.0):
        self.samples: list[dict] = []
        self.period = period
        self._f = open(path, "a", buffering=1)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        psutil.cpu_percent(None, percpu=True)
        stolen = steal_ms()
        while not self._stop.wait(self.period):
            percpu = psutil.cpu_percent(None, percpu=True)
            now = steal_ms()
            s = {"t_mono": time.monotonic(), "cpu_percent": round(sum(percpu) / len(percpu), 1),
                 "percpu": percpu, "load1": os.getloadavg()[0],
                 # A core brought on or off line shifts /proc/stat's rows: no figure then.
                 "steal_ms": ([round(max(0.0, b - a), 1) for a, b in zip(stolen, now)]
                              if len(now) == len(stolen) else None),
                 # Other deployments on the machine run their HA members at the same realtime priority.
                 "other_runs": max(0, len(registry_entries()) - 1)}
            stolen = now
            self.samples.append(s)
            self._f.write(json.dumps(s) + "\n")

    def start(self) -> "LoadSampler":
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=3)
        self._f.close()



def stop_arbitrators(dep, pairs: dict[str, list[str]]) -> list[dict]:
    """Stop the first arbitrator of every pair's ENABLED member for the whole soak.

    Both maintenance switches are used: the member's HA API, and the maintenance file
    ``<data_dir>/arbitrators/<name>.stopped`` written first, because each arbitration
    round re-reads the file and would start an arbitrator stopped through the API alone
    again within a period.
    """
    stopped = []
    for name, members in pairs.items():
        host = next(m for m in members if dep.member_state(m) == "ENABLED")
        arb = next(a.name for a in dep.plan.arbitrators if a.host == host)
        cfg = dep.process(host).config
        flag = Path(cfg["data_dir"]) / "arbitrators" / f"{arb}.stopped"
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
        port = cfg["port"]
        ip = dep.plan.hosts[host].ip_on("cloud")
        out = dep[host].cmd(f"curl -s -m 5 -X POST -H 'X-Eucalab-Internal-Token: {dep.internal_token}' "
                            f"http://{ip}:{port}/ha/arbitrators/{arb}/stop")
        if '"stopped": true' not in out:
            raise RuntimeError(f"{host}: stopping arbitrator {arb} failed: {out.strip()!r}")
        dep.wait_event(dep.process(host), "arbitrator.advisory", timeout=10)
        stopped.append({"pair": name, "host": host, "arbitrator": arb, "file": str(flag)})
    return stopped


def add_loss(dep, pairs: dict[str, list[str]], loss_pct: float, paths: str) -> list[dict]:
    """The loss rules on every HA host; returns what was installed where."""
    installed = []
    for name, members in pairs.items():
        pair = next(p for p in dep.plan.pairs if p.name == name)
        for host in members:
            ph = dep.plan.hosts[host]
            port = dep.process(host).config["ha"]["port"]
            intfs = {"hb": ph.intf(pair.heartbeat_network).name}
            if paths == "all":
                intfs["cloud"] = ph.intf("cloud").name
            for path, intf in intfs.items():
                for rule in loss_rules(intf, loss_pct / 100, port, path):
                    out = dep[host].cmd("iptables -w " + " ".join(rule) + " 2>&1; echo rc=$?")
                    if not out.strip().endswith("rc=0"):
                        raise RuntimeError(f"{host}: iptables {' '.join(rule)}: {out.strip()}")
                installed.append({"host": host, "path": path, "interface": intf, "port": port})
    return installed


def rule_counters(dep, hosts: list[str]) -> dict[str, dict[str, int]]:
    return {h: parse_counters(dep[h].cmd("iptables-save -c -t filter")) for h in hosts}


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def busy_seconds(t) -> float:
    """Busy CPU seconds of the whole machine in a psutil.cpu_times() record."""
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def ovs_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("ovs-vswitchd", "ovsdb-server")]
