"""The users' CI recipe (.github/workflows/ci.yml) cannot run here: it is checked against
GitHub's published workflow schema (bundled with check-jsonschema, no download), and each
of its commands against what this repository runs itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def test_workflow_is_valid_against_the_github_schema():
    tool = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run([str(tool), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _runs() -> list[str]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["steps"]
    return [" ".join(step["run"].split()) for step in steps if "run" in step]


def test_every_command_is_one_this_repository_runs():
    modprobe, container = _runs()
    # The kernel-lane VM loads its modules with exactly this command.
    guest = (REPO / "experiments" / "testbed" / "vm_guest.sh").read_text().splitlines()
    assert modprobe.removeprefix("sudo ") in [line.strip() for line in guest]
    # The container runs CI's own entry point, which runs the README's test command.
    assert container.startswith("docker run --rm --privileged --network host")
    assert container.endswith("debian:bookworm bash .ci/run")
    assert "exec make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()
