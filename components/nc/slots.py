"""The network of the NC's VM slots.

A slot's interface gets the instance's MAC, address and default route by entering the
slot's network namespace, whose path the testbed gives in the config; the slot stays
untagged. With ``vlan_tagging: host`` the NC also puts the slot's port (config
``slots[].port``) into the Linux bridge of the instance's VLAN, with a sub-interface
``<private_interface>.<vlan>`` as the uplink (components/common/vlan.py), and takes it
out again when the instance ends; with ``switch`` that is Open vSwitch's business.
"""

from __future__ import annotations

import asyncio

from components.common import vlan as vlans

from .instances import BootError


class SlotNetwork:
    """Configures the slots of the ``NodeController`` ``nc``: commands in their namespaces."""

    def __init__(self, nc):
        self.nc = nc
        self.vlan_lock = asyncio.Lock()  # two boots must not both add one VLAN's interfaces

    async def in_slot(self, slot: dict | None, *argv: str, stdin: str | None = None) -> str:
        """A command in ``slot``'s network namespace (None: the NC's own)."""
        enter = [] if slot is None else ["nsenter", f"--net={slot['netns']}"]
        proc = await asyncio.create_subprocess_exec(
            *enter, *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate(stdin.encode() if stdin else None)
        if proc.returncode != 0:
            where = f"slot {slot['name']}" if slot else "the NC's VLAN bridge"
            raise BootError(f"configuring {where} failed: {out.decode().strip()[:300]}")
        return out.decode()

    async def _here(self, *argv: str, stdin: str | None = None) -> str:
        """A command in the NC's own network namespace."""
        return await self.in_slot(None, *argv, stdin=stdin)

    async def join_vlan(self, inst: dict) -> None:
        """Host tagging: the slot's port into the bridge of the instance's VLAN (made if missing)."""
        nc = self.nc
        if nc.vlan_tagging != "host":
            return
        async with self.vlan_lock:
            existing = vlans.link_names(await self._here("ip", "-o", "link", "show"))
            port = nc.slots[inst["slot"]]["port"]
            await self._here("ip", "-batch", "-", stdin="\n".join(
                vlans.attach_commands(nc.private_interface, inst["vlan"], port, existing)) + "\n")
        nc.events.emit("vlan.joined", instance=inst["id"], vlan=inst["vlan"], port=port,
                       bridge=vlans.vlan_bridge(inst["vlan"]))

    async def configure(self, inst: dict) -> None:
        """The slot's interface as the instance's: MAC, address, default route."""
        slot = self.nc.slots[inst["slot"]]
        intf = slot["interface"]
        await self.in_slot(slot, "ip", "-batch", "-", stdin="\n".join([
            f"link set dev {intf} down",
            f"link set dev {intf} address {inst['mac']}",
            f"addr flush dev {intf}",
            f"addr add {inst['ip']}/{inst['prefix']} dev {intf}",
            f"link set dev {intf} up",
            "link set dev lo up",
            f"route replace default via {inst['gateway']}",
        ]) + "\n")
        # A booting VM speaks first (DHCP, ARP). A silent slot would leave the switches
        # sending its MAC, derived from its address and so an earlier instance's too, to
        # the port where they last saw it. arping lingers after sending: not waited for.
        await asyncio.create_subprocess_exec(
            "nsenter", f"--net={slot['netns']}", "arping", "-q", "-U", "-c", "1", "-I", intf, inst["ip"],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def clear(self, inst: dict) -> None:
        """The slot's interface cleared and its port out of the VLAN's bridge; safe on a
        half-configured slot."""
        slot = self.nc.slots.get(inst["slot"])
        if not slot:
            return
        try:
            await self.in_slot(slot, "ip", "-batch", "-", stdin=(
                f"addr flush dev {slot['interface']}\nroute flush dev {slot['interface']}\n"))
        except BootError:
            pass
        try:
            if self.nc.vlan_tagging == "host":
                await self._here("ip", "-batch", "-", stdin="\n".join(vlans.release_commands(slot["port"])) + "\n")
        except BootError as exc:
            self.nc.events.emit("vlan.release_failed", instance=inst["id"], error=str(exc))
