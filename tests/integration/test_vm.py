"""The kernel-lane VM as a tool: a command's exit status and files come back, and a VM
that runs too long is stopped with nothing left behind (the lane itself is tests/kernel,
run by `eucalab vm test`)."""

from __future__ import annotations

import os
import subprocess

import psutil

from experiments.testbed import vm


def _qemus() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == vm.QEMU}


def test_a_command_runs_on_debians_kernel_and_its_status_and_files_come_back(tmp_path):
    before = _qemus()
    out = tmp_path / "out"
    result = vm.boot(["bash", "-c", "uname -r > \"$EUCALAB_VM_OUT/uname\"; "
                      "test -d /sys/module/openvswitch && test -d /sys/module/sch_netem "
                      "&& test -d /sys/module/8021q && exit 7"],
                     out, cwd=vm.REPO, timeout_s=300, say=lambda _: None)
    assert result.returncode == 7, result.console.read_text()[-2000:]
    release = (out / "uname").read_text().strip()
    assert release.endswith("-amd64") and release != os.uname().release
    assert {"boot", "ovs", "job", "total"} <= set(result.timings)
    assert not (out / "job.json").exists()
    assert _qemus() == before


def test_a_vm_past_its_timeout_is_stopped_and_leaves_no_process(tmp_path):
    before = _qemus()
    result = vm.boot(["sleep", "600"], tmp_path / "out", cwd=vm.REPO, timeout_s=3, say=lambda _: None)
    assert result.returncode == 124
    assert _qemus() == before
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "out")], capture_output=True).returncode == 1
