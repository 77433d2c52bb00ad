"""Deployments over several servers: the spec's servers fields and where each node goes."""

from __future__ import annotations

import pytest

from topologies.placement import place
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, SpecError, spec_from_dict

VM = "10.99.0.2"


@pytest.mark.parametrize("data,field,words", [
    ({"servers": []}, "servers", "non-empty list"),
    ({"servers": "localhost"}, "servers", "non-empty list"),
    ({"servers": [VM]}, "servers[0]", "must be localhost"),
    ({"servers": ["localhost", "localhost"]}, "servers[1]", "is this machine, listed first already"),
    ({"servers": ["localhost", "127.0.0.2"]}, "servers[1]", "not another machine's address"),
    ({"servers": ["localhost", "0.0.0.0"]}, "servers[1]", "not another machine's address"),
    ({"servers": ["localhost", "fd00::2"]}, "servers[1]", "IPv4 only"),
    ({"servers": ["localhost", "bad_name"]}, "servers[1]", "neither an IPv4 address nor a host name"),
    ({"servers": ["localhost", "-a.example"]}, "servers[1]", "neither"),
    ({"servers": ["localhost", 7]}, "servers[1]", "IPv4 address or a host name"),
    ({"servers": ["localhost", VM, VM], "clusters": 2}, "servers[2]", "listed twice"),
    ({"servers": ["localhost"] + [f"10.99.0.{i}" for i in range(2, 18)]}, "servers", "at most 16"),
    # cluster k on servers[k mod S]: a third server with one cluster holds nothing
    ({"servers": ["localhost", VM, "10.99.0.3"], "clusters": 1}, "servers[2]", "would hold nothing"),
    ({"placement": "random"}, "placement", "unknown placement 'random'; choose from by-cluster"),
    ({"split_pairs": True}, "split_pairs", "at least two servers"),
    ({"split_pairs": "yes", "servers": ["localhost", VM]}, "split_pairs", "true or false"),
    ({"split_pairs": True, "servers": ["localhost", VM],
      "ha": {"clc": False, "walrus": False, "cc": False, "sc": False}}, "split_pairs", "no HA pair to split"),
])
def test_bad_servers_fields_are_named(data, field, words):
    with pytest.raises(SpecError) as err:
        spec_from_dict(data)
    assert err.value.field_path == field
    assert words in str(err.value)


def test_good_servers_fields_load():
    spec = spec_from_dict({"servers": ["localhost", VM, "node-3.example"], "clusters": 2})
    assert spec.servers == ["localhost", VM, "node-3.example"]
    assert DeploymentSpec().servers == ["localhost"]
    # A third server used only by split secondaries is not idle.
    spec_from_dict({"servers": ["localhost", VM, "10.99.0.3"], "clusters": 2, "split_pairs": True})


def test_one_server_places_everything_locally_and_tunnels_nothing():
    placement = place(build_plan(DeploymentSpec()))
    assert not placement.distributed
    assert set(placement.server_of.values()) == {"localhost"}
    assert placement.tunnels == []


def test_by_cluster_puts_cluster_k_on_server_k_mod_s():
    plan = build_plan(spec_from_dict({"servers": ["localhost", VM], "clusters": 3}))
    placement = place(plan)
    where = placement.server_of
    for name in ("gw", "user", "ext", "clc1", "clc2", "walrus1", "walrus2", "swcl0", "swcla", "swclb"):
        assert where[name] == "localhost", name
    for k, server in ((1, VM), (2, "localhost"), (3, VM)):
        for host in plan.hosts.values():
            if host.cluster == k:
                assert where[host.name] == server, host.name
        for sw in (f"swc{k}", f"swc{k}a", f"swc{k}b", f"br{k}n1", f"br{k}n2"):
            assert where[sw] == server, sw
    # What crosses: the CCs' and SCs' public links of clusters 1 and 3, nothing else.
    crossing = {(t.link.a, t.link.b) for t in placement.tunnels}
    assert crossing == {(f"c{k}{kind}{i}", "swcla" if i == 1 else "swclb")
                        for k in (1, 3) for kind in ("cc", "sc") for i in (1, 2)}
    assert [t.key for t in placement.tunnels] == list(range(1, len(placement.tunnels) + 1))
    assert all(t.servers == (VM, "localhost") for t in placement.tunnels)


def test_split_pairs_puts_secondaries_on_the_next_server():
    plan = build_plan(spec_from_dict({"servers": ["localhost", VM], "clusters": 1, "split_pairs": True}))
    placement = place(plan)
    where = placement.server_of
    assert (where["clc1"], where["clc2"]) == ("localhost", VM)
    assert (where["walrus1"], where["walrus2"]) == ("localhost", VM)
    assert (where["c1cc1"], where["c1cc2"]) == (VM, "localhost")
    assert (where["c1sc1"], where["c1sc2"]) == (VM, "localhost")
    assert where["c1n1"] == where["c1n1v1"] == VM
    # Every pair's heartbeat link crosses a tunnel.
    hb = {t.link.network for t in placement.tunnels if plan.networks[t.link.network].kind == "heartbeat"}
    assert hb == {p.heartbeat_network for p in plan.pairs}
    assert len({t.key for t in placement.tunnels}) == len(placement.tunnels)


def test_vm_slots_wired_to_their_nc_stay_with_it():
    spec = spec_from_dict({"servers": ["localhost", VM], "clusters": 1, "sdn": False,
                           "vlan_tagging": "host"})
    placement = place(build_plan(spec))
    assert all(not t.link.a.startswith("c1n1v") for t in placement.tunnels)
    assert placement.on(VM)[:1] and "c1n1v1" in placement.on(VM)


def test_the_deployment_builder_refuses_several_servers_instead_of_building_locally():
    from topologies.network import EucaNetwork, NetworkError

    plan = build_plan(spec_from_dict({"servers": ["localhost", VM], "clusters": 1}))
    with pytest.raises(NetworkError, match="on one machine only"):
        EucaNetwork(plan)


def test_describe_shows_each_servers_share_and_its_tunnels():
    from rich.console import Console

    from topologies.describe import describe_table, servers_table

    plan = build_plan(spec_from_dict({"servers": ["localhost", VM], "clusters": 1}))
    console = Console(width=200, record=True)
    console.print(servers_table(plan))
    text = console.export_text()
    assert "4 link(s) cross as tunnels" in text
    assert "1: c1cc1-swcla" in text and "swc1, swc1a, swc1b, br1n1" in text
    # One server: no servers table at all.
    assert not any(getattr(r, "title", "") and "servers" in str(r.title)
                   for r in describe_table(build_plan(DeploymentSpec())))
