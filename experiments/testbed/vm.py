"""The kernel lane: eucalab on a kernel with the Open vSwitch module, netem and 802.1Q.

Users run eucalab on kernels that have all three (an Ubuntu or Debian VM, a hosted CI
runner), where ``datapath: auto`` takes the kernel datapath and ``links.delay_ms`` /
``loss_pct`` apply netem. Where the running kernel lacks them, this module boots a
virtual machine with Debian's own kernel and runs the same code inside it:

* the kernel comes from Debian's package ``linux-image-amd64`` (``apt-get download``,
  ``dpkg-deb -x``, ``depmod -b``), cached under ``/var/cache/eucalab/vm/`` and reused;
  the uncompressed ``vmlinux`` is cut out of the xz bzImage once, since qemu boots it
  directly (PVH entry) and decompressing at every boot costs seconds under emulation;
* the guest has no disk: a small initramfs (busybox from ``busybox-static`` and the
  virtio, 9p and overlay modules) mounts this machine's ``/`` read-only over virtio-9p,
  lays a tmpfs over it, mounts the unpacked kernel's modules and switches root into
  ``experiments/testbed/vm_guest.sh``, which starts Open vSwitch on the kernel datapath and runs
  the job; so the guest runs this machine's own Mininet, Open vSwitch and ``.venv``;
* the job's output, its exit status and any files it writes to ``$EUCALAB_VM_OUT``
  come back through a second, writable 9p share: a directory the caller names.

KVM is used where a guest really boots under it (a probe boot, remembered per host
kernel in the cache); otherwise qemu's TCG emulation, 10-40 times slower.
A timeout (20 minutes by default) stops qemu; nothing is left on the host but the cache
and the output directory.

This module is the qemu process (its command line, console, timings and end) and the
lane's entry points; the kernel, the initramfs and the KVM probe are ``vm_image.py``,
the VM as a second server with sshd is ``vm_server.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .vm_image import BUSYBOX, CACHE, OUT_TAG, QEMU, ROOT_TAG, Kernel, VMError, build_initramfs, \
    fetch_kernel, kvm_usable

GUEST_SCRIPT = Path(__file__).with_name("vm_guest.sh")
DEFAULT_TIMEOUT_S = 20 * 60
DEFAULT_MEMORY_MIB = 4096


# --- booting ----------------------------------------------------------------------------

@dataclasses.dataclass
class VMResult:
    """What a VM run gave back."""

    returncode: int       # the job's exit status; 124 timed out; 125 the VM failed
    accel: str            # kvm or tcg
    timings: dict         # seconds: boot (to the guest script), ovs (Open vSwitch ready), job, total
    console: Path         # the whole serial console


@dataclasses.dataclass(frozen=True)
class GuestNIC:
    """The VM's one network card, when it serves as a second server: a tap device on this
    machine (qemu makes it and it vanishes with qemu) and a /30 of its own, so the link
    carries traffic between this machine and the guest only."""

    tap: str = "euclvm0"
    host_ip: str = "10.99.0.1"
    guest_ip: str = "10.99.0.2"
    prefix: int = 30
    mac: str = "52:54:00:ec:99:02"


def qemu_command(kernel: Kernel, initramfs: Path, out_dir: Path, accel: str,
                 cpus: int, memory_mib: int, nic: GuestNIC | None = None) -> list[str]:
    """The qemu command line: no disk, host root and output over 9p; no network card
    unless ``nic`` asks for one (a tap device on this machine, nothing else)."""
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    net = [] if nic is None else [
        "-netdev", f"tap,id=n0,ifname={nic.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={nic.mac}"]
    return [QEMU, *cpu, "-smp", str(cpus), "-m", str(memory_mib), *net,
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel.vmlinux), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}",
            "-fsdev", f"local,id=out,path={out_dir},security_model=none",
            "-device", f"virtio-9p-pci,fsdev=out,mount_tag={OUT_TAG}"]


class RunningVM:
    """A booted VM: its qemu process, console and timings, until ``wait`` collects it."""

    def __init__(self, proc: subprocess.Popen, out_dir: Path, console: Path, con, reader: threading.Thread,
                 accel: str, timings: dict, t0: float, say: Callable[[str], None]):
        self.proc, self.out_dir, self.console, self._con = proc, out_dir, console, con
        self._reader, self.accel, self.timings, self._t0, self._say = reader, accel, timings, t0, say

    def kill(self) -> None:
        """Stop qemu and everything in its session now."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Kill qemu (the guest keeps nothing: its root is a tmpfs overlay) and close the console."""
        self.kill()
        self._reader.join(5)
        self._con.close()
        (self.out_dir / "job.json").unlink(missing_ok=True)

    def wait(self, timeout_s: float) -> VMResult:
        """Wait for the guest to power off (qemu is killed after ``timeout_s``); its result."""
        # SIGTERM ends this process: qemu, in a session of its own, must go with it.
        previous = signal.signal(signal.SIGTERM, _raise_exit) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            self.proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            self._say(f"vm: no end within {timeout_s:.0f} s: stopping qemu (pid {self.proc.pid})")
            self.kill()
        except BaseException:
            self.kill()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._reader.join(5)
            self._con.close()
        self.timings["total"] = round(time.monotonic() - self._t0, 1)
        rc_file = self.out_dir / "rc"
        if timed_out:
            rc = 124
        elif rc_file.exists():
            rc = int(rc_file.read_text().strip() or 125)
        else:
            rc = 125
            self._say(f"vm: the guest ended without an exit status (qemu {self.proc.returncode}); "
                      f"last console lines:\n" + "\n".join(self.console.read_text().splitlines()[-20:]))
        (self.out_dir / "job.json").unlink(missing_ok=True)
        return VMResult(rc, self.accel, self.timings, self.console)


def start_vm(job: list[str], out_dir: Path, *, cwd: Path, env: dict[str, str] | None = None,
             accel: str = "auto", cpus: int | None = None, memory_mib: int = DEFAULT_MEMORY_MIB,
             nic: GuestNIC | None = None, cache: Path = CACHE, say: Callable[[str], None] = print,
             echo: Callable[[str], None] | None = None) -> RunningVM:
    """Boot the VM running ``job`` (argv) in ``cwd``; return at once (``RunningVM.wait``).

    The guest sees this machine's files at the same paths; ``$EUCALAB_VM_OUT`` inside is
    ``out_dir`` here. ``echo`` gets every console line (progress of long jobs). ``nic``
    gives the guest a network card on a tap device of this machine."""
    if shutil.which(QEMU) is None:
        raise VMError(f"{QEMU} not found: apt-get install -y --no-install-recommends qemu-system-x86 "
                      "(make setup does)")
    if not BUSYBOX.exists():
        raise VMError(f"{BUSYBOX} not found: apt-get install -y busybox-static (make setup does)")
    if nic is not None and Path("/sys/class/net", nic.tap).exists():
        raise VMError(f"interface {nic.tap} exists already: another VM server runs, or one died "
                      f"(eucalab cleanup; or ip link del {nic.tap})")
    t0 = time.monotonic()
    kernel = fetch_kernel(cache, say=say)
    initramfs = build_initramfs(kernel, GUEST_SCRIPT, cache)
    if accel == "auto":
        accel = "kvm" if kvm_usable(kernel, initramfs, cache) else "tcg"
    cpus = cpus or os.cpu_count() or 1
    out_dir.mkdir(parents=True, exist_ok=True)
    guest_env = {"EUCALAB_VM_OUT": "/mnt/eucalab-out", "EUCALAB_VM": accel, **(env or {})}
    job_doc: dict = {"argv": job, "cwd": str(cwd), "env": guest_env, "out": str(out_dir.resolve())}
    if nic is not None:
        job_doc["nic"] = {"mac": nic.mac, "address": f"{nic.guest_ip}/{nic.prefix}"}
    (out_dir / "job.json").write_text(json.dumps(job_doc))
    for stale in ("rc", "marks"):
        (out_dir / stale).unlink(missing_ok=True)
    console = out_dir / "console.log"
    cmd = qemu_command(kernel, initramfs, out_dir, accel, cpus, memory_mib, nic)
    say(f"vm: booting {kernel.release} under {accel.upper()}"
        f"{' (software emulation: 10-40x slower than this machine)' if accel == 'tcg' else ''}, "
        f"{cpus} vCPU, {memory_mib} MiB; console: {console}")
    timings: dict[str, float] = {}
    con = console.open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)

    def pump() -> None:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if con.closed:  # the boot was cut short (timeout, signal): qemu is gone
                return
            con.write(line + "\n")
            con.flush()
            if line.startswith("eucalab-vm: mark "):
                timings[line.split()[2]] = round(time.monotonic() - t0, 1)
            if echo:
                echo(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return RunningVM(proc, out_dir, console, con, reader, accel, timings, t0, say)


def boot(job: list[str], out_dir: Path, *, cwd: Path, env: dict[str, str] | None = None,
         accel: str = "auto", cpus: int | None = None, memory_mib: int = DEFAULT_MEMORY_MIB,
         timeout_s: float = DEFAULT_TIMEOUT_S, cache: Path = CACHE,
         say: Callable[[str], None] = print, echo: Callable[[str], None] | None = None) -> VMResult:
    """Boot the VM, run ``job`` (argv) in ``cwd`` inside it, and return its exit status."""
    running = start_vm(job, out_dir, cwd=cwd, env=env, accel=accel, cpus=cpus, memory_mib=memory_mib,
                       cache=cache, say=say, echo=echo)
    return running.wait(timeout_s)


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


# Under emulation every timeout of the testbed is stretched (experiments.testbed.timescale).
TCG_TIME_SCALE = "10"
REPO = Path(__file__).resolve().parents[2]


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


def _in_vm(argv: list[str], out_dir: Path, accel: str, timeout_s: float) -> int:
    result = boot(argv, out_dir, cwd=REPO, accel=accel, timeout_s=timeout_s,
                  env={"EUCALAB_TIME_SCALE": TCG_TIME_SCALE} if accel != "kvm" else {},
                  echo=lambda line: print(line, flush=True))
    (out_dir / "timings.json").write_text(json.dumps(
        {"accel": result.accel, "returncode": result.returncode, "seconds": result.timings}, indent=1))
    figures = ", ".join(f"{k} {v} s" for k, v in result.timings.items())
    print(f"vm: {result.accel.upper()}: exit {result.returncode}; at {figures} after start; "
          f"console, timings and results in {out_dir}", flush=True)
    return result.returncode


def main_test(pytest_args: list[str], out_dir: Path, accel: str = "auto",
              timeout_s: float = DEFAULT_TIMEOUT_S, here: bool | None = None) -> int:
    """``eucalab vm test``: the kernel-lane tests (marker ``kernel``, tests/kernel), on
    this kernel if it has the features, else inside the VM. Returns pytest's exit status."""
    # Without a path of their own the arguments apply to tests/kernel: collecting the
    # whole suite costs minutes under emulation.
    paths = [a for a in pytest_args if not a.startswith("-") and ("tests" in a or ".py" in a)]
    argv = [_python(), "-m", "pytest", "-m", "kernel", "-p", "no:cacheprovider", "-v", "-ra",
            "--durations=0", *pytest_args, *([] if paths else ["tests/kernel"])]
    if here is None:
        from .preflight import missing_kernel_features

        here = not missing_kernel_features()
    out_dir.mkdir(parents=True, exist_ok=True)
    if here:
        print("vm: this kernel has openvswitch, sch_netem and 8021q: the kernel-lane tests run here",
              flush=True)
        return subprocess.call(argv + ["--junitxml", str(out_dir / "junit.xml")], cwd=REPO)
    print("vm: this kernel lacks openvswitch, sch_netem or 8021q: the kernel-lane tests run in a VM",
          flush=True)
    return _in_vm(argv + ["--color=no", "--junitxml", "/mnt/eucalab-out/junit.xml"], out_dir, accel, timeout_s)


def main_run(argv: list[str], out_dir: Path, accel: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """``eucalab vm run -- CMD``: one command inside the VM, in the repository."""
    return _in_vm(argv, out_dir, accel, timeout_s)
