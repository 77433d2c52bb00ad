"""Mininet Cluster Edition across two kernels: this machine and the kernel-lane VM.

The VM serves as a second server (experiments/testbed/vm_server.py ``serve``): one network card on a tap
device of this machine with a /30 of its own, sshd with this run's keys, Open vSwitch on
its kernel datapath. Mininet's cluster classes (topologies/cluster.py) build one network
over both: on this machine h1 and h3 and a VIP holder va, on the VM h2 and h4; h1, va and
h2 in VLAN 10, h3 and h4 in VLAN 20, tagged by Open vSwitch; one trunk between the two
switches, which is the tunnel between the servers.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from experiments.testbed import vm, vm_server
from experiments.testbed.timescale import scaled, wait_until
from topologies import cluster as cl
from topologies.placement import TUNNEL_MTU

# Under emulation the guest is about ten times slower than this machine.
SLOW = float(vm.TCG_TIME_SCALE)


def _qemus() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == vm.QEMU}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    before = _qemus()
    with vm_server.serve(tmp_path_factory.mktemp("vm-server"), say=lambda _: None) as srv:
        yield srv
    # Nothing left: qemu, its tap, this machine's bridge and tunnel end (the VM's went with it).
    assert _qemus() == before
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert srv.nic.tap not in links and "eucs1" not in links
    assert "eucs1" not in subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout


def _run_on(server):
    def run(where: str, line: str) -> subprocess.CompletedProcess:
        if where == "localhost":
            return subprocess.run(["bash", "-c", line], capture_output=True, text=True)
        return server.ssh(line)
    return run


@pytest.fixture(scope="module")
def net(server):
    cfg = str(server.ssh_config)
    kind = cl.tunnel_kind(["localhost", server.address], _run_on(server))
    link = type("RunTunnelLink", (cl.TunnelLink,), {"kind": kind})
    mn = cl.ClusterNet(servers=["localhost", server.address], ssh_config=cfg, link=link,
                       host=cl.ClusterHost, switch=cl.ClusterSwitch, controller=None, topo=None)
    try:
        here = mn.addSwitch("eucs1", ssh_config=cfg, datapath="user", failMode="standalone")
        there = mn.addSwitch("eucs2", server=server.address, ssh_config=cfg, failMode="standalone")
        hosts = {"h1": (here, 10, "10.77.0.1"), "h3": (here, 20, "10.77.0.3"), "va": (here, 10, "10.77.0.5"),
                 "h2": (there, 10, "10.77.0.2"), "h4": (there, 20, "10.77.0.4")}
        for name, (switch, _, ip) in hosts.items():
            params = {} if switch is here else {"server": server.address}
            mn.addLink(mn.addHost(name, ip=f"{ip}/24", ssh_config=cfg, **params), switch)
        trunk = mn.addLink(here, there)
        mn.start()
        for name, (switch, vlan, _) in hosts.items():
            port = mn[name].intfs[0].link.intf2.name
            switch.cmd(f"ovs-vsctl set port {port} tag={vlan}")
        yield mn, trunk, kind
    finally:
        mn.stop()


def _pings(src, dst_ip: str, timeout_s: float) -> bool:
    """Whether ``src`` gets an echo reply from ``dst_ip`` before ``timeout_s`` (learning
    switches on both sides may drop the first frames)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if " 0% packet loss" in src.cmd(f"ping -c 1 -W 2 {dst_ip}"):
            return True
    return False


def _capture(server, host, iface: str, bpf: str, seconds: float, count: int = 0) -> subprocess.Popen:
    """tcpdump started (listening) on ``iface`` in ``host``'s network namespace, on whichever
    server the host is (``host`` None: this machine's root namespace), for at most
    ``seconds`` (or ``count`` frames); its stdout lists the frames that matched ``bpf``.
    ``_stop_capture`` ends it sooner."""
    line = f"echo $$ >&2; exec timeout {seconds:.0f} tcpdump -l -nn -e {f'-c {count} ' if count else ''}-i {iface} {bpf}"
    ns = f"nsenter --net=/proc/{host.pid}/ns/net" if host is not None else ""
    if getattr(host, "isRemote", False):
        argv = server.ssh_command + [f"{ns} sh -c {shlex.quote(line)}"]
    else:
        argv = ns.split() + ["sh", "-c", line]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.capture_pid = int(proc.stderr.readline())  # tcpdump's timeout on its server (exec keeps the pid)
    proc.capture_server = server if getattr(host, "isRemote", False) else None
    said = ""
    while "listening on" not in said:  # tcpdump's first line may be its verbosity notice
        out = proc.stderr.readline()
        assert out, said
        said += out
    return proc


def _stop_capture(proc: subprocess.Popen) -> str:
    """End a capture where it runs and return what it saw. On the VM the local ssh shares
    the server's one connection, which keeps the output open as long as the capture runs
    there: stopping the local ssh would not end it."""
    if proc.capture_server is not None:
        proc.capture_server.ssh(f"kill {proc.capture_pid}")
    else:
        proc.terminate()
    return proc.communicate(timeout=scaled(30) * SLOW)[0]


def test_the_cross_server_link_is_a_tunnel_device_at_both_ends(server, net):
    mn, trunk, kind = net
    here = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", trunk.intf1.name],
                                     capture_output=True, text=True).stdout)[0]
    there = json.loads(server.ssh(f"ip -d -j link show {trunk.intf2.name}").stdout)[0]
    assert here["linkinfo"]["info_kind"] == there["linkinfo"]["info_kind"] == kind
    assert here["mtu"] == there["mtu"] == TUNNEL_MTU
    key = "id" if kind == "vxlan" else "ikey"
    assert here["linkinfo"]["info_data"][key] == there["linkinfo"]["info_data"][key]
    assert here["linkinfo"]["info_data"]["remote"] == server.address
    assert there["linkinfo"]["info_data"]["remote"] == server.nic.host_ip
    # The other links stay on their own server: veth pairs, no tunnel.
    h2_link = json.loads(server.ssh(f"ip -d -j link show {mn['h2'].intfs[0].link.intf2.name}").stdout)[0]
    assert h2_link["linkinfo"]["info_kind"] == "veth"


def test_hosts_reach_their_peers_across_the_tunnel_with_the_vlan_tag_on_it(server, net):
    mn, trunk, _ = net
    h1, h2, h3, h4 = mn["h1"], mn["h2"], mn["h3"], mn["h4"]
    seen = _capture(server, None, trunk.intf1.name, "vlan 10 and icmp", 60 * SLOW, count=2)
    assert _pings(h1, h2.IP(), scaled(20) * SLOW)
    assert _pings(h2, h1.IP(), scaled(20) * SLOW)
    assert _pings(h3, h4.IP(), scaled(20) * SLOW)
    frames = seen.communicate(timeout=60 * SLOW)[0]
    # Frames between h1 and h2 cross the tunnel device with their 802.1Q tag.
    assert "vlan 10" in frames and h2.IP() in frames, frames


def test_another_vlan_sees_nothing_across_the_tunnel(server, net):
    mn, _, _ = net
    h1, h2, h4 = mn["h1"], mn["h2"], mn["h4"]
    mac = h1.intfs[0].MAC()
    # Positive control: the same capture on h2 (VLAN 10, same server as h4) sees h1's frames.
    same = _capture(server, h2, h2.intfs[0].name, f"ether src {mac}", 60 * SLOW, count=1)
    other = _capture(server, h4, h4.intfs[0].name, f"ether src {mac}", 60 * SLOW)
    # h1 is on this machine: a few seconds of its ARP broadcasts are enough for h4 to see one.
    assert not _pings(h1, h4.IP(), scaled(6))
    assert _pings(h1, h2.IP(), scaled(10) * SLOW)
    assert mac in same.communicate(timeout=60 * SLOW)[0]
    leaked = _stop_capture(other)
    assert mac not in leaked, leaked


def test_a_vip_moves_across_the_tunnel_by_gratuitous_arp(server, net):
    mn, _, _ = net
    h1, va, h2 = mn["h1"], mn["va"], mn["h2"]
    vip = "10.77.0.100"
    va.cmd(f"ip addr add {vip}/24 dev {va.intfs[0].name}")
    assert _pings(h1, vip, scaled(10) * SLOW)
    assert va.intfs[0].MAC() in h1.cmd(f"ip neigh show {vip}")
    # Takeover on the other server: the VIP leaves va, h2 takes it and announces it.
    va.cmd(f"ip addr del {vip}/24 dev {va.intfs[0].name}")
    h2.cmd(f"ip addr add {vip}/24 dev {h2.intfs[0].name}")
    h2.cmd(f"arping -U -c 2 -I {h2.intfs[0].name} {vip}")
    # h1 learnt the new owner from the announcement, not by asking.
    assert h2.intfs[0].MAC() in h1.cmd(f"ip neigh show {vip}")
    assert _pings(h1, vip, scaled(10) * SLOW)




def test_check_servers_finds_the_vm_ready(server):
    from experiments.testbed.servers import check_servers

    found = check_servers(["localhost", server.address], ssh_config=str(server.ssh_config))
    assert [f.name for f in found] == [f"{server.address}: {n}" for n in ("ssh", "mininet", "eucalab", "tunnel", "MTU")]
    assert all(f.ok for f in found), [(f.name, f.detail) for f in found if not f.ok]


def test_the_vms_clock_offset_is_measured_and_recorded_with_its_resolution(server):
    from experiments.testbed.clocks import measure_clock_offset

    recorded = json.loads((server.vm.out_dir / "clock.json").read_text())
    assert recorded["server"] == server.address
    assert (recorded["offset_s"], recorded["resolution_s"]) == (server.clock.offset_s, server.clock.resolution_s)
    again = measure_clock_offset(server.ssh_command)
    # The guest booted minutes ago, this machine long before: its monotonic clock is behind.
    assert server.clock.offset_s < 0
    assert server.clock.resolution_s < 1.0 and again.resolution_s < 1.0
    # Two measurements agree within their resolutions (and a little drift of an emulated clock).
    assert abs(server.clock.offset_s - again.offset_s) <= server.clock.resolution_s + again.resolution_s + 0.05


@pytest.mark.multiserver
def test_the_sdn_controller_here_drives_a_clusters_switches_on_the_vm_over_tcp(server, tmp_path):
    """The controller runs on the first server; cluster 1's bridges, placed on the VM, connect
    to it over OpenFlow on TCP across the servers' link and get their flows."""
    import signal
    import socket
    import sys
    from dataclasses import asdict

    from components.common import control
    from experiments.testbed.controller import wait_ready
    from experiments.testbed.deployment import _child_env
    from topologies.placement import place
    from topologies.plan import build_plan
    from topologies.spec import spec_from_dict

    plan = build_plan(spec_from_dict({"servers": ["localhost", server.address], "clusters": 1,
                                      "ncs_per_cluster": 1, "vm_slots_per_nc": 1}))
    remote = [n for n in place(plan).on(server.address) if n in plan.switches]
    assert remote == ["swc1", "swc1a", "swc1b", "br1n1"]
    ports = plan.switch_ports()
    (tmp_path / "topology.json").write_text(json.dumps({
        "mode": plan.spec.mode.value, "switches": {n: ports[n] for n in remote},
        "pairs": [asdict(p) for p in plan.pairs if p.cluster == 1], "takeover": "garp"}))
    with socket.socket() as sock:
        sock.bind((server.nic.host_ip, 0))
        port = sock.getsockname()[1]
    with open(tmp_path / "controller.log", "wb") as log:
        ctl = subprocess.Popen([sys.executable, "-m", "controllers", "--run-dir", str(tmp_path), "--port", str(port),
                                "--host", server.nic.host_ip], stdout=log, stderr=subprocess.STDOUT,
                               env=_child_env(), start_new_session=True)
    try:
        made = server.ssh(" ; ".join(
            f"ovs-vsctl add-br {n} -- set bridge {n} other-config:datapath-id={plan.switches[n].dpid} "
            f"fail_mode=secure other-config:disable-in-band=true protocols=OpenFlow13 "
            f"-- set-controller {n} tcp:{server.nic.host_ip}:{port}" for n in remote))
        assert made.returncode == 0, made.stderr
        wait_ready(ctl, control.socket_path(tmp_path), tmp_path / "controller.log", 60 * SLOW,
                   what="the controller on this server")
        state = server.ssh(" ; ".join(f"echo {n} $(ovs-vsctl get controller {n} is_connected) "
                                      f"$(ovs-ofctl -O OpenFlow13 dump-flows {n} | grep -c actions=)"
                                      for n in remote)).stdout.split("\n")
        for line in filter(None, state):
            name, connected, flows = line.split()
            assert connected == "true" and int(flows) > 1, line
    finally:
        ctl.send_signal(signal.SIGTERM)
        assert ctl.wait(timeout=scaled(30)) == 0
        server.ssh(" ; ".join(f"ovs-vsctl --if-exists del-br {n}" for n in remote))


@pytest.mark.multiserver
def test_eucalab_up_builds_a_network_over_both_servers_from_the_command_line(server):
    """What a user runs beside ``eucalab vm serve``: ``eucalab up SPEC --ssh-config FILE`` with
    the VM among the spec's servers. A host placed on the VM answers from Debian's kernel there,
    one placed here from this machine's; the run records the VM's clock; nothing is left on
    the VM afterwards. Placed before the deployment's tests: one network on the VM at a time."""
    import os
    import shutil
    import sys
    import tempfile

    from experiments.testbed.vm import REPO

    tmp = Path(tempfile.mkdtemp(prefix="up", dir="/tmp"))  # the run's control socket needs a short path
    bridges_before = set(server.ssh("ovs-vsctl list-br").stdout.split())
    try:
        spec = tmp / "two.yaml"
        spec.write_text(f"name: two\nservers: [localhost, {server.address}]\nclusters: 1\n"
                        "ncs_per_cluster: 1\nvm_slots_per_nc: 1\n")
        script = tmp / "cli.txt"
        script.write_text("c1n1 uname -r\nclc1 uname -r\n")
        run_dir = tmp / "run"
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "up", str(spec), "--no-services",
                               "--script", str(script), "--ssh-config", str(server.ssh_config),
                               "--run-dir", str(run_dir)],
                              capture_output=True, text=True, cwd=REPO, timeout=scaled(90) * SLOW)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said[-3000:]
        guest = server.ssh("uname -r").stdout.strip()
        assert guest and guest != os.uname().release  # two kernels: the emulated Debian one, this one
        lines = said.splitlines()
        assert guest in lines and os.uname().release in lines, said[-3000:]
        servers = json.loads((run_dir / "servers.json").read_text())["servers"]
        assert "c1n1" in servers[server.address]["nodes"] and "clc1" not in servers[server.address]["nodes"]
        assert "deployment down" in proc.stdout
        left = server.ssh(f"ovs-vsctl list-br; ls -d {run_dir} 2>/dev/null").stdout
        assert str(run_dir) not in left and set(left.split()) <= bridges_before, left
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A whole deployment over this machine and the VM (experiments/testbed/deployment.py with
# topologies/cluster_network.py): one cluster, each HA pair's secondary on the server after
# its primary's, so the CLC's primary runs here and its secondary on the VM, and their
# heartbeats and the client path after a takeover cross the tunnel. The guest runs its
# components 10-40 times slower: heartbeats every 500 ms, six missed before the peer counts
# as dead (the default is 50 ms and 3), so a late heartbeat from the guest is no failure.
# Building it costs 2.5-4.5 minutes here (the guest's ssh sessions and tunnels), too much for
# make test's budget: these tests carry the marker ``multiserver`` and run by
# `make test-cluster` (docs/cluster.md), and so does the controller test above (40 s), whose
# deployment-less check the deployment's repeats.
SLOW_HA = {"heartbeat": {"interval_ms": 500, "misses": 6}}


@pytest.fixture(scope="module")
def deployment(server, tmp_path_factory):
    from experiments.testbed.deployment import Deployment
    from topologies.spec import spec_from_dict

    spec = spec_from_dict({"name": "cluster", "servers": ["localhost", server.address], "clusters": 1,
                           "ncs_per_cluster": 1, "vm_slots_per_nc": 1, "split_pairs": True, **SLOW_HA})
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("cluster-dep"), ssh_config=server.ssh_config) as dep:
        dep.start_services(timeout=scaled(60) * SLOW)
        yield dep
    # What the run made on the VM is gone with the run, the VM still up.
    left = server.ssh("ovs-vsctl list-br; ls -d " + str(dep.run_dir) + " 2>/dev/null").stdout
    assert not any(name.startswith(dep.tag) for name in left.split()) and str(dep.run_dir) not in left, left


@pytest.mark.multiserver
def test_a_deployment_spans_both_servers_with_the_controller_here_driving_the_vms_bridges(server, deployment):
    dep = deployment
    remote = dep.network.placement.on(server.address)
    assert {"clc2", "c1cc1", "c1n1"} <= set(remote)
    for name in (n for n in remote if n in dep.plan.switches):
        state = server.ssh(f"echo $(ovs-vsctl get controller {name} is_connected) "
                           f"$(ovs-ofctl -O OpenFlow13 dump-flows {name} | grep -c actions=)").stdout.split()
        assert state[0] == "true" and int(state[1]) > 1, (name, state)  # connected, and given its flows
    # Every HA pair's members reach each other across the tunnel on their cloud or private network.
    for pair in dep.plan.pairs:
        a, b = pair.members
        peer_ip = next(i.ip for i in dep.plan.hosts[b].interfaces if i.ip).split("/")[0]
        assert _pings(dep[a], peer_ip, scaled(20) * SLOW), (a, b, peer_ip)
    # Every link has the tunnels' MTU, here and there: a larger frame would be dropped by
    # the first tunnel on its path.
    for name in dep.plan.hosts:
        mtus = dep[name].cmd("for f in /sys/class/net/*-eth*/mtu; do cat $f; done").split()
        assert mtus and set(mtus) == {str(TUNNEL_MTU)}, (name, mtus)
    created = dep.network.created  # the switches' ends, in each server's root namespace
    here = [(Path("/sys/class/net") / intf / "mtu").read_text().strip() for intf in created.root_links]
    there = server.ssh(" ; ".join(f"cat /sys/class/net/{intf}/mtu"
                                  for intf in created.remote[server.address]["root_links"])).stdout.split()
    assert len(there) == len(created.remote[server.address]["root_links"]), there  # every one read
    assert here and there and set(here) == set(there) == {str(TUNNEL_MTU)}, (here, there)
    # The run's records: each server's clock offset with its resolution.
    servers = json.loads((dep.run_dir / "servers.json").read_text())["servers"]
    clock = servers[server.address]
    assert clock["offset_s"] < 0 and 0 < clock["resolution_s"] < 1.0 and "clc2" in clock["nodes"]


def _health_from(pair) -> str:
    """The host a pair's clients reach its VIP from: the user host for the CLC and Walrus;
    the gateway, which routes users' requests, for a CC and an SC (the site firewall keeps
    users off their VIPs)."""
    return "user" if pair.kind in ("clc", "walrus") else "gw"


@pytest.mark.multiserver
def test_every_service_runs_on_both_servers_each_pair_redundant_across_the_tunnel(server, deployment):
    dep = deployment
    on_vm = set(dep.network.placement.on(server.address))
    for pair in dep.plan.pairs:
        assert wait_until(lambda: dep.redundant(pair), 30 * SLOW), [dep.member_state(m) for m in pair.members]
        assert dep.member_state(pair.primary) == "ENABLED", pair.name
        # split_pairs: one member here, the other on the VM.
        assert len(on_vm & set(pair.members)) == 1, (pair.name, pair.members)
        asked = dep[_health_from(pair)].cmd(
            f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://{pair.vip}:{pair.port}/health")
        assert asked.strip() == "200", (pair.name, asked)
    # The NC on the VM reports to its cluster's CC, whose primary runs there too.
    nc = dep.process("c1n1")
    assert nc.remote is not None and any(e["event"] == "service.start" for e in nc.events())


@pytest.fixture(scope="module")
def instance(deployment):
    """A user's instance on cluster 1's NC, which runs on the VM: its image stored in Walrus
    here and fetched by the NC across the tunnel, an elastic IP on it (NAT at the CC)."""
    from tests.support.util import web_image

    from .conftest import aws_client

    dep = deployment
    ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
    emi, _ = web_image(ec2, s3, "cluster.img", "cluster-image")
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

    def described() -> dict:
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]

    assert wait_until(lambda: described()["State"]["Name"] == "running", scaled(60) * SLOW), described()
    eip = ec2.allocate_address()["PublicIp"]
    ec2.associate_address(InstanceId=iid, PublicIp=eip)
    return {"iid": iid, "eip": eip, "ec2": ec2}


def _answers(dep, instance) -> bool:
    """Does the instance answer the user host through its elastic IP (it serves its id)?"""
    return dep["user"].cmd(f"curl -s -m 3 http://{instance['eip']}/").strip() == instance["iid"]


@pytest.mark.multiserver
def test_a_users_instance_runs_on_the_vms_nc_and_answers_through_its_elastic_ip(server, deployment, instance):
    dep = deployment
    assert dep.network.placement.server_of["c1n1"] == server.address
    # The NC that runs it is the one on the VM (the only one), its slot there too.
    nc = dep.process("c1n1")
    assert wait_until(lambda: any(e["event"].startswith("instance.") and e.get("instance") == instance["iid"]
                                  for e in nc.events()), 10 * SLOW), nc.events()[-5:]
    assert wait_until(lambda: _answers(dep, instance), scaled(30) * SLOW)


@pytest.mark.multiserver
@pytest.mark.parametrize("kind", ["clc", "walrus", "cc", "sc"])
def test_a_failover_across_the_tunnel_gives_the_peer_the_service_and_the_vip(server, deployment, instance, kind):
    """Each pair's ENABLED member (the CLC's and Walrus's here, the cluster's CC's and SC's
    on the VM) is killed; its peer on the other server takes the service and the VIP, the
    clients' path answers again, and the user's instance on the VM through its elastic IP
    (after the CC's failover NATed here, across the tunnel)."""
    dep = deployment
    pair = next(p for p in dep.plan.pairs if p.kind == kind)
    old, new = pair.primary, pair.secondary
    where = dep.network.placement.server_of
    assert where[old] != where[new]
    assert wait_until(lambda: dep.redundant(pair), 30 * SLOW), [dep.member_state(m) for m in pair.members]
    assert dep.member_state(old) == "ENABLED"
    remote = dep.process(new if where[new] == server.address else old)
    assert remote.remote is not None and remote.remote.server == server.address
    assert any(e["event"] == "service.start" for e in remote.events())
    client = dep[_health_from(pair)]
    health = f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{pair.vip}:{pair.port}/health"
    assert client.cmd(health).strip() == "200"
    killed_at = time.clock_gettime(time.CLOCK_MONOTONIC)
    dep.kill(old)  # the ENABLED member crashes; its peer is across the tunnel
    assert wait_until(lambda: dep.member_state(new) == "ENABLED", 60 * SLOW, step=0.1), \
        [dep.member_state(m) for m in pair.members]
    # The clients' path through the VIP answers again, now served from the other server.
    assert wait_until(lambda: client.cmd(health).strip() == "200", 30 * SLOW)
    held = dep[new].cmd("ip -o -4 addr show")
    assert f" {pair.vip}/" in held, held
    if kind == "cc":  # a CC also takes over as its cluster's router (MANAGED)
        assert pair.private_vip and f" {pair.private_vip}/" in held, held
    # Its events are in the run directory here, wherever it ran: the promotion and the VIP
    # taken, stamped with its server's clock, which servers.json's offset maps onto this
    # machine's: the promotion came after the kill and before now.
    proc = dep.process(new)
    assert wait_until(lambda: any(e["event"] == "ha.vip_acquired" and e["vip"] == pair.vip
                                  for e in proc.events()), 10 * SLOW), proc.events()[-5:]
    promoted = [e for e in proc.events() if e["event"] == "ha.promote"]
    assert len(promoted) == 1, promoted
    assert proc.events_path.is_relative_to(dep.run_dir)
    offset, slack = 0.0, 0.005
    if where[new] == server.address:
        clock = json.loads((dep.run_dir / "servers.json").read_text())["servers"][server.address]
        offset, slack = clock["offset_s"], clock["resolution_s"] + 0.05  # and a little drift of the emulated clock
    promoted_here = promoted[0]["t_mono"] - offset
    assert killed_at - slack < promoted_here < time.clock_gettime(time.CLOCK_MONOTONIC) + slack
    assert wait_until(lambda: _answers(dep, instance), scaled(30) * SLOW)
