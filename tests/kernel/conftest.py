"""The kernel lane: tests that need the Open vSwitch kernel module, netem and 802.1Q.

They run wherever the kernel has all three (a user's machine, a hosted CI runner after
``modprobe``) and, where it has not, inside the VM of ``eucalab vm test`` (Debian's own
kernel under qemu), which ``make test`` runs after the other tests. They are never
skipped: on a kernel without the features they fail, saying so.

Inside the VM ``EUCALAB_VM_OUT`` names the share that goes back to the host: the run
directories of these tests are copied there at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from experiments.testbed import preflight


@pytest.fixture(scope="session", autouse=True)
def _kernel_features(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the kernel-lane tests build networks: run them as root (make test, or "
                    "eucalab vm test)", pytrace=False)
    missing = preflight.missing_kernel_features()
    if missing:
        pytest.fail(f"this kernel has no {', '.join(missing)}; the kernel-lane tests need them: "
                    "`eucalab vm test` (part of make test) runs them in a VM with Debian's kernel",
                    pytrace=False)
    problem = preflight.ovs_problem()
    if problem:
        pytest.fail(f"Open vSwitch is not usable: {problem}", pytrace=False)
    yield
    out = os.environ.get("EUCALAB_VM_OUT")
    if out:
        copy_regular_files(tmp_path_factory.getbasetemp(), Path(out) / "runs")


def copy_regular_files(src: Path, dst: Path) -> None:
    """Copy a tree's regular files (run directories hold sockets and FIFOs too)."""
    for root, _, files in os.walk(src):
        for name in files:
            path = Path(root) / name
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            except OSError:
                continue
