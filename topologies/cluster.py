"""Mininet's cluster support (``mininet.examples.cluster``) as eucalab uses it.

Mininet Cluster Edition runs nodes on other servers over ssh (``RemoteHost``,
``RemoteOVSSwitch``) and turns a link between servers into a tunnel (``RemoteGRELink``:
a gretap device at each end, a key per link, MTU 1450). eucalab takes those classes as
they are and changes three things:

* **ssh with the run's own configuration.** Mininet runs plain ``ssh`` (the user's
  ~/.ssh); every node here gets ``-F <config>``, the configuration a run made with its
  own keys (``experiments/testbed/vm_server.py`` for the kernel-lane VM, docs/cluster.md for machines).
* **VXLAN where a kernel has no gretap.** ``RemoteGRELink`` needs the ``ip_gre`` module
  on both servers. Some kernels (containers, sandboxes) lack it but have VXLAN: then
  ``TunnelLink`` makes a VXLAN device instead, with the same key as its network
  identifier, the same MTU and the same placement in the node. ``tunnel_kind`` probes
  every server and says which.
* **No remote ``mn -c``.** Mininet registers a cleanup that runs ``mn -c`` on every
  server (which kills processes by name); eucalab never calls Mininet's cleanup and
  deletes only what it created.
"""

from __future__ import annotations

import subprocess
from typing import Callable

from mininet.examples.cluster import MininetCluster, Placer, RemoteGRELink, RemoteHost, RemoteMixin, RemoteOVSSwitch
from mininet.node import Node
from mininet.util import quietRun

from .placement import TUNNEL_MTU, Placement

TUNNEL_KINDS = ("gretap", "vxlan")
VXLAN_PORT = 4789
# A probe device's name: made and deleted at once, on each server. Its key is the
# largest VXLAN identifier: tunnels number theirs from 1, and a VXLAN device with the
# identifier of an existing one on the same port is refused ("already exists").
_PROBE = "euclprobe0"
_PROBE_KEY = 2**24 - 1


class ClusterError(RuntimeError):
    """A server cannot take part (the message says which and what to do)."""


def _ssh_base(ssh_config: str | None) -> list[str]:
    return RemoteMixin.sshbase + (["-F", ssh_config] if ssh_config else [])


class ClusterHost(RemoteHost):
    """Mininet's RemoteHost, reached with the run's ssh configuration."""

    def __init__(self, name, ssh_config: str | None = None, **params):
        self.sshbase = _ssh_base(ssh_config)
        super().__init__(name, **params)
        # No continuation prompts: a script with a here-document (network.configure_hosts)
        # would read them as its output.
        self.cmd("PS2=")

    def _popen(self, cmd, sudo=True, tt=True, **params):
        if not self.isRemote:
            # Here, a plain Mininet host's process: RemoteMixin would make it a process-group
            # leader, and `mnexec -d` then forks and its first process exits at once.
            return Node._popen(self, cmd, **params)
        return super()._popen(cmd, sudo=sudo, tt=tt, **params)


class ClusterSwitch(RemoteOVSSwitch):
    """Mininet's RemoteOVSSwitch, reached with the run's ssh configuration."""

    def __init__(self, name, ssh_config: str | None = None, **params):
        self.sshbase = _ssh_base(ssh_config)
        super().__init__(name, **params)


class ClusterNet(MininetCluster):
    """Mininet's MininetCluster whose server check uses the run's ssh configuration."""

    def __init__(self, *args, ssh_config: str | None = None, **params):
        self.sshcmd = MininetCluster.sshcmd + (["-F", ssh_config] if ssh_config else [])
        super().__init__(*args, **params)


class TunnelLink(RemoteGRELink):
    """RemoteGRELink; where ``kind`` is vxlan, a VXLAN device takes the gretap's place."""

    kind = "gretap"

    def makeTunnel(self, node1, node2, intfname1, intfname2, addr1=None, addr2=None):  # noqa: N802
        if self.kind == "gretap":
            return super().makeTunnel(node1, node2, intfname1, intfname2, addr1, addr2)
        assert node1.server != node2.server
        if node2.server == "localhost":  # as RemoteGRELink: the local end is made first
            return self.makeTunnel(node2, node1, intfname2, intfname1, addr2, addr1)
        ip1, ip2 = node1.serverIP, node2.serverIP
        if node1.server == "localhost":
            ip1 = quietRun(f"ip route get {ip2}").split(" src ")[1].split()[0]
        RemoteGRELink.GRE_KEY += 1
        key = RemoteGRELink.GRE_KEY
        for node, intf, addr, local, remote in ((node1, intfname1, addr1, ip1, ip2),
                                                (node2, intfname2, addr2, ip2, ip1)):
            # One command line per end (each is an ssh session on a remote server), into
            # the node's namespace (a switch's is the root namespace: the move is a no-op).
            line = (f"ip link add name {intf} type vxlan id {key} local {local} remote {remote} "
                    f"dstport {VXLAN_PORT} && ip link set dev {intf} {f'address {addr} ' if addr else ''}"
                    f"mtu {TUNNEL_MTU} up && ip link set {intf} netns {node.pid}")
            # rcmd runs a line through the remote shell; here it would run its words without one.
            out = node.rcmd(line) if node.isRemote else _here(line)
            if out:
                raise ClusterError(f"cannot make VXLAN device {intf} on {node.server}: {out.strip()}")
        return None


def _here(line: str) -> str:
    """A shell line in this machine's root namespace; its output (none when it worked)."""
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def placer_for(placement: Placement) -> type[Placer]:
    """A Mininet placer (``MininetCluster(placement=...)``) that places as ``placement`` says."""

    class PlanPlacer(Placer):
        def place(self, node: str) -> str:
            try:
                return placement.server_of[node]
            except KeyError:
                raise ClusterError(f"{node} is not in the deployment's plan: no server for it") from None

    return PlanPlacer


def probe_command(kind: str) -> str:
    """A shell line that makes and deletes a tunnel device of ``kind``; exit 0 if it can."""
    if kind == "gretap":
        add = f"ip link add {_PROBE} type gretap local 192.0.2.1 remote 192.0.2.2 key {_PROBE_KEY}"
    else:
        add = (f"ip link add {_PROBE} type vxlan id {_PROBE_KEY} local 192.0.2.1 remote 192.0.2.2 "
               f"dstport {VXLAN_PORT}")
    return f"{add} && ip link del {_PROBE}"


def tunnel_kind(servers: list[str], run_on: Callable[[str, str], subprocess.CompletedProcess]) -> str:
    """gretap where every server's kernel makes one (Mininet's own link), else vxlan where
    every server makes that; ``run_on(server, shell_line)`` runs a line on a server."""
    missing: dict[str, list[str]] = {}
    for kind in TUNNEL_KINDS:
        missing[kind] = [s for s in servers if run_on(s, probe_command(kind)).returncode != 0]
        if not missing[kind]:
            return kind
    raise ClusterError("no tunnel type every server can make: gretap missing on "
                       f"{', '.join(missing['gretap'])} (module ip_gre), vxlan missing on "
                       f"{', '.join(missing['vxlan'])} (module vxlan)")
