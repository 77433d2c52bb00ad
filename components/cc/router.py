"""The primary CC as its cluster's router: the rendered router (components/cc/rules.py)
applied to the CC host's kernel (addresses, nftables, sysctls, neighbour entries).

A secondary CC holds none of the addresses. It holds the rules of the view its primary
replicated to it, armed (``apply_router(..., armed=True)``), as the backup of a VRRP
router pair carries the same firewall: without the gateway and elastic addresses no
packet is routed to it, so they are inert, and its promotion changes addresses only.
A CC that stops being primary withdraws its addresses (its rules stay armed), and so
does one that starts, in case a crash left them in its kernel; ``withdraw_config`` is
the empty router (no addresses, no rules, forwarding policy drop).

``render_router`` (components/cc/rules.py, re-exported here) is pure. ``apply_router`` changes the
namespace it runs in, touching only what differs from what it last applied (a takeover
is in the outage): the CC service calls it through ``apply_router_async`` (the
commands run in a worker thread, its event loop keeps serving), and
``python -m components.cc.router --apply FILE --primary`` applies a rendered config
(JSON) from a shell on the CC host. No Mininet, no os-ken.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from components.common import ha_net
from components.common.nft import Nftables as _Nftables
from components.common import vlan as vlans

from .rules import ROUTED_MARK, TABLE, RouterConfig, RouterHost, _empty, render_router, withdraw_config

# The router's API: rendering (rules.py) and applying (here), one module to import.
__all__ = ["ANNOUNCE_AGAIN_S", "RouterConfig", "RouterHost", "announce", "apply_router", "apply_router_async",
           "render_router", "withdraw_config"]

PROC_SYS = Path("/proc/sys")
# Gratuitous ARP again this long after an address arrived: Linux ignores an update for a
# neighbour entry changed less than locktime (1 s) ago (the HA agent's VIPs do the same).
ANNOUNCE_AGAIN_S = (1.1, 2.2)


def _run(argv: list[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


class _Kernel:
    """What this process last made the namespace hold, so a change costs only what changed.

    A takeover is in the outage: forking ``iptables`` and ``ip`` a dozen times cost 55 ms
    a promotion on this machine (p50 over 100 CC failovers). The rules are one nftables
    table, loaded in one transaction only when their text changed; addresses are added and
    removed over rtnetlink (microseconds), the ones held listed by ``ip`` once per process
    (a crash may have left some) and tracked after that.
    """

    def __init__(self) -> None:
        self.nft = _Nftables()
        self.rules: str | None = None
        self.addresses: dict[str, set[str]] = {}
        self.neighbours: dict[str, str] = {}  # set by this process as primary, IP -> MAC
        self.sysctls: dict[str, str] = {}  # written by this process
        self.vlan_interfaces: set[str] | None = None  # VLAN sub-interfaces of the host (listed once)
        # Whether connections routed here may be left (None: unknown, a new process after a
        # crash may have left some); forgotten once a member stops routing, not on each re-arm.
        self.routed_left: bool | None = None

    def set_sysctls(self, want: dict[str, str]) -> None:
        """Write the sysctls whose value this process has not written yet (a write is a
        syscall on a takeover's path, and one took 10 ms on a loaded host)."""
        for key, value in want.items():
            if self.sysctls.get(key) != value:
                self.sysctls.pop(key, None)  # unknown if the write fails
                (PROC_SYS / key.replace(".", "/")).write_text(value + "\n")
                self.sysctls[key] = value

    def load_rules(self, text: str) -> None:
        """Load ``text`` unless it is what this process last loaded. The first load of a
        process (or the one after a failure) re-creates the table, in the same transaction:
        whatever an older process left in it (another chain, another hook) goes, off the
        takeover's path, since a member loads its empty rules when it starts."""
        if text != self.rules:
            fresh = self.rules is None
            self.rules = None  # unknown if the load fails
            self.nft.run(f"table ip {TABLE}\ndelete table ip {TABLE}\n{text}" if fresh else text)
            self.rules = text

    def held(self, intf: str, managed: str) -> set[str]:
        if intf not in self.addresses:
            out = _run(["ip", "-o", "-4", "addr", "show", "dev", intf]).stdout
            self.addresses[intf] = {line.split()[3] for line in out.splitlines() if " inet " in line}
        net = ipaddress.ip_network(managed)
        return {a for a in self.addresses[intf] if ipaddress.ip_interface(a).ip in net}

    def sync_addresses(self, intf: str, want: list[str], managed: str) -> list[str]:
        """Make ``intf`` hold exactly ``want`` among the addresses in ``managed``; returns those added."""
        mine = self.held(intf, managed)
        added = []
        for addr in sorted(set(want) - mine):
            iface = ipaddress.ip_interface(addr)
            err = ha_net.set_address(True, intf, str(iface.ip), iface.network.prefixlen)
            if err:
                raise RuntimeError(f"adding {addr} to {intf}: {os.strerror(err)}")
            self.addresses[intf].add(addr)
            added.append(str(iface.ip))
        for addr in sorted(mine - set(want)):
            iface = ipaddress.ip_interface(addr)
            ha_net.set_address(False, intf, str(iface.ip), iface.network.prefixlen)  # gone already: fine
            self.addresses[intf].discard(addr)
        return added


    def sync_vlan_interfaces(self, parent: str, want: dict[str, dict]) -> None:
        """Host tagging: every VLAN sub-interface of ``want`` exists on ``parent`` and is up
        (made once, kept; as the NCs keep theirs)."""
        if self.vlan_interfaces is None:
            out = _run(["ip", "-o", "link", "show", "type", "vlan"]).stdout
            self.vlan_interfaces = vlans.link_names(out)
        missing = {intf: v for intf, v in want.items() if intf not in self.vlan_interfaces}
        if missing:
            lines = [c for v in missing.values()
                     for c in vlans.add_vlan_interface(parent, v["vlan"], self.vlan_interfaces)]
            _run(["ip", "-batch", "-"], stdin="\n".join(lines) + "\n")
            self.vlan_interfaces |= set(missing)

    def sync_neighbours(self, intf: str, want: dict[str, str]) -> None:
        """Every instance's MAC in the neighbour table, so the first packet routed to it waits
        on no ARP: a new primary's ARP request could meet switch flows a moment stale and be
        lost, and Linux asks again only a second later."""
        for ip, mac in sorted(want.items()):
            if self.neighbours.get(ip) != mac:
                err = ha_net.set_neighbour(intf, ip, mac)
                if err:
                    raise RuntimeError(f"neighbour {ip} {mac} on {intf}: {os.strerror(err)}")
                self.neighbours[ip] = mac


_KERNEL = _Kernel()
_GARP = ha_net.GarpSender()


def forget_routed() -> None:
    """Forget every connection this host routed (``ROUTED_MARK``): it routes none any more.

    Their segments now reach the peer, and a connection of the same addresses and ports
    opened later through the peer would otherwise meet the old entry when a switchover
    brings it back here: conntrack finds it out of that entry's window, calls it invalid,
    so it gets no NAT, and the host holding the elastic IP answers it with a reset (one
    lost request in a CC planned switchover of run 20261207T052412Z: the user's ports
    had wrapped since the CC host failures a minute before, within TIME_WAIT's 120 s).
    Without an entry, the segment is picked up mid-stream and translated as usual."""
    err = ha_net.forget_connections(ROUTED_MARK)
    if err:
        raise RuntimeError(f"forgetting the routed connections: {os.strerror(err)}")


def announce(intf: str, addresses: list[str]) -> list[str]:
    """Gratuitous ARP for addresses that arrived here, so neighbours learn at once (EUCA-2281).

    One frame each from an open packet socket (no fork of ``arping``). Linux ignores an
    update for a neighbour entry changed less than a second ago, so the CC service sends
    them again later (``ANNOUNCE_AGAIN_S``). Returns the addresses that could not be
    announced (interface down).
    """
    failed = []
    for addr in addresses:
        try:
            _GARP.send(intf, addr)
        except OSError:
            failed.append(addr)
    return failed


def apply_router(config: RouterConfig, primary: bool, armed: bool = False, announce_held: bool = False) -> dict:
    """Apply ``config`` in this network namespace: as the router (primary) or as nothing (secondary).

    ``armed`` (a secondary only): load the rules of ``config`` but hold none of its
    addresses, so that a promotion to the same view changes addresses only (the rules'
    transaction was 2.4 ms p50 of a CC takeover alone, 6.2 ms with every pair of the cloud
    running). Armed rules are inert: the host holds no gateway or elastic address, so
    no neighbour sends it a packet to route, translate or forward.

    ``announce_held`` (a promotion): announce every address the router holds, not only those
    that arrived: a member taking the cluster back while it still held them (two planned
    switchovers in a row, docs/ha.md) must pull the neighbours back from its peer.

    Returns what changed: {"added": [...], "announced": {interface: [...]}, "ms": {step: ms}}
    (how long each step took: a takeover waits on all of them), and "errors" when forgetting
    the routed connections failed (the rest is done; the next withdrawal tries again).
    Raises RuntimeError (a command failed) or OSError (a sysctl could not be written).
    """
    steps = _Steps()
    _KERNEL.set_sysctls(config.sysctls)
    steps.done("sysctls")
    _KERNEL.load_rules(config.ruleset if primary or armed else _empty())
    steps.done("rules")
    if config.vlan_tagging == "host":
        # Armed too: a promotion then only adds addresses.
        _KERNEL.sync_vlan_interfaces(config.private_interface, config.vlans)
        steps.done("vlans")
    # What each private-side interface holds: the untagged one, and with host tagging every
    # VLAN sub-interface this host has (one of a group gone holds nothing).
    private = {config.private_interface: (config.private_addresses, config.neighbours)}
    for intf in sorted(_KERNEL.vlan_interfaces or ()):
        v = config.vlans.get(intf, {})
        private[intf] = (v.get("addresses", []), v.get("neighbours", {}))
    added = {intf: _KERNEL.sync_addresses(intf, want if primary else [], config.managed_private)
             for intf, (want, _) in private.items()}
    added[config.public_interface] = _KERNEL.sync_addresses(
        config.public_interface, config.public_addresses if primary else [], config.managed_public)
    steps.done("addresses")
    errors = []
    if primary:
        for intf, (_, neighbours) in private.items():
            _KERNEL.sync_neighbours(intf, neighbours)
        _KERNEL.routed_left = True
    else:
        _KERNEL.neighbours.clear()  # a later promotion sets them again
        if _KERNEL.routed_left is not False:
            try:
                forget_routed()
                _KERNEL.routed_left = False
            except RuntimeError as exc:
                errors.append(str(exc))
    steps.done("neighbours")
    told = added
    if primary and announce_held:
        told = {intf: [a.split("/")[0] for a in want] for intf, (want, _) in private.items()}
        told[config.public_interface] = [a.split("/")[0] for a in config.public_addresses]
    for intf, addresses in told.items():
        announce(intf, addresses)
    steps.done("announce")
    announced = {i: a for i, a in told.items() if a}
    done = {"added": [x for addrs in added.values() for x in addrs], "announced": announced, "ms": steps.ms}
    return {**done, "errors": errors} if errors else done


class _Steps:
    """Milliseconds per step of a router change, for its event."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.monotonic()

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.ms[step] = round(1000 * (now - self._t), 2)
        self._t = now


async def apply_router_async(config: RouterConfig, primary: bool, armed: bool = False,
                             inline: bool = False, announce_held: bool = False) -> dict:
    """``apply_router`` for an asyncio program (the CC service): the commands run in a worker
    thread, so heartbeats and API requests go on meanwhile. Callers serialise their calls.
    The result's "ms" has "thread": from the call to the worker starting, and "back": from
    the worker ending to the caller resuming.

    ``inline``: in the caller's thread instead, for a takeover. Its rules are armed
    already, so what is left is addresses and gratuitous ARPs (0.5 ms p50), and the hand-off
    to a worker thread had waited up to 6.4 ms for that thread to get a CPU (p99 6.1
    over 100 CC host failures, `20261202T174256Z-ha-targets`)."""
    if inline:
        return apply_router(config, primary, armed, announce_held)
    called = time.monotonic()

    def work() -> tuple[float, dict, float]:
        started = time.monotonic()
        return started, apply_router(config, primary, armed, announce_held), time.monotonic()

    started, result, ended = await asyncio.to_thread(work)
    result["ms"].update(thread=round(1000 * (started - called), 2), back=round(1000 * (time.monotonic() - ended), 2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.cc.router", description=__doc__.splitlines()[0])
    parser.add_argument("--apply", required=True, type=Path, help="a RouterConfig as JSON (render_router)")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--primary", action="store_true", help="hold the addresses and rules")
    role.add_argument("--secondary", action="store_true", help="hold none of them")
    role.add_argument("--armed", action="store_true", help="a secondary holding the rules, none of the addresses")
    args = parser.parse_args(argv)
    config = RouterConfig.from_json(args.apply.read_text())
    try:
        result = apply_router(config, primary=args.primary, armed=args.armed)
    except (OSError, RuntimeError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
