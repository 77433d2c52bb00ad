"""SDN benchmark: flow setup time, routed throughput through the CC, flow-table size.

    eucalab bench sdn [--setups 40] [--seconds 5] [--rounds 3]   (or python -m experiments.bench.sdn)

Prints figures (it is not a timed test):

* flow setup: an instance's intent pushed (PUT to control.sock) -> acknowledged with
  its flows in the switches, and -> its first TCP handshake with a peer of its group;
  p50/p99 over ``--setups`` new instances (target p99 <= 50 ms);
* routed throughput: iperf3 between two groups through the primary CC (VLAN to CC,
  Linux forwarding with the FORWARD rules, back into the other VLAN) against two
  instances of one group (direct L2 path), links unshaped (target ratio >= 0.8);
* flow-table size: flows over all switches against instances and rules (from the
  pure flow computation, and checked against one switch's real table).

The helpers above ``run`` (intent client, booting an instance into a VM slot,
applying the CC router) are shared with tests/integration/test_sdn_*.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import socket
import statistics
import subprocess
import sys
import time

from components.cc.router import RouterHost, render_router
from components.common import control
from components.common import vlan as vlans
from topologies.spec import DeploymentSpec, HASpec, NetworkMode

from ..testbed.deployment import Deployment, wait_until
from ..testbed.timescale import scaled

# -- the intent API from the driver ---------------------------------------------------------


def intent_request(dep: Deployment, method: str, path: str, body=None) -> tuple[int, dict]:
    """One HTTP request to the controller's intent API over ``control.sock``."""
    return control.call_blocking(dep.control_socket, method, path, body, timeout=10.0)


def put_intent(dep: Deployment, intent: dict) -> tuple[int, dict]:
    return intent_request(dep, "PUT", f"/intent/clusters/{intent['cluster']}", intent)


# -- instances and the CC router -----------------------------------------------------------------


def slot_interface(dep: Deployment, slot: str) -> str:
    return dep.plan.hosts[slot].interfaces[0].name


def run_ip(dep: Deployment, host: str, lines: list[str]) -> None:
    """``ip`` commands (``ip -batch`` lines) on ``host``, in order, stopping at the first failure.
    One shell line: Mininet's ``cmd`` returns at the shell's next prompt."""
    out = dep[host].cmd(" && ".join(f"ip {line}" for line in lines) + "; echo rc=$?")
    if "rc=0" not in out:
        raise RuntimeError(f"ip on {host} failed: {out}")


def boot(dep: Deployment, inst: dict, group: dict) -> None:
    """What the NC does when an instance boots: its MAC and IP on the slot, routes via the gateway;
    with ``vlan_tagging: host`` first the slot's port into the bridge of the group's VLAN on the NC."""
    port = dep.plan.nc_port(inst["slot"])
    if port is not None:
        nc = dep.plan.hosts[inst["nc"]]
        existing = vlans.link_names(dep[nc.name].cmd("ip -o link show"))
        lines = vlans.attach_commands(nc.intf(f"priv{nc.cluster}").name, group["vlan"], port, existing)
        run_ip(dep, nc.name, lines)
    intf = slot_interface(dep, inst["slot"])
    prefix = group["subnet"].split("/")[1]
    dep[inst["slot"]].cmd(
        f"ip link set dev {intf} address {inst['mac']}; ip addr flush dev {intf}; "
        f"ip addr add {inst['ip']}/{prefix} dev {intf}; ip link set dev {intf} up; "
        f"ip route replace default via {group['gateway']}; ip neigh flush dev {intf}")


def router_host(dep: Deployment, cc: str) -> RouterHost:
    ph = dep.plan.hosts[cc]
    clc = dep.plan.pair("clc")
    return RouterHost(cluster=ph.cluster, private_interface=ph.intf(f"priv{ph.cluster}").name,
                      public_interface=ph.intf("cloud").name, clc_vip=clc.vip,
                      vlan_tagging=dep.spec.vlan_tagging)


def apply_router(dep: Deployment, intent: dict) -> None:
    """Make the intent's primary CC the router and every other CC of the cluster nothing.

    The secondary is withdrawn first, so that at no moment do both hold the gateways.
    """
    members = dep.plan.pair("cc", intent["cluster"]).members
    order = sorted(members, key=lambda m: m == intent["primary_cc"])
    for cc in order:
        cfg = render_router(intent, router_host(dep, cc))
        path = dep.run_dir / f"router-{cc}.json"
        path.write_text(cfg.to_json())
        role = "--primary" if cc == intent["primary_cc"] else "--secondary"
        out = dep[cc].cmd(f"{sys.executable} -m components.cc.router --apply {path} {role}; echo rc=$?")
        if "rc=0" not in out:
            raise RuntimeError(f"router on {cc} failed: {out}")


def start_listener(dep: Deployment, host: str, port: int, label: str, reply: str = "ok",
                   after_request: bool = False) -> None:
    """A TCP responder on ``host`` answering each connection with ``reply`` (socat; $SOCAT_PEERADDR works);
    ``after_request``: once the client sent a line or ended its input, not at once."""
    command = f"read request; echo {reply}" if after_request else f"echo {reply}"
    dep.start("socat", host, argv=["socat", f"TCP-LISTEN:{port},fork,reuseaddr", f"SYSTEM:{command}"],
              label=label, wait=False)
    wait_until(lambda: f":{port} " in dep[host].cmd(f"ss -ltn 'sport = :{port}'"), timeout=5)


def tcp_answer(dep: Deployment, host: str, ip: str, port: int, timeout: float = 1.0) -> str:
    """What a TCP connection from ``host`` to ip:port gets back ("" if it cannot connect).

    ``-t``: after its own end of input socat waits only 0.5 s by default for the answer,
    less than a responder's fork and exec can take under emulation."""
    timeout = scaled(timeout)
    return dep[host].cmd(f"socat -T{timeout} -t{timeout} - TCP:{ip}:{port},connect-timeout={timeout} </dev/null "
                         "2>/dev/null").strip()


def forwarded_packets(dep: Deployment, cc: str) -> int:
    """Packets the CC's FORWARD chain has counted so far (every rule's counter)."""
    out = dep[cc].cmd("nft list chain ip eucalab EUCA-FORWARD")
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


@contextlib.contextmanager
def capture(dep: Deployment, host: str, bpf: str, label: str, settle: float = 0.3, intf: str | None = None):
    """tcpdump on ``host``'s ``intf`` (its first interface by default) for the block;
    ``box["count"]`` = packets seen after it, ``box["lines"]`` their ``tcpdump -e`` lines."""
    path = dep.host_dir(host, label) / "capture.pcap"
    intf = intf or dep.plan.hosts[host].interfaces[0].name
    # --immediate-mode: without it libpcap hands packets over in blocks and a capture
    # stopped soon after its packets can miss them all (a denied pair would look isolated).
    argv = ["tcpdump", "-i", intf, "-n", "-U", "--immediate-mode", "-Z", "root", "-w", str(path), bpf]
    dep.start("tcpdump", host, argv=argv, label=label, wait=False)
    if not wait_until(lambda: path.exists() and path.stat().st_size >= 24, timeout=5):
        raise RuntimeError(f"tcpdump on {host} did not start")
    box: dict = {}
    try:
        yield box
        time.sleep(settle)  # frames still on their way through the switches
    finally:
        dep.stop(host, label)
    out = subprocess.run(["tcpdump", "-r", str(path), "-n", "-e"], capture_output=True, text=True).stdout
    box["lines"] = out.splitlines()
    box["count"] = len(box["lines"])


def send_frames(dep: Deployment, host: str, frames: list[bytes], repeat: int = 3) -> None:
    """Put raw Ethernet frames on ``host``'s first interface (as root inside the VM would)."""
    intf = dep.plan.hosts[host].interfaces[0].name
    with dep.in_host(host):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((intf, 0))
            for _ in range(repeat):
                for frame in frames:
                    sock.send(frame)
                time.sleep(0.02)


# -- scenario ---------------------------------------------------------------------------------------


def sdn_spec(mode: NetworkMode = NetworkMode.MANAGED, name: str = "sdn", ncs: int = 2, slots: int = 2,
             ha_cc: bool = True, vlan_tagging: str = "switch") -> DeploymentSpec:
    """One cluster, HA CC pair, no other HA (the SDN tests need no CLC/Walrus pairs).
    ``vlan_tagging`` host: the hosts tag, the switches are standalone (sdn false)."""
    spec = DeploymentSpec(name=name, clusters=1, ncs_per_cluster=ncs, vm_slots_per_nc=slots, mode=mode,
                          ha=HASpec(clc=False, walrus=False, cc=ha_cc, sc=False), vlan_tagging=vlan_tagging,
                          sdn=vlan_tagging != "host")
    spec.arbitrators.per_host = 0
    return spec


def group(gid: str, n: int, mode: NetworkMode, rules: list[dict], cluster: int = 1, prefix: int = 28) -> dict:
    """Security group number ``n``: subnet n of the cluster's VM space, VLAN 10+n (MANAGED)."""
    size = 2 ** (32 - prefix)
    base = 16 * 256 + n * size
    net = f"10.{100 + cluster}.{base // 256}.{base % 256}"
    gw = f"10.{100 + cluster}.{(base + 1) // 256}.{(base + 1) % 256}"
    return {"id": gid, "name": gid[3:], "account": "123456789012",
            "vlan": 10 + n if mode is NetworkMode.MANAGED else None,
            "subnet": f"{net}/{prefix}", "gateway": gw, "rules": rules}


def instance(iid: str, g: dict, index: int, slot: str, public_ip: str | None = None) -> dict:
    """The index-th instance of a group (address .index+1 of its subnet, Eucalyptus-style MAC)."""
    import ipaddress

    ip = ipaddress.ip_network(g["subnet"])[index + 1]
    mac = "d0:0d:" + ":".join(f"{b:02x}" for b in ip.packed)
    return {"id": iid, "mac": mac, "ip": str(ip), "nc": slot.rsplit("v", 1)[0], "slot": slot,
            "group": g["id"], "public_ip": public_ip}


# -- the benchmark ----------------------------------------------------------------------------------


def _iperf(dep: Deployment, client: str, server_ip: str, port: int, seconds: float) -> float:
    out = dep[client].cmd(f"iperf3 -c {server_ip} -p {port} -t {seconds} -J 2>/dev/null")
    try:
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    except (ValueError, KeyError):
        raise RuntimeError(f"iperf3 from {client} to {server_ip}:{port} failed: {out[-500:]}") from None


def _first_answer(dep: Deployment, host: str, ip: str, port: int, timeout: float = 5.0) -> bool:
    """Connect from ``host`` until a TCP handshake completes (traffic flows both ways).

    In-process, so neither a client's nor the responder's process start is measured.
    """
    deadline = time.monotonic() + timeout
    with dep.in_host(host):
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((ip, port), timeout=0.05):
                    return True
            except OSError:
                time.sleep(0.001)
    return False


def run(setups: int = 40, seconds: float = 5.0, rounds: int = 3) -> int:
    if not 1 <= setups <= 240:
        raise SystemExit("--setups: 1..240 (each setup uses a fresh address of a /24)")
    mode = NetworkMode.MANAGED
    spec = sdn_spec(mode, name="bench-sdn", ncs=2, slots=2)
    with Deployment(spec, sdn=True) as dep:
        # /24 groups: every setup round gets an address (and MAC) never used before.
        ga = group("sg-a", 0, mode, [{"protocol": "tcp", "from_port": 0, "to_port": 65535,
                                      "source_group": "sg-b"}], prefix=24)
        gb = group("sg-b", 1, mode, [{"protocol": "tcp", "from_port": 0, "to_port": 65535,
                                      "source_group": "sg-a"}], prefix=24)
        a1 = instance("i-a1", ga, 1, "c1n1v1")
        a2 = instance("i-a2", ga, 2, "c1n2v1")
        b1 = instance("i-b1", gb, 1, "c1n2v2")
        intent = {"cluster": 1, "epoch": 1, "mode": mode.value, "primary_cc": "c1cc1", "groups": [ga, gb],
                  "instances": [a1, a2, b1]}
        for inst, g in ((a1, ga), (a2, ga), (b1, gb)):
            boot(dep, inst, g)
        status, answer = put_intent(dep, intent)
        assert status == 200, answer
        apply_router(dep, intent)
        for host in ("c1n2v1", "c1n2v2"):
            dep.start("iperf3", host, argv=["iperf3", "-s", "-p", "5201"], label="iperf3", wait=False)
        start_listener(dep, "c1n2v1", 7000, "echo")
        time.sleep(0.3)
        # Alternated, medians: the userspace datapath is CPU-bound and the host is shared.
        direct_runs, routed_runs = [], []
        for _ in range(rounds):
            direct_runs.append(_iperf(dep, "c1n1v1", a2["ip"], 5201, seconds))
            routed_runs.append(_iperf(dep, "c1n1v1", b1["ip"], 5201, seconds))
        direct, routed = statistics.median(direct_runs), statistics.median(routed_runs)

        # Flow setup: a fresh instance in slot c1n1v2, pushed, then connect to a2.
        setup_ms, put_ms = [], []
        intf = slot_interface(dep, "c1n1v2")
        for n in range(setups):
            new = instance(f"i-n{n}", ga, 10 + n, "c1n1v2")
            new["mac"] = f"d0:0d:99:00:{n // 256:02x}:{n % 256:02x}"
            boot(dep, new, ga)
            cur = copy.deepcopy(intent)
            cur["epoch"] = intent["epoch"]
            cur["instances"].append(new)
            t0 = time.monotonic()
            status, answer = put_intent(dep, cur)
            put_ms.append((time.monotonic() - t0) * 1000)
            if not _first_answer(dep, "c1n1v2", a2["ip"], 7000):
                raise RuntimeError(f"instance {new['id']} never reached its peer")
            setup_ms.append((time.monotonic() - t0) * 1000)
            assert status == 200 and answer["installed"], answer
            status, _ = put_intent(dep, intent)  # the instance goes again
            dep["c1n1v2"].cmd(f"ip addr flush dev {intf}")

        # Flow-table size against instances and rules (pure computation), and one real table.
        from controllers.flows import compute_flows
        from controllers.topology import Topology

        topo = Topology.load(dep.run_dir / "topology.json")
        slots = [h.name for h in dep.plan.hosts_by_role("slot")]
        sizes = []
        for n_inst in range(0, len(slots) + 1):
            for n_rules in (0, 10):
                it = copy.deepcopy(intent)
                it["groups"][0]["rules"] = [{"protocol": "tcp", "from_port": p, "to_port": p, "cidr": "0.0.0.0/0"}
                                            for p in range(n_rules)]
                it["instances"] = [instance(f"i-s{j}", ga, j + 1, slots[j]) for j in range(n_inst)]
                sizes.append((n_inst, n_rules, sum(len(f) for f in compute_flows(topo, {1: it}).values())))
        datapath = dep.network.datapath
        br = dep.switch("br1n1").name
        real = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", br], capture_output=True,
                              text=True).stdout.count("cookie=")
        wanted = len(compute_flows(topo, {1: intent})[br])

    print(f"SDN benchmark (MANAGED, 1 cluster, 2 NCs x 2 slots, OVS {datapath} datapath)")
    for label, values in (("intent PUT -> acknowledged, flows in the switches", put_ms),
                          ("intent PUT -> first TCP handshake with a peer", setup_ms)):
        q = statistics.quantiles(values, n=100, method="inclusive")
        print(f"flow setup, {label} ({len(values)} instances): p50 {statistics.median(values):.1f} ms, "
              f"p99 {q[98]:.1f} ms, max {max(values):.1f} ms (target p99 <= 50 ms)")
    print(f"throughput, median of {rounds} alternated {seconds:g} s iperf3 runs: direct (same group, L2) "
          f"{direct:.0f} Mbit/s, routed through the CC {routed:.0f} Mbit/s, ratio {routed / direct:.2f} "
          f"(target >= 0.8); runs: direct {[round(x) for x in direct_runs]}, routed {[round(x) for x in routed_runs]}")
    print("flow-table size (all switches of the deployment):")
    print("  instances  rules  flows")
    for n_inst, n_rules, n in sizes:
        print(f"  {n_inst:9d}  {n_rules:5d}  {n:5d}")
    print(f"  br1n1 holds {real} flows, the computation wants {wanted}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.sdn", description=__doc__.splitlines()[0])
    parser.add_argument("--setups", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one iperf3 run")
    parser.add_argument("--rounds", type=int, default=3, help="iperf3 runs per path")
    args = parser.parse_args(argv)
    return run(args.setups, args.seconds, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
