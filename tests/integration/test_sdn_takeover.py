"""Takeover sdn on a real network: the controller steers a pair's VIP to the new primary.

A CLC and a Walrus pair with ``ha.takeover: sdn`` (the deployment starts the SDN
controller by itself). kill -9 of the CLC primary: the VIP answers from the peer, and
the gateway's ARP entry for the VIP holds the same virtual MAC before and after (no
ARP had to change; nothing was announced). A redirect carrying the dead primary's
epoch is refused and moves nothing.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from components.common.events import read_events
from controllers.vips import virtual_mac
from experiments.testbed.deployment import Deployment, wait_until
from tests.support.probes import HttpProbe as Probe
from topologies.spec import DeploymentSpec, HASpec

from .test_ha import enabled_members, heal, taken_over


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    spec = DeploymentSpec(name="test-takeover-sdn", clusters=1, ncs_per_cluster=1, vm_slots_per_nc=1,
                          ha=HASpec(takeover="sdn"))
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("takeover-sdn")) as d:
        assert d.sdn and d.controller is not None  # started for the spec, not asked for
        d.start_services(kinds=("clc", "walrus"))
        for pair in ("clc", "walrus"):
            heal(d, pair)
        yield d


def gateway_mac(dep, ip: str) -> str | None:
    m = re.search(r"lladdr (\S+)", dep["gw"].cmd(f"ip neigh show {ip}"))
    return m.group(1) if m else None


def events(dep, host: str) -> list[dict]:
    return read_events(dep.process(host).events_path)


def test_kill9_moves_the_vip_without_changing_any_arp_cache(dep):
    vip, url = "10.0.0.10", "http://10.0.0.10:8773/health"
    primary = heal(dep, "clc")
    peer = next(m for m in dep.plan.pair("clc").members if m != primary)
    old_epoch = [e for e in events(dep, primary) if e["event"] == "ha.promote"][-1]["epoch"]
    before = gateway_mac(dep, vip)
    assert before == virtual_mac(vip), dep["gw"].cmd(f"ip neigh show {vip}")
    with Probe(dep, url) as probe:
        t = time.monotonic()
        dep.kill(primary)
        assert wait_until(lambda: taken_over(dep, "clc", primary), 5)
        assert wait_until(lambda: probe.last_served_after(t), 3)
    outage = probe.outage_after(t)
    assert outage is not None and outage < 1.0, outage
    assert gateway_mac(dep, vip) == before  # the same MAC: no ARP change was needed
    promoted = [e for e in events(dep, peer) if e["event"] == "ha.promote"][-1]
    assert promoted["epoch"] > old_epoch
    acquired = [e for e in events(dep, peer) if e["event"] == "ha.vip_acquired" and e["t_mono"] >= t]
    assert acquired and all(e["redirected"] and "garp_sent" not in e for e in acquired)
    controller = read_events(dep.run_dir / "controller" / "events.jsonl")
    assert any(e["event"] == "vip.applied" and e["primary"] == peer and e["epoch"] == promoted["epoch"]
               for e in controller)

    # The dead primary's epoch cannot pull the VIP back.
    status, body = dep.control_request("PUT", "/vips/clc", {"pair": "clc", "epoch": old_epoch, "primary": primary})
    assert (status, body.get("current")) == (409, promoted["epoch"])
    assert dep.control_request("GET", "/vips")[1]["pairs"]["clc"]["primary"] == peer
    assert dep["user"].cmd(f"curl -s -m 1 -o /dev/null -w '%{{http_code}}' {url}").strip() == "200"

    # The old primary comes back DISABLED; the VIP stays where it is.
    dep.start("clc", primary)
    assert wait_until(lambda: dep.member_state(primary) == "DISABLED", 5)
    assert enabled_members(dep, "clc") == [peer] and gateway_mac(dep, vip) == before


def test_a_resumed_primary_does_not_pull_the_vip_back(dep):
    vip, url = "10.0.0.20", "http://10.0.0.20:8773/health"
    primary = heal(dep, "walrus")
    peer = next(m for m in dep.plan.pair("walrus").members if m != primary)
    before = gateway_mac(dep, vip)
    t = time.monotonic()
    dep.kill(primary, sig=signal.SIGSTOP)
    try:
        assert wait_until(lambda: dep.member_state(peer) == "ENABLED", 5)
    finally:
        dep.kill(primary, sig=signal.SIGCONT)
    assert wait_until(lambda: dep.member_state(primary) == "DISABLED", 5)
    assert dep.control_request("GET", "/vips")[1]["pairs"]["walrus"]["primary"] == peer
    assert not any(e["event"] == "vip.applied" and e["primary"] == primary and e["t_mono"] > t
                   for e in read_events(dep.run_dir / "controller" / "events.jsonl"))
    assert wait_until(lambda: dep["user"].cmd(
        f"curl -s -m 0.5 -o /dev/null -w '%{{http_code}}' {url}").strip() == "200", 3)
    assert gateway_mac(dep, vip) == before == virtual_mac(vip)
