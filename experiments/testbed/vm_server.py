"""The kernel lane's VM as a second server for deployments over several servers
(docs/cluster.md): its own ssh keys, the boot with a network card on a tap device, and
the cleanup of a server whose driver died. Split from ``vm.py``, which boots qemu.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .vm import REPO, TCG_TIME_SCALE, GuestNIC, RunningVM, start_vm
from .vm_image import Runner, VMError, _run

if TYPE_CHECKING:
    from .clocks import ClockOffset

SERVE_SCRIPT = Path(__file__).with_name("vm_serve.sh")


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
            "    ConnectTimeout 20\n"
            # One connection carries every session while serve() holds it open (an ssh
            # log-in costs the emulated guest seconds); without it, ssh connects anew.
            f"    ControlPath {keys / 'mux'}\n"
            "    ControlMaster no\n")


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
    server = VMServer(nic.guest_ip, config, nic, running)
    master = None  # the ssh connection every session shares
    record = None
    try:
        record = _register_server(out_dir, running, nic)
        tap = Path("/sys/class/net", nic.tap)
        _wait_until(tap.exists, boot_timeout_s, f"tap device {nic.tap}", running)
        for cmd in (["ip", "addr", "add", f"{nic.host_ip}/{nic.prefix}", "dev", nic.tap],
                    ["ip", "link", "set", nic.tap, "up"]):
            proc = _run(cmd)
            if proc.returncode != 0:
                raise VMError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        _wait_until(lambda: "sshd" in running.timings, boot_timeout_s, "sshd in the guest", running)
        _wait_until(lambda: _answers(server), boot_timeout_s, f"ssh to {nic.guest_ip}", running)
        master = subprocess.Popen(server.ssh_command[:-1] + ["-N", "-o", "ControlMaster=yes", nic.guest_ip],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        _wait_until(lambda: (config.parent / "mux").exists(), boot_timeout_s, "the ssh connection", running)
        # One clock story: the guest's monotonic clock against this machine's, beside the record.
        server.clock = measure_clock_offset(server.ssh_command)
        rd.write_json(out_dir / "clock.json", {"server": nic.guest_ip, **dataclasses.asdict(server.clock)})
        say(f"vm: serving at {nic.guest_ip} over {nic.tap} (ssh -F {config} {nic.guest_ip}); clock offset "
            f"{server.clock.offset_s:.6f} s +- {server.clock.resolution_s * 1e3:.2f} ms")
        yield server
    finally:
        if master is not None and master.poll() is None:
            master.terminate()
            try:
                master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait(timeout=10)
        # Nothing in the guest outlives it (memory only): no orderly power-off to wait for.
        running.close()
        if record is not None:
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


def main_serve(out_dir: Path, accel: str = "auto", timeout_s: float | None = None) -> int:
    """``eucalab vm serve``: the VM up as a second server until SIGINT or SIGTERM (or for
    ``timeout_s``, if given), for ``eucalab up SPEC --ssh-config FILE`` with ``servers:
    [localhost, ADDRESS]`` from another terminal (docs/cluster.md). Everything it made goes
    with it."""
    stop = {"signal": None}

    def _stop(signum, _frame):
        stop["signal"] = signal.Signals(signum).name
        # A second Ctrl-C must not cut the teardown short (qemu runs in a session of its own
        # and would outlive it): from here on both signals are ignored.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serve(out_dir, accel=accel) as server:
            print(f"vm: a second server at {server.address}: in a spec, servers: [localhost, {server.address}]; "
                  f"then eucalab up SPEC --ssh-config {server.ssh_config}", flush=True)
            until = f"for {timeout_s:.0f} s (--timeout) or until" if timeout_s else "until"
            print(f"vm: serving {until} Ctrl-C or SIGTERM (kill {os.getpid()})", flush=True)
            try:
                server.vm.proc.wait(timeout=timeout_s or None)  # a signal's KeyboardInterrupt ends it
            except subprocess.TimeoutExpired:
                print(f"vm: {timeout_s:.0f} s served (--timeout): stopping", flush=True)
            else:
                raise VMError(f"the VM ended on its own; console: {server.vm.console}")
    except KeyboardInterrupt:
        print(f"vm: {stop['signal'] or 'SIGINT'}: stopped", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
