"""Turn an addressing plan into a running Mininet network, fast, and take it down again.

Mininet builds a network one command per interface and one shell round trip per
address; for a few hundred hosts that is seconds of fork/exec. This builder keeps
Mininet's objects (hosts with their shells, so the Mininet CLI and ``host.cmd``
work as usual) but does the heavy work in batches:

* host shells are spawned all at once, then waited for together;
* every veth pair is made by one ``ip -batch`` in the root namespace, tx checksum
  offload is switched off by ioctl (TCP over the OVS userspace datapath fails
  otherwise) and the host ends are moved into their namespaces by a second batch;
* all bridges and ports are one ``ovs-vsctl`` transaction;
* each host configures its addresses and routes with one ``ip -batch`` run in
  its own shell, all hosts in parallel;
* teardown kills the host shells (their namespaces and the veths in them vanish
  with them), deletes the bridges in one transaction and the switch-to-switch
  veths in one batch.

Nothing here knows about experiments or components. ``created`` lists what was
made, so that a run killed with SIGKILL can be cleaned up from its record (created.py,
which deletes it).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import socket
import struct
import time

from mininet.link import Intf, Link
from mininet.net import Mininet
from mininet.node import Host, OVSSwitch

from .created import (Created, NetworkError, existing_bridges, existing_links, kill_pids, namespace_pids,
                      root_netns, run, teardown)
from .firewall import site_firewall
from .plan import Plan

log = logging.getLogger(__name__)

# Defined in created.py (what a run made, and its teardown); imported from here by others too.
__all__ = ["Created", "EucaNetwork", "NetworkError", "existing_bridges", "existing_links", "in_namespace",
           "kill_pids", "namespace", "namespace_pids", "teardown", "tx_checksum_off", "veth_line"]

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


class EucaHost(Host):
    """A Mininet host whose shell is spawned now and waited for later.

    Spawning every shell before waiting for any lets hundreds of hosts start
    concurrently instead of one after another.
    """

    def startShell(self, mnopts=None):  # noqa: N802 (Mininet's name)
        opts = "-cdn" if self.inNamespace else "-cd"
        # PS2 empty: the builder feeds here-documents, whose continuation prompts would pollute output.
        cmd = ["mnexec", opts, "env", "PS1=" + chr(127), "PS2=", "bash", "--norc", "--noediting",
               "-is", "mininet:" + self.name]
        import pty
        import select

        self.master, self.slave = pty.openpty()
        self.shell = self._popen(cmd, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                 close_fds=False)
        self.stdin = os.fdopen(self.master, "r")
        self.stdout = self.stdin
        self.pid = self.shell.pid
        self.pollOut = select.poll()
        self.pollOut.register(self.stdout)
        self.outToNode[self.stdout.fileno()] = self
        self.inToNode[self.stdin.fileno()] = self
        self.execed = False
        self.lastCmd = None
        self.lastPid = None
        self.readbuf = ""
        self.waiting = True

    def wait_prompt(self) -> None:
        """Wait for the first prompt, then ask for a quiet shell (answer read later)."""
        while True:
            data = self.read(1024)
            if data and data[-1] == chr(127):
                break
            self.pollOut.poll()
        self.waiting = False
        self.sendCmd("unset HISTFILE; stty -echo; set +m")


class LazyOVSSwitch(OVSSwitch):
    """An OVS bridge made by the builder's batch; its root-namespace shell starts on first use."""

    def __init__(self, name, **params):
        super().__init__(name, **params)
        # Construction configures 'lo' through the shell: nothing to do for a
        # root-namespace bridge, so the shell is only started by later commands.
        self._constructed = True

    def startShell(self, mnopts=None):  # noqa: N802
        pass

    def cmd(self, *args, **kwargs):
        if not getattr(self, "_constructed", False):
            return ""
        self._ensure_shell()
        return super().cmd(*args, **kwargs)

    def _ensure_shell(self) -> None:
        if self.shell is None:
            OVSSwitch.startShell(self)

    def sendCmd(self, *args, **kwargs):  # noqa: N802
        self._ensure_shell()
        return super().sendCmd(*args, **kwargs)

    def popen(self, *args, **kwargs):
        # Root namespace: run directly rather than attach to a shell that may not exist.
        kwargs.setdefault("mncmd", [])
        return super().popen(*args, **kwargs)

    def terminate(self):
        if self.shell is not None:
            super().terminate()

    def start(self, controllers):  # the builder's transaction already started it
        pass

    def stop(self, deleteIntfs=True):  # noqa: N803 (the builder deletes bridges in one batch)
        self.terminate()


class PlannedLink(Link):
    """A Mininet Link over interfaces the builder already made."""

    def __init__(self, intf1: Intf, intf2: Intf):  # noqa: D107 (skip Link's own creation)
        self.intf1, self.intf2 = intf1, intf2
        intf1.link = intf2.link = self


def _register_intf(name: str, node, port: int, mac: str | None) -> Intf:
    intf = Intf.__new__(Intf)
    intf.node, intf.name, intf.link, intf.mac = node, name, None, mac
    intf.ip, intf.prefixLen, intf.params = None, None, {}
    node.intfs[port] = intf
    node.ports[intf] = port
    node.nameToIntf[name] = intf
    return intf


def veth_line(ends: list[tuple[str, str | None, int | None]], mtu: int | None = None) -> str:
    """The ``ip -batch`` line making one link as a veth pair: each end (interface name, MAC
    or None, the host's namespace pid or None for a switch port in the root namespace).
    ``mtu``: both ends' (a deployment over several servers gives every link its tunnels'
    MTU: a larger frame would be dropped by the first tunnel on its path, unanswered, since
    a switch forwards a frame and never fragments it); None keeps the kernel's 1500."""
    parts = []
    for intf, mac, pid in ends:
        part = f"name {intf}" + (f" address {mac}" if mac else "") + (f" mtu {mtu}" if mtu else "")
        parts.append(part + (f" netns {pid}" if pid is not None else ""))
    return f"link add {parts[0]} type veth peer {parts[1]}"


def tx_checksum_off(ifname: str, sock: socket.socket | None = None) -> None:
    """``ethtool -K IFNAME tx off`` without a process: TCP needs it on the OVS userspace datapath."""
    own = sock is None
    sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        value = (ctypes.c_uint32 * 2)(ETHTOOL_STXCSUM, 0)
        ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    finally:
        if own:
            sock.close()


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def namespace(pid: int):
    """Run the block with this thread inside the network namespace of process ``pid``.

    Sockets made inside keep that namespace after the block: a test or a probe can
    open connections "from" an emulated host without a subprocess.
    """
    with open("/proc/thread-self/ns/net") as home, open(f"/proc/{pid}/ns/net") as target:
        if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into the namespace of {pid} failed")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")


def in_namespace(pid: int, fn):
    """Call fn() with this thread inside the network namespace of process ``pid``."""
    with namespace(pid):
        return fn()


def _tx_off_all(interfaces) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for intf in interfaces:
            tx_checksum_off(intf.name, sock)


def configure_hosts(plan: Plan, hosts) -> None:
    """Addresses, routes, forwarding and (on the gateway) the site firewall of every host,
    one script per host run in its own shell, all hosts at once (local or remote shells)."""
    for host in hosts:
        ph = plan.hosts[host.name]
        lines = ["link set dev lo up"]
        for intf in ph.interfaces:
            if intf.ip:
                lines.append(f"addr add {intf.ip} dev {intf.name}")
            lines.append(f"link set dev {intf.name} up")
        if ph.default_route:
            lines.append(f"route add default via {ph.default_route}")
        for dest, via in ph.routes:
            lines.append(f"route add {dest} via {via}")
        script = ("echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                  "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; "
                  f"echo {1 if ph.forwarding else 0} > /proc/sys/net/ipv4/ip_forward; "
                  "ip -batch - <<'EOF'\n" + "\n".join(lines) + "\nEOF")
        if ph.role == "gateway":  # the site's firewall (topologies/firewall.py)
            # One command group: each top-level line would be a prompt of its own, and
            # the host's next command would read this one's end as its output.
            script = "{ " + script + "\nnft -f - <<'EOF'\n" + site_firewall(plan) + "EOF\n}"
        host.sendCmd(script)
    errors = []
    for host in hosts:
        out = host.waitOutput()
        if out.strip():
            errors.append(f"{host.name}: {out.strip()[:300]}")
        ph = plan.hosts[host.name]
        for intf in ph.interfaces:
            mi = host.nameToIntf[intf.name]
            if intf.ip:
                mi.ip, mi.prefixLen = intf.ip.split("/")[0], int(intf.ip.split("/")[1])
    if errors:
        raise NetworkError("configuring hosts failed:\n" + "\n".join(errors[:10]))


class EucaNetwork:
    """A Mininet network built from a plan.

    ``datapath`` is "kernel" or "user" (OVS netdev). ``on_created`` is called with
    the ``Created`` record before anything is made and whenever it grows, so a
    crash at any point leaves a record to clean up from.
    """

    def __init__(self, plan: Plan, datapath: str = "user", on_created=None, controller: str | None = None):
        if len(plan.spec.servers) > 1:
            # Spread over several servers, a deployment is built by Mininet's cluster classes
            # (topologies/cluster_network.py): this builder's batches run on this machine only.
            raise NetworkError(f"servers: {', '.join(plan.spec.servers)}: this builder builds a deployment "
                               "on one machine only; a spec with several servers is built by ClusterNetwork "
                               "(topologies/cluster_network.py, what Deployment uses for it)")
        self.plan = plan
        self.datapath = datapath
        self.on_created = on_created or (lambda created: None)
        self.controller = controller
        self.created = Created()
        self.net: Mininet | None = None
        self.timings: dict[str, float] = {}
        self._stopped = False

    # -- bring-up ---------------------------------------------------------------------

    def build(self) -> Mininet:
        plan = self.plan
        t0 = time.monotonic()
        host_names = set(plan.hosts)
        root_ends = []  # interfaces that stay in the root namespace (switch ports)
        for link in plan.links:
            for node, intf in ((link.a, link.a_intf), (link.b, link.b_intf)):
                if node not in host_names:
                    root_ends.append(intf)
        clash_links = existing_links() & (set(root_ends))
        clash_bridges = existing_bridges() & set(plan.switches)
        if clash_links or clash_bridges:
            some = sorted(clash_bridges | clash_links)[:5]
            raise NetworkError(
                f"{len(clash_bridges)} bridge(s) and {len(clash_links)} interface(s) of this deployment "
                f"already exist (e.g. {', '.join(some)}): another eucalab run is active, or a crashed "
                "run left them behind; `eucalab cleanup` removes leftovers of recorded runs")
        self.created.bridges = list(plan.switches)
        # Root-namespace veth ends (switch ports): they vanish with their host's
        # namespace, but are recorded in case a run dies between the two steps.
        self.created.root_links = root_ends
        self.on_created(self.created)

        net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False,
                      waitConnected=False, inNamespace=False)
        self.net = net
        try:
            self._start_hosts(net)
            self.timings["hosts"] = time.monotonic() - t0
            self._make_links(net)
            self.timings["links"] = time.monotonic() - t0
            self._make_switches(net)
            self.timings["switches"] = time.monotonic() - t0
            self._configure_hosts(net)
            self.timings["configured"] = time.monotonic() - t0
            if plan.spec.links.shaped:
                self._shape_links(net)
                self.timings["shaped"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return net

    def _start_hosts(self, net: Mininet) -> None:
        hosts = []
        try:
            for name in self.plan.hosts:
                host = net.addHost(name, cls=EucaHost, ip=None)
                hosts.append(host)
                self.created.shell_pids.append(host.pid)
        finally:
            self.on_created(self.created)
        for host in hosts:
            host.wait_prompt()
        # Only now is every shell surely inside its new namespace (mnexec unshares
        # after the fork): recording earlier could record the root namespace.
        root_ns = root_netns()
        for host in hosts:
            ino = os.stat(f"/proc/{host.pid}/ns/net").st_ino
            if ino in root_ns:
                raise NetworkError(f"host {host.name} is not in a namespace of its own")
            self.created.netns.append(ino)
        self.on_created(self.created)
        for host in hosts:
            host.waitOutput()

    def _make_links(self, net: Mininet) -> None:
        """Host links as veth pairs made straight in their namespaces (moving an interface
        between namespaces costs a kernel RCU grace period each); links between switches
        become OVS patch ports, which cost no kernel interface at all."""
        plan = self.plan
        host_pids = {h.name: h.pid for h in net.hosts}
        macs = {i.name: i.mac for h in plan.hosts.values() for i in h.interfaces}
        create, up = [], []
        for link in plan.links:
            ends = [(link.a, link.a_intf), (link.b, link.b_intf)]
            if link.a not in host_pids and link.b not in host_pids:
                continue  # switch-to-switch: a patch port pair, made with the bridges
            if ends[0][0] not in host_pids:
                ends.reverse()  # host end first
            create.append(veth_line([(intf, macs.get(intf), host_pids.get(node)) for node, intf in ends]))
            up += [f"link set dev {intf} up" for node, intf in ends if node not in host_pids]
        run(["ip", "-batch", "-"], stdin="\n".join(create) + "\n")
        # Only the userspace datapath needs tx checksum offload off (TCP fails without);
        # the kernel datapath keeps the offload a real machine has.
        tx_off = self.datapath == "user"
        if tx_off:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for line in up:
                    tx_checksum_off(line.split()[3], sock)
        if up:
            run(["ip", "-batch", "-"], stdin="\n".join(up) + "\n")
        for host in net.hosts if tx_off else ():
            in_namespace(host.pid, lambda h=host: _tx_off_all(plan.hosts[h.name].interfaces))
        # Mininet bookkeeping: interfaces on their nodes, links between them.
        port_no: dict[str, int] = {}
        for link in plan.links:
            intfs = []
            for node_name, intf_name in ((link.a, link.a_intf), (link.b, link.b_intf)):
                node = net.nameToNode.get(node_name)
                if node is None:
                    node = net.addSwitch(node_name, cls=LazyOVSSwitch,
                                         dpid=plan.switches[node_name].dpid,
                                         datapath="user" if self.datapath == "user" else "kernel",
                                         failMode="standalone")
                port = int(intf_name.rsplit("eth", 1)[1]) + (0 if node_name in host_pids else 1)
                intfs.append(_register_intf(intf_name, node, port, macs.get(intf_name)))
                port_no[intf_name] = port
            net.links.append(PlannedLink(*intfs))
        self._port_no = port_no

    def _make_switches(self, net: Mininet) -> None:
        dp_type = "netdev" if self.datapath == "user" else "system"
        args = ["ovs-vsctl", "--timeout=60"]
        ports: dict[str, list[str]] = {s: [] for s in self.plan.switches}
        patch_peer = {}
        for link in self.plan.links:
            if link.a in ports and link.b in ports:
                patch_peer[link.a_intf], patch_peer[link.b_intf] = link.b_intf, link.a_intf
        for link in self.plan.links:
            for node, intf in ((link.a, link.a_intf), (link.b, link.b_intf)):
                if node in ports:
                    ports[node].append(intf)
        for name, sw in self.plan.switches.items():
            args += ["--", "add-br", name,
                     "--", "set", "bridge", name, f"datapath_type={dp_type}",
                     f"other-config:datapath-id={sw.dpid}",
                     # With a controller: fail-secure (keep flows, never fall back to
                     # MAC learning, which would break isolation).
                     f"fail_mode={'secure' if self.controller else 'standalone'}",
                     "other-config:disable-in-band=true", "protocols=OpenFlow13",
                     f"external-ids:eucalab-run={os.getpid()}"]
            for intf in ports[name]:
                args += ["--", "add-port", name, intf,
                         "--", "set", "interface", intf, f"ofport_request={self._port_no[intf]}"]
                if intf in patch_peer:
                    args += ["type=patch", f"options:peer={patch_peer[intf]}"]
            if self.controller:
                args += ["--", "set-controller", name, self.controller]
        run(args, timeout=300)

    def _configure_hosts(self, net: Mininet) -> None:
        configure_hosts(self.plan, net.hosts)

    def _shape_links(self, net: Mininet) -> None:
        """HTB bandwidth (and netem delay/loss) on both ends of every host link, verified."""
        from .shaping import interface_commands, verify_shaping

        root_cmds: list[str] = []
        host_cmds: dict[str, list[str]] = {}
        for node_name, _, cmds in interface_commands(self.plan):
            if node_name in self.plan.hosts:
                host_cmds.setdefault(node_name, []).extend(cmds)
            else:
                root_cmds.extend(cmds)
        for node_name, cmds in host_cmds.items():
            net[node_name].sendCmd("tc -batch - <<'EOF'\n" + "\n".join(cmds) + "\nEOF")
        if root_cmds:
            run(["tc", "-batch", "-"], stdin="\n".join(root_cmds) + "\n")
        for host in net.hosts:
            if host.waiting:
                out = host.waitOutput()
                if out.strip():
                    raise NetworkError(f"shaping links of {host.name} failed: {out.strip()[:500]}")
        verify_shaping(net, self.plan)

    # -- teardown ---------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Remove exactly what this network made; safe to call twice. Returns problems met."""
        problems = [] if self._stopped else teardown(self.created)
        self._stopped = True
        if self.net is not None:
            for node in self.net.hosts:
                _close_pty(node)
            self.net = None
        return problems


def _close_pty(node) -> None:
    for attr in ("stdin", "slave"):
        obj = getattr(node, attr, None)
        try:
            if isinstance(obj, int):
                os.close(obj)
            elif obj is not None:
                obj.close()
        except OSError:
            pass
    node.shell = None
