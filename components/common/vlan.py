"""802.1Q on the hosts (``vlan_tagging: host``), as Eucalyptus's MANAGED mode built it.

Each security group has a VLAN. An NC holds, on its private interface (VNET_PRIVINTERFACE),
a sub-interface ``<interface>.<vlan>`` per group with instances there, enslaved to a Linux
bridge ``eucabr<vlan>`` together with the instances' own interfaces (their taps; here the
NC's end of a VM slot's link). Frames leave the NC tagged, the cluster's switches pass
them as they are (VLAN clean), and the CC routes between groups with a sub-interface
``<interface>.<vlan>`` of its own holding each group's gateway address. The NC's own
address and the cluster's infrastructure stay on the untagged interface.

The functions here are pure: they name the interfaces and say the ``ip -batch``
commands; the NC (components/nc/slots.py) and the CC router (components/cc/router.py)
run them in their own network namespaces.
"""

from __future__ import annotations

IFNAMSIZ = 16  # Linux interface names: 15 characters and a NUL
VLAN_IDS = range(1, 4095)  # 0 and 4095 are reserved by 802.1Q
BRIDGE_PREFIX = "eucabr"


def _check_vlan(vlan: int) -> int:
    if isinstance(vlan, bool) or not isinstance(vlan, int) or vlan not in VLAN_IDS:
        raise ValueError(f"a VLAN id is an integer 1..4094, not {vlan!r}")
    return vlan


def vlan_interface(parent: str, vlan: int) -> str:
    """The sub-interface of ``parent`` tagging VLAN ``vlan``: ``c1n1-eth0.10``."""
    name = f"{parent}.{_check_vlan(vlan)}"
    if len(name) > IFNAMSIZ - 1:
        raise ValueError(f"the VLAN sub-interface name {name} is longer than {IFNAMSIZ - 1} characters")
    return name


def vlan_bridge(vlan: int) -> str:
    """The NC's Linux bridge of VLAN ``vlan``: ``eucabr10``."""
    return f"{BRIDGE_PREFIX}{_check_vlan(vlan)}"


def add_vlan_interface(parent: str, vlan: int, existing: set[str]) -> list[str]:
    """Commands making ``<parent>.<vlan>`` exist and be up; nothing to add if it exists."""
    sub = vlan_interface(parent, vlan)
    add = [] if sub in existing else [f"link add link {parent} name {sub} type vlan id {vlan}"]
    return add + [f"link set dev {sub} up"]


def attach_commands(parent: str, vlan: int, port: str, existing: set[str]) -> list[str]:
    """What an NC runs when an instance of VLAN ``vlan`` boots behind ``port``: the
    sub-interface and the bridge made if ``existing`` (the NC's interface names) lacks
    them, both enslaved, the port enslaved, everything up. Running it twice changes
    nothing the second time."""
    sub, bridge = vlan_interface(parent, vlan), vlan_bridge(vlan)
    lines = []
    if bridge not in existing:
        # No STP: a bridge with a single uplink forms no loop, and STP would hold new
        # ports in listening and learning for the forward delay.
        lines.append(f"link add name {bridge} type bridge stp_state 0")
    lines += add_vlan_interface(parent, vlan, existing)
    return lines + [f"link set dev {sub} master {bridge}",
                    f"link set dev {port} master {bridge}",
                    f"link set dev {port} up",
                    f"link set dev {bridge} up"]


def release_commands(port: str) -> list[str]:
    """What an NC runs when the instance behind ``port`` ends: the port leaves its bridge,
    so the slot is in no VLAN until its next instance boots. The bridge and the
    sub-interface stay for the group's other instances (Eucalyptus kept them too)."""
    return [f"link set dev {port} nomaster"]


def link_names(ip_link_output: str) -> set[str]:
    """Interface names from ``ip -o link show`` (``c1n1-eth0.10@c1n1-eth0`` -> ``c1n1-eth0.10``)."""
    names = set()
    for line in ip_link_output.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            names.add(parts[1].strip().split("@")[0])
    return names
