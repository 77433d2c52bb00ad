"""The kernel lane's VM preparation, without root and without booting anything."""

from __future__ import annotations

import lzma
import os
import stat
import subprocess
import time

import pytest

from experiments.testbed import timescale, vm, vm_image, vm_server
from experiments.testbed.rundir import REPO_ROOT

pytestmark = pytest.mark.loopback  # starts processes (tests/conftest.py)


def test_image_package_is_the_versioned_dependency():
    out = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n"
    assert vm_image.image_package(out) == "linux-image-6.1.0-57-amd64"
    with pytest.raises(vm_image.VMError, match="apt-get update"):
        vm_image.image_package("linux-image-amd64\n")


def test_resolve_updates_the_lists_once_when_apt_knows_nothing():
    calls = []

    def run(cmd, **kw):
        calls.append(cmd[:2])
        known = ["apt-get", "update"] in calls
        out = "  Depends: linux-image-6.1.0-9-amd64\n" if known and cmd[0] == "apt-cache" else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    assert vm_image.resolve_kernel_package(run) == "linux-image-6.1.0-9-amd64"
    assert calls == [["apt-cache", "depends"], ["apt-get", "update"], ["apt-cache", "depends"]]


def test_extract_vmlinux_finds_the_elf_after_a_false_start():
    elf = b"\x7fELF" + bytes(range(256)) * 50
    decoy = lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    image = b"MZ" + b"\0" * 100 + decoy + b"\0" * 7 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0" * 64
    assert vm_image.extract_vmlinux(image) == elf
    with pytest.raises(vm_image.VMError):
        vm_image.extract_vmlinux(b"MZ" + decoy)


MODULES_DEP = """kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko
kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko
kernel/fs/fscache/fscache.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
"""


def test_load_order_puts_dependencies_first_and_each_once():
    order = vm_image.load_order(["9pnet_virtio", "9p", "overlay"], vm_image.module_dependencies(MODULES_DEP))
    names = [p.rsplit("/", 1)[1] for p in order]
    assert sorted(names) == sorted(set(names))
    assert names.index("virtio.ko") < names.index("9pnet_virtio.ko")
    assert names.index("9pnet.ko") < names.index("9pnet_virtio.ko") < names.index("9p.ko")
    assert names.index("fscache.ko") < names.index("netfs.ko") < names.index("9p.ko")
    with pytest.raises(vm_image.VMError, match="not in modules.dep"):
        vm_image.load_order(["nonesuch"], vm_image.module_dependencies(MODULES_DEP))


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos = (pos + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out[name] = (mode, body)


def test_cpio_newc_round_trips_what_the_kernel_unpacks():
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
               ("lib/x.ko", stat.S_IFREG | 0o644, b"\x01" * 4097)]
    back = _read_newc(vm_image.cpio_newc(entries))
    assert back == {name: (mode, data) for name, mode, data in entries}


def test_stage1_loads_modules_and_switches_root_into_the_guest_script():
    init = vm_image.stage1_init(["kernel/net/9p/9pnet.ko", "kernel/fs/9p/9p.ko"], "/cache/k/lib/modules",
                          "/repo/experiments/testbed/vm_guest.sh")
    lines = init.splitlines()
    assert lines[0] == "#!/bin/busybox sh"
    assert lines.index("insmod /lib/modules/9pnet.ko") < lines.index("insmod /lib/modules/9p.ko")
    assert "mount --bind /lower/cache/k/lib/modules /newroot/usr/lib/modules" in init
    assert lines[-1] == "exec switch_root /newroot /bin/bash /repo/experiments/testbed/vm_guest.sh"


def test_qemu_command_has_no_disk_and_no_network(tmp_path):
    kernel = vm_image.Kernel("linux-image-x", "x", tmp_path)
    cmd = vm.qemu_command(kernel, tmp_path / "i.cpio", tmp_path / "out", "tcg", 2, 2048)
    joined = " ".join(cmd)
    assert "-nic" not in cmd and "-drive" not in cmd and "-nodefaults" in cmd
    assert "readonly=on" in joined and f"path={tmp_path / 'out'}" in joined
    assert cmd[cmd.index("-accel") + 1].startswith("tcg")
    assert vm.qemu_command(kernel, tmp_path / "i", tmp_path, "kvm", 1, 512)[1:3] == ["-accel", "kvm"]


@pytest.mark.parametrize("value, scale", [(None, 1.0), ("", 1.0), ("10", 10.0), ("2.5", 2.5)])
def test_time_scale(value, scale):
    assert timescale._read(value) == scale


@pytest.mark.parametrize("value", ["0.5", "fast", "5000"])
def test_time_scale_refuses_nonsense(value):
    with pytest.raises(SystemExit, match="EUCALAB_TIME_SCALE"):
        timescale._read(value)


def test_qemu_command_gives_a_card_on_the_named_tap_only_when_asked(tmp_path):
    kernel = vm_image.Kernel("linux-image-x", "x", tmp_path)
    nic = vm.GuestNIC()
    cmd = vm.qemu_command(kernel, tmp_path / "i.cpio", tmp_path / "out", "tcg", 2, 2048, nic)
    netdev = cmd[cmd.index("-netdev") + 1]
    # qemu makes the tap (no script touches this machine's network) and it goes with qemu.
    assert netdev == f"tap,id=n0,ifname={nic.tap},script=no,downscript=no"
    assert f"virtio-net-pci,netdev=n0,mac={nic.mac}" in cmd
    assert cmd.count("-netdev") == 1 and "-nic" not in cmd
    # The /30 holds this machine's end and the guest's, nothing else.
    import ipaddress
    net = ipaddress.ip_network(f"{nic.host_ip}/{nic.prefix}", strict=False)
    assert [str(h) for h in net.hosts()] == [nic.host_ip, nic.guest_ip]


def test_ssh_keys_and_config_are_the_runs_own(tmp_path):
    keys = tmp_path / "ssh"
    config = vm_server.make_ssh_keys(keys, "10.99.0.2")
    text = config.read_text()
    assert text.startswith("Host 10.99.0.2\n")
    assert f"IdentityFile {keys / 'client_key'}" in text and "IdentitiesOnly yes" in text
    assert f"UserKnownHostsFile {keys / 'known_hosts'}" in text and "StrictHostKeyChecking yes" in text
    assert "~" not in text and "/root/.ssh" not in text
    host_pub = (keys / "host_key.pub").read_text().split()
    assert (keys / "known_hosts").read_text() == f"10.99.0.2 {host_pub[0]} {host_pub[1]}\n"
    assert (keys / "client_key").stat().st_mode & 0o077 == 0
    # A second run makes other keys.
    again = vm_server.make_ssh_keys(tmp_path / "ssh2", "10.99.0.2")
    assert (again.parent / "client_key.pub").read_text() != (keys / "client_key.pub").read_text()


def test_cleanup_of_a_vm_server_kills_only_the_recorded_process(tmp_path):
    import subprocess

    from experiments.testbed import rundir as rd

    def record(pid, start):
        return {"vm_server": {"qemu_pid": pid, "qemu_start": start, "tap": "euclnotthere0"}}

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # A start time that does not match: the pid now belongs to another process, left alone.
        assert vm_server.cleanup_server(record(proc.pid, 1)) == "nothing left"
        assert proc.poll() is None
        assert vm_server.cleanup_server(record(proc.pid, rd.process_start_time(proc.pid))) == f"qemu {proc.pid} killed"
        assert proc.wait(timeout=5) == -9
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_guest_copies_the_jobs_run_directories_but_never_the_share_into_itself(tmp_path):
    """``eucalab vm test`` keeps its share in results/, which the guest sees through the
    host's root: copying every new directory of results/ copied the share into itself
    over and over (over 9p cp cannot tell), until the VM's timeout."""
    results, share = tmp_path / "repo" / "results", tmp_path / "share"
    results.mkdir(parents=True)
    share.mkdir()
    stamp = tmp_path / "stamp"
    stamp.touch()
    os.utime(stamp, (time.time() - 60, time.time() - 60))
    old = results / "20200101T000000Z-old"
    old.mkdir()
    os.utime(old, (time.time() - 120, time.time() - 120))
    made = results / "20261207T000000Z-experiment"
    made.mkdir()
    (made / "report.md").write_text("report\n")
    host_out = results / "20261207T000000Z-kernel-lane"  # the share, as the guest sees it
    host_out.mkdir()
    script = REPO_ROOT / "experiments" / "testbed" / "vm_results.sh"
    out = subprocess.run(["bash", str(script), str(results), str(share), str(host_out), str(stamp)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(made)]
    assert sorted(p.name for p in share.iterdir()) == [made.name]
    assert (share / made.name / "report.md").read_text() == "report\n"
