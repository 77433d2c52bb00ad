"""CC scheduling policies and the address/VLAN allocator."""

from __future__ import annotations

import ipaddress

import pytest

from components.cc.netalloc import AllocationError, NetworkAllocator, mac_for
from components.cc.scheduler import InsufficientCapacity, NodeState, Scheduler


def nodes(n=3, slots=2):
    return [NodeState(f"c1n{i}", [f"c1n{i}v{s}" for s in range(1, slots + 1)]) for i in range(1, n + 1)]


def test_roundrobin_spreads_across_ncs():
    s = Scheduler(nodes(), "ROUNDROBIN")
    placed = s.place(["i-1", "i-2", "i-3", "i-4"])
    assert [placed[i][0] for i in ("i-1", "i-2", "i-3", "i-4")] == ["c1n1", "c1n2", "c1n3", "c1n1"]
    assert placed["i-4"][1] == "c1n1v2"


def test_greedy_fills_one_nc_first():
    s = Scheduler(nodes(), "GREEDY")
    placed = s.place(["a", "b", "c"])
    assert [placed[i][0] for i in "abc"] == ["c1n1", "c1n1", "c1n2"]


def test_powersave_prefers_busy_ncs():
    s = Scheduler(nodes(), "POWERSAVE")
    s.occupy("c1n2", "c1n2v1", "old")
    assert s.place(["x"])["x"] == ("c1n2", "c1n2v2")


def test_capacity_is_honoured_all_or_nothing():
    s = Scheduler(nodes(2, 2))
    s.place(["a", "b", "c"])
    with pytest.raises(InsufficientCapacity):
        s.place(["d", "e"])
    assert s.capacity()["free"] == 1  # nothing was half-placed
    assert s.place(["d"])["d"]
    with pytest.raises(InsufficientCapacity):
        s.place(["e"])


def test_release_frees_the_slot_for_reuse():
    s = Scheduler(nodes(1, 1))
    assert s.place(["a"])["a"] == ("c1n1", "c1n1v1")
    assert s.release("a") == ("c1n1", "c1n1v1")
    assert s.release("a") is None
    assert s.place(["b"])["b"] == ("c1n1", "c1n1v1")


def test_unhealthy_ncs_get_nothing():
    ns = nodes(2, 2)
    ns[0].healthy = False
    s = Scheduler(ns)
    placed = s.place(["a", "b"])
    assert {p[0] for p in placed.values()} == {"c1n2"}
    assert s.capacity()["total"] == 2


def test_occupy_rejects_conflicts_and_unknown_slots():
    s = Scheduler(nodes(1, 2))
    s.occupy("c1n1", "c1n1v1", "a")
    with pytest.raises(ValueError):
        s.occupy("c1n1", "c1n1v1", "b")
    with pytest.raises(KeyError):
        s.occupy("c1n1", "c1n1v9", "b")


def test_unknown_policy():
    with pytest.raises(ValueError, match="ROUNDROBIN"):
        Scheduler(nodes(), "RANDOM")


def test_managed_one_subnet_and_vlan_per_group_with_reserved_addresses():
    a = NetworkAllocator("MANAGED", cluster=1, addrs_per_net=16)
    ip1, mac1, gw1, vlan1, pfx = a.allocate("i-1", "sg-web")
    ip2, _, gw2, vlan2, _ = a.allocate("i-2", "sg-db")
    ip3, _, gw3, vlan3, _ = a.allocate("i-3", "sg-web")
    assert pfx == 28 and vlan1 == vlan3 != vlan2
    assert gw1 == gw3 != gw2
    web = ipaddress.ip_network(a.group_net("sg-web").subnet)
    assert ipaddress.ip_address(ip1) in web and ipaddress.ip_address(ip3) in web
    assert ipaddress.ip_address(ip2) not in web
    assert web.subnet_of(ipaddress.ip_network("10.101.16.0/20"))
    reserved = {str(web.network_address), gw1, str(web.broadcast_address)}
    assert not reserved & {ip1, ip3}
    assert mac1 == mac_for(ip1) and mac1.startswith("d0:0d:")


def test_no_double_allocation_and_exhaustion():
    a = NetworkAllocator("MANAGED", cluster=2, addrs_per_net=8)  # 8 - 3 reserved = 5 usable
    ips = {a.allocate(f"i-{n}", "sg")[0] for n in range(5)}
    assert len(ips) == 5
    with pytest.raises(AllocationError):
        a.allocate("i-5", "sg")
    with pytest.raises(AllocationError):
        a.allocate("i-0", "sg")  # already has one


def test_release_reuses_addresses_and_frees_empty_groups():
    a = NetworkAllocator("MANAGED", cluster=1)
    ip, *_ = a.allocate("i-1", "sg-a")
    vlan_a = a.group_net("sg-a").vlan
    a.release("i-1")
    assert "sg-a" not in a.groups  # subnet and VLAN back in the pool
    ip2, _, _, vlan_b, _ = a.allocate("i-2", "sg-b")
    assert (ip2, vlan_b) == (ip, vlan_a)


def test_novlan_has_subnets_but_no_vlans():
    a = NetworkAllocator("MANAGED-NOVLAN", cluster=1)
    _, _, gw1, vlan1, _ = a.allocate("i-1", "sg-a")
    _, _, gw2, vlan2, _ = a.allocate("i-2", "sg-b")
    assert vlan1 is None and vlan2 is None and gw1 != gw2


def test_system_mode_is_flat_behind_the_site_router():
    a = NetworkAllocator("SYSTEM", cluster=1)
    ip1, _, gw, vlan, pfx = a.allocate("i-1", "sg-a")
    ip2, *_ = a.allocate("i-2", "sg-b")
    assert gw == "10.101.0.1" and vlan is None and pfx == 16
    assert ip1 != ip2 and ip1.startswith("10.101.2.")


def test_restore_rebuilds_and_detects_conflicts():
    a = NetworkAllocator("MANAGED", cluster=1)
    a.restore("i-1", "sg-a", "10.101.16.2")
    with pytest.raises(AllocationError):
        a.restore("i-2", "sg-a", "10.101.16.2")
    ip, *_ = a.allocate("i-3", "sg-a")
    assert ip == "10.101.16.3"
