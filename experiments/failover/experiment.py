"""Experiment definitions: the YAML an experiment is written in (experiments/failover/definitions/),
its trial sets and its sweep, checked as they load."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from topologies.spec import COMPONENT_KINDS, spec_from_dict

from ..testbed.clocks import measured_on_one_machine
from ..testbed.rundir import REPO_ROOT
from .faults import CATALOGUE, PLANNED_SWITCHOVER

DEFINITIONS = REPO_ROOT / "experiments" / "failover" / "definitions"
TARGETS = (*COMPONENT_KINDS, "keepalived")
FAULTS = tuple(CATALOGUE)  # experiments/failover/faults.py: what each does and the outcome it expects
# keepalived's equivalents: its responder crashes with it, or its master's priority is lowered.
KEEPALIVED_FAULTS = ("sigkill", PLANNED_SWITCHOVER)


def read_definition(cls, path: str | Path) -> dict:
    """A definition file's fields for the dataclass ``cls``; unknown fields are refused, by name."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a definition is a mapping of fields, not a {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"known: {', '.join(sorted(known))}")
    return data



@dataclass
class TrialSet:
    target: str  # clc walrus cc sc keepalived
    trials: int
    fault: str = "sigkill"
    advert_ms: float | None = None  # keepalived only: VRRP advert interval
    label: str | None = None
    hold_s: float | None = None  # how long a fault that expects no failover is held (default: see hold())
    params: dict = field(default_factory=dict)  # the fault's own parameters (loss_percent, network, ...)
    # Spec fields this set changes ({mode: EDGE}): it runs on a deployment of its own, shared
    # with the sets that change the same fields (experiment.deployments()).
    spec: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.target == "keepalived":
            planned = " planned switchover" if self.fault == PLANNED_SWITCHOVER else ""
            return f"keepalived advert {self.advert_ms:g} ms{planned}"
        words = {"sigkill": "crash", "host": "host failure", "sigstop": "hang",
                 PLANNED_SWITCHOVER: "planned switchover"}
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"eucalab {self.target.upper()} {words.get(self.fault, self.fault)}{extra}"


@dataclass
class Experiment:
    name: str = "default"
    seed: int = 1
    spec: dict = field(default_factory=lambda: {"name": "default"})
    probe_interval_ms: float = 10.0
    probe_timeout_ms: float = 300.0
    recovery_timeout_s: float = 10.0
    capture: bool = True  # keep a pcap (user host) and flow dumps for every trial that went wrong
    sdn: bool | None = None  # run the SDN controller (the 'controller' fault needs it); None: as the spec says
    sets: list[TrialSet] = field(default_factory=list)
    # Parameters swept, each point on its own deployment: "spec.heartbeat.interval_ms",
    # "probe_interval_ms", "set.fault", "set.params.loss_percent", ... -> list of values.
    sweep: dict = field(default_factory=dict)

    def at(self, point: dict) -> "Experiment":
        """This experiment with one sweep point's values set; set names say the point."""
        import copy

        e = copy.deepcopy(self)
        e.sweep = {}
        for path, value in point.items():
            head, *rest = path.split(".")
            if head == "spec":
                set_path(e.spec, rest, value, path)
            elif head == "set":
                for ts in e.sets:
                    if ts.target == "keepalived" and rest[:1] != ["trials"]:
                        continue  # the baseline is keepalived as it is: only its trial count follows
                    if not rest or not hasattr(ts, rest[0]) or rest[0] == "label":
                        raise ValueError(f"sweep: {path!r} names no trial-set field")
                    if len(rest) == 1:
                        setattr(ts, rest[0], value)
                    else:
                        set_path(getattr(ts, rest[0]), rest[1:], value, path)
            elif head in {f.name for f in dataclasses.fields(self)} - {"sets", "sweep", "spec", "name"} and not rest:
                setattr(e, head, value)
            else:
                raise ValueError(f"sweep: cannot set {path!r} (spec.<field>, set.<field> or an experiment field)")
        if point:
            for ts in e.sets:
                if ts.fault not in CATALOGUE:
                    raise ValueError(f"sweep: fault {ts.fault!r} is not in the catalogue")
                if ts.target not in TARGETS or (ts.target == "keepalived" and ts.advert_ms is None):
                    raise ValueError(f"sweep: target {ts.target!r} is not one of {', '.join(TARGETS[:-1])}")
                ts.label = f"{ts.name} [{point_label(point)}]"
        return e

    def deployments(self) -> list["Experiment"]:
        """This experiment split by deployment: the sets with no ``spec`` of their own on the
        experiment's spec, then each distinct set ``spec`` (merged into it) with its sets."""
        import copy

        groups: dict[str, list[TrialSet]] = {}
        for ts in self.sets:
            groups.setdefault(json.dumps(ts.spec, sort_keys=True), []).append(ts)
        out = []
        for key, sets in sorted(groups.items(), key=lambda kv: kv[0] != "{}"):
            e = copy.deepcopy(self)
            e.sets = copy.deepcopy(sets)
            for path, value in _flatten(json.loads(key)):
                set_path(e.spec, path, value, "spec." + ".".join(path))
            out.append(e)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        data = read_definition(cls, path)
        sets = []
        set_fields = {f.name for f in dataclasses.fields(TrialSet)}
        for i, s in enumerate(data.pop("sets", [])):
            if not isinstance(s, dict):
                raise ValueError(f"{path}: sets[{i}] must be a mapping")
            if set(s) - set_fields:
                unknown = ", ".join(sorted(map(str, set(s) - set_fields)))
                raise ValueError(f"{path}: sets[{i}]: unknown field(s) {unknown}; "
                                 f"known: {', '.join(sorted(set_fields))}")
            if s.get("target") not in TARGETS:
                raise ValueError(f"{path}: sets[{i}].target must be one of {', '.join(TARGETS)}")
            if s.get("fault", "sigkill") not in FAULTS:
                raise ValueError(f"{path}: sets[{i}].fault must be one of {', '.join(FAULTS)}")
            if s.get("target") == "keepalived" and s.get("fault", "sigkill") not in KEEPALIVED_FAULTS:
                raise ValueError(f"{path}: sets[{i}]: the keepalived baseline is measured with "
                                 f"{' or '.join(KEEPALIVED_FAULTS)} only")
            if not isinstance(s.get("trials"), int) or s["trials"] < 1:
                raise ValueError(f"{path}: sets[{i}].trials must be a positive integer")
            sets.append(TrialSet(**s))
        exp = cls(sets=sets, **data)
        try:
            for point in sweep_points(exp.sweep):
                for e in exp.at(point).deployments():
                    measured_on_one_machine(spec_from_dict(e.spec), "a failover experiment")
        except Exception as exc:
            raise ValueError(f"{path}: {exc}") from None
        return exp

def sweep_points(sweep: dict) -> list[dict]:
    """Every combination of the swept values ([{}] without a sweep), in a stable order."""
    import itertools

    if not sweep:
        return [{}]
    if not isinstance(sweep, dict):
        raise ValueError(f"sweep must be a mapping of field paths to lists of values, not a {type(sweep).__name__}")
    keys = list(sweep)
    for k in keys:
        if not isinstance(sweep[k], list) or not sweep[k]:
            raise ValueError(f"sweep.{k} must be a non-empty list of values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def point_label(point: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def set_path(tree: dict, keys: list[str], value, path: str) -> None:
    if not isinstance(tree, dict) or not keys:
        raise ValueError(f"sweep: cannot set {path!r}")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
        if not isinstance(tree, dict):
            raise ValueError(f"sweep: cannot set {path!r}")
    tree[keys[-1]] = value


def _flatten(tree: dict, prefix: tuple = ()) -> list[tuple[list[str], object]]:
    """(path, value) for every leaf of a nested mapping."""
    out = []
    for k, v in tree.items():
        out += _flatten(v, prefix + (k,)) if isinstance(v, dict) else [(list(prefix + (k,)), v)]
    return out
