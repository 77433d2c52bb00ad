"""Preflight findings: each problem carries its fix; rendering never hides one."""

from __future__ import annotations

import io

from rich.console import Console

from experiments import preflight
from experiments.preflight import Finding


def test_run_checks_reports_every_item_with_a_fix_for_failures():
    findings = preflight.run_checks()
    names = {f.name for f in findings}
    assert {"root", "open vswitch", "ovs datapath", "netem", "mininet", "os-ken", "ethtool"} <= names
    for f in findings:
        if not f.ok:
            assert f.fix, f"{f.name} fails without a fix"


def test_datapath_is_kernel_or_user():
    assert preflight.datapath() in ("kernel", "user")


def test_render_shows_problems_and_fixes(monkeypatch):
    buf = io.StringIO()
    findings = [Finding("open vswitch", False, "not running", "run `make setup`"),
                Finding("netem", False, "absent", "a kernel with sch_netem", required=False),
                Finding("root", True, "uid 0")]
    import rich.console

    monkeypatch.setattr(rich.console, "Console", lambda *a, **k: Console(file=buf, width=160))
    preflight.render(findings)
    text = buf.getvalue()
    assert "MISSING" in text and "run `make setup`" in text
    assert "absent" in text and "1 problem(s)" in text


def test_ovs_problem_names_the_fix(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)
    assert "make setup" in preflight.ovs_problem()
