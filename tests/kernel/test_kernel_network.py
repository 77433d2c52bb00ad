"""The Open vSwitch kernel datapath and netem, where the kernel has them.

One small deployment per spec (1 cluster, 1 NC, no HA, standalone switches: the SDN
controller's part is tests/kernel/test_kernel_isolation.py). Every link parameter is
checked on the wire, not only in ``tc qdisc show``: the round trip is at least what the
delays add up to, and the loss netem's own counters show lies within a binomial bound
of the configured rate, while pings lose at least that much.

Each direction of a link gets the link's parameters once (at its sending end), so a
packet between two hosts on one switch crosses two shaped queues each way: four
per round trip.
"""

from __future__ import annotations

import json
import statistics
import subprocess

from experiments.bench.sdn import start_listener, tcp_answer
from experiments.failover.faults import CATALOGUE, FaultContext
from experiments.testbed import preflight
from experiments.testbed.deployment import Deployment, wait_until
from experiments.testbed.linkcheck import binomial_interval, netem_counts, ping, round_trip_loss
from experiments.testbed.timescale import scaled
from topologies.spec import spec_from_dict

SMALL = {"clusters": 1, "ncs_per_cluster": 1, "vm_slots_per_nc": 1, "sdn": False,
         "ha": {"clc": False, "walrus": False, "cc": False, "sc": False}, "arbitrators": {"per_host": 0}}
CLC, WALRUS = "10.0.0.11", "10.0.0.21"


def small(name: str, **links) -> object:
    return spec_from_dict({**SMALL, "name": name, "links": links}, netem=True)


def test_check_reports_the_kernel_features_ready():
    findings = {f.name: f for f in preflight.run_checks()}
    assert findings["ovs datapath"].detail.startswith("kernel")
    assert findings["netem"].ok and findings["802.1Q"].ok
    assert not [f for f in preflight.problems(list(findings.values()))]


def test_auto_takes_the_kernel_datapath_and_leaves_tx_offload_on(tmp_path):
    with Deployment(small("k-datapath"), run_dir=tmp_path / "run") as dep:
        assert dep.network.datapath == "kernel"
        bridges = list(dep.plan.switches)
        types = {br: _sh(["ovs-vsctl", "get", "bridge", br, "datapath_type"]).strip() for br in bridges}
        assert set(types.values()) == {"system"}, types
        dpctl = _sh(["ovs-dpctl", "show"])
        assert "system@ovs-system" in dpctl
        ports = sum(int(_sh(["ovs-vsctl", "list-ports", br]).count("\n")) for br in bridges)
        assert preflight.count_datapath_ports(dpctl, "system@ovs-system") >= ports
        # The userspace datapath needs tx checksum offload off; the kernel one does not,
        # and the builder leaves it alone.
        intf = dep.plan.hosts["clc1"].interfaces[0].name
        assert "tx-checksumming: on" in dep["clc1"].cmd(f"ethtool -k {intf}")
        start_listener(dep, "walrus1", 8080, "tcp-walrus", reply="walrus")
        assert tcp_answer(dep, "clc1", WALRUS, 8080) == "walrus"
    # Teardown removed every bridge of the run from the kernel datapath too.
    left = _sh(["ovs-vsctl", "list-br"]).split()
    assert not set(bridges) & set(left), left


def test_delay_and_jitter_take_effect_on_the_wire(tmp_path):
    delay, jitter = 10.0, 4.0
    with Deployment(small("k-delay", delay_ms=delay, jitter_ms=jitter), run_dir=tmp_path / "run") as dep:
        intf = dep.plan.hosts["clc1"].interfaces[0].name
        assert f"delay {delay:g}ms  {jitter:g}ms" in dep["clc1"].cmd(f"tc qdisc show dev {intf}")
        result = ping(dep["clc1"], WALRUS, count=40, interval_s=0.05)
        assert result.received >= 38, result
        # Four shaped queues a round trip, each delay +- jitter (netem's jitter is uniform).
        assert min(result.rtts_ms) >= 4 * (delay - jitter), result.rtts_ms
        assert statistics.median(result.rtts_ms) >= 4 * delay - 2 * jitter, result.rtts_ms
        assert statistics.pstdev(result.rtts_ms) > 1.0, "jitter left no spread"


def test_loss_on_one_network_only_within_a_binomial_bound(tmp_path):
    loss = 10.0
    spec = small("k-loss", by_network={"external": {"loss_pct": loss}})
    with Deployment(spec, run_dir=tmp_path / "run") as dep:
        ext_ip = dep.plan.hosts["ext"].interfaces[0].ip.split("/")[0]
        # Neighbours first: netem drops ARP too, and an address the gateway failed to
        # resolve would cost it every echo request queued meanwhile.
        assert wait_until(lambda: ping(dep["clc1"], ext_ip, count=1, wait_s=1).received, 30)
        sent0, dropped0 = netem_counts(dep, "external")
        n = 300
        # As the arbitrators ping it (the site's firewall admits nothing from the user network
        # to the external site): clc1 -> gw -> swext -> ext crosses two external links,
        # four lossy queues a round trip.
        lossy = ping(dep["clc1"], ext_ip, count=n, interval_s=0.01, wait_s=1)
        sent, dropped = (a - b for a, b in zip(netem_counts(dep, "external"), (sent0, dropped0)))
        # netem is judged by its own counters. ping counts as lost whatever is not back in
        # time, for any reason: under emulation on a loaded machine a reply later than it
        # waits (two of its longest round trips after the last request), a packet lost in
        # the datapath. It once counted 230 of 300 lost against 65-142 allowed, the answered
        # ones all back within 21 ms, and passed alone.
        low, high = binomial_interval(sent + dropped, loss / 100)
        assert low <= dropped <= high and sent + dropped >= n, (sent, dropped, (low, high))
        # The pings crossed those queues: they lost at least what four lossy queues drop.
        least, _ = binomial_interval(n, round_trip_loss([loss] * 4))
        assert n - lossy.received >= least, (lossy.sent, lossy.received, least)
        clean = ping(dep["clc1"], WALRUS, count=100, interval_s=0.01, wait_s=1, deadline_s=scaled(10))
        assert clean.received == 100, "loss leaked onto the cloud network"


def test_bandwidth_and_delay_together(tmp_path):
    rate, delay = 8.0, 5.0
    with Deployment(small("k-htb-delay", bw_mbit=rate, delay_ms=delay), run_dir=tmp_path / "run") as dep:
        intf = dep.plan.hosts["clc1"].interfaces[0].name
        qdiscs = dep["clc1"].cmd(f"tc qdisc show dev {intf}")
        assert "qdisc htb 5: root" in qdiscs and "qdisc netem 10: parent 5:1" in qdiscs
        assert min(ping(dep["clc1"], WALRUS, count=10, interval_s=0.1).rtts_ms) >= 4 * delay
        # The delay fault adds to the link's own shaping, and restore puts exactly it back.
        fault = FaultContext(dep, None, "clc1", None, params={"delay_ms": 30, "network": "cloud"})
        CATALOGUE["delay"].inject(fault)
        faulty = dep["clc1"].cmd(f"tc qdisc show dev {intf}")
        assert "qdisc htb 5: root" in faulty and "qdisc netem 10: parent 5:1" in faulty, faulty
        assert f"delay {delay + 30:g}ms" in faulty, faulty
        assert min(ping(dep["clc1"], WALRUS, count=5, interval_s=0.1).rtts_ms) >= 4 * delay + 30
        fault.restore()
        assert dep["clc1"].cmd(f"tc qdisc show dev {intf}") == qdiscs
        server = dep.start("iperf", "walrus1", label="iperf", wait=False, argv=["iperf3", "-s", "-1"])
        assert wait_until(lambda: dep.listening("walrus1", 5201), timeout=5)
        out = dep["clc1"].cmd(f"iperf3 -c {WALRUS} -t 3 -J")
        got = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        assert 0.3 * rate < got <= rate * 1.05, f"{got:.2f} Mbit/s through a {rate:g} Mbit/s link"
        server.popen.wait(timeout=30)


def _sh(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
