"""Spec validation: every bad field gets an error that names it, as a field path and in words."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from topologies.spec import (ArbitratorSpec, DeploymentSpec, HASpec, LinkSpec, NetworkMode, SpecError,
                             load_spec, spec_from_dict)

SPECS = Path(__file__).resolve().parents[2] / "topologies" / "specs"


@pytest.mark.parametrize("data,field,words", [
    # unknown keys, top level and nested
    ({"clusterz": 2}, "clusterz", "unknown field; known fields: name, clusters"),
    ({"ha": {"foo": True}}, "ha.foo", "unknown field; known fields: cc, clc, coordinator_check_s, detector, sc, takeover, walrus"),
    ({"links": {"delay": 5}}, "links.delay", "unknown field"),
    ({"heartbeat": {"interval": 10}}, "heartbeat.interval", "unknown field"),
    # negative and zero counts
    ({"clusters": -1}, "clusters", "must be at least 1, not -1"),
    ({"clusters": 0}, "clusters", "must be at least 1, not 0"),
    ({"ncs_per_cluster": 0}, "ncs_per_cluster", "at least 1"),
    ({"ncs_per_cluster": -2}, "ncs_per_cluster", "at least 1"),
    ({"vm_slots_per_nc": -1}, "vm_slots_per_nc", "at least 0"),
    ({"arbitrators": {"per_host": -1}}, "arbitrators.per_host", "at least 0"),
    ({"heartbeat": {"misses": 0}}, "heartbeat.misses", "at least 1"),
    ({"heartbeat": {"misses": 1}}, "heartbeat.misses", "window equals the heartbeat period"),
    ({"arbitrators": {"fail_after": 0}}, "arbitrators.fail_after", "at least 1"),
    # counts above the address plan's limits
    ({"clusters": 1000}, "clusters", "at most 32"),
    ({"ncs_per_cluster": 100}, "ncs_per_cluster", "at most 99"),
    ({"vm_slots_per_nc": 17}, "vm_slots_per_nc", "at most 16"),
    ({"arbitrators": {"per_host": 4}}, "arbitrators.per_host", "at most 3"),
    # non-integer counts
    ({"ncs_per_cluster": "two"}, "ncs_per_cluster", "must be an integer, not 'two'"),
    ({"clusters": "2"}, "clusters", "must be an integer"),
    ({"vm_slots_per_nc": 1.5}, "vm_slots_per_nc", "must be an integer, not 1.5"),
    ({"clusters": None}, "clusters", "must be an integer"),
    # a bool is an int to Python, never to a spec
    ({"clusters": True}, "clusters", "must be an integer, not True"),
    ({"arbitrators": {"per_host": False}}, "arbitrators.per_host", "must be an integer"),
    ({"heartbeat": {"misses": True}}, "heartbeat.misses", "must be an integer"),
    ({"heartbeat": {"interval_ms": True}}, "heartbeat.interval_ms", "must be a number"),
    # numbers out of range or of the wrong type
    ({"heartbeat": {"interval_ms": 1}}, "heartbeat.interval_ms", "between 5 and 60000"),
    ({"heartbeat": {"interval_ms": "fast"}}, "heartbeat.interval_ms", "must be a number"),
    ({"links": {"bw_mbit": -5}}, "links.bw_mbit", "between"),
    ({"links": {"loss_pct": 150}}, "links.loss_pct", "between 0 and 100"),
    ({"links": {"delay_ms": -1}}, "links.delay_ms", "between"),
    # networking mode
    ({"mode": "BRIDGED"}, "mode", "unknown networking mode 'BRIDGED'; choose from SYSTEM, STATIC, MANAGED"),
    ({"mode": 7}, "mode", "unknown networking mode"),
    ({"mode": None}, "mode", "unknown networking mode"),
    ({"mode": "MANAGED", "vlan_clean": False}, "mode", "MANAGED needs a VLAN-clean network"),
    ({"mode": "managed", "vlan_clean": False}, "mode", "use MANAGED-NOVLAN or set vlan_clean: true"),
    ({"vlan_clean": False}, "mode", "vlan_clean is false"),  # the default mode is MANAGED
    ({"vlan_clean": "yes"}, "vlan_clean", "must be true or false, not 'yes'"),
    # HA and arbitrators
    ({"ha": {"cc": 1}}, "ha.cc", "must be true or false, not 1"),
    ({"ha": ["clc"]}, "ha", "must be a mapping, not list"),
    ({"links": 10}, "links", "must be a mapping, not int"),
    ({"arbitrators": {"targets": []}}, "arbitrators.targets", "non-empty list"),
    ({"arbitrators": {"targets": "gateway"}}, "arbitrators.targets", "non-empty list"),
    ({"arbitrators": {"targets": ["gateway", "google.com"]}}, "arbitrators.targets[1]",
     "unknown target 'google.com'; choose from gateway, external"),
    ({"arbitrators": {"period_s": 1, "timeout_s": 2}}, "arbitrators.timeout_s",
     "must not exceed arbitrators.period_s"),
    ({"arbitrators": {"period_s": 0}}, "arbitrators.period_s", "between"),
    # the SDN controller
    ({"sdn": "yes"}, "sdn", "must be true or false, not 'yes'"),
    # where MANAGED's VLAN tags are pushed and popped
    ({"vlan_tagging": "nc"}, "vlan_tagging", "must be switch (Open vSwitch tags) or host"),
    ({"vlan_tagging": "host", "sdn": False, "mode": "MANAGED-NOVLAN", "vlan_clean": False}, "vlan_tagging",
     "only MANAGED mode has; mode is MANAGED-NOVLAN"),
    ({"vlan_tagging": "host", "sdn": False, "mode": "SYSTEM"}, "vlan_tagging", "only MANAGED mode"),
    ({"vlan_tagging": "host"}, "vlan_tagging", "needs sdn: false and ha.takeover: garp (sdn asks for the SDN "
     "controller): the controller's flows tag and isolate the groups themselves"),
    ({"vlan_tagging": "host", "sdn": False, "ha": {"takeover": "sdn"}}, "vlan_tagging",
     "(ha.takeover asks for the SDN controller)"),
    ({"vlan_tagging": "host", "sdn": False, "clusters": 10}, "clusters",
     "at most 9 with vlan_tagging: host"),
    # datapath and name
    ({"datapath": "dpdk"}, "datapath", "must be auto, kernel or user, not 'dpdk'"),
    ({"datapath": None}, "datapath", "auto, kernel or user"),
    ({"name": "has space"}, "name", "letters, digits"),
    ({"name": ""}, "name", "non-empty string"),
    ({"name": 12}, "name", "non-empty string"),
])
def test_bad_fields_are_named(data, field, words):
    with pytest.raises(SpecError) as err:
        spec_from_dict(data)
    assert err.value.field_path == field
    assert words in str(err.value)
    # The field leads the message, once.
    assert str(err.value).startswith(f"{field}: ")
    assert not str(err.value).startswith(f"{field}: {field}:")


def test_host_tagging_refused_without_8021q():
    host = {"vlan_tagging": "host", "sdn": False}
    assert spec_from_dict(host).validate(dot1q=True).vlan_tagging == "host"
    with pytest.raises(SpecError) as err:
        spec_from_dict(host).validate(dot1q=False)
    assert err.value.field_path == "vlan_tagging" and "8021q" in str(err.value)
    assert spec_from_dict({}).validate(dot1q=False).vlan_tagging == "switch"  # no tags on the hosts: fine


@pytest.mark.parametrize("links,field", [({"delay_ms": 10}, "links.delay_ms"),
                                         ({"loss_pct": 1}, "links.loss_pct"),
                                         ({"delay_ms": 0}, "links.delay_ms")])
def test_delay_and_loss_refused_without_netem(links, field):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"links": links}, netem=False)
    assert err.value.field_path == field
    assert "no netem" in str(err.value) and "eucalab check" in str(err.value)


@pytest.mark.parametrize("links,field", [
    ({"by_network": {"external": {"delay_ms": 20}}}, "links.by_network.external.delay_ms"),
    ({"jitter_ms": 2, "delay_ms": 5}, "links.delay_ms"),
    ({"bw_mbit": 10, "by_network": {"heartbeat": {"loss_pct": 1}}}, "links.by_network.heartbeat.loss_pct")])
def test_netem_needed_by_an_override_is_named(links, field):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"links": links}, netem=False)
    assert err.value.field_path == field


@pytest.mark.parametrize("links,field,words", [
    ({"jitter_ms": 2}, "links.jitter_ms", "needs a delay_ms"),
    ({"by_network": {"wan": {"delay_ms": 1}}}, "links.by_network.wan", "unknown network kind"),
    ({"by_network": {"external": {"delay_ms": -1}}}, "links.by_network.external.delay_ms", "between"),
    ({"by_network": {"external": {"by_network": {"user": {}}}}}, "links.by_network.external.by_network",
     "do not nest"),
    ({"by_network": {"external": {"speed": 1}}}, "links.by_network.external.speed", "unknown field"),
    ({"by_network": ["external"]}, "links.by_network", "mapping"),
    ({"by_network": {"heartbeat": {"jitter_ms": 3}}}, "links.by_network.heartbeat.jitter_ms", "needs a delay_ms")])
def test_bad_link_parameters_are_named(links, field, words):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"links": links}, netem=True)
    assert err.value.field_path == field and words in str(err.value)


def test_overrides_apply_field_by_field_to_their_network_only():
    links = spec_from_dict({"links": {"bw_mbit": 100, "delay_ms": 1, "by_network": {
        "external": {"delay_ms": 20, "jitter_ms": 2, "loss_pct": 5}}}}, netem=True).links
    wan = links.for_network("external")
    assert (wan.bw_mbit, wan.delay_ms, wan.jitter_ms, wan.loss_pct) == (100, 20, 2, 5)
    assert links.for_network("cloud") is links
    assert links.shaped and links.needs_netem
    only_hb = spec_from_dict({"links": {"by_network": {"heartbeat": {"loss_pct": 1}}}}, netem=True).links
    assert only_hb.shaped and only_hb.needs_netem and not only_hb.own_netem
    assert not DeploymentSpec().links.shaped


def test_delay_accepted_with_netem_or_when_unknown():
    assert spec_from_dict({"links": {"delay_ms": 10}}, netem=True).links.delay_ms == 10
    assert spec_from_dict({"links": {"delay_ms": 10}}, netem=None).links.delay_ms == 10
    # Bandwidth needs HTB only, never netem.
    assert spec_from_dict({"links": {"bw_mbit": 100}}, netem=False).links.bw_mbit == 100


def test_netem_refusal_names_the_field_through_load_spec(tmp_path):
    path = tmp_path / "delay.yaml"
    path.write_text("links: {delay_ms: 20}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path, netem=False)
    assert err.value.field_path == "links.delay_ms"
    assert load_spec(path, netem=True).links.delay_ms == 20


def test_constructing_with_an_unknown_mode_names_mode():
    with pytest.raises(SpecError) as err:
        DeploymentSpec(mode="BRIDGED")
    assert err.value.field_path == "mode"


def test_mode_spellings():
    spec = spec_from_dict({"mode": "managed-novlan", "vlan_clean": False})
    assert spec.mode is NetworkMode.MANAGED_NOVLAN and not spec.mode.needs_vlans
    assert spec_from_dict({"mode": "MANAGED_NOVLAN"}).mode is NetworkMode.MANAGED_NOVLAN
    assert spec_from_dict({"mode": "system", "vlan_clean": False}).mode is NetworkMode.SYSTEM


def test_empty_sections_are_their_defaults():
    spec = spec_from_dict({"ha": None, "links": None})
    assert spec.ha == HASpec() and spec.links == LinkSpec()


def test_default_is_a_real_small_eucalyptus():
    spec = DeploymentSpec().validate()
    assert (spec.clusters, spec.ncs_per_cluster, spec.vm_slots_per_nc) == (2, 2, 2)
    assert spec.mode is NetworkMode.MANAGED
    assert all(spec.ha.enabled(k) for k in ("clc", "walrus", "cc", "sc"))
    assert spec.arbitrators == ArbitratorSpec()
    assert not spec.links.needs_netem


ROUND_TRIP = [
    DeploymentSpec(),
    DeploymentSpec(name="sys", clusters=3, mode=NetworkMode.SYSTEM, vlan_clean=False),
    DeploymentSpec(mode=NetworkMode.MANAGED_NOVLAN, vlan_clean=False, ha=HASpec(cc=False, sc=False),
                   arbitrators=ArbitratorSpec(per_host=3, targets=["external"], period_s=0.2, timeout_s=0.1),
                   links=LinkSpec(bw_mbit=100, delay_ms=5.5, loss_pct=0.5), datapath="user"),
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=lambda s: s.name + "-" + s.mode.value)
def test_yaml_round_trip_through_a_file(spec, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    loaded = load_spec(path)
    assert loaded == spec
    assert loaded.to_yaml() == spec.to_yaml()


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load_and_round_trip(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())) == spec


def test_shipped_specs_say_what_they_promise():
    system = load_spec(SPECS / "system.yaml")
    assert system.mode is NetworkMode.SYSTEM and (system.clusters, system.ncs_per_cluster) == (2, 2)
    assert all(system.ha.enabled(k) for k in ("clc", "walrus", "cc", "sc"))
    large = load_spec(SPECS / "large.yaml")
    assert (large.clusters, large.ncs_per_cluster) == (2, 8)
    minimal = load_spec(SPECS / "minimal.yaml")
    assert (minimal.clusters, minimal.ncs_per_cluster, minimal.vm_slots_per_nc) == (1, 1, 1)
    assert not any(minimal.ha.enabled(k) for k in ("clc", "walrus", "cc", "sc"))


def test_default_file_writes_out_every_field_with_a_comment():
    path = SPECS / "default.yaml"
    assert load_spec(path) == DeploymentSpec()

    def keys(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, f"{prefix}{key}.")
        return out

    assert keys(yaml.safe_load(path.read_text())) == keys(DeploymentSpec().to_dict())
    field_lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(" # " in line for line in field_lines), [l for l in field_lines if " # " not in l]


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [1,\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert err.value.field_path == ""
    assert f"{bad} is not valid YAML" in str(err.value) and "line" in str(err.value)


@pytest.mark.parametrize("make", [lambda d: d / "missing.yaml", lambda d: d], ids=["missing", "directory"])
def test_unreadable_file(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.field_path == ""
    assert str(err.value).startswith(f"cannot read spec {path}: ")


@pytest.mark.parametrize("text,kind", [("- clusters: 2\n", "list"), ("just words\n", "str"), ("42\n", "int")])
def test_non_mapping_document(tmp_path, text, kind):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.field_path == ""
    assert f"a spec is a mapping of fields, not {kind}" in str(err.value) and str(path) in str(err.value)


def test_field_errors_from_a_file_name_the_field_once_and_the_file(tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("clusters: -3\n")
    with pytest.raises(SpecError) as err:
        load_spec(wrong)
    assert err.value.field_path == "clusters"
    assert str(err.value) == f"clusters: must be at least 1, not -3 (in {wrong})"


def test_empty_file_is_the_default(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_spec(empty) == DeploymentSpec()
    assert load_spec(None) == DeploymentSpec()


def test_the_component_table_gives_the_start_order_and_the_lists():
    from components.common import kinds
    from components.common.config import COMPONENTS
    from components.common.service import ROLES
    from topologies.spec import COMPONENT_KINDS

    assert kinds.START_ORDER == ("clc", "walrus", "sc", "nc", "cc")
    for k in kinds.KINDS:
        assert all(kinds.START_ORDER.index(n) < kinds.START_ORDER.index(k.name) for n in k.needs), k
    assert COMPONENTS == kinds.NAMES and set(ROLES) == {*kinds.NAMES, "operator"}
    assert COMPONENT_KINDS == ("clc", "walrus", "cc", "sc")


def test_a_circular_or_unknown_dependency_is_refused():
    from components.common.kinds import Kind, start_order

    with pytest.raises(ValueError, match="circular"):
        start_order((Kind("a", "A", True, needs=("b",)), Kind("b", "B", True, needs=("a",))))
    with pytest.raises(ValueError, match="unknown"):
        start_order((Kind("a", "A", True, needs=("z",)),))
