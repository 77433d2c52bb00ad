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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import lzma
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from .clocks import ClockOffset

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("EUCALAB_VM_CACHE", "/var/cache/eucalab/vm"))
KERNEL_PACKAGE = "linux-image-amd64"  # Debian's meta package: depends on the current image
BUSYBOX = Path("/bin/busybox")  # busybox-static: no shared libraries needed in the initramfs
QEMU = "qemu-system-x86_64"
GUEST_SCRIPT = Path(__file__).with_name("vm_guest.sh")
SERVE_SCRIPT = Path(__file__).with_name("vm_serve.sh")
OUT_TAG, ROOT_TAG = "eucalabout", "hostroot"
# What the initramfs needs to mount the host's root and the output share.
INITRD_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# What the lane exists for, loaded by the guest script with modprobe.
KERNEL_FEATURES = ("openvswitch", "sch_netem", "8021q")
DEFAULT_TIMEOUT_S = 20 * 60
DEFAULT_MEMORY_MIB = 4096


class VMError(RuntimeError):
    """The VM could not be prepared or booted; the message says what to do."""


Runner = Callable[..., subprocess.CompletedProcess]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, **kw)


# --- the kernel -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package in the cache."""

    package: str          # e.g. linux-image-6.1.0-57-amd64
    release: str          # e.g. 6.1.0-57-amd64 (the modules directory's name)
    root: Path            # the unpacked package: boot/, lib/modules/<release>/

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def vmlinux(self) -> Path:
        return self.root / "vmlinux"

    @property
    def bzimage(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"


def image_package(depends_output: str) -> str:
    """The versioned image package the meta package depends on, from ``apt-cache depends``."""
    for line in depends_output.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            name = line.split(":", 1)[1].strip()
            if name.startswith("linux-image-") and name != KERNEL_PACKAGE:
                return name
    raise VMError(f"apt-cache depends {KERNEL_PACKAGE} names no linux-image package: "
                  "run `apt-get update`, then again")


def resolve_kernel_package(run: Runner = _run) -> str:
    """Ask apt which image ``linux-image-amd64`` stands for (updating the lists once if empty)."""
    proc = run(["apt-cache", "depends", KERNEL_PACKAGE])
    if proc.returncode != 0 or "Depends:" not in proc.stdout:
        upd = run(["apt-get", "update", "-qq"])
        if upd.returncode != 0:
            raise VMError(f"apt-get update failed: {upd.stderr.strip()[-300:]}")
        proc = run(["apt-cache", "depends", KERNEL_PACKAGE])
    return image_package(proc.stdout)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside an xz-compressed bzImage (what scripts/extract-vmlinux does)."""
    magic = b"\xfd7zXZ\x00"
    start = bzimage.find(magic)
    while start >= 0:
        try:
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            out = b""
        if out.startswith(b"\x7fELF"):
            return out
        start = bzimage.find(magic, start + 1)
    raise VMError("no xz-compressed ELF kernel found in the bzImage")


def fetch_kernel(cache: Path = CACHE, run: Runner = _run, say: Callable[[str], None] = print) -> Kernel:
    """The cached kernel, fetched, unpacked, depmod-ed and extracted on first use."""
    package = resolve_kernel_package(run)
    root = cache / package
    ready = root / ".ready"
    if ready.exists():
        release = ready.read_text().strip()
        return Kernel(package, release, root)
    say(f"vm: fetching {package} from Debian (apt-get download), once; cached in {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        proc = run(["apt-get", "download", package], cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise VMError(f"apt-get download {package} failed: {proc.stderr.strip()[-300:]}")
        unpacked = Path(tmp) / "root"
        proc = run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        if proc.returncode != 0:
            raise VMError(f"dpkg-deb -x failed: {proc.stderr.strip()[-300:]}")
        releases = [p.name for p in (unpacked / "lib" / "modules").iterdir()]
        if len(releases) != 1:
            raise VMError(f"{package} holds {len(releases)} module trees, expected 1")
        release = releases[0]
        # The package ships no modules.dep: modprobe needs it.
        proc = run(["depmod", "-b", str(unpacked), release])
        if proc.returncode != 0:
            raise VMError(f"depmod failed: {proc.stderr.strip()[-300:]}")
        kernel = Kernel(package, release, unpacked)
        kernel.vmlinux.write_bytes(extract_vmlinux(kernel.bzimage.read_bytes()))
        missing = [m for m in KERNEL_FEATURES + INITRD_MODULES if not module_path(kernel, m)]
        if missing:
            raise VMError(f"{package} has no module(s) {', '.join(missing)}")
        (debs[0]).unlink()
        # One kernel is kept: an older one goes when a newer one is cached.
        for old in cache.iterdir():
            if old.is_dir() and old.name.startswith("linux-image-") and old.name != package:
                shutil.rmtree(old, ignore_errors=True)
        os.replace(unpacked, root)
    (root / ".ready").write_text(release + "\n")
    return Kernel(package, release, root)


# --- the initramfs ----------------------------------------------------------------------

def module_dependencies(modules_dep: str) -> dict[str, list[str]]:
    """``modules.dep`` as {module name: [paths of its dependencies, in load order]}."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        # modules.dep lists a module's dependencies nearest first: load them in reverse.
        deps[_module_name(path)] = [path] + list(reversed(rest.split()))
    return deps


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name.replace("-", "_")


def load_order(wanted: Iterable[str], deps: dict[str, list[str]]) -> list[str]:
    """Module paths to insmod, dependencies first, each once."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in deps:
            raise VMError(f"module {name} is not in modules.dep")
        path, *needs = deps[name]
        for dep in needs:
            visit(_module_name(dep))
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def module_path(kernel: Kernel, name: str) -> Path | None:
    deps = module_dependencies((kernel.modules / "modules.dep").read_text())
    entry = deps.get(name.replace("-", "_"))
    return kernel.modules / entry[0] if entry else None


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's initramfs format (newc): (path, mode, data) each."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        put(name, mode, data, ino)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def stage1_init(module_files: list[str], modules_dir: str, stage2: str) -> str:
    """The initramfs's /init: mount the host's root (read-only) under a tmpfs overlay,
    the kernel's modules and the output share, then switch root into ``stage2``."""
    insmods = "\n".join(f"insmod /lib/modules/{Path(m).name}" for m in module_files)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{insmods}
fail() {{ echo "eucalab-vm: stage 1: $*"; echo o > /proc/sysrq-trigger; sleep 5; }}
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 {ROOT_TAG} /lower || fail "no host root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "no overlay"
mkdir -p /newroot/usr/lib/modules
mount --bind /lower{modules_dir} /newroot/usr/lib/modules || fail "no modules"
mkdir -p /newroot/mnt/eucalab-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {OUT_TAG} /newroot/mnt/eucalab-out || fail "no output share"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/bash {stage2}
"""


def build_initramfs(kernel: Kernel, stage2: Path, cache: Path = CACHE) -> Path:
    """The initramfs for ``kernel`` (cached by content)."""
    deps = module_dependencies((kernel.modules / "modules.dep").read_text())
    files = load_order(INITRD_MODULES, deps)
    init = stage1_init(files, str(kernel.root / "lib" / "modules"), str(stage2))
    entries: list[tuple[str, int, bytes]] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, init.encode()))
    for path in files:
        entries.append((f"lib/modules/{Path(path).name}", stat.S_IFREG | 0o644,
                        (kernel.modules / path).read_bytes()))
    data = cpio_newc(entries)
    target = kernel.root / f"initramfs-{hashlib.sha256(data).hexdigest()[:16]}.cpio"
    if not target.exists():
        for old in kernel.root.glob("initramfs-*.cpio"):
            old.unlink()
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


# --- KVM or TCG -------------------------------------------------------------------------

def kvm_usable(kernel: Kernel, initramfs: Path, cache: Path = CACHE, timeout_s: float = 20.0) -> bool:
    """Whether a guest boots under KVM here: /dev/kvm opens and the kernel reaches its
    first line within ``timeout_s``. Some hosts (broken nested virtualisation) hang after
    the BIOS; the answer is remembered per host kernel."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return False
    memo = cache / "kvm.json"
    host = platform.release()
    known = json.loads(memo.read_text()) if memo.exists() else {}
    if host in known:
        return bool(known[host])
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-no-user-config",
           "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel.vmlinux),
           "-append", "console=ttyS0 panic=-1 rdinit=/bin/false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    booted = threading.Event()

    def watch() -> None:
        for line in proc.stdout:
            if b"Linux version" in line:
                booted.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    ok = booted.wait(timeout_s)
    proc.kill()
    proc.wait()
    known[host] = ok
    memo.write_text(json.dumps(known))
    return ok


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


# --- the VM as a second server ----------------------------------------------------------

def ssh_config_text(keys: Path, address: str) -> str:
    """An ssh client configuration for this run's server only: its own key pair and
    known host key, nothing from the user's ~/.ssh."""
    return (f"Host {address}\n"
            "    User root\n"
            f"    IdentityFile {keys / 'client_key'}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {keys / 'known_hosts'}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 20\n")


def make_ssh_keys(keys: Path, address: str, run: Runner = _run) -> Path:
    """A client key, a host key and an ssh config made for one run (in ``keys``); the config's path."""
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    for name in ("client_key", "host_key"):
        proc = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"eucalab-{name}",
                    "-f", str(keys / name)])
        if proc.returncode != 0:
            raise VMError(f"ssh-keygen failed: {proc.stderr.strip()[-300:]} (apt-get install openssh-client)")
    host_pub = (keys / "host_key.pub").read_text().split()
    (keys / "known_hosts").write_text(f"{address} {host_pub[0]} {host_pub[1]}\n")
    config = keys / "config"
    config.write_text(ssh_config_text(keys, address))
    return config


@dataclasses.dataclass
class VMServer:
    """The kernel-lane VM up as a second server: reachable over ssh at ``address``."""

    address: str
    ssh_config: Path
    nic: GuestNIC
    vm: RunningVM
    clock: "ClockOffset | None" = None  # its CLOCK_MONOTONIC minus this machine's

    @property
    def ssh_command(self) -> list[str]:
        """ssh to the server with the run's configuration; append the remote command line."""
        return ["ssh", "-F", str(self.ssh_config), self.address]

    def ssh(self, command: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``command`` (a shell line) on the server as root."""
        return _run(self.ssh_command + [command], timeout=timeout_s)


def _wait_until(check: Callable[[], bool], timeout_s: float, what: str, vm: RunningVM) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if vm.proc.poll() is not None:
            raise VMError(f"the VM ended while waiting for {what}; console: {vm.console}")
        if time.monotonic() > deadline:
            raise VMError(f"no {what} within {timeout_s:.0f} s; console: {vm.console}")
        time.sleep(0.2)


@contextlib.contextmanager
def serve(out_dir: Path, *, accel: str = "auto", nic: GuestNIC = GuestNIC(),
          boot_timeout_s: float | None = None, say: Callable[[str], None] = print) -> Iterator[VMServer]:
    """Boot the VM as a second server for a deployment over several servers.

    The guest gets one network card, on a tap device of this machine (``nic.tap``, made by
    qemu and gone with it) and a /30 of its own, and runs sshd with keys made for this run
    (``out_dir/ssh``) and Open vSwitch. ``server.json`` in ``out_dir`` records qemu's pid
    and the tap's name for ``eucalab cleanup``; ``clock.json`` the guest's clock offset.
    On exit qemu is killed: the guest keeps nothing (its root is a tmpfs overlay), so its
    bridges and interfaces go with it."""
    from . import rundir as rd
    from .clocks import measure_clock_offset

    out_dir.mkdir(parents=True, exist_ok=True)
    config = make_ssh_keys(out_dir / "ssh", nic.guest_ip)
    running = start_vm(["bash", str(SERVE_SCRIPT), nic.guest_ip], out_dir, cwd=REPO, accel=accel,
                       nic=nic, say=say)
    # Under emulation the guest runs about 10 times slower than this machine.
    slow = 1.0 if running.accel == "kvm" else float(TCG_TIME_SCALE)
    boot_timeout_s = boot_timeout_s or 60 * slow
    record = _register_server(out_dir, running, nic)
    server = VMServer(nic.guest_ip, config, nic, running)
    try:
        tap = Path("/sys/class/net", nic.tap)
        _wait_until(tap.exists, boot_timeout_s, f"tap device {nic.tap}", running)
        for cmd in (["ip", "addr", "add", f"{nic.host_ip}/{nic.prefix}", "dev", nic.tap],
                    ["ip", "link", "set", nic.tap, "up"]):
            proc = _run(cmd)
            if proc.returncode != 0:
                raise VMError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        _wait_until(lambda: "sshd" in running.timings, boot_timeout_s, "sshd in the guest", running)
        _wait_until(lambda: _answers(server), boot_timeout_s, f"ssh to {nic.guest_ip}", running)
        # One clock story: the guest's monotonic clock against this machine's, beside the record.
        server.clock = measure_clock_offset(server.ssh_command)
        rd.write_json(out_dir / "clock.json", {"server": nic.guest_ip, **dataclasses.asdict(server.clock)})
        say(f"vm: serving at {nic.guest_ip} over {nic.tap} (ssh -F {config} {nic.guest_ip}); clock offset "
            f"{server.clock.offset_s:.6f} s +- {server.clock.resolution_s * 1e3:.2f} ms")
        yield server
    finally:
        # Nothing in the guest outlives it (memory only): no orderly power-off to wait for.
        running.close()
        record.unlink(missing_ok=True)
        say(f"vm: server at {nic.guest_ip} stopped; console: {running.console}")


def _answers(server: VMServer) -> bool:
    try:
        return server.ssh("true", timeout_s=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _register_server(out_dir: Path, running: RunningVM, nic: GuestNIC) -> Path:
    """Record qemu's pid and the tap's name where ``eucalab cleanup`` looks (rundir's registry)."""
    from . import rundir as rd

    record = {"run_dir": str(out_dir), "driver_pid": os.getpid(),
              "driver_start": rd.process_start_time(os.getpid()),
              "vm_server": {"qemu_pid": running.proc.pid,
                            "qemu_start": rd.process_start_time(running.proc.pid),
                            "tap": nic.tap, "address": nic.guest_ip}}
    rd.write_json(out_dir / "server.json", record)
    rd.REGISTRY.mkdir(parents=True, exist_ok=True)
    entry = rd.REGISTRY / f"vm-server-{os.getpid()}-{running.proc.pid}.json"
    rd.write_json(entry, record)
    return entry


def cleanup_server(record: dict) -> str:
    """Finish a VM server whose driver died: qemu's session killed (if the pid is still that
    qemu), the tap deleted by name (if it is still there)."""
    from . import rundir as rd

    server = record["vm_server"]
    pid = server["qemu_pid"]
    done = []
    if rd.process_start_time(pid) == server.get("qemu_start"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        done.append(f"qemu {pid} killed")
    if Path("/sys/class/net", server["tap"]).exists():
        _run(["ip", "link", "del", server["tap"]])
        done.append(f"{server['tap']} deleted")
    return ", ".join(done) or "nothing left"
