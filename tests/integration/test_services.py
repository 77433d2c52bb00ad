"""Eucalyptus's service API on the real deployment: DescribeServices and ModifyService
through the CLC's VIP from the user host, a planned switchover under a user's requests every
10 ms (not one fails), maintenance (a STOPPED member takes nothing over, even when the
ENABLED one crashes), and `eucalab services` on the live run."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
from urllib.parse import urlsplit

from experiments.failover.runner import Prober
from experiments.testbed.deployment import wait_until
from experiments.testbed.services import ServiceAPI, pairs
from topologies.network import namespace


def redundancy(rows) -> dict:
    return {(p["type"], p["partition"]): p["redundant"] for p in pairs(rows)}


def states(rows) -> dict:
    return {r["name"]: r["state"] for r in rows}


def test_service_api_switchover_and_maintenance(deployment, s3):
    dep = deployment
    api = ServiceAPI(dep.run_dir, dep.net["user"].pid)
    rows = api.describe()
    assert {r["name"] for r in rows} == {m for p in dep.plan.pairs for m in p.members}
    assert all(redundancy(rows).values()), rows
    walrus = dep.plan.pair("walrus")
    first, second = walrus.members
    assert states(rows)[first] == "ENABLED" and states(rows)[second] == "DISABLED"

    # A planned switchover while a user reads an object every 10 ms through the VIP.
    s3.create_bucket(Bucket="switchover")
    s3.put_object(Bucket="switchover", Key="object", Body=b"still here\n")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "switchover", "Key": "object"}, ExpiresIn=600)
    probe = Prober(dep, url, {}, 0.01, 0.3, ("equals", b"still here\n")).start()
    try:
        assert wait_until(lambda: sum(p.ok for p in probe.snapshot()) >= 20, 10)
        rows = api.modify(first, "DISABLE")
        assert states(rows)[first] == "DISABLED" and states(rows)[second] == "ENABLED"
        time.sleep(0.5)  # requests after the switchover too
    finally:
        probes = probe.stop()
    assert len(probes) > 50 and [p for p in probes if not p.ok] == []

    # Maintenance: the DISABLED member STOPPED; the pair is not redundant, and when the
    # ENABLED member crashes nothing takes over.
    rows = api.modify(first, "STOP")
    assert states(rows)[first] == "STOPPED" and not redundancy(rows)[("walrus", "walrus")]
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "services", str(dep.run_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"{first}\s.*STOPPED.*NO", out.stdout), out.stdout
    dep.kill(second)
    window = dep.spec.heartbeat.interval_ms * dep.spec.heartbeat.misses / 1000
    time.sleep(3 * window)
    assert dep.member_state(first) == "STOPPED"  # no failover towards a member stopped on purpose

    # Back: START makes it a standby again, which takes the pair (its peer is dead and it is
    # not behind); the crashed member restarts and rejoins as the standby.
    api.modify(first, "START")
    assert wait_until(lambda: dep.member_state(first) == "ENABLED", 10)
    dep.process(second).popen.wait(timeout=10)
    dep.start("walrus", second, wait=False)
    assert wait_until(lambda: dep.redundant(walrus), 30)
    assert s3.get_object(Bucket="switchover", Key="object")["Body"].read() == b"still here\n"
    assert all(redundancy(api.describe()).values())


def test_planned_switchovers_lose_no_request(deployment, s3, ec2):
    """A few switchovers each way of the CLC and Walrus under a user's requests every 5 ms
    (a new connection each): none fails. And a connection the old primary accepted, used
    again after the switchover (an HTTP client's kept-alive connection), is still answered:
    the gateway now sends its segments to the new holder, which passes them on to the old
    one instead of resetting them (docs/ha.md, "Planned switchover")."""
    dep = deployment
    api = ServiceAPI(dep.run_dir, dep.net["user"].pid)
    s3.create_bucket(Bucket="switchovers")
    s3.put_object(Bucket="switchovers", Key="object", Body=b"still here\n")
    walrus_url = s3.generate_presigned_url("get_object", Params={"Bucket": "switchovers", "Key": "object"},
                                           ExpiresIn=600)
    clc_url = ec2.generate_presigned_url("describe_availability_zones", ExpiresIn=600)
    targets = {"walrus": (walrus_url, ("equals", b"still here\n")),
               "clc": (clc_url, ("contains", b"DescribeAvailabilityZonesResponse"))}
    failed, kept_alive = {}, {}
    for kind, (url, expect) in targets.items():
        pair = dep.plan.pair(kind)
        u = urlsplit(url)
        path = f"{u.path}?{u.query}"
        probe = Prober(dep, url, {}, 0.005, 0.3, expect).start()
        try:
            assert wait_until(lambda: sum(p.ok for p in probe.snapshot()) >= 20, 10)
            for n in range(4):
                assert wait_until(lambda: dep.redundant(pair), 20)
                primary = next(m for m in pair.members if dep.member_state(m) == "ENABLED")
                with namespace(dep.net["user"].pid):
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                    conn.connect()
                    conn.auto_open = 0  # never a new connection (from outside the user host)
                    conn.request("GET", path)  # accepted by the primary, kept open
                    first = conn.getresponse()
                    first.read()
                assert first.status == 200
                rows = api.modify(primary, "DISABLE")
                assert states(rows)[primary] == "DISABLED"
                try:
                    conn.request("GET", path)  # its segments now reach the new primary first
                    second = conn.getresponse()
                    kept_alive[(kind, n)] = (second.status, expect[1] in second.read())
                except (OSError, http.client.HTTPException) as exc:
                    kept_alive[(kind, n)] = repr(exc)
                conn.close()
                time.sleep(0.3)
        finally:
            probes = probe.stop()
        assert len(probes) > 200
        failed[kind] = [(p.sent, p.done) for p in probes if not p.ok]
    assert (kept_alive, failed) == ({k: (200, True) for k in kept_alive}, {"walrus": [], "clc": []})
