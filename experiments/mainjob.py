"""``eucalab run`` / ``make run``: the main job on a deployment (the default one unless told).

Until the failover experiment exists this brings the deployment up, starts every
component that exists, checks that the tiers reach each other over TCP where the
seed says they must (and that users cannot reach a private NC), writes the result
into the run directory, and tears everything down.
"""

from __future__ import annotations

import json
import sys
import time

from topologies.spec import load_spec

from .deployment import Deployment
from .rundir import write_json

CHECK_PORT = 9999


def connectivity_matrix(plan) -> list[tuple[str, str, str, bool]]:
    """(source host, target host, target address, expected reachable) pairs from the seed."""
    checks = []
    clc = plan.host_for("clc").name
    walrus = plan.pair("walrus")
    for pair in plan.pairs:
        if pair.kind in ("cc", "sc"):
            checks.append((clc, pair.primary, pair.vip, True))
    for k in range(1, plan.spec.clusters + 1):
        cc = plan.pair("cc", k)
        sc = plan.pair("sc", k)
        ncs = [h for h in plan.hosts_by_role("nc") if h.cluster == k]
        for nc in ncs[:2]:
            checks.append((cc.primary, nc.name, nc.main_ip, True))
            checks.append((sc.primary, nc.name, nc.main_ip, True))
            checks.append((nc.name, walrus.primary, walrus.vip, True))
        if plan.spec.mode.private_cluster_network and ncs:
            checks.append(("user", ncs[0].name, ncs[0].main_ip, False))
    return checks


def run_connectivity(dep: Deployment) -> list[dict]:
    servers = {target for _, target, _, _ in connectivity_matrix(dep.plan)}
    for host in sorted(servers):
        dep.start("tcpcheck", host, label="tcpcheck", wait=False,
                  argv=[sys.executable, "-m", "http.server", "--bind", "0.0.0.0", str(CHECK_PORT)])
    deadline = time.monotonic() + 10
    for host in sorted(servers):
        while f":{CHECK_PORT:04X} " not in dep[host].cmd("cat /proc/net/tcp"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"check server on {host} did not start")
            time.sleep(0.05)
    results = []
    for src, target, ip, expected in connectivity_matrix(dep.plan):
        code = dep[src].cmd(f"curl -s -o /dev/null -m 2 -w '%{{http_code}}' http://{ip}:{CHECK_PORT}/").strip()
        reached = code == "200"
        results.append({"source": src, "target": target, "address": ip, "expected": expected,
                        "reached": reached, "ok": reached == expected})
    for host in sorted(servers):
        dep.stop(host, "tcpcheck")
    return results


def main_job(args) -> int:
    spec = load_spec(getattr(args, "spec", None))
    with Deployment(spec) as dep:
        print(f"eucalab: {spec.name} deployment up in {dep.timings['up']:.2f} s "
              f"({len(dep.plan.hosts)} hosts); run directory {dep.run_dir}")
        started = dep.start_services()
        print(f"eucalab: services running: {', '.join(sorted({p.label for p in started})) or 'none yet'}")
        results = run_connectivity(dep)
        write_json(dep.run_dir / "connectivity.json", results)
        bad = [r for r in results if not r["ok"]]
        for r in results:
            mark = "ok  " if r["ok"] else "FAIL"
            want = "reachable" if r["expected"] else "unreachable"
            print(f"  {mark} {r['source']:>8} -> {r['target']:<8} {r['address']:<12} TCP {want}")
        summary = {"spec": spec.name, "up_s": dep.timings["up"], "checks": len(results), "failed": len(bad)}
        write_json(dep.run_dir / "summary.json", summary)
    print(f"eucalab: deployment down in {dep.timings['down']:.2f} s; "
          f"{len(results) - len(bad)}/{len(results)} checks passed; results in {dep.run_dir}")
    print(json.dumps(summary))
    return 1 if bad else 0
