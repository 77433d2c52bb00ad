"""Spec validation: every bad field gets an error that names it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from topologies.spec import DeploymentSpec, NetworkMode, SpecError, load_spec, spec_from_dict

SPECS = Path(__file__).resolve().parents[2] / "topologies" / "specs"


@pytest.mark.parametrize("data,field,words", [
    ({"clusterz": 2}, "clusterz", "unknown field"),
    ({"ha": {"foo": True}}, "ha.foo", "unknown field"),
    ({"links": {"delay": 5}}, "links.delay", "unknown field"),
    ({"clusters": -1}, "clusters", "at least 1"),
    ({"clusters": 0}, "clusters", "at least 1"),
    ({"clusters": 1000}, "clusters", "at most"),
    ({"ncs_per_cluster": "two"}, "ncs_per_cluster", "integer"),
    ({"vm_slots_per_nc": 1.5}, "vm_slots_per_nc", "integer"),
    ({"clusters": True}, "clusters", "integer"),
    ({"mode": "BRIDGED"}, "mode", "unknown networking mode"),
    ({"mode": "MANAGED", "vlan_clean": False}, "mode", "VLAN-clean"),
    ({"vlan_clean": "yes"}, "vlan_clean", "true or false"),
    ({"ha": {"cc": 1}}, "ha.cc", "true or false"),
    ({"ha": ["clc"]}, "ha", "mapping"),
    ({"arbitrators": {"per_host": 4}}, "arbitrators.per_host", "at most 3"),
    ({"arbitrators": {"targets": []}}, "arbitrators.targets", "non-empty"),
    ({"arbitrators": {"targets": ["google.com"]}}, "arbitrators.targets[0]", "unknown target"),
    ({"arbitrators": {"period_s": 1, "timeout_s": 2}}, "arbitrators.timeout_s", "must not exceed"),
    ({"links": {"bw_mbit": -5}}, "links.bw_mbit", "between"),
    ({"links": {"loss_pct": 150}}, "links.loss_pct", "between"),
    ({"datapath": "dpdk"}, "datapath", "auto, kernel or user"),
    ({"name": "has space"}, "name", "letters"),
])
def test_bad_fields_are_named(data, field, words):
    with pytest.raises(SpecError) as err:
        spec_from_dict(data)
    assert err.value.field_path == field
    assert words in str(err.value)
    assert str(err.value).startswith(field)


def test_delay_refused_without_netem_and_accepted_with_it():
    with pytest.raises(SpecError) as err:
        spec_from_dict({"links": {"delay_ms": 10}}, netem=False)
    assert err.value.field_path == "links.delay_ms"
    assert "netem" in str(err.value)
    with pytest.raises(SpecError) as err:
        spec_from_dict({"links": {"loss_pct": 1}}, netem=False)
    assert err.value.field_path == "links.loss_pct"
    assert spec_from_dict({"links": {"delay_ms": 10}}, netem=True).links.delay_ms == 10


def test_managed_novlan_needs_no_vlans():
    spec = spec_from_dict({"mode": "managed-novlan", "vlan_clean": False})
    assert spec.mode is NetworkMode.MANAGED_NOVLAN and not spec.mode.needs_vlans


def test_default_is_a_real_small_eucalyptus():
    spec = DeploymentSpec().validate()
    assert (spec.clusters, spec.ncs_per_cluster, spec.vm_slots_per_nc) == (2, 2, 2)
    assert spec.mode is NetworkMode.MANAGED
    assert all(spec.ha.enabled(k) for k in ("clc", "walrus", "cc", "sc"))
    assert spec.arbitrators.per_host == 2


def test_yaml_round_trip():
    spec = spec_from_dict({"clusters": 3, "mode": "SYSTEM", "links": {"bw_mbit": 100}})
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())) == spec


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path):
    assert load_spec(path).name == path.stem


def test_default_file_is_the_default_spec():
    assert load_spec(SPECS / "default.yaml") == DeploymentSpec()


def test_invalid_yaml_unreadable_file_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [1,\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- clusters: 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(listy)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("clusters: -3\n")
    with pytest.raises(SpecError) as err:
        load_spec(wrong)
    assert err.value.field_path == "clusters" and str(wrong) in str(err.value)


def test_empty_file_is_the_default(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_spec(empty) == DeploymentSpec()
