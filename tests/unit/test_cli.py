"""The eucalab command: its module docstring lists every command it has; every benchmark
is a subcommand of ``eucalab bench`` with its own options, and the two that need no root
run from the command line on loopback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from experiments import cli
from experiments.cli import build_parser, main

pytestmark = pytest.mark.loopback  # starts processes (tests/conftest.py)

BENCHES = ("bringup", "cloud", "cloud-walrus", "clc-catchup", "instances", "lifecycle", "s3cp", "scale", "sdn", "soak")


def _subcommands(parser) -> dict:
    (action,) = [a for a in parser._actions if a.dest in ("command", "what")]
    return action.choices


def test_every_benchmark_is_a_subcommand_with_its_own_help():
    benches = _subcommands(_subcommands(build_parser())["bench"])
    assert sorted(benches) == sorted(BENCHES)
    for name in BENCHES:
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "bench", name, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"eucalab bench {name}" in proc.stdout
    # A benchmark's options are its own: sdn's are refused by soak.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "soak", "--setups", "3"])


def test_bench_needs_a_benchmark_name():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench"])


def test_bench_clc_catchup_runs(capsys):
    assert main(["bench", "clc-catchup", "20"]) == 0
    out = capsys.readouterr().out
    assert "pull     20 ops behind" in out and "caught up" in out
    assert "push     20 ops behind" in out


def test_bench_cloud_walrus_runs(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    assert main(["bench", "cloud-walrus", "--requests", "3", "--size", "2048", "--json", str(raw)]) == 0
    assert "Walrus - moto: p50" in capsys.readouterr().out
    record = json.loads(raw.read_text())
    assert record["requests"] == 3 and record["size"] == 2048
    assert all(len(r["ms"]) == 3 for r in record["results"].values())


def _commands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, p in sub.choices.items():
        what = next((a for a in p._actions if a.dest == "what"), None)
        out += [f"{name} {w}" for w in what.choices] if what is not None else [name]
    return out


def test_the_docstring_names_every_command():
    listed = {line.split()[1] + (" " + line.split()[2] if line.split()[1] == "bench" else "")
              for line in cli.__doc__.splitlines() if line.strip().startswith("eucalab ")}
    assert sorted(listed) == sorted(_commands())


def test_up_refuses_an_ssh_config_it_cannot_use_before_anything_is_built(tmp_path, capsys):
    spec = tmp_path / "two.yaml"
    spec.write_text("name: two\nservers: [localhost, 10.99.0.2]\nclusters: 1\n")
    script = tmp_path / "cli.txt"
    script.write_text("exit\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match="no such file"):
        main(["up", str(spec), "--script", str(script), "--ssh-config", str(tmp_path / "missing"),
              "--run-dir", str(run_dir)])
    config = tmp_path / "ssh_config"
    config.write_text("Host 10.99.0.2\n")
    # One server: nothing to reach over ssh, said so (the option would otherwise be ignored).
    with pytest.raises(SystemExit, match="runs on this machine alone"):
        main(["up", "--script", str(script), "--ssh-config", str(config), "--run-dir", str(run_dir)])
    assert not run_dir.exists()  # nothing was built


@pytest.mark.parametrize("body, message", [
    ("sets: [{target: moon, trials: 1}]", "target must be one of"),
    ("spec: {servers: [localhost, 10.99.0.2]}\nsets: [{target: clc, trials: 1}]", "measures on this machine only"),
    ("kind: safe-floor\nmisses: 1\n", "misses"),
    ("sets: [{target: clc", "not YAML"),
    ("- clc\n- walrus\n", "a mapping of fields, not a list"),
    ("1: a\nb: c\n", "unknown field"),
    ("sets: 5\n", "not a valid definition"),
    ("kind: safe-floor\ntargets: [clc]\n", r"targets\[0\] must be"),
    ("kind: safe-floor\nsoak_minutes: x\n", "soak_minutes must be a number"),
    ("kind: safe-floor\nintervals_ms: 5\n", "intervals_ms must be"),
    (b"\xff\xfe\x00binary", "not a valid definition"),
    ("sweep: [1]\nsets: [{target: clc, trials: 1}]\n", "sweep"),
])
def test_experiment_says_what_is_wrong_with_a_definition_and_builds_nothing(tmp_path, monkeypatch, body, message):
    """Its error in one line, not a traceback, as root or not (checked before the rest)."""
    from experiments.failover import runner, safe_floor

    def ran(*a, **kw):
        raise AssertionError("the definition ran")

    monkeypatch.setattr(runner, "run_definition", ran)
    monkeypatch.setattr(safe_floor, "run", ran)
    path = tmp_path / "bad.yaml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(SystemExit, match=f"^eucalab: {path}: .*{message}"):
        main(["experiment", str(path)])
    with pytest.raises(SystemExit, match="^eucalab: .*No such file.*missing.yaml"):
        main(["experiment", str(tmp_path / "missing.yaml")])


def test_vm_serve_takes_no_command(monkeypatch):
    from experiments.testbed import rundir

    made = []
    monkeypatch.setattr(rundir, "new_run_dir", lambda name: made.append(name))
    with pytest.raises(SystemExit, match="takes no command"):
        main(["vm", "serve", "--", "true"])
    assert made == []  # refused before its run directory
