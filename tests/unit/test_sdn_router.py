"""The CC router (components/cc/router.py): rendering, and what apply does, without root."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from components.cc import router
from components.cc.router import RouterConfig, RouterHost, apply_router, render_router, withdraw_config

HOST = RouterHost(cluster=1, private_interface="c1cc1-eth1", public_interface="c1cc1-eth0", clc_vip="10.0.0.10")

INTENT = {
    "cluster": 1, "epoch": 2, "mode": "MANAGED", "primary_cc": "c1cc1",
    "groups": [
        {"id": "sg-a", "name": "a", "account": None, "vlan": 10, "subnet": "10.101.16.0/28",
         "gateway": "10.101.16.1", "rules": [{"protocol": "icmp", "from_port": -1, "to_port": -1,
                                               "cidr": "0.0.0.0/0"}]},
        {"id": "sg-b", "name": "b", "account": None, "vlan": 11, "subnet": "10.101.16.16/28",
         "gateway": "10.101.16.17", "rules": [
             {"protocol": "tcp", "from_port": 8080, "to_port": 8080, "source_group": "sg-a"},
             {"protocol": "udp", "from_port": 1000, "to_port": 2000, "cidr": "10.0.0.0/16"},
             {"protocol": "tcp", "from_port": 22, "to_port": 22, "source_group": "sg-elsewhere"}]},
    ],
    "instances": [
        {"id": "i-a1", "mac": "d0:0d:0a:65:10:02", "ip": "10.101.16.2", "nc": "c1n1", "slot": "c1n1v1",
         "group": "sg-a", "public_ip": "10.0.128.5"},
        {"id": "i-b1", "mac": "d0:0d:0a:65:10:12", "ip": "10.101.16.18", "nc": "c1n1", "slot": "c1n1v2",
         "group": "sg-b", "public_ip": None},
    ],
}


def chain(cfg: RouterConfig, name: str) -> list[str]:
    """The rules the rendered nftables input puts in chain ``name`` (declared and flushed first)."""
    lines = cfg.ruleset.splitlines()
    if f"flush chain ip eucalab {name}" not in lines:
        raise AssertionError(f"no chain {name}")
    prefix = f"add rule ip eucalab {name} "
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def test_one_accept_per_ingress_rule_after_established():
    cfg = render_router(INTENT, HOST)
    fwd = chain(cfg, "EUCA-FORWARD")
    assert fwd[0] == "ct state established,related counter accept"
    assert "ip daddr 10.101.16.0/28 ip saddr 0.0.0.0/0 ip protocol icmp counter accept" in fwd
    assert "ip daddr 10.101.16.16/28 ip saddr 10.101.16.0/28 tcp dport 8080 counter accept" in fwd
    assert "ip daddr 10.101.16.16/28 ip saddr 10.0.0.0/16 udp dport 1000-2000 counter accept" in fwd
    # A source group with no instances here admits nothing (never "any source").
    assert not any("dport 22" in line for line in fwd)
    ingress = [line for line in fwd if line.startswith("ip daddr 10.101.16.")]
    assert len(ingress) == 3
    # Forwarding is denied unless a rule accepts.
    assert "type filter hook forward priority filter; policy drop;" in cfg.ruleset


def test_icmp_type_and_any_protocol_rules():
    intent = dict(INTENT, groups=[dict(INTENT["groups"][0], rules=[
        {"protocol": "icmp", "from_port": 8, "to_port": -1, "cidr": "10.0.0.0/16"},
        {"protocol": "-1", "cidr": "10.0.9.0/24"}, {"protocol": "gre", "cidr": "10.0.9.0/24"}])])
    fwd = chain(render_router(intent, HOST), "EUCA-FORWARD")
    assert "ip daddr 10.101.16.0/28 ip saddr 10.0.0.0/16 icmp type 8 counter accept" in fwd
    assert "ip daddr 10.101.16.0/28 ip saddr 10.0.9.0/24 counter accept" in fwd
    assert len([line for line in fwd if line.startswith("ip daddr")]) == 2  # gre: nothing to admit


def test_elastic_ip_nat_and_address_on_the_public_interface():
    cfg = render_router(INTENT, HOST)
    assert "ip daddr 10.0.128.5 dnat to 10.101.16.2" in chain(cfg, "EUCA-PREROUTING")
    assert 'ip saddr 10.101.16.2 oifname "c1cc1-eth0" snat to 10.0.128.5' in chain(cfg, "EUCA-POSTROUTING")
    assert cfg.public_addresses == ["10.0.128.5/16"]
    assert cfg.private_addresses == ["10.101.16.1/28", "10.101.16.17/28"]


def test_an_answer_without_a_connection_leaves_with_the_elastic_ip_not_the_private_address():
    """A SYN-ACK to a SYN the other member of the pair forwarded (neighbours move between the
    members in a planned switchover) has no connection here, so no NAT: it is translated
    statelessly (an elastic IP is one to one), only towards outside the cloud network."""
    fwd = chain(render_router(INTENT, HOST), "EUCA-FORWARD")
    assert fwd[0] == "ct state established,related counter accept"
    assert fwd[1] == ('ct state invalid iifname "c1cc1-eth1" ip saddr 10.101.16.2 oifname "c1cc1-eth0" '
                      'ip daddr != 10.0.0.0/16 ip saddr set 10.0.128.5 counter accept')
    assert sum("ip saddr set" in line for line in fwd) == 1  # instances without an elastic IP: none


def test_every_connection_the_router_translates_or_forwards_is_marked():
    """Marked on its first packet (a nat chain sees no other): to an elastic IP, and from an
    instance; the CC host's own connections (its API, its VIP, heartbeats) are not."""
    pre = chain(render_router(INTENT, HOST), "EUCA-PREROUTING")
    assert pre[:2] == ["ip daddr 10.0.128.0/24 ct mark set 0xec",
                       'iifname "c1cc1-eth1" ip saddr 10.101.16.0/20 ct mark set 0xec']
    assert router.ROUTED_MARK == 0xEC
    assert "ct mark" not in render_router({"groups": [], "instances": []}, HOST).ruleset


def test_a_member_that_stops_routing_forgets_the_connections_it_routed(fake, monkeypatch):
    """An entry left from its term would meet a later connection of the same ports opened
    through the peer (the user's ports wrap within TIME_WAIT's 120 s) when the cluster comes
    back: out of window, invalid, untranslated, reset by this host (run 20261207T052412Z)."""
    cfg = render_router(INTENT, HOST)
    apply_router(cfg, primary=True)
    assert fake.forgotten == []  # routing: its connections are live
    apply_router(cfg, primary=False, armed=True)  # withdrawn after a switchover's drain
    assert fake.forgotten == [router.ROUTED_MARK]
    apply_router(cfg, primary=False, armed=True)  # re-armed for a new view: nothing routed since
    assert fake.forgotten == [router.ROUTED_MARK]
    monkeypatch.setattr(router, "_KERNEL", router._Kernel())  # a member starting: a crash's leftovers too
    monkeypatch.setattr(router._KERNEL.nft, "run", fake.nft)
    apply_router(withdraw_config(HOST), primary=False)
    assert fake.forgotten == [router.ROUTED_MARK] * 2


def test_forgetting_that_the_kernel_refuses_is_reported_and_tried_again(fake, monkeypatch):
    """The withdrawal is done all the same (it used to raise before the member counted as
    withdrawn, and every later re-arm was then skipped)."""
    monkeypatch.setattr(router.ha_net, "forget_connections", lambda mark: 1)  # EPERM
    result = apply_router(withdraw_config(HOST), primary=False)
    assert result["errors"] == ["forgetting the routed connections: Operation not permitted"]
    monkeypatch.setattr(router.ha_net, "forget_connections", lambda mark: fake.forgotten.append(mark) or 0)
    assert "errors" not in apply_router(withdraw_config(HOST), primary=False)
    assert fake.forgotten == [router.ROUTED_MARK]


def test_the_forget_request_is_ctnetlinks_delete_filtered_by_mark():
    """``conntrack -D --mark 0xec``'s request: nfnetlink subsystem 1 (ctnetlink), message 2
    (delete), no tuple (a flush), CTA_MARK and CTA_MARK_MASK in network byte order."""
    import socket
    import struct

    from components.common import ha_net

    msg = ha_net._forget_request(0xEC, seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 0x0102, 0x1 | 0x4, 7)
    assert struct.unpack_from("=BBH", msg, 16) == (socket.AF_INET, 0, 0)
    assert msg[20:] == struct.pack("=HH", 8, 8) + b"\0\0\0\xec" + struct.pack("=HH", 8, 21) + b"\xff" * 4


def test_metadata_dnat_exactly_once_and_never_snatted():
    cfg = render_router(INTENT, HOST)
    meta = [line for line in chain(cfg, "EUCA-PREROUTING") if "169.254.169.254" in line]
    assert meta == ['iifname "c1cc1-eth1" ip daddr 169.254.169.254 tcp dport 80 counter dnat to 10.0.0.10:8773']
    assert not any("10.0.0.10" in line for line in chain(cfg, "EUCA-POSTROUTING"))
    # Not even by an elastic IP's SNAT (instance i-a1 has one): metadata leaves first, untranslated.
    post = chain(cfg, "EUCA-POSTROUTING")
    assert post[0] == "ct original ip daddr 169.254.169.254 accept" and "snat to 10.0.128.5" in post[1]
    # Loading it again (a re-applied intent) replaces every rule in one transaction: each
    # chain is flushed before its rules, the hooked chains stay.
    lines = cfg.ruleset.splitlines()
    assert "delete table ip eucalab" not in lines
    for name in ("EUCA-FORWARD", "EUCA-PREROUTING", "EUCA-POSTROUTING"):
        flush = lines.index(f"flush chain ip eucalab {name}")
        assert all(not line.startswith(f"add rule ip eucalab {name} ") for line in lines[:flush])
    assert cfg.ruleset.count("dnat to 10.0.0.10:8773") == 1


def test_sysctls_forwarding_without_redirects():
    cfg = render_router(INTENT, HOST)
    assert cfg.sysctls["net.ipv4.ip_forward"] == "1"
    assert cfg.sysctls["net.ipv4.conf.c1cc1-eth1.send_redirects"] == "0"


def test_no_groups_no_gateways_no_metadata():
    cfg = render_router(dict(INTENT, groups=[], instances=[]), HOST)
    assert cfg.private_addresses == [] and cfg.public_addresses == []
    assert "169.254.169.254" not in cfg.ruleset


def test_config_round_trips_as_json():
    cfg = render_router(INTENT, HOST)
    assert RouterConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["managed_private"] == "10.101.16.0/20"


def test_router_host_from_the_cc_config():
    config = {"cluster": 2, "private_interface": "c2cc1-eth1", "public_interface": "c2cc1-eth0",
              "endpoints": {"clc": "http://10.0.0.10:8773/services/Eucalyptus"}}
    host = RouterHost.from_cc_config(config)
    assert host == RouterHost(cluster=2, private_interface="c2cc1-eth1", public_interface="c2cc1-eth0",
                              clc_vip="10.0.0.10", clc_port=8773)
    assert RouterHost.from_cc_config(dict(config, endpoints={})).clc_vip is None


class FakeHost:
    """The commands apply_router runs, answered as a CC host would, recorded instead of run."""

    def __init__(self, addresses: dict[str, list[str]]):
        self.addresses = addresses  # interface -> "10.101.16.1/28", ...
        self.commands: list[list[str]] = []
        self.restored: list[str] = []
        self.announced: list[tuple[str, str]] = []
        self.neighbours: list[tuple[str, str, str]] = []
        self.forgotten: list[int] = []  # ctnetlink flushes, by mark

    def run(self, argv, check=True):
        self.commands.append(argv)
        out = ""
        if argv[:4] == ["ip", "-o", "-4", "addr"]:
            intf = argv[-1]
            out = "".join(f"2: {intf}    inet {a} scope global {intf}\n" for a in self.addresses[intf])
        return subprocess.CompletedProcess(argv, 0, out, "")

    def nft(self, text):
        """libnftables, as components.cc.router._Nftables.run answers it."""
        self.commands.append(["nft"])
        self.restored.append(text)
        return ""

    def set_address(self, add, intf, ip, prefix):
        """rtnetlink, as components.common.ha_net.set_address answers it."""
        addr = f"{ip}/{prefix}"
        if add:
            if addr not in self.addresses[intf]:
                self.addresses[intf].append(addr)
        elif addr in self.addresses[intf]:
            self.addresses[intf].remove(addr)
        else:
            return 99  # EADDRNOTAVAIL
        return 0

    def announce(self, intf, addresses):
        self.announced.extend((intf, a) for a in addresses)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    host = FakeHost({"c1cc1-eth1": ["10.101.0.11/16", "10.101.0.1/16", "10.101.16.49/28"],
                     "c1cc1-eth0": ["10.0.1.11/16", "10.0.1.10/16"]})
    monkeypatch.setattr(router, "_run", host.run)
    monkeypatch.setattr(router.ha_net, "set_address", host.set_address)
    monkeypatch.setattr(router.ha_net, "set_neighbour",
                        lambda intf, ip, mac: host.neighbours.append((intf, ip, mac)) or 0)
    monkeypatch.setattr(router.ha_net, "forget_connections", lambda mark: host.forgotten.append(mark) or 0)
    monkeypatch.setattr(router, "_KERNEL", router._Kernel())  # a fresh process
    monkeypatch.setattr(router._KERNEL.nft, "run", host.nft)
    monkeypatch.setattr(router, "announce", host.announce)
    monkeypatch.setattr(router, "PROC_SYS", tmp_path)
    for key in render_router(INTENT, HOST).sysctls:
        (tmp_path / Path(*key.split(".")).parent).mkdir(parents=True, exist_ok=True)
    return host


def test_primary_holds_exactly_the_intents_addresses_and_announces_the_new_ones(fake, tmp_path):
    result = apply_router(render_router(INTENT, HOST), primary=True)
    # A gateway of a group no longer in the intent goes; the CC's own addresses and VIPs stay.
    assert sorted(fake.addresses["c1cc1-eth1"]) == ["10.101.0.1/16", "10.101.0.11/16", "10.101.16.1/28",
                                                    "10.101.16.17/28"]
    assert sorted(fake.addresses["c1cc1-eth0"]) == ["10.0.1.10/16", "10.0.1.11/16", "10.0.128.5/16"]
    assert fake.announced == [("c1cc1-eth1", "10.101.16.1"), ("c1cc1-eth1", "10.101.16.17"),
                              ("c1cc1-eth0", "10.0.128.5")]
    assert result["added"] == ["10.101.16.1", "10.101.16.17", "10.0.128.5"]
    # The first load of a process re-creates the table (an older process's leftovers go).
    assert fake.restored == ["table ip eucalab\ndelete table ip eucalab\n" + render_router(INTENT, HOST).ruleset]
    assert (tmp_path / "net/ipv4/conf/c1cc1-eth1/send_redirects").read_text() == "0\n"
    # Applied again: nothing to add, nothing announced twice, and not one command run
    # (a takeover is in the outage: every fork of ip cost milliseconds).
    fake.announced.clear()
    fake.commands.clear()
    assert apply_router(render_router(INTENT, HOST), primary=True)["added"] == []
    assert fake.announced == [] and fake.commands == []


def test_a_takeover_announces_what_the_host_still_held(fake):
    """Two planned switchovers in a row: the member taking the cluster back still holds the
    router (it was forwarding); its neighbours point at the peer and must be pulled back."""
    apply_router(render_router(INTENT, HOST), primary=True)
    fake.announced.clear()
    fake.commands.clear()
    result = apply_router(render_router(INTENT, HOST), primary=True, announce_held=True)
    assert result["added"] == [] and fake.commands == []
    assert fake.announced == [("c1cc1-eth1", "10.101.16.1"), ("c1cc1-eth1", "10.101.16.17"),
                              ("c1cc1-eth0", "10.0.128.5")]
    assert result["announced"] == {"c1cc1-eth1": ["10.101.16.1", "10.101.16.17"], "c1cc1-eth0": ["10.0.128.5"]}


def test_a_changed_intent_costs_one_transaction_and_only_the_address_changes(fake):
    apply_router(render_router(INTENT, HOST), primary=True)
    fake.commands.clear()
    moved = dict(INTENT, instances=[dict(i, public_ip=None) for i in INTENT["instances"]])
    result = apply_router(render_router(moved, HOST), primary=True)
    assert result["added"] == [] and fake.commands == [["nft"]]
    assert not [a for a in fake.addresses["c1cc1-eth0"] if a.startswith("10.0.128.")]
    assert fake.restored[-1] == render_router(moved, HOST).ruleset


def test_withdraw_leaves_no_address_and_empty_chains(fake):
    apply_router(render_router(INTENT, HOST), primary=True)
    apply_router(withdraw_config(HOST), primary=False)
    assert sorted(fake.addresses["c1cc1-eth1"]) == ["10.101.0.1/16", "10.101.0.11/16"]
    assert sorted(fake.addresses["c1cc1-eth0"]) == ["10.0.1.10/16", "10.0.1.11/16"]
    empty = fake.restored[-1]
    assert " accept\n" not in empty and " dnat " not in empty and "chain EUCA-FORWARD {" in empty
    assert "policy drop;" in empty and "chain EUCA-PREROUTING {" in empty


def test_a_secondary_given_the_full_config_holds_nothing_either(fake):
    apply_router(render_router(INTENT, HOST), primary=False)
    assert fake.restored[-1] == "table ip eucalab\ndelete table ip eucalab\n" + router._empty()
    assert not [a for a in fake.addresses["c1cc1-eth0"] if a.startswith("10.0.128.")]
    assert fake.announced == []


def test_an_armed_secondary_holds_the_rules_and_no_address_and_its_promotion_moves_addresses_only(fake):
    cfg = render_router(INTENT, HOST)
    apply_router(cfg, primary=False, armed=True)
    assert fake.restored == ["table ip eucalab\ndelete table ip eucalab\n" + cfg.ruleset]
    assert not [a for a in fake.addresses["c1cc1-eth1"] if a.startswith("10.101.16.")]  # no gateway ...
    assert not [a for a in fake.addresses["c1cc1-eth0"] if a.startswith("10.0.128.")]  # ... no elastic IP
    assert fake.announced == [] and fake.neighbours == []
    fake.commands.clear()
    result = apply_router(cfg, primary=True)  # the promotion: no nftables transaction
    assert fake.commands == [] and len(fake.restored) == 1
    assert result["added"] == ["10.101.16.1", "10.101.16.17", "10.0.128.5"]
    assert len(fake.announced) == 3 and len(fake.neighbours) == 2
    # Demoted, armed with the view it routed: the addresses go, the rules stay.
    apply_router(cfg, primary=False, armed=True)
    assert fake.commands == [] and not [a for a in fake.addresses["c1cc1-eth0"] if a.startswith("10.0.128.")]


def test_a_takeover_applies_in_the_callers_thread_and_other_changes_in_a_worker(fake, monkeypatch):
    import asyncio
    import threading

    threads = []
    monkeypatch.setattr(router, "announce", lambda intf, addresses: threads.append(threading.get_ident()))
    cfg = render_router(INTENT, HOST)
    result = asyncio.run(router.apply_router_async(cfg, primary=True, inline=True))
    assert result["added"] == ["10.101.16.1", "10.101.16.17", "10.0.128.5"] and "thread" not in result["ms"]
    assert set(threads) == {threading.get_ident()}
    threads.clear()
    assert "thread" in asyncio.run(router.apply_router_async(withdraw_config(HOST), primary=False))["ms"]
    assert threading.get_ident() not in threads


def test_nftables_binding_missing_or_refusing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nftables", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match="python3-nftables"):
        router._Nftables().run(router._empty())

    class Refusing:
        def cmd(self, text):
            return 1, "", "Error: syntax error\n"

    nft = router._Nftables()
    nft._nft = Refusing()
    with pytest.raises(RuntimeError, match="nft: Error: syntax error"):
        nft.run("table ip eucalab {")


def test_the_primary_knows_every_instances_mac_without_arp_and_sets_each_once(fake):
    cfg = render_router(INTENT, HOST)
    assert cfg.neighbours == {"10.101.16.2": "d0:0d:0a:65:10:02", "10.101.16.18": "d0:0d:0a:65:10:12"}
    apply_router(cfg, primary=True)
    apply_router(cfg, primary=True)
    assert fake.neighbours == [("c1cc1-eth1", "10.101.16.18", "d0:0d:0a:65:10:12"),
                               ("c1cc1-eth1", "10.101.16.2", "d0:0d:0a:65:10:02")]
    apply_router(withdraw_config(HOST), primary=False)  # a secondary sets none ...
    assert len(fake.neighbours) == 2
    apply_router(cfg, primary=True)  # ... and a new promotion sets them all again
    assert len(fake.neighbours) == 4


# -- vlan_tagging host: gateways on VLAN sub-interfaces ---------------------------------------

TAGGED = dataclasses.replace(HOST, vlan_tagging="host")


def test_host_tagging_puts_each_gateway_on_its_groups_vlan_sub_interface():
    cfg = render_router(INTENT, TAGGED)
    assert cfg.private_addresses == [] and cfg.neighbours == {}
    assert cfg.vlans == {
        "c1cc1-eth1.10": {"vlan": 10, "addresses": ["10.101.16.1/28"],
                          "neighbours": {"10.101.16.2": "d0:0d:0a:65:10:02"}},
        "c1cc1-eth1.11": {"vlan": 11, "addresses": ["10.101.16.17/28"],
                          "neighbours": {"10.101.16.18": "d0:0d:0a:65:10:12"}},
    }
    assert cfg.gateways == ["10.101.16.1/28", "10.101.16.17/28"]
    # The same ingress rules between the groups; a group's traffic out of the cluster only
    # from its own VLAN; the cluster's infrastructure untagged on the private interface.
    fwd, untagged = chain(cfg, "EUCA-FORWARD"), chain(render_router(INTENT, HOST), "EUCA-FORWARD")
    assert [r for r in fwd if r.startswith("ip daddr")] == [r for r in untagged if r.startswith("ip daddr")]
    assert 'iifname "c1cc1-eth1" ip saddr 10.101.0.0/20 oifname "c1cc1-eth0" counter accept' in fwd
    for vlan, subnet in ((10, "10.101.16.0/28"), (11, "10.101.16.16/28")):
        out = f'iifname "c1cc1-eth1.{vlan}" ip saddr {subnet} oifname "c1cc1-eth0"'
        assert f"{out} ip daddr != 10.0.0.0/16 counter accept" in fwd
        assert f"{out} ip daddr 10.0.128.0/24 counter accept" in fwd
    assert not any('iifname "c1cc1-eth1" ip saddr 10.101.16.' in r for r in fwd)
    meta = [line for line in chain(cfg, "EUCA-PREROUTING") if "169.254.169.254" in line]
    assert meta == ['iifname { "c1cc1-eth1.10", "c1cc1-eth1.11" } ip daddr 169.254.169.254 tcp dport 80 '
                    "counter dnat to 10.0.0.10:8773"]
    # Instances reach the CC host with ICMP only, on whichever sub-interface they arrive.
    assert 'iifname { "c1cc1-eth1.10", "c1cc1-eth1.11" } ip saddr 10.101.16.0/20 ip protocol != icmp counter drop' \
        in chain(cfg, "EUCA-INPUT")
    assert RouterConfig.from_json(cfg.to_json()) == cfg


def test_host_tagging_needs_each_group_to_have_a_vlan():
    intent = dict(INTENT, groups=[dict(INTENT["groups"][0], vlan=None)])
    with pytest.raises(ValueError, match="VLAN id"):
        render_router(intent, TAGGED)


def test_router_host_takes_the_tagging_from_the_cc_config():
    config = {"cluster": 1, "private_interface": "c1cc1-eth1", "public_interface": "c1cc1-eth0",
              "vlan_tagging": "host"}
    assert RouterHost.from_cc_config(config).vlan_tagging == "host"
    del config["vlan_tagging"]
    assert RouterHost.from_cc_config(config).vlan_tagging == "switch"


def tagged_fake(fake: FakeHost) -> FakeHost:
    """The fake CC host answering ``ip link`` and ``ip -batch`` for VLAN sub-interfaces."""
    run = fake.run

    def answer(argv, check=True, stdin=None):
        if argv[:3] == ["ip", "-batch", "-"]:
            fake.commands.append(argv + [stdin])
            for line in stdin.splitlines():
                if line.startswith("link add link "):
                    fake.addresses.setdefault(line.split()[5], [])
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv[:5] == ["ip", "-o", "link", "show", "type"]:
            fake.commands.append(argv)
            names = [i for i in fake.addresses if "." in i]
            return subprocess.CompletedProcess(argv, 0, "".join(
                f"{n + 5}: {name}@c1cc1-eth1: <UP> mtu 1500\n" for n, name in enumerate(names)), "")
        return run(argv, check)

    return answer


def test_host_tagging_makes_the_sub_interfaces_once_and_moves_only_addresses(fake, monkeypatch):
    monkeypatch.setattr(router, "_run", tagged_fake(fake))
    cfg = render_router(INTENT, TAGGED)
    apply_router(cfg, primary=False, armed=True)  # a secondary at start: armed, no addresses
    made = [c for c in fake.commands if c[:3] == ["ip", "-batch", "-"]]
    assert len(made) == 1 and made[0][-1].splitlines() == [
        "link add link c1cc1-eth1 name c1cc1-eth1.10 type vlan id 10", "link set dev c1cc1-eth1.10 up",
        "link add link c1cc1-eth1 name c1cc1-eth1.11 type vlan id 11", "link set dev c1cc1-eth1.11 up"]
    assert fake.addresses["c1cc1-eth1.10"] == [] and fake.addresses["c1cc1-eth1.11"] == []
    fake.commands.clear()
    result = apply_router(cfg, primary=True)  # the promotion: addresses only, not one command
    assert fake.commands == []
    assert fake.addresses["c1cc1-eth1.10"] == ["10.101.16.1/28"]
    assert fake.addresses["c1cc1-eth1.11"] == ["10.101.16.17/28"]
    assert "10.101.16.1/28" not in fake.addresses["c1cc1-eth1"]  # never on the untagged interface
    assert sorted(fake.addresses["c1cc1-eth1"]) == ["10.101.0.1/16", "10.101.0.11/16"]  # stale gateway gone
    assert result["announced"] == {"c1cc1-eth1.10": ["10.101.16.1"], "c1cc1-eth1.11": ["10.101.16.17"],
                                   "c1cc1-eth0": ["10.0.128.5"]}
    assert sorted(fake.neighbours) == [("c1cc1-eth1.10", "10.101.16.2", "d0:0d:0a:65:10:02"),
                                       ("c1cc1-eth1.11", "10.101.16.18", "d0:0d:0a:65:10:12")]
    # Group b gone: its sub-interface stays, holding nothing.
    apply_router(render_router(dict(INTENT, groups=INTENT["groups"][:1], instances=INTENT["instances"][:1]),
                               TAGGED), primary=True)
    assert fake.addresses["c1cc1-eth1.11"] == [] and fake.addresses["c1cc1-eth1.10"] == ["10.101.16.1/28"]
    # Withdrawn: no gateway anywhere.
    apply_router(withdraw_config(TAGGED), primary=False)
    assert fake.addresses["c1cc1-eth1.10"] == [] and fake.addresses["c1cc1-eth1.11"] == []


def test_a_restarted_cc_withdraws_gateways_a_crash_left_on_sub_interfaces(fake, monkeypatch):
    fake.addresses["c1cc1-eth1.10"] = ["10.101.16.1/28"]
    monkeypatch.setattr(router, "_run", tagged_fake(fake))
    apply_router(withdraw_config(TAGGED), primary=False)
    assert fake.addresses["c1cc1-eth1.10"] == []
