"""A deployment's network over several servers, built by Mininet's cluster classes.

``EucaNetwork`` (network.py) builds one machine's network in batches; a spec with more
than one server is built here instead, node by node, with Mininet Cluster Edition as
topologies/cluster.py adapts it: every host and switch of the plan on the server
``place(plan)`` gives it, a link between servers a tunnel (gretap, or VXLAN where a
kernel has no gretap) with MTU 1450 (and every other link the same MTU, so that no frame
is too big for a tunnel on its path), the plan's interface names, MACs and OpenFlow port
numbers as on one machine, and every bridge (here and on the other servers) pointed at
the deployment's SDN controller on this machine over OpenFlow/TCP.

What the run made on each server is recorded (``Created.remote``: bridges, switch
ports, host shells with their start times, and how to reach the server), so that
``eucalab cleanup`` finishes a killed run on every server (``remote_teardown_line``,
created.py); ``stop()`` deletes exactly that, never with Mininet's cleanup (``mn -c``).
"""

from __future__ import annotations

import logging
import socket
from concurrent.futures import ThreadPoolExecutor
import subprocess
import time

from mininet.node import RemoteController

from . import cluster as cl
from .created import Created, NetworkError, existing_bridges, remote_teardown_line, root_netns, run, teardown
from .network import (PlannedLink, _register_intf, _tx_off_all, configure_hosts, in_namespace, tx_checksum_off,
                      veth_line)
from .placement import TUNNEL_MTU, Placement, place
from .plan import Plan

log = logging.getLogger(__name__)


def ssh_words(ssh_config: str | None, server: str) -> list[str]:
    """The command that runs one shell line on ``server`` as root, as Mininet reaches it."""
    return ["ssh", "-o", "BatchMode=yes"] + (["-F", ssh_config] if ssh_config else []) + [f"root@{server}"]


def local_address_towards(server: str) -> str:
    """This machine's address on the route to ``server`` (where the other servers reach it)."""
    out = subprocess.run(["ip", "-o", "route", "get", cl.RemoteMixin.findServerIP(server) or server],
                         capture_output=True, text=True).stdout
    if " src " not in out:
        raise NetworkError(f"no route from this machine to server {server}: {out.strip() or 'ip route get failed'}")
    return out.split(" src ")[1].split()[0]


class ClusterNetwork:
    """The plan's network over its spec's servers (same interface as ``EucaNetwork``).

    ``controller`` is the switches' controller URL (``tcp:ADDRESS:PORT``, an address every
    server reaches); ``ssh_config`` the run's ssh client configuration for the servers.
    """

    def __init__(self, plan: Plan, datapath: str = "user", on_created=None, controller: str | None = None,
                 ssh_config: str | None = None, remote_dir: str | None = None, run_on=None):
        self.plan = plan
        self.placement: Placement = place(plan)
        self.datapath = datapath
        self.on_created = on_created or (lambda created: None)
        self.controller = controller
        self.ssh_config = ssh_config
        self.remote_dir = remote_dir  # a directory the run made on every other server (deleted at the end)
        self._run_on = run_on or self._ssh_run
        self.created = Created()
        self.net: cl.ClusterNet | None = None
        self.tunnel_kind: str | None = None
        self.timings: dict[str, float] = {}
        self._stopped = False

    @property
    def remote_servers(self) -> list[str]:
        return self.placement.servers[1:]

    def _ssh_run(self, server: str, line: str, timeout: float = 120) -> subprocess.CompletedProcess:
        if server == "localhost":
            return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=timeout)
        return subprocess.run(ssh_words(self.ssh_config, server) + [line], capture_output=True, text=True,
                              timeout=timeout)

    def build(self):
        plan, where = self.plan, self.placement.server_of
        t0 = time.monotonic()
        local_bridges = [s for s in plan.switches if where[s] == "localhost"]
        clash = existing_bridges() & set(local_bridges)
        if clash:
            raise NetworkError(f"bridges of this deployment already exist here (e.g. {sorted(clash)[0]}): "
                               "`eucalab cleanup` removes leftovers of recorded runs")
        self.tunnel_kind = cl.tunnel_kind(self.placement.servers, self._run_on)
        link_cls = type("PlanTunnelLink", (cl.TunnelLink,), {"kind": self.tunnel_kind})
        # What this run makes, recorded before it exists (a crash midway leaves a record).
        self.created.bridges = local_bridges
        for server in self.remote_servers:
            self.created.remote[server] = {"ssh": ssh_words(self.ssh_config, server), "run_dir": self.remote_dir,
                                           "bridges": [s for s in plan.switches if where[s] == server],
                                           "root_links": [], "pids": {}}
        self.on_created(self.created)
        cfg = self.ssh_config
        net = cl.ClusterNet(servers=self.placement.servers, ssh_config=cfg, link=link_cls, host=cl.ClusterHost,
                            switch=cl.ClusterSwitch, controller=None, topo=None, autoSetMacs=False,
                            waitConnected=False)
        self.net = net
        try:
            if self.controller:
                _, address, port = self.controller.split(":")
                net.addController("c0", controller=RemoteController, ip=address, port=int(port))
            # Every node's shell at once: on another server each is an ssh session and a
            # shell there, seconds each under emulation. Mininet's lists keep the plan's order.
            def make_switch(name):
                local_user = where[name] == "localhost" and self.datapath == "user"
                return cl.ClusterSwitch(name, server=where[name], ssh_config=cfg, dpid=plan.switches[name].dpid,
                                        datapath="user" if local_user else "kernel", protocols="OpenFlow13",
                                        failMode="secure" if self.controller else "standalone", inband=False,
                                        inNamespace=False, listenPort=None)

            with ThreadPoolExecutor(max_workers=16) as pool:
                made = [pool.submit(cl.ClusterHost, name, server=where[name], ssh_config=cfg) for name in plan.hosts]
                made += [pool.submit(make_switch, name) for name in plan.switches]
            # Every node that started is Mininet's (its stop ends it), even if another failed.
            for future in made:
                node = None if future.exception() else future.result()
                if node is not None:
                    (net.hosts if node.name in plan.hosts else net.switches).append(node)
                    net.nameToNode[node.name] = node
            failed = [f.exception() for f in made if f.exception()]
            if failed:
                raise NetworkError(f"{len(failed)} node(s) could not start: {failed[0]}")
            self.timings["hosts"] = time.monotonic() - t0
            log.info("cluster network: %s after %.1f s", "hosts", self.timings["hosts"])
            self._record_shells(net)
            self.timings["nodes"] = time.monotonic() - t0
            log.info("cluster network: %s after %.1f s", "nodes", self.timings["nodes"])
            self._add_links(net)
            self.timings["links"] = time.monotonic() - t0
            log.info("cluster network: %s after %.1f s", "links", self.timings["links"])
            net.start()
            self.timings["switches"] = time.monotonic() - t0
            log.info("cluster network: %s after %.1f s", "switches", self.timings["switches"])
            if self.datapath == "user":
                self._tx_off(net)
            configure_hosts(plan, net.hosts)
            self.timings["configured"] = time.monotonic() - t0
            log.info("cluster network: %s after %.1f s", "configured", self.timings["configured"])
        except BaseException:
            self.stop()
            raise
        return net

    def _record_shells(self, net) -> None:
        """Each host's shell: here by pid and namespace (as EucaNetwork does), on another
        server by pid and start time (read there in one ssh call)."""
        local = [h for h in net.hosts if not getattr(h, "isRemote", False)]
        self.created.shell_pids = [h.pid for h in local]
        self.created.netns = [ino for ino in (_netns(h.pid) for h in local) if ino not in root_netns()]
        for server in self.remote_servers:
            pids = [h.pid for h in net.hosts if getattr(h, "server", None) == server]
            out = self._run_on(server, " ; ".join(f"echo {p} $(cut -d' ' -f22 /proc/{p}/stat)" for p in pids))
            starts = dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
            self.created.remote[server]["pids"] = {str(p): int(starts[str(p)]) for p in pids if str(p) in starts}
        self.on_created(self.created)

    def _add_links(self, net) -> None:
        """Links within a server as veth pairs, made by one ``ip -batch`` per server straight
        in their namespaces (on another server a command costs an ssh round trip, seconds
        under emulation); links between servers as Mininet's tunnel links, one at a time."""
        plan, where = self.plan, self.placement.server_of
        macs = {i.name: i.mac for h in plan.hosts.values() for i in h.interfaces}
        batches: dict[str, list[str]] = {s: [] for s in self.placement.servers}
        ups: dict[str, list[str]] = {s: [] for s in self.placement.servers}
        crossing = {id(t.link) for t in self.placement.tunnels}
        for link in plan.links:
            ends = ((link.a, link.a_intf), (link.b, link.b_intf))
            ports = [int(i.rsplit("eth", 1)[1]) + (0 if n in plan.hosts else 1) for n, i in ends]
            for node, intf in ends:
                if node in plan.switches:
                    where_links = (self.created.root_links if where[node] == "localhost"
                                   else self.created.remote[where[node]]["root_links"])
                    where_links.append(intf)
            self.on_created(self.created)
            if id(link) in crossing:
                t1 = time.monotonic()
                net.addLink(net[link.a], net[link.b], port1=ports[0], port2=ports[1], intfName1=link.a_intf,
                            intfName2=link.b_intf, addr1=macs.get(link.a_intf), addr2=macs.get(link.b_intf))
                log.debug("tunnel %s-%s: %.1f s", link.a, link.b, time.monotonic() - t1)
                continue
            server = where[link.a]
            batches[server].append(link_within_server([(intf, macs.get(intf), net[node].pid if node in plan.hosts
                                                        else None) for node, intf in ends]))
            ups[server] += [f"link set dev {intf} up" for node, intf in ends if node not in plan.hosts]
            intfs = [_register_intf(intf, net[node], port, macs.get(intf)) for (node, intf), port in zip(ends, ports)]
            net.links.append(PlannedLink(*intfs))
        for server, lines in batches.items():
            if not lines:
                continue
            script = "\n".join(lines + ups[server]) + "\n"
            if server == "localhost":
                run(["ip", "-batch", "-"], stdin=script)
            else:
                out = self._run_on(server, "ip -batch - <<'EOF'\n" + script + "EOF")
                if out.returncode != 0:
                    raise NetworkError(f"{server}: making its links failed: {(out.stderr or out.stdout)[:500]}")

    def _tx_off(self, net) -> None:
        """The userspace datapath forwards frames as they come: every sender computes its
        own checksums (tx offload off), here as on one machine and on the other servers,
        whose frames reach this machine's userspace switches through the tunnels."""
        plan = self.plan
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for intf in self.created.root_links:
                tx_checksum_off(intf, sock)
        for host in net.hosts:
            names = [i.name for i in plan.hosts[host.name].interfaces]
            if getattr(host, "isRemote", False):
                host.sendCmd(" ; ".join(f"ethtool -K {n} tx off >/dev/null" for n in names))
            else:
                in_namespace(host.pid, lambda h=host: _tx_off_all(plan.hosts[h.name].interfaces))
        for host in net.hosts:
            if host.waiting:
                host.waitOutput()

    def stop(self) -> list[str]:
        """Remove exactly what this network made, on every server; safe to call twice."""
        if self._stopped:
            return []
        self._stopped = True
        problems = []
        if self.net is not None:
            try:
                self.net.stop()  # Mininet's own teardown of its nodes and links (never `mn -c`)
            except Exception as exc:  # noqa: BLE001: what is left is deleted by record below
                problems.append(f"mininet stop: {exc}")
            for node in self.net.hosts + self.net.switches + self.net.controllers:
                _close_shell(node)
            self.net = None
        problems += teardown(self.created)
        for server, record in self.created.remote.items():
            try:
                out = self._run_on(server, remote_teardown_line(record))
            except subprocess.TimeoutExpired:
                problems.append(f"{server}: teardown timed out")
                continue
            if out.returncode != 0 or out.stdout.strip():
                problems.append(f"{server}: {(out.stdout + out.stderr).strip()[:300]}")
        return problems


def link_within_server(ends: list[tuple[str, str | None, int | None]]) -> str:
    """The ``ip -batch`` line of a link between two nodes on one server (``veth_line``'s
    ends): a veth pair with the tunnels' MTU, like every other link of the network."""
    return veth_line(ends, mtu=TUNNEL_MTU)


def _netns(pid: int) -> int:
    import os

    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _close_shell(node) -> None:
    for attr in ("stdin", "stdout"):
        obj = getattr(node, attr, None)
        try:
            if obj is not None:
                obj.close()
        except OSError:
            pass


__all__ = ["ClusterNetwork", "TUNNEL_MTU", "link_within_server", "local_address_towards", "ssh_words"]
