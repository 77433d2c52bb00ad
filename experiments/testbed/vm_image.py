"""The kernel lane's VM, its preparation: Debian's kernel fetched and unpacked into the
cache, the initramfs that mounts this machine's root, and whether KVM works here.

Split from ``vm.py`` (which boots qemu and runs the lane's job) at that job boundary:
everything here runs before qemu starts and is kept in ``CACHE`` between runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import lzma
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

CACHE = Path(os.environ.get("EUCALAB_VM_CACHE", "/var/cache/eucalab/vm"))
KERNEL_PACKAGE = "linux-image-amd64"  # Debian's meta package: depends on the current image
BUSYBOX = Path("/bin/busybox")  # busybox-static: no shared libraries needed in the initramfs
QEMU = "qemu-system-x86_64"
OUT_TAG, ROOT_TAG = "eucalabout", "hostroot"
# What the initramfs needs to mount the host's root and the output share.
INITRD_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# What the lane exists for, loaded by the guest script with modprobe.
KERNEL_FEATURES = ("openvswitch", "sch_netem", "8021q")


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
