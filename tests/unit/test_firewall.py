"""Where tenants and users are filtered: the border gateway's site firewall
(topologies/firewall.py) and the CC's rules for instances (components/cc/router.py).
Rendering only, without root; tests/integration/test_hostile_api.py sends the packets."""

from __future__ import annotations

from components.cc.router import RouterHost, render_router
from topologies.firewall import admit_rule, flat_ranges, public_endpoints, site_firewall
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, NetworkMode

from .test_sdn_router import INTENT, chain


def rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and "type filter" not in line]


def test_users_reach_only_the_public_vips_and_elastic_ips():
    plan = build_plan(DeploymentSpec())
    assert public_endpoints(plan) == [("10.0.0.10", 8773), ("10.0.0.20", 8773)]
    got = rules(site_firewall(plan))
    outside = '{ "gw-eth0", "gw-eth1" }'
    assert got == [
        "ct state established,related accept",
        f"iifname {outside} ip daddr . tcp dport {{ 10.0.0.10 . 8773, 10.0.0.20 . 8773 }} counter accept",
        f"iifname {outside} ip daddr {{ 10.0.0.10, 10.0.0.20, 10.0.1.10, 10.0.1.20, 10.0.2.10, 10.0.2.20 }} "
        "icmp type echo-request counter accept",
        f"iifname {outside} ip daddr 10.0.128.0/24 counter accept",
        f"iifname {outside} counter drop"]
    # The outside interfaces are the user network's and the external site's, not the cloud's.
    assert [plan.networks[i.network].kind for i in plan.hosts["gw"].interfaces if i.name in outside] == \
        ["user", "external"]
    # Forwarding from inside out is not this table's business (policy accept, replies pass).
    assert "policy accept" in site_firewall(plan)


def test_in_system_mode_users_reach_the_instances_flat_range_not_the_ncs():
    plan = build_plan(DeploymentSpec(name="system", mode=NetworkMode.SYSTEM))
    assert flat_ranges(plan) == ["10.101.2.0/23", "10.102.2.0/23"]
    got = rules(site_firewall(plan))
    assert got[-3:-1] == ['iifname { "gw-eth0", "gw-eth1" } ip daddr 10.101.2.0/23 counter accept',
                          'iifname { "gw-eth0", "gw-eth1" } ip daddr 10.102.2.0/23 counter accept']
    assert not any("10.101.1." in r or "10.101.0.0" in r for r in got)  # NCs, CC and SC sides


def test_an_experiment_admits_one_more_service():
    assert admit_rule("10.0.0.10", 8080) == \
        "insert rule ip eucalab-site forward ip daddr 10.0.0.10 tcp dport 8080 counter accept\n"


def test_instances_reach_on_the_cloud_network_only_the_public_services_and_elastic_ips():
    host = RouterHost(cluster=1, private_interface="c1cc1-eth1", public_interface="c1cc1-eth0",
                      clc_vip="10.0.0.10", walrus_vip="10.0.0.20")
    fwd = chain(render_router(INTENT, host), "EUCA-FORWARD")
    from_groups = [r for r in fwd if "ip saddr 10.101.16." in r and r.startswith('iifname "c1cc1-eth1"')]
    assert from_groups == [
        'iifname "c1cc1-eth1" ip saddr 10.101.16.0/28 oifname "c1cc1-eth0" ip daddr != 10.0.0.0/16 counter accept',
        'iifname "c1cc1-eth1" ip saddr 10.101.16.0/28 oifname "c1cc1-eth0" ip daddr 10.0.128.0/24 counter accept',
        'iifname "c1cc1-eth1" ip saddr 10.101.16.16/28 oifname "c1cc1-eth0" ip daddr != 10.0.0.0/16 counter accept',
        'iifname "c1cc1-eth1" ip saddr 10.101.16.16/28 oifname "c1cc1-eth0" ip daddr 10.0.128.0/24 counter accept']
    assert 'iifname "c1cc1-eth1" ip daddr 10.0.0.10 tcp dport 8773 counter accept' in fwd
    assert 'iifname "c1cc1-eth1" ip daddr 10.0.0.20 tcp dport 8773 counter accept' in fwd
    # Nothing from an instance to the CC host itself but ICMP (its API, heartbeats, addresses).
    assert chain(render_router(INTENT, host), "EUCA-INPUT") == [
        "ct state established,related accept",
        'iifname "c1cc1-eth1" ip saddr 10.101.16.0/20 ip protocol != icmp counter drop']


def test_the_router_host_learns_walrus_from_the_cc_config():
    host = RouterHost.from_cc_config({"cluster": 2, "private_interface": "a", "public_interface": "b",
                                      "endpoints": {"clc": "http://10.0.0.10:8773/services/Eucalyptus",
                                                    "walrus": "http://10.0.0.20:8773/services/Walrus"}})
    assert (host.clc_vip, host.walrus_vip, host.walrus_port) == ("10.0.0.10", "10.0.0.20", 8773)
