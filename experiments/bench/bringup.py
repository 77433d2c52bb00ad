"""Bring-up benchmark: eucalab's network builder beside plain Mininet, same hosts, switches, links.

Each side runs in its own child process so that its memory is its own:
peak memory = the child's peak RSS plus the RSS of every process it started
(host shells), read when the network is up.

    eucalab bench bringup --sizes 1x4,2x8,4x16
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import psutil

from topologies.plan import build_plan
from topologies.spec import DeploymentSpec


def _spec(clusters: int, ncs: int, slots: int = 2) -> DeploymentSpec:
    return DeploymentSpec(name=f"bench-{clusters}x{ncs}", clusters=clusters, ncs_per_cluster=ncs,
                          vm_slots_per_nc=slots)


def _rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def _child_eucalab(clusters: int, ncs: int, datapath: str, slots: int = 2) -> dict:
    from topologies.network import EucaNetwork, namespace_pids

    plan = build_plan(_spec(clusters, ncs, slots))
    t0 = time.monotonic()
    network = EucaNetwork(plan, datapath=datapath)
    network.build()
    up = time.monotonic() - t0
    started = network.created.shell_pids + namespace_pids(network.created.netns)
    rss = _rss_of(sorted(set(started)))
    t0 = time.monotonic()
    network.stop()
    down = time.monotonic() - t0
    return {"up": up, "down": down, "children_rss": rss, "hosts": len(plan.hosts),
            "switches": len(plan.switches), "links": len(plan.links)}


def _child_mininet(clusters: int, ncs: int, datapath: str, slots: int = 2) -> dict:
    from functools import partial

    from mininet.net import Mininet
    from mininet.node import OVSSwitch
    from mininet.topo import Topo

    plan = build_plan(_spec(clusters, ncs, slots))
    topo = Topo()
    for name in plan.hosts:
        topo.addHost(name)
    for name, sw in plan.switches.items():
        topo.addSwitch(name, dpid=sw.dpid)
    for link in plan.links:
        topo.addLink(link.a, link.b)
    switch = partial(OVSSwitch, datapath="user" if datapath == "user" else "kernel")
    t0 = time.monotonic()
    net = Mininet(topo=topo, switch=switch, controller=None)
    try:
        net.start()
        up = time.monotonic() - t0
        rss = _rss_of([n.pid for n in net.hosts + net.switches if n.pid])
    finally:
        t0 = time.monotonic()
        net.stop()
        down = time.monotonic() - t0
    return {"up": up, "down": down, "children_rss": rss, "hosts": len(net.hosts),
            "switches": len(net.switches), "links": len(net.links)}


def child_main(argv: list[str]) -> int:
    side, clusters, ncs, datapath = argv[0], int(argv[1]), int(argv[2]), argv[3]
    slots = int(argv[4]) if len(argv) > 4 else 2
    fn = _child_eucalab if side == "eucalab" else _child_mininet
    result = fn(clusters, ncs, datapath, slots)
    result["driver_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_mem"] = result["driver_peak_rss"] + result["children_rss"]
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _run_child(side: str, clusters: int, ncs: int, datapath: str, slots: int = 2) -> dict:
    """Build and stop one network in a child process (its memory its own); its figures."""
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.bringup", side, str(clusters), str(ncs), datapath,
                           str(slots)], capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{side} {clusters}x{ncs} failed (exit {proc.returncode}):\n"
                       f"{(proc.stderr or proc.stdout)[-2000:]}")


def bench_bringup(sizes: list[tuple[int, int]], repeat: int = 1, baseline: bool = True) -> int:
    """Print a table: eucalab and plain Mininet up/down time and peak memory per size."""
    from rich.console import Console
    from rich.table import Table

    from ..testbed import preflight

    if os.geteuid() != 0:
        raise SystemExit("eucalab bench: needs root")
    datapath = preflight.datapath()
    console = Console(width=max(150, Console().width))
    switch_desc = f"OVSSwitch(datapath={'user' if datapath == 'user' else 'kernel'})"
    console.print(f"[bold]Bring-up benchmark[/]: eucalab's builder vs plain Mininet "
                  f"(Mininet(topo, switch={switch_desc}, controller=None), default settings); "
                  f"{datapath} datapath, {psutil.cpu_count()} cores, best of {repeat}")
    table = Table()
    for col in ("size", "hosts", "switches", "links", "up s eucalab", "up s mininet", "up ratio",
                "down s eucalab", "down s mininet", "down ratio", "MiB eucalab", "MiB mininet"):
        table.add_column(col, justify="right")
    rows = []
    for clusters, ncs in sizes:
        euca = min((_run_child("eucalab", clusters, ncs, datapath) for _ in range(repeat)),
                   key=lambda r: r["up"] + r["down"])
        mn = (min((_run_child("mininet", clusters, ncs, datapath) for _ in range(repeat)),
                  key=lambda r: r["up"] + r["down"]) if baseline else None)
        rows.append({"size": f"{clusters}x{ncs}", "eucalab": euca, "mininet": mn})

        def f(v, digits=2):
            return "-" if v is None else f"{v:.{digits}f}"

        table.add_row(f"{clusters}x{ncs}", str(euca["hosts"]), str(euca["switches"]), str(euca["links"]),
                      f(euca["up"]), f(mn and mn["up"]), f(mn and euca["up"] / mn["up"]),
                      f(euca["down"]), f(mn and mn["down"]), f(mn and euca["down"] / mn["down"]),
                      f(euca["peak_mem"] / 2**20, 0), f(mn and mn["peak_mem"] / 2**20, 0))
        console.print(f"  {clusters}x{ncs} done", style="dim")
    console.print(table)
    console.print("peak memory = the driver's peak RSS + the RSS of every process the run started")
    print("BENCH " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
