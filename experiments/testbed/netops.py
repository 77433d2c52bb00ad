"""What a deployment does to its running network: links down and up (faults), service
virtual IPs placed on a member or steered by the SDN controller, the site firewall's
admissions, and whether a host listens on a port."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from components.common import ha_net
from topologies.network import namespace
from topologies.plan import ServicePair

from .errors import DeploymentError

if TYPE_CHECKING:
    from .deployment import Deployment


def listens(proc_net_tcp: str, port: int) -> bool:
    """Whether /proc/net/tcp or tcp6 text has a LISTEN socket on ``port``: the local port
    with a zero remote end in state 0A, not any socket with that port at either end (a
    connection made to that port elsewhere matched once, and a test then reached a server
    that was not yet up)."""
    return re.search(rf":{port:04X} 0+:0000 0A ", proc_net_tcp) is not None


class NetworkOps:
    """Links, VIPs and the gateway's admissions of one deployment."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep
        self.vip_holder: dict[str, str] = {}  # pair name -> host holding its VIP
        self.admitted: set[tuple[str, int]] = set()  # extra services the site's firewall admits (admit)

    def admit(self, address: str, port: int) -> None:
        """Let users reach one more TCP service through the site's firewall (the border
        gateway admits only the public services and elastic IPs: topologies/firewall.py)."""
        from topologies.firewall import admit_rule

        if (address, port) in self.admitted:
            return
        out = self.dep.host("gw").cmd("nft -f - <<'EOF'\n" + admit_rule(address, port) + "EOF")
        if out.strip():
            raise RuntimeError(f"admitting {address}:{port} at the gateway failed: {out.strip()}")
        self.admitted.add((address, port))

    def listening(self, host: str, port: int) -> bool:
        """Whether a TCP socket on ``host`` listens on ``port``, over IPv4 or IPv6 (iperf3
        and others listen on [::] only): see ``listens``."""
        return listens(self.dep[host].cmd("cat /proc/net/tcp /proc/net/tcp6"), port)

    def set_link(self, host: str, network: str | None, up: bool) -> None:
        """Take a host's interface on ``network`` (None: every interface) down or up.

        The kernel drops a host's routes through an interface that goes down and does
        not bring them back: bringing a link up re-applies the host's planned routes.
        """
        dep = self.dep
        ph = dep.plan.hosts[host]
        intfs = [i.name for i in ph.interfaces if network is None or i.network == network]
        if not up:
            # Over rtnetlink from this thread, inside the host's namespace: every link is down
            # within microseconds of the call (a host failure is one event, and the fault's
            # time is when it bites: going through the host's shell and a fork of `ip` put
            # 3-8 ms between them, counted as detection).
            with namespace(dep.net[host].pid):
                errors = {name: ha_net.set_link(name, up=False) for name in intfs}
            if any(errors.values()):
                raise RuntimeError(f"{host}: taking links down failed: "
                                   + ", ".join(f"{n}: {os.strerror(e)}" for n, e in errors.items() if e))
        else:
            cmds = [f"link set dev {name} up" for name in intfs]
            if ph.default_route:
                cmds.append(f"route replace default via {ph.default_route}")
            cmds += [f"route replace {dest} via {via}" for dest, via in ph.routes]
            lines = " ".join(f"'{c}'" for c in cmds)
            dep.net[host].cmd(f"printf '%s\\n' {lines} | ip -force -batch - 2>/dev/null")
        dep.events.emit("link.up" if up else "link.down", host=host, network=network or "all",
                        interfaces=intfs)

    def place_vip(self, pair: ServicePair, host: str, announce: bool = True) -> None:
        """Put a pair's virtual IP(s) on ``host`` (and take them off its peer)."""
        dep = self.dep
        for member in pair.members:
            node = dep.net[member]
            ph = dep.plan.hosts[member]
            cmds = []
            for vip, network in ((pair.vip, "cloud"), (pair.private_vip, f"priv{pair.cluster}")):
                if vip is None:
                    continue
                intf = ph.intf(network)
                prefix = intf.ip.split("/")[1]
                if member == host:
                    cmds.append(f"ip addr replace {vip}/{prefix} dev {intf.name}")
                    if announce:
                        cmds.append(f"arping -q -U -c 1 -I {intf.name} {vip} &")
                else:
                    cmds.append(f"ip addr del {vip}/{prefix} dev {intf.name} 2>/dev/null")
            node.cmd("; ".join(cmds))
        if dep.spec.ha.takeover == "sdn" and pair.secondary is not None:
            self.redirect_vip(pair, host)
        self.vip_holder[pair.name] = host
        if dep.events:
            dep.events.emit("vip.placed", pair=pair.name, host=host, vip=pair.vip)

    def redirect_vip(self, pair: ServicePair, host: str, epoch: int | None = None) -> tuple[int, dict]:
        """Ask the SDN controller to steer ``pair``'s VIP to ``host`` (takeover sdn).

        ``epoch`` None uses the epoch the controller holds (0 before any), as the driver
        placing a VIP must not outrank the pair's own HA agents. Returns (status, body).
        """
        request = self.dep.control_request
        if epoch is None:
            status, table = request("GET", "/vips")
            epoch = (table.get("pairs", {}).get(pair.name, {}).get("epoch") or 0) if status == 200 else 0
        status, body = request("PUT", f"/vips/{pair.name}", {"pair": pair.name, "epoch": epoch, "primary": host})
        if status != 200:
            raise DeploymentError(f"the controller refused to steer {pair.name}'s VIP to {host}: {status} {body}")
        return status, body
