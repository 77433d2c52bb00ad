"""802.1Q on the hosts (components/common/vlan.py): names and the NC's commands, without root."""

from __future__ import annotations

import pytest

from components.common.vlan import (add_vlan_interface, attach_commands, link_names, release_commands,
                                    vlan_bridge, vlan_interface)


def test_names_as_eucalyptus_gave_them():
    assert vlan_interface("c1n1-eth0", 10) == "c1n1-eth0.10"
    assert vlan_bridge(4094) == "eucabr4094"


@pytest.mark.parametrize("vlan", [0, 4095, -1, "10", None, True, 10.0])
def test_a_vlan_id_outside_802_1q_is_refused(vlan):
    with pytest.raises(ValueError, match="VLAN id is an integer 1..4094"):
        vlan_interface("c1n1-eth0", vlan)
    with pytest.raises(ValueError):
        vlan_bridge(vlan)


def test_a_sub_interface_name_too_long_for_linux_is_refused():
    assert vlan_interface("c9n99-eth0", 4094) == "c9n99-eth0.4094"  # 15 characters
    with pytest.raises(ValueError, match="longer than 15 characters"):
        vlan_interface("c10n10-eth0", 4094)


def test_the_first_instance_of_a_vlan_makes_the_bridge_and_the_sub_interface():
    assert attach_commands("c1n1-eth0", 10, "c1n1-eth1", {"lo", "c1n1-eth0", "c1n1-eth1"}) == [
        "link add name eucabr10 type bridge stp_state 0",
        "link add link c1n1-eth0 name c1n1-eth0.10 type vlan id 10",
        "link set dev c1n1-eth0.10 up",
        "link set dev c1n1-eth0.10 master eucabr10",
        "link set dev c1n1-eth1 master eucabr10",
        "link set dev c1n1-eth1 up",
        "link set dev eucabr10 up",
    ]


def test_a_second_instance_of_the_vlan_only_joins():
    existing = {"c1n1-eth0", "c1n1-eth1", "c1n1-eth2", "c1n1-eth0.10", "eucabr10"}
    lines = attach_commands("c1n1-eth0", 10, "c1n1-eth2", existing)
    assert not [line for line in lines if line.startswith("link add")]
    assert "link set dev c1n1-eth2 master eucabr10" in lines
    # Another VLAN on the same NC: a bridge and a sub-interface of its own.
    other = attach_commands("c1n1-eth0", 11, "c1n1-eth2", existing)
    assert other[:2] == ["link add name eucabr11 type bridge stp_state 0",
                         "link add link c1n1-eth0 name c1n1-eth0.11 type vlan id 11"]
    assert add_vlan_interface("c1cc1-eth1", 11, {"c1cc1-eth1.11"}) == ["link set dev c1cc1-eth1.11 up"]


def test_release_takes_the_port_out_of_its_bridge_only():
    assert release_commands("c1n1-eth1") == ["link set dev c1n1-eth1 nomaster"]


def test_link_names_from_ip_link():
    out = ("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n"
           "2: c1n1-eth0.10@c1n1-eth0: <BROADCAST,MULTICAST,UP> mtu 1500\n"
           "3: eucabr10: <BROADCAST,MULTICAST,UP> mtu 1500\n")
    assert link_names(out) == {"lo", "c1n1-eth0.10", "eucabr10"}
