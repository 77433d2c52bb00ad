"""A cluster's network bookkeeping, per Eucalyptus networking mode.

* MANAGED: each security group gets its own subnet (VNET_ADDRSPERNET addresses) and
  its own VLAN. In each subnet the network address, the gateway (first host
  address, held by the primary CC) and the broadcast address are reserved, as in
  Eucalyptus.
* MANAGED-NOVLAN: the same subnets, no VLANs.
* SYSTEM, STATIC: one flat range on the cluster network; the site router is the gateway.

Instances get MAC addresses derived from their IP (Eucalyptus's d0:0d:<ip> form),
so a MAC is unique whenever the IP is. Pure: no sockets, no processes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from components.common.modes import MANAGED_MODES, features

VLAN_MIN, VLAN_MAX = 10, 4094
DEFAULT_ADDRS_PER_NET = 32  # Eucalyptus's VNET_ADDRSPERNET default; CC config ``addrs_per_net``
RESERVED_PER_NET = 3  # the network address, the gateway and the broadcast address


def configured_addrs_per_net(config: dict) -> int:
    """A CC's addresses per security group's subnet, from its config (``addrs_per_net``)."""
    return int(config.get("addrs_per_net", DEFAULT_ADDRS_PER_NET))


def instances_per_group(addrs_per_net: int = DEFAULT_ADDRS_PER_NET) -> int:
    """How many instances of one security group a MANAGED cluster can address (its subnet
    less the reserved addresses): more need another group."""
    return addrs_per_net - RESERVED_PER_NET


class AllocationError(Exception):
    """No address, subnet or VLAN left (or a double allocation was attempted)."""


@dataclass
class GroupNet:
    group: str
    subnet: str
    gateway: str
    vlan: int | None
    addresses: dict[str, str] = field(default_factory=dict)  # instance id -> ip


def mac_for(ip: str) -> str:
    """Eucalyptus-style instance MAC: d0:0d followed by the four bytes of the IP."""
    b = ipaddress.ip_address(ip).packed
    return "d0:0d:" + ":".join(f"{x:02x}" for x in b)


class NetworkAllocator:
    def __init__(self, mode: str, cluster: int, addrs_per_net: int = DEFAULT_ADDRS_PER_NET,
                 vm_space: str | None = None, flat_space: str | None = None,
                 flat_gateway: str | None = None):
        self.mode = mode
        self.cluster = cluster
        if addrs_per_net < 8 or addrs_per_net & (addrs_per_net - 1):
            raise ValueError("addrs_per_net must be a power of two, at least 8")
        self.prefix = 32 - (addrs_per_net.bit_length() - 1)
        self.vm_space = ipaddress.ip_network(vm_space or f"10.{100 + cluster}.16.0/20")
        self.flat_space = ipaddress.ip_network(flat_space or f"10.{100 + cluster}.2.0/23")
        self.flat_gateway = flat_gateway or f"10.{100 + cluster}.0.1"
        self.groups: dict[str, GroupNet] = {}
        self.flat: dict[str, str] = {}  # instance id -> ip (SYSTEM/STATIC)

    @property
    def managed(self) -> bool:
        return self.mode in MANAGED_MODES

    def group_net(self, group: str) -> GroupNet:
        """The group's subnet (and VLAN), allocated on first use."""
        if not self.managed:
            return GroupNet(group, str(self.flat_space), self.flat_gateway, None)
        if group in self.groups:
            return self.groups[group]
        used_subnets = {g.subnet for g in self.groups.values()}
        used_vlans = {g.vlan for g in self.groups.values()}
        for subnet in self.vm_space.subnets(new_prefix=self.prefix):
            if str(subnet) not in used_subnets:
                break
        else:
            raise AllocationError(f"no free subnet left in {self.vm_space} for group {group}")
        vlan = None
        if features(self.mode).l2_isolation:  # one VLAN per group
            vlan = next((v for v in range(VLAN_MIN, VLAN_MAX + 1) if v not in used_vlans), None)
            if vlan is None:
                raise AllocationError("no free VLAN left")
        net = GroupNet(group, str(subnet), str(subnet.network_address + 1), vlan)
        self.groups[group] = net
        return net

    def allocate(self, instance: str, group: str) -> tuple[str, str, str, int | None, int]:
        """An address for an instance: (ip, mac, gateway, vlan, prefix length)."""
        if instance in self.flat or any(instance in g.addresses for g in self.groups.values()):
            raise AllocationError(f"{instance} already has an address")
        if not self.managed:
            taken = set(self.flat.values())
            for ip in self.flat_space.hosts():
                if str(ip) not in taken:
                    self.flat[instance] = str(ip)
                    return str(ip), mac_for(str(ip)), self.flat_gateway, None, \
                        ipaddress.ip_network(f"10.{100 + self.cluster}.0.0/16").prefixlen
            raise AllocationError(f"no free address left in {self.flat_space}")
        net = self.group_net(group)
        subnet = ipaddress.ip_network(net.subnet)
        reserved = {str(subnet.network_address), net.gateway, str(subnet.broadcast_address)}
        taken = set(net.addresses.values()) | reserved
        for ip in subnet:
            if str(ip) not in taken:
                net.addresses[instance] = str(ip)
                return str(ip), mac_for(str(ip)), net.gateway, net.vlan, subnet.prefixlen
        raise AllocationError(f"group {group} has no free address left in {net.subnet}")

    def release(self, instance: str) -> None:
        """Free an instance's address; a group with no instance left frees its subnet and VLAN."""
        if self.flat.pop(instance, None) is not None:
            return
        for gid, net in list(self.groups.items()):
            if net.addresses.pop(instance, None) is not None:
                if not net.addresses:
                    del self.groups[gid]
                return

    def restore(self, instance: str, group: str, ip: str) -> None:
        """Record an address in use (rebuilding the view from the NCs after a restart)."""
        if not self.managed:
            if ip in self.flat.values() and self.flat.get(instance) != ip:
                raise AllocationError(f"{ip} is already in use")
            self.flat[instance] = ip
            return
        net = self.group_net(group)
        if ipaddress.ip_address(ip) not in ipaddress.ip_network(net.subnet):
            # The group's subnet is decided by its instances: adopt the one this address is in.
            subnet = ipaddress.ip_network(f"{ip}/{self.prefix}", strict=False)
            if not net.addresses:
                net.subnet, net.gateway = str(subnet), str(subnet.network_address + 1)
            else:
                raise AllocationError(f"{ip} is outside group {group}'s subnet {net.subnet}")
        if ip in net.addresses.values() and net.addresses.get(instance) != ip:
            raise AllocationError(f"{ip} is already in use")
        net.addresses[instance] = ip
