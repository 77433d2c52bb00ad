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
made, so that a run killed with SIGKILL can be cleaned up from its record.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from mininet.link import Intf, Link
from mininet.net import Mininet
from mininet.node import Host, OVSSwitch

from components.common.vlan import link_names

from .firewall import site_firewall
from .plan import Plan

log = logging.getLogger(__name__)

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


class NetworkError(RuntimeError):
    """The network could not be built (the message says why and what to do)."""


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


def run(cmd: list[str], stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
    """Run a root-namespace command; on failure raise NetworkError with its output."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(cmd[:3])} failed: {(proc.stderr or proc.stdout).strip()[:2000]}")
    return proc.stdout


def existing_links() -> set[str]:
    return link_names(run(["ip", "-o", "link", "show"], check=False))


def existing_bridges() -> set[str]:
    return set(run(["ovs-vsctl", "--timeout=10", "list-br"], check=False).split())


@dataclass
class Created:
    """What a network run made in the root namespace, for exact cleanup."""

    bridges: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)  # veth ends left in the root namespace
    shell_pids: list[int] = field(default_factory=list)
    netns: list[int] = field(default_factory=list)  # inode numbers of the hosts' namespaces


class EucaNetwork:
    """A Mininet network built from a plan.

    ``datapath`` is "kernel" or "user" (OVS netdev). ``on_created`` is called with
    the ``Created`` record before anything is made and whenever it grows, so a
    crash at any point leaves a record to clean up from.
    """

    def __init__(self, plan: Plan, datapath: str = "user", on_created=None, controller: str | None = None):
        if len(plan.spec.servers) > 1:
            # Placement and tunnels exist (topologies/placement.py, topologies/cluster.py);
            # building a whole deployment over them does not yet.
            raise NetworkError(f"servers: {', '.join(plan.spec.servers)}: this builder builds a deployment "
                               "on one machine only; deployments over several servers are not built yet "
                               "(docs/cluster.md says what works across servers today)")
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
        root_ns = _root_netns()
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
            parts = []
            for node, intf in ends:
                part = f"name {intf}"
                if intf in macs:
                    part += f" address {macs[intf]}"
                if node in host_pids:
                    part += f" netns {host_pids[node]}"
                else:
                    up.append(f"link set dev {intf} up")
                parts.append(part)
            create.append(f"link add {parts[0]} type veth peer {parts[1]}")
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
                    args += [f"type=patch", f"options:peer={patch_peer[intf]}"]
            if self.controller:
                args += ["--", "set-controller", name, self.controller]
        run(args, timeout=300)

    def _configure_hosts(self, net: Mininet) -> None:
        for host in net.hosts:
            ph = self.plan.hosts[host.name]
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
                script = "{ " + script + "\nnft -f - <<'EOF'\n" + site_firewall(self.plan) + "EOF\n}"
            host.sendCmd(script)
        errors = []
        for host in net.hosts:
            out = host.waitOutput()
            if out.strip():
                errors.append(f"{host.name}: {out.strip()[:300]}")
            ph = self.plan.hosts[host.name]
            for intf in ph.interfaces:
                mi = host.nameToIntf[intf.name]
                if intf.ip:
                    mi.ip, mi.prefixLen = intf.ip.split("/")[0], int(intf.ip.split("/")[1])
        if errors:
            raise NetworkError("configuring hosts failed:\n" + "\n".join(errors[:10]))

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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except OSError:
            return False


def kill_pids(pids: list[int], sig: int = signal.SIGKILL, wait_s: float = 5.0) -> list[int]:
    """Signal recorded PIDs and wait until they are gone; return any that survived."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if pid_alive(p)]
    return left


def _root_netns() -> set[int]:
    """Namespaces never to empty: this driver's own and init's (when visible)."""
    inodes = {os.stat("/proc/self/ns/net").st_ino}
    try:
        inodes.add(os.stat("/proc/1/ns/net").st_ino)
    except OSError:
        pass
    return inodes


def namespace_pids(inodes: list[int]) -> list[int]:
    """PIDs of every process living in one of the given network namespaces."""
    # Never the namespace this driver or init lives in: that would be every process.
    wanted = set(inodes) - _root_netns()
    if not wanted:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(f"/proc/{entry.name}/ns/net").st_ino in wanted:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def teardown(created: Created) -> list[str]:
    """Delete what a run created; returns the problems met (empty when clean)."""
    problems = []
    # Everything still running in the run's namespaces (host shells, their jobs, what
    # components started inside VM slots) goes; the namespaces and their veths die with it.
    left = kill_pids(created.shell_pids + namespace_pids(created.netns))
    if left:
        problems.append(f"processes still alive: {left}")
    bridges = existing_bridges() & set(created.bridges)
    if bridges:
        args = ["ovs-vsctl", "--timeout=60"]
        for br in sorted(bridges):
            args += ["--", "--if-exists", "del-br", br]
        try:
            run(args, timeout=120)
        except (NetworkError, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
    # Veth pairs whose other end sat in a namespace vanish when the kernel reaps
    # the namespace (in one batch, far faster than deleting them one by one). A
    # namespace can outlive its processes while a socket opened in it is still
    # open (e.g. a client's connection pool in the driver): such veths are deleted.
    deadline = time.monotonic() + 1.5
    present = existing_links() & set(created.root_links)
    while present and time.monotonic() < deadline:
        time.sleep(0.02)
        present = existing_links() & set(created.root_links)
    if present:
        run(["ip", "-force", "-batch", "-"], check=False,
            stdin="".join(f"link del dev {name}\n" for name in sorted(present)))
        present = existing_links() & set(created.root_links)
        if present:
            problems.append(f"interfaces left: {sorted(present)[:10]}")
    return problems
