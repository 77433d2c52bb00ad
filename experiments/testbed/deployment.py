"""A live deployment: the network of a spec, the processes on its hosts, and a run directory.

    from experiments.testbed.deployment import Deployment
    with Deployment(load_spec()) as dep:
        dep.start_services()                       # every component that exists
        clc = dep.host("clc", "primary")           # Mininet host
        print(clc.cmd("curl -s localhost:8773/health"))

It is the one way anything starts a process on an emulated host. On normal exit,
an exception, SIGINT or SIGTERM it stops every process and deletes exactly the
bridges and interfaces it created; a run killed with SIGKILL leaves a record that
``eucalab cleanup`` finishes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.common import control, ha_net
from components.common.ha_config import ha_config_for
from components.common.kinds import START_ORDER
from components.common.service import OPERATOR, ROLES, token_digest
from topologies.network import Created, EucaNetwork, kill_pids, namespace, teardown
from topologies.plan import PUBLIC_IP_POOL, Plan, ServicePair, build_plan
from topologies.spec import DeploymentSpec, SpecError

from . import rundir as rd
from . import vswitchd
from .timescale import scaled, wait_until  # noqa: F401 (wait_until: part of this module's API)

log = logging.getLogger(__name__)

# Components in start order (components/common/kinds.py; a component's module may not exist: it is skipped).
COMPONENT_ORDER = START_ORDER
# SCHED_FIFO priority of the HA members once started (and of the experiments' prober).
REALTIME_PRIORITY = 10


class DeploymentError(RuntimeError):
    """A deployment could not be brought up or driven (the message says why)."""


class Terminated(BaseException):
    """Raised in the driver on SIGTERM/SIGHUP so that teardown runs."""


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def component_exists(component: str) -> bool:
    return _module_exists(f"components.{component}.__main__")


def controller_exists() -> bool:
    return _module_exists("controllers.__main__")


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass
class Credentials:
    account_id: str
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> "Credentials":
        return cls(
            account_id="".join(secrets.choice(string.digits) for _ in range(12)),
            access_key="AKIA" + _random_key(16, string.ascii_uppercase + string.digits),
            secret_key=_random_key(40, string.ascii_letters + string.digits + "+/"),
        )


@dataclass
class Process:
    """A process the deployment started on a host."""

    host: str
    label: str  # the component name, or another label for extra processes
    pid: int
    start_time: int | None
    dir: Path
    popen: subprocess.Popen = field(repr=False)
    config: dict = field(default_factory=dict, repr=False)
    events_offset: int = 0  # where this process's events start in a log a restart appends to
    _seen: list = field(default_factory=list, repr=False, compare=False)  # events parsed so far
    _read_to: int | None = field(default=None, repr=False, compare=False)  # log bytes parsed into _seen
    _reading: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def events_path(self) -> Path:
        return self.dir / "events.jsonl"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def events(self) -> list[dict]:
        """This process's events so far (the JSON-lines log it writes; a restarted component
        appends to its predecessor's log, whose events are not this process's).

        Each call parses only the lines completed since the last one: the harness polls
        this every 10 ms during a trial, and parsing a member's whole log each time (700
        lines by the end of a run) cost 2.3 ms of CPU a call against 0.015, in the same
        scheduling class as the userspace datapath the probes cross."""
        with self._reading:
            if self._read_to is None:
                self._read_to = self.events_offset
            try:
                with open(self.events_path, "rb") as f:
                    f.seek(self._read_to)
                    chunk = f.read()
            except FileNotFoundError:
                return list(self._seen)
            end = chunk.rfind(b"\n")  # a line being written right now waits for the next call
            for line in chunk[:end + 1].decode(errors="replace").splitlines():
                try:
                    self._seen.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # not an event: never one later either
            self._read_to += end + 1
            return list(self._seen)


class Deployment:
    """The network of a spec plus the processes on its hosts, as a context manager."""

    def __init__(self, spec: DeploymentSpec | None = None, run_dir: Path | str | None = None,
                 name: str | None = None, datapath: str | None = None, sdn: bool | None = None):
        self.spec = spec or DeploymentSpec()
        self.name = name or self.spec.name
        self._run_dir_arg = Path(run_dir) if run_dir else None
        self._datapath_arg = datapath
        self.tag = _random_key(2, string.ascii_lowercase)
        self.plan: Plan = build_plan(self.spec, tag=self.tag)
        self.run_dir: Path | None = None
        self.network: EucaNetwork | None = None
        self.net = None
        self.processes: dict[tuple[str, str], Process] = {}
        self.credentials = Credentials.generate()
        # One internal credential per role (docs/security.md): a component's config holds its
        # own role's token and the digests of all; the operator's (this driver's) is internal_token.
        self.role_tokens = {role: secrets.token_hex(32) for role in ROLES}
        self.internal_token = self.role_tokens[OPERATOR]
        # One heartbeat key per HA pair and run, written into that pair's members' configs only.
        self.pair_secrets = {p.name: secrets.token_hex(32) for p in self.plan.pairs}
        self.events: rd.EventWriter | None = None
        self._registry_file: Path | None = None
        self._old_handlers: dict = {}
        self.timings: dict[str, float] = {}
        self.vip_holder: dict[str, str] = {}  # pair name -> host holding its VIP
        self.admitted: set[tuple[str, int]] = set()  # extra services the site's firewall admits (admit)
        self._main_label: dict[str, str] = {}
        self.realtime = True
        self.start_window: int | None = None  # processes starting at once (None: 4 per core, at least 4)
        # Config fields every process of a component gets, e.g. {"clc": {"quotas": {"instances": 1000}}}.
        self.component_extra: dict[str, dict] = {}
        self.datapath_priority: int | None = None  # ovs-vswitchd's SCHED_FIFO priority (vswitchd.py)
        # The SDN controller (controllers/__main__.py) owns every bridge unless the spec
        # (or ``sdn=False``) says otherwise; then the switches run standalone (MAC learning
        # on loop-free trees). A spec with ha.takeover sdn always gets one.
        wanted = (self.spec.sdn if sdn is None else bool(sdn)) or self.spec.ha.takeover == "sdn"
        if wanted and self.spec.vlan_tagging == "host":
            raise DeploymentError("vlan_tagging: host needs standalone VLAN-clean switches, not the SDN "
                                  "controller (its flows tag the groups themselves and drop the hosts' tags)")
        self.sdn = wanted and controller_exists()
        if wanted and not controller_exists():
            raise DeploymentError("the spec asks for the SDN controller (sdn: true) but there is none "
                                  "(controllers/__main__.py)")
        self.controller: subprocess.Popen | None = None
        self.controller_port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> "Deployment":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        from . import preflight

        if os.geteuid() != 0:
            raise DeploymentError("building a network needs root: run as root (make run / make test do)")
        datapath = self._datapath_arg or self.spec.datapath
        if datapath == "auto":
            datapath = preflight.datapath()
        if self.spec.links.needs_netem and not preflight.has_netem():
            raise DeploymentError(
                f"{self.spec.links.first_netem_field()}: this kernel has no netem (sch_netem); "
                "delay, jitter and loss cannot be emulated here (`eucalab vm` runs a kernel that has it)")
        if self.spec.vlan_tagging == "host":
            try:
                self.spec.validate(dot1q=preflight.probe_8021q())
            except SpecError as exc:
                raise DeploymentError(str(exc)) from None
        problem = preflight.ovs_problem()
        if problem:
            raise DeploymentError(problem)
        self._install_signal_handlers()
        t0 = time.monotonic()
        self._pick_free_tag()
        self.run_dir = (rd.new_run_dir(self.name) if self._run_dir_arg is None
                        else self._prepare_dir(self._run_dir_arg))
        self.events = rd.EventWriter(self.run_dir / "events.jsonl")
        (self.run_dir / "spec.yaml").write_text(self.spec.to_yaml())
        rd.write_json(self.run_dir / "endpoints.json", self.plan.endpoints())
        self._write_credentials()
        controller_url = None
        if self.sdn:
            controller_url = self._start_controller()
        self.network = EucaNetwork(self.plan, datapath=datapath, on_created=self._record,
                                   controller=controller_url)
        self.events.emit("network.build", datapath=datapath, hosts=len(self.plan.hosts),
                         switches=len(self.plan.switches), links=len(self.plan.links))
        self.net = self.network.build()
        if self.realtime and datapath == "user":
            # The userspace datapath forwards in ovs-vswitchd: ahead of the realtime members.
            self.datapath_priority = vswitchd.raise_priority()
            self.events.emit("datapath.priority", priority=self.datapath_priority)
        if self.controller is not None:
            self._wait_controller_ready()
        for pair in self.plan.pairs:
            self.place_vip(pair, pair.primary, announce=False)
        self.timings["up"] = time.monotonic() - t0
        self.events.emit("network.up", seconds=round(self.timings["up"], 4), **{
            k: round(v, 4) for k, v in self.network.timings.items()})

    def down(self) -> None:
        """Stop every process, then remove the network; safe to call more than once."""
        t0 = time.monotonic()
        procs = [p for p in self.processes.values() if p.alive()]
        for p in procs:
            _signal(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p.pid, signal.SIGKILL)
                p.popen.wait(timeout=5)
            if self.events:
                self.events.emit("process.exit", host=p.host, label=p.label, pid=p.pid,
                                 returncode=p.popen.returncode)
        if self.controller is not None:
            self._stop_controller()
        # The last run to go puts ovs-vswitchd's scheduling back (vswitchd.py), before the
        # teardown: deleting bridges keeps ovs-vswitchd busy for seconds.
        vswitchd.release(exclude=self._registry_file)
        if self.network is not None:
            problems = self.network.stop()
            self.network = None
            if problems:
                log.warning("teardown: %s", "; ".join(problems))
        self.timings["down"] = time.monotonic() - t0
        if self.events:
            self.events.emit("network.down", seconds=round(self.timings["down"], 4))
            self.events.close()
            self.events = None
        if self._registry_file is not None:
            self._registry_file.unlink(missing_ok=True)
            self._registry_file = None
        self._restore_signal_handlers()

    def _pick_free_tag(self) -> None:
        """Choose a switch-name tag no bridge on this machine uses, so runs can coexist."""
        from topologies.network import existing_bridges

        bridges = existing_bridges()
        for _ in range(50):
            if not any(b.startswith(self.tag) for b in bridges):
                return
            self.tag = _random_key(2, string.ascii_lowercase)
            self.plan = build_plan(self.spec, tag=self.tag)
        raise DeploymentError("no free switch-name tag: too many bridges on this machine")

    def switch(self, name: str):
        """A Mininet switch by its plan name without the run tag: ``dep.switch('br1n1')``."""
        return self.net[self.tag + name]

    # -- hosts and processes -----------------------------------------------------------

    def host(self, kind: str, member: str = "primary", cluster: int | None = None):
        """A Mininet host by role: ``dep.host('cc', 'secondary', cluster=1)``, ``dep.host('user')``."""
        if kind in ("user", "gw", "ext", "gateway", "external"):
            return self.net[{"gateway": "gw", "external": "ext"}.get(kind, kind)]
        return self.net[self.plan.host_for(kind, member, cluster).name]

    def __getitem__(self, name: str):
        return self.net[name]

    def admit(self, address: str, port: int) -> None:
        """Let users reach one more TCP service through the site's firewall (the border
        gateway admits only the public services and elastic IPs: topologies/firewall.py)."""
        from topologies.firewall import admit_rule

        if (address, port) in self.admitted:
            return
        out = self.host("gw").cmd("nft -f - <<'EOF'\n" + admit_rule(address, port) + "EOF")
        if out.strip():
            raise RuntimeError(f"admitting {address}:{port} at the gateway failed: {out.strip()}")
        self.admitted.add((address, port))

    def aws_client(self, service: str, host: str = "user", access_key: str | None = None,
                   secret_key: str | None = None, **config):
        """A boto3 client ("ec2" or "s3") for the cloud's endpoints, acting from ``host``.

        Every call of the returned client runs inside the host's network namespace
        (boto3 opens sockets lazily, on any call), so no request can leave from the
        root namespace. Client retries are off: callers see every failure.
        """
        import boto3
        from botocore.config import Config

        endpoint = self.plan.endpoints()["clc" if service == "ec2" else "walrus"]
        options = dict(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}, connect_timeout=5,
                       read_timeout=30)
        options.update(config)
        client = boto3.client(service, endpoint_url=endpoint, region_name="eucalyptus",
                              aws_access_key_id=access_key or self.credentials.access_key,
                              aws_secret_access_key=secret_key or self.credentials.secret_key,
                              config=Config(**options))
        return InHost(self, host, client)

    def in_host(self, name: str):
        """``with dep.in_host('user'):`` sockets opened in the block belong to that host.

        The calling thread enters the host's network namespace for the block, so a
        test or probe can use boto3 or a socket as the host would, in-process.
        """
        from topologies.network import namespace

        return namespace(self.net[name].pid)

    def host_dir(self, host: str, label: str | None = None) -> Path:
        path = self.run_dir / "hosts" / host
        if label:
            path = path / label
        (path / "data").mkdir(parents=True, exist_ok=True)
        return path

    def component_config(self, component: str, host: str) -> dict:
        """The config file a component process gets (see components/common/config.py)."""
        ph = self.plan.hosts[host]
        pair = next((p for p in self.plan.pairs if host in p.members), None)
        hdir = self.host_dir(host)
        cfg = {
            "host": host,
            "component": component,
            "role": ph.ha_role or "single",
            "listen_host": "0.0.0.0",
            "port": pair.port if pair else 8775,
            "data_dir": str(hdir / "data"),
            "events_path": str(hdir / "events.jsonl"),
            "state": "DISABLED" if ph.ha_role == "secondary" else "ENABLED",
            "region": "eucalyptus",
            "admin": asdict(self.credentials),
            # Its own role's token (sent on its calls), and how to recognise every role's.
            "internal_token": self.role_tokens.get(component, ""),
            "internal_callers": {role: token_digest(t) for role, t in self.role_tokens.items()},
            "endpoints": self.plan.endpoints(),
            "zones": [f"cluster{k}" for k in range(1, self.spec.clusters + 1)],
            "public_ips": str(PUBLIC_IP_POOL),
            "mode": self.spec.mode.value,
            "cluster": ph.cluster,
            "run_dir": str(self.run_dir),
            "control_socket": str(self.control_socket),
        }
        if component == "clc":
            cfg["services"] = self.service_members()  # DescribeServices / ModifyService
        if pair is not None:
            cfg["pair"] = {"name": pair.name, "primary": pair.primary, "secondary": pair.secondary,
                           "vip": pair.vip, "private_vip": pair.private_vip}
        if pair is not None and pair.secondary is not None:
            cfg["ha"] = self.ha_config(pair, host)
            if self.realtime:
                # Heartbeats at realtime priority: CPU starvation, not the network, causes
                # most false failovers on a small host. The component raises itself once
                # started, so that starting processes never starve running ones.
                cfg["realtime_priority"] = REALTIME_PRIORITY
        if ph.role == "nc":
            # The NC boots instances into its VM slots by entering their namespaces.
            cfg["slots"] = [{"name": slot.name, "interface": slot.interfaces[0].name,
                             "netns": f"/proc/{self.net[slot.name].pid}/ns/net",
                             "port": self.plan.nc_port(slot.name)}
                            for slot in self.plan.slots_of(host)]
            # vlan_tagging host: the NC bridges each slot's port into its instance's VLAN.
            cfg["vlan_tagging"] = self.spec.vlan_tagging
            cfg["private_interface"] = ph.intf(f"priv{ph.cluster}").name
        if ph.role == "sc":
            # Block logins only from the cluster's NCs, on this member's own addresses and its VIP.
            cfg["nc_addresses"] = {nc.name: [i.ip.split("/")[0] for i in nc.interfaces if i.ip]
                                   for nc in self.plan.hosts_by_role("nc") if nc.cluster == ph.cluster}
            hb_net = pair.heartbeat_network if pair else None
            cfg["block_listen"] = ([pair.vip] if pair and pair.vip else []) + [
                i.ip.split("/")[0] for i in ph.interfaces if i.ip and i.network != hb_net]
        if ph.role == "cc":
            k = ph.cluster
            cfg["ncs"] = {nc.name: {"url": f"http://{nc.main_ip}:8775",
                                    "slots": [s.name for s in self.plan.slots_of(nc.name)]}
                          for nc in self.plan.hosts_by_role("nc") if nc.cluster == k}
            cfg["private_interface"] = ph.intf(f"priv{k}").name
            cfg["public_interface"] = ph.intf("cloud").name
            cfg["vlan_tagging"] = self.spec.vlan_tagging
        return cfg

    def service_members(self) -> list[dict]:
        """Every member of every pair as Eucalyptus's service API names it, with the address
        the CLC reaches it on (its own, on the cloud network)."""
        from components.clc.services import SERVICE_TYPES

        paths = {"clc": "/services/Eucalyptus", "walrus": "/services/Walrus"}
        out = []
        for pair in self.plan.pairs:
            partition = {"clc": "eucalyptus", "walrus": "walrus"}.get(pair.kind, f"cluster{pair.cluster}")
            for m in pair.members:
                base = f"http://{self.plan.hosts[m].intf('cloud').ip.split('/')[0]}:{pair.port}"
                out.append({"type": SERVICE_TYPES[pair.kind], "partition": partition, "name": m,
                            "uri": base + paths.get(pair.kind, ""), "internal": base, "pair": pair.name})
        return out

    def ha_config(self, pair: ServicePair, host: str) -> dict:
        """What a member's HA agent needs: its peer's addresses, its own, its VIPs, its
        arbitrators, and its pair's heartbeat key (that pair's two members hold it, nobody else)."""
        return ha_config_for(self.plan, host, self.pair_secrets[pair.name], self.spec, str(self.control_socket))

    def start(self, component: str, host: str, config: dict | None = None, *, label: str | None = None,
              argv: list[str] | None = None, wait: bool = True, timeout: float = 20.0) -> Process:
        """Start a process on a host and record it.

        With ``argv`` None this runs ``python -m components.<component> --config FILE``
        with the default config updated by ``config``; otherwise ``argv`` is run as is
        (``label`` names its directory). ``wait`` waits for its ``service.start`` event.
        """
        label = label or component
        key = (host, label)
        if key in self.processes and self.processes[key].alive():
            raise DeploymentError(f"{label} already runs on {host} (pid {self.processes[key].pid})")
        # A host's first component gets the plain layout hosts/<host>/{config,...};
        # any other process gets hosts/<host>/<label>/.
        main = argv is None and self._main_label.setdefault(host, label) == label
        pdir = self.host_dir(host) if main else self.host_dir(host, label)
        cfg: dict = {}
        if argv is None:
            if not component_exists(component):
                raise DeploymentError(f"no component {component!r} (components/{component}/__main__.py)")
            cfg = self.component_config(component, host)
            cfg["data_dir"], cfg["events_path"] = str(pdir / "data"), str(pdir / "events.jsonl")
            cfg.update(self.component_extra.get(component, {}))
            cfg.update(config or {})
            rd.write_json(pdir / "config", cfg)
            argv = [sys.executable, "-m", f"components.{component}", "--config", str(pdir / "config")]
        env = _child_env()
        node = self.net[host]
        log = pdir / "events.jsonl"
        offset = log.stat().st_size if log.exists() else 0
        with open(pdir / "stdout.log", "ab") as out:
            popen = node.popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, cwd=str(pdir))
        proc = Process(host, label, popen.pid, rd.process_start_time(popen.pid), pdir, popen, cfg, offset)
        self.processes[key] = proc
        (pdir / "pid").write_text(f"{popen.pid}\n")
        self._record(self.network.created)
        self.events.emit("process.start", host=host, label=label, pid=popen.pid, argv=argv[:6])
        if wait and f"components.{component}" in argv:
            self.wait_event(proc, "service.start", timeout=timeout)
        return proc

    def wait_event(self, proc: Process, event: str, timeout: float = 20.0, **match) -> dict:
        """Wait until a process logs ``event`` (with fields equal to ``match``)."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            for ev in proc.events():
                if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                    return ev
            if not proc.alive():
                raise DeploymentError(
                    f"{proc.label} on {proc.host} exited with {proc.popen.returncode} before {event}; "
                    f"last output:\n{_tail(proc.dir / 'stdout.log')}")
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{proc.label} on {proc.host} did not report {event} within {timeout:.0f} s; "
                    f"last output:\n{_tail(proc.dir / 'stdout.log')}")
            time.sleep(0.02)

    def process(self, host: str, label: str | None = None) -> Process:
        if label is None:
            matches = [p for (h, _), p in self.processes.items() if h == host]
            if not matches:
                raise KeyError(f"no process on {host}")
            return matches[0]
        return self.processes[(host, label)]

    def stop(self, host: str, label: str | None = None, timeout: float = 5.0) -> int | None:
        """SIGTERM a process, SIGKILL it after ``timeout``; returns its exit code."""
        proc = self.process(host, label)
        _signal(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            _signal(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
        self.events.emit("process.exit", host=proc.host, label=proc.label, pid=proc.pid,
                         returncode=proc.popen.returncode)
        return proc.popen.returncode

    def kill(self, host: str, label: str | None = None, sig: int = signal.SIGKILL, group: bool = False) -> None:
        """Send a signal (default SIGKILL: a crash) to a process; returns at once.

        ``group`` signals its whole process group (a daemon and the children it forked:
        every process started here leads a session of its own).
        """
        proc = self.process(host, label)
        self.events.emit("process.signal", host=proc.host, label=proc.label, pid=proc.pid, signal=int(sig),
                         group=group)
        if group:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        else:
            _signal(proc.pid, sig)

    def start_services(self, kinds: tuple[str, ...] = COMPONENT_ORDER, timeout: float = 30.0) -> list[Process]:
        """Start every component that exists, on every member of its pair, in order."""
        started = []
        for kind in kinds:
            if not component_exists(kind):
                log.info("component %s does not exist yet: skipped", kind)
                continue
            if kind == "nc":
                waves = [[h.name for h in self.plan.hosts_by_role("nc")]]
            else:
                # Primaries first, elected before their secondaries start: the plan's
                # primary is then the ENABLED member, run after run.
                pairs = [p for p in self.plan.pairs if p.kind == kind]
                waves = [[p.primary for p in pairs], [p.secondary for p in pairs if p.secondary]]
            for wave in waves:
                started.extend(self._start_wave(kind, wave, timeout))
                if kind != "nc":
                    # A member listens a detection window and an interval before it claims
                    # the pair alone: slow heartbeats (Eucalyptus 3.4's 10 s) need longer.
                    hb = self.spec.heartbeat
                    self.wait_for_primaries(kind, timeout=max(timeout, 3 * hb.interval_ms * (hb.misses + 2) / 1000))
        return started

    def _start_wave(self, kind: str, hosts: list[str], timeout: float) -> list[Process]:
        """Start ``kind`` on ``hosts``, at most ``start_window`` of them starting at once:
        256 NCs started together share the CPU so that none reports within its timeout,
        and those already running (heartbeats) starve meanwhile; a window keeps the
        throughput of the cores and each start short."""
        window = self.start_window or max(4, 4 * (os.cpu_count() or 1))
        procs: list[Process] = []
        for i, h in enumerate(hosts):
            if i >= window:
                self.wait_event(procs[i - window], "service.start", timeout=timeout)
            procs.append(self.start(kind, h, wait=False))
        for proc in procs[-window:]:
            self.wait_event(proc, "service.start", timeout=timeout)
        return procs

    def listening(self, host: str, port: int) -> bool:
        """Whether a TCP socket on ``host`` listens on ``port``, over IPv4 or IPv6 (iperf3
        and others listen on [::] only): see ``listens``."""
        return listens(self[host].cmd("cat /proc/net/tcp /proc/net/tcp6"), port)

    def member_state(self, host: str) -> str | None:
        """A component's current service state, from its own event log (no network needed);
        "DEAD" when its process is gone."""
        return self._member(host)[0]

    def _member(self, host: str) -> tuple[str | None, bool]:
        """(state, hears its peer) from one read of the member's own event log."""
        proc = self.process(host)
        if not proc.alive():
            return "DEAD", False
        state, hears = None, False
        for e in proc.events():
            kind = e["event"]
            if kind == "state.change":
                state = e["to"]
            elif kind == "service.start":
                state, hears = e.get("state"), False
            elif kind == "ha.peer_dead":
                hears = False
            elif kind == "ha.peer_alive":
                hears = True
        return state, hears

    def redundant(self, pair) -> bool:
        """Full redundancy of an HA pair: one member ENABLED, the other DISABLED, each hearing
        the other. A restarted member is DISABLED at once but may not take over before it has
        heard its peer (it may hold newer state), so DISABLED alone is not yet a standby."""
        views = [self._member(m) for m in pair.members]
        return sorted(state or "" for state, _ in views) == ["DISABLED", "ENABLED"] and all(h for _, h in views)

    def wait_for_primaries(self, kind: str, timeout: float = 30.0) -> None:
        """Wait until every HA pair of ``kind`` has elected its ENABLED member and put up its VIPs."""
        pairs = [p for p in self.plan.pairs if p.kind == kind and p.secondary is not None]
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        for pair in pairs:
            while True:
                running = [m for m in pair.members if any(h == m for h, _ in self.processes)]
                promoted = [m for m in running if any(
                    e["event"] == "ha.promote" for e in self.process(m).events())]
                if any(self.member_state(m) == "ENABLED" for m in promoted):
                    break
                if time.monotonic() > deadline:
                    raise DeploymentError(f"{pair.name}: no member became ENABLED within {timeout:.0f} s")
                time.sleep(0.02)

    # -- links (fault injection) -------------------------------------------------------

    def set_link(self, host: str, network: str | None, up: bool) -> None:
        """Take a host's interface on ``network`` (None: every interface) down or up.

        The kernel drops a host's routes through an interface that goes down and does
        not bring them back: bringing a link up re-applies the host's planned routes.
        """
        ph = self.plan.hosts[host]
        intfs = [i.name for i in ph.interfaces if network is None or i.network == network]
        if not up:
            # Over rtnetlink from this thread, inside the host's namespace: every link is down
            # within microseconds of the call (a host failure is one event, and the fault's
            # time is when it bites: going through the host's shell and a fork of `ip` put
            # 3-8 ms between them, counted as detection).
            with namespace(self.net[host].pid):
                errors = {name: ha_net.set_link(name, up=False) for name in intfs}
            if any(errors.values()):
                raise RuntimeError(f"{host}: taking links down failed: "
                                   + ", ".join(f"{n}: {os.strerror(e)}" for n, e in errors.items() if e))
        else:
            cmds = [f"link set dev {name} up" for name in intfs]
            if ph.default_route:
                cmds.append(f"route replace default via {ph.default_route}")
            cmds += [f"route replace {dest} via {via}" for dest, via in ph.routes]
            lines = " ".join(f"'{c}'" for c in cmds)
            self.net[host].cmd(f"printf '%s\\n' {lines} | ip -force -batch - 2>/dev/null")
        self.events.emit("link.up" if up else "link.down", host=host, network=network or "all",
                         interfaces=intfs)

    # -- service virtual IPs -------------------------------------------------------------

    def place_vip(self, pair: ServicePair, host: str, announce: bool = True) -> None:
        """Put a pair's virtual IP(s) on ``host`` (and take them off its peer)."""
        for member in pair.members:
            node = self.net[member]
            ph = self.plan.hosts[member]
            cmds = []
            for vip, network in ((pair.vip, "cloud"), (pair.private_vip, f"priv{pair.cluster}")):
                if vip is None:
                    continue
                intf = ph.intf(network)
                prefix = intf.ip.split("/")[1]
                if member == host:
                    cmds.append(f"ip addr replace {vip}/{prefix} dev {intf.name}")
                    if announce:
                        cmds.append(f"arping -q -U -c 1 -I {intf.name} {vip} &")
                else:
                    cmds.append(f"ip addr del {vip}/{prefix} dev {intf.name} 2>/dev/null")
            node.cmd("; ".join(cmds))
        if self.spec.ha.takeover == "sdn" and pair.secondary is not None:
            self.redirect_vip(pair, host)
        self.vip_holder[pair.name] = host
        if self.events:
            self.events.emit("vip.placed", pair=pair.name, host=host, vip=pair.vip)

    def redirect_vip(self, pair: ServicePair, host: str, epoch: int | None = None) -> tuple[int, dict]:
        """Ask the SDN controller to steer ``pair``'s VIP to ``host`` (takeover sdn).

        ``epoch`` None uses the epoch the controller holds (0 before any), as the driver
        placing a VIP must not outrank the pair's own HA agents. Returns (status, body).
        """
        if epoch is None:
            status, table = self.control_request("GET", "/vips")
            epoch = (table.get("pairs", {}).get(pair.name, {}).get("epoch") or 0) if status == 200 else 0
        status, body = self.control_request("PUT", f"/vips/{pair.name}",
                                            {"pair": pair.name, "epoch": epoch, "primary": host})
        if status != 200:
            raise DeploymentError(f"the controller refused to steer {pair.name}'s VIP to {host}: {status} {body}")
        return status, body

    def control_request(self, method: str, path: str, body: dict | None = None,
                        timeout: float = 5.0) -> tuple[int, dict]:
        """One request to the SDN controller's API on the run's control socket (docs/intent.md)."""
        return control.call_blocking(self.control_socket, method, path, body, timeout)

    # -- SDN controller (root namespace) --------------------------------------------------

    @property
    def control_socket(self) -> Path:
        """The run's local control channel (a Unix socket every host can reach)."""
        return control.socket_path(self.run_dir)

    def _start_controller(self) -> str:
        import socket

        with socket.socket() as sock:  # a free loopback port for OpenFlow
            sock.bind(("127.0.0.1", 0))
            self.controller_port = sock.getsockname()[1]
        cdir = self.run_dir / "controller"
        cdir.mkdir(parents=True, exist_ok=True)
        rd.write_json(self.run_dir / "topology.json", self.plan.controller_topology())
        self._spawn_controller()
        return f"tcp:127.0.0.1:{self.controller_port}"

    def _spawn_controller(self) -> None:
        cdir = self.run_dir / "controller"
        argv = [sys.executable, "-m", "controllers", "--run-dir", str(self.run_dir),
                "--port", str(self.controller_port)]
        with open(cdir / "stdout.log", "ab") as out:
            self.controller = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=_child_env(), cwd=str(cdir),
                                               start_new_session=True)
        self._controller_start = rd.process_start_time(self.controller.pid)
        if self.network is not None:
            self._record(self.network.created)
        self.events.emit("controller.start", pid=self.controller.pid, port=self.controller_port)

    def _wait_controller_ready(self, timeout: float = 60.0) -> None:
        events = self.run_dir / "controller" / "events.jsonl"
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if events.exists() and '"controller.ready"' in events.read_text():
                return
            if self.controller.poll() is not None:
                break
            time.sleep(0.02)
        raise DeploymentError(
            f"the SDN controller did not report ready within {timeout:.0f} s "
            f"(exit code {self.controller.poll()}); last output:\n"
            f"{_tail(self.run_dir / 'controller' / 'stdout.log')}")

    def crash_controller(self, sig: int = signal.SIGKILL) -> None:
        """Kill the SDN controller (a fault); the switches keep their flows (fail-secure)."""
        self.events.emit("controller.signal", pid=self.controller.pid, signal=int(sig))
        _signal(self.controller.pid, sig)
        self.controller.wait(timeout=10)

    def restart_controller(self, timeout: float = 60.0) -> None:
        """Start the controller again on the same port; it resynchronises from the intent."""
        if self.controller is not None and self.controller.poll() is None:
            self._stop_controller()
        events = self.run_dir / "controller" / "events.jsonl"
        seen = events.read_text().count('"controller.ready"') if events.exists() else 0
        self._spawn_controller()
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if events.exists() and events.read_text().count('"controller.ready"') > seen:
                return
            if self.controller.poll() is not None:
                break
            time.sleep(0.02)
        raise DeploymentError("the restarted SDN controller did not report ready; last output:\n"
                              + _tail(self.run_dir / "controller" / "stdout.log"))

    def _stop_controller(self) -> None:
        proc = self.controller
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self.events:
            self.events.emit("controller.exit", pid=proc.pid, returncode=proc.returncode)
        self.controller = None

    # -- records -------------------------------------------------------------------------

    def _record(self, created: Created) -> None:
        """Write what exists now to created.json and the registry entry."""
        record = {
            "run_dir": str(self.run_dir),
            "driver_pid": os.getpid(),
            "driver_start": rd.process_start_time(os.getpid()),
            "created": asdict(created),
            "shell_start": {str(pid): rd.process_start_time(pid) for pid in created.shell_pids},
            # Each host's shell: `eucalab services` acts from the user host's namespace.
            "hosts": {h.name: h.pid for h in self.net.hosts} if self.net is not None else {},
            "processes": [{"host": p.host, "label": p.label, "pid": p.pid, "start_time": p.start_time}
                          for p in self.processes.values()]
            + ([{"host": None, "label": "controller", "pid": self.controller.pid,
                 "start_time": self._controller_start}] if self.controller is not None else []),
        }
        rd.write_json(self.run_dir / "created.json", record)
        if self._registry_file is None:
            rd.REGISTRY.mkdir(parents=True, exist_ok=True)
            self._registry_file = rd.REGISTRY / f"{self.run_dir.name}-{os.getpid()}.json"
        rd.write_json(self._registry_file, record)

    def _write_credentials(self) -> None:
        c = self.credentials
        path = self.run_dir / "credentials"
        path.write_text("[default]\n"
                        f"aws_access_key_id = {c.access_key}\n"
                        f"aws_secret_access_key = {c.secret_key}\n"
                        "region = eucalyptus\n")
        path.chmod(0o600)

    @staticmethod
    def _prepare_dir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):
            raise Terminated(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: the caller handles signals
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()


class InHost:
    """A client whose every call runs inside an emulated host's network namespace."""

    def __init__(self, dep: "Deployment", host: str, client):
        self._dep, self._host, self._client = dep, host, client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._dep.in_host(self._host):
                return attr(*args, **kwargs)

        return call


def listens(proc_net_tcp: str, port: int) -> bool:
    """Whether /proc/net/tcp or tcp6 text has a LISTEN socket on ``port``: the local port
    with a zero remote end in state 0A, not any socket with that port at either end (a
    connection made to that port elsewhere matched once, and a test then reached a server
    that was not yet up)."""
    return re.search(rf":{port:04X} 0+:0000 0A ", proc_net_tcp) is not None


def _child_env() -> dict:
    """Environment of started processes: the project importable, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(rd.REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def cleanup_runs(force: bool = False) -> list[str]:
    """Finish runs whose driver died: kill their processes, delete their bridges and links.

    Only what a run recorded creating is touched; a PID is killed only if its start
    time still matches the record (so a reused PID is left alone).
    """
    report = []
    for entry in rd.registry_entries():
        try:
            record = json.loads(entry.read_text())
        except (OSError, json.JSONDecodeError):
            report.append(f"{entry.name}: unreadable record, left alone")
            continue
        if not force and rd.driver_alive(record):
            report.append(f"{record.get('run_dir')}: driver {record['driver_pid']} still running, left alone")
            continue
        if "vm_server" in record:  # the kernel-lane VM serving as a second server
            from .vm import cleanup_server

            report.append(f"{record.get('run_dir')}: VM server: {cleanup_server(record)}")
            entry.unlink(missing_ok=True)
            continue
        created = Created(**record.get("created", {}))
        # Only namespaces whose holder shell is still the recorded process are ours.
        live_shells = [pid for pid in created.shell_pids
                       if rd.process_start_time(pid) == record.get("shell_start", {}).get(str(pid))]
        if not live_shells:
            created.netns = []
        created.shell_pids = live_shells
        procs = [p["pid"] for p in record.get("processes", [])
                 if rd.process_start_time(p["pid"]) == p.get("start_time")]
        kill_pids(procs)
        problems = teardown(created)
        entry.unlink(missing_ok=True)
        report.append(f"{record.get('run_dir')}: cleaned ({len(procs)} processes, "
                      f"{len(live_shells)} hosts, {len(created.bridges)} bridges)"
                      + (f"; problems: {'; '.join(problems)}" if problems else ""))
    restored = vswitchd.release()  # a run killed with SIGKILL left it raised
    if restored:
        report.append(restored)
    return report
