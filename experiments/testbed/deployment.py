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

``Deployment`` is a facade: it holds the run's state and brings the network up and
down, and hands each job to a manager of its own, built once here: configs.py (config
files, credentials), processes.py (start, signal, stop), netops.py (links, VIPs, the
gateway's admissions), controller.py (the SDN controller), observe.py (HA state),
clients.py (boto3 clients from a host) and records.py (run records, cleanup).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import string
import time
from pathlib import Path

from components.common.service import OPERATOR, ROLES
from topologies.cluster_network import ClusterNetwork, local_address_towards
from topologies.network import EucaNetwork
from topologies.plan import Plan, ServicePair, build_plan
from topologies.spec import DeploymentSpec, SpecError

from . import vswitchd
from .clients import Clients, InHost
from .configs import REALTIME_PRIORITY, Configs, Credentials, random_key
from .controller import Controller
from .errors import DeploymentError, Terminated
from .netops import NetworkOps, listens
from .observe import HAObserver
from .processes import COMPONENT_ORDER, Process, Processes, component_exists, controller_exists
from .processes import child_env as _child_env
from .records import RunRecords, cleanup_runs
from .remote import RemoteServers
from .timescale import wait_until

# What other modules import from here (the managers' modules are this module's parts).
__all__ = ["COMPONENT_ORDER", "REALTIME_PRIORITY", "Credentials", "Deployment", "DeploymentError", "InHost",
           "Process", "Terminated", "_child_env", "cleanup_runs", "component_exists", "controller_exists",
           "listens", "wait_until"]

log = logging.getLogger(__name__)


class Deployment:
    """The network of a spec plus the processes on its hosts, as a context manager."""

    def __init__(self, spec: DeploymentSpec | None = None, run_dir: Path | str | None = None,
                 name: str | None = None, datapath: str | None = None, sdn: bool | None = None,
                 ssh_config: Path | str | None = None):
        self.spec = spec or DeploymentSpec()
        # A spec with several servers (docs/cluster.md): ssh -F this to reach them (None: root's ~/.ssh).
        self.ssh_config = str(ssh_config) if ssh_config else None
        self.name = name or self.spec.name
        # Absolute: the SDN controller and the components run in directories of their own.
        self._run_dir_arg = Path(run_dir).resolve() if run_dir else None
        self._datapath_arg = datapath
        self.tag = random_key(2, string.ascii_lowercase)
        self.plan: Plan = build_plan(self.spec, tag=self.tag)
        self.run_dir: Path | None = None
        self.network: EucaNetwork | None = None
        self.net = None
        self.credentials = Credentials.generate()
        # One internal credential per role (docs/security.md): a component's config holds its
        # own role's token and the digests of all; the operator's (this driver's) is internal_token.
        self.role_tokens = {role: secrets.token_hex(32) for role in ROLES}
        self.internal_token = self.role_tokens[OPERATOR]
        # One heartbeat key per HA pair and run, written into that pair's members' configs only.
        self.pair_secrets = {p.name: secrets.token_hex(32) for p in self.plan.pairs}
        self.events = None  # the driver's event log (rundir.EventWriter) while the run is up
        self._old_handlers: dict = {}
        self.timings: dict[str, float] = {}
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
        # One manager per job, each given this facade.
        self.configs, self.procs, self.netops = Configs(self), Processes(self), NetworkOps(self)
        self.controller_process, self.ha, self.clients = Controller(self), HAObserver(self), Clients(self)
        self.records = RunRecords(self)
        self.remote = RemoteServers(self)

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
        self.records.open(self._run_dir_arg)
        if self.distributed:
            self.remote.open()
            # The controller listens where the other servers' bridges reach this machine.
            address = local_address_towards(self.spec.servers[1])
            controller_url = self.controller_process.start(address) if self.sdn else None
            if self.sdn:
                self.remote.forward_control_socket()
            self.network = ClusterNetwork(self.plan, datapath=datapath, on_created=self.records.record,
                                          controller=controller_url, ssh_config=self.ssh_config,
                                          remote_dir=str(self.run_dir))
        else:
            controller_url = self.controller_process.start() if self.sdn else None
            self.network = EucaNetwork(self.plan, datapath=datapath, on_created=self.records.record,
                                       controller=controller_url)
        self.events.emit("network.build", datapath=datapath, hosts=len(self.plan.hosts),
                         switches=len(self.plan.switches), links=len(self.plan.links))
        self.net = self.network.build()
        if self.realtime and datapath == "user":
            # The userspace datapath forwards in ovs-vswitchd: ahead of the realtime members.
            self.datapath_priority = vswitchd.raise_priority()
            self.events.emit("datapath.priority", priority=self.datapath_priority)
        if self.controller is not None:
            self.controller_process.wait_ready()
        for pair in self.plan.pairs:
            self.place_vip(pair, pair.primary, announce=False)
        self.timings["up"] = time.monotonic() - t0
        self.events.emit("network.up", seconds=round(self.timings["up"], 4), **{
            k: round(v, 4) for k, v in self.network.timings.items()})

    def down(self) -> None:
        """Stop every process, then remove the network; safe to call more than once. Raises
        DeploymentError, once all is down, if the SDN controller had exited on its own: a
        run it failed during did not run as specified."""
        t0 = time.monotonic()
        self.procs.stop_all()
        short = self.remote.collect()  # every server's event logs complete here
        if short and self.events:
            self.events.emit("server.events_short", paths=short)
        controller_died = self.controller_process.stop() if self.controller is not None else None
        # The last run to go puts ovs-vswitchd's scheduling back (vswitchd.py), before the
        # teardown: deleting bridges keeps ovs-vswitchd busy for seconds.
        vswitchd.release(exclude=self.records.registry_file)
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
        self.records.close()
        self._restore_signal_handlers()
        if controller_died:
            raise DeploymentError(controller_died)

    @property
    def distributed(self) -> bool:
        """Whether the spec spreads the deployment over several servers."""
        return len(self.spec.servers) > 1

    def _pick_free_tag(self) -> None:
        """Choose a switch-name tag no bridge on this machine uses, so runs can coexist."""
        from topologies.network import existing_bridges

        bridges = existing_bridges()
        for _ in range(50):
            if not any(b.startswith(self.tag) for b in bridges):
                return
            self.tag = random_key(2, string.ascii_lowercase)
            self.plan = build_plan(self.spec, tag=self.tag)
        raise DeploymentError("no free switch-name tag: too many bridges on this machine")

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

    # -- hosts ----------------------------------------------------------------------------

    def switch(self, name: str):
        """A Mininet switch by its plan name without the run tag: ``dep.switch('br1n1')``."""
        return self.net[self.tag + name]

    def host(self, kind: str, member: str = "primary", cluster: int | None = None):
        """A Mininet host by role: ``dep.host('cc', 'secondary', cluster=1)``, ``dep.host('user')``."""
        if kind in ("user", "gw", "ext", "gateway", "external"):
            return self.net[{"gateway": "gw", "external": "ext"}.get(kind, kind)]
        return self.net[self.plan.host_for(kind, member, cluster).name]

    def __getitem__(self, name: str):
        return self.net[name]

    # -- delegated to the managers (each method's documentation is at its manager) ---------

    @property
    def processes(self) -> dict[tuple[str, str], Process]:
        return self.procs.by_key

    @property
    def controller(self):
        """The SDN controller's process (subprocess.Popen), None when it is not running."""
        return self.controller_process.popen

    @property
    def controller_port(self) -> int | None:
        return self.controller_process.port

    @property
    def control_socket(self) -> Path:
        return self.controller_process.socket

    @property
    def vip_holder(self) -> dict[str, str]:
        return self.netops.vip_holder

    @property
    def admitted(self) -> set[tuple[str, int]]:
        return self.netops.admitted

    def component_config(self, component: str, host: str) -> dict:
        return self.configs.component_config(component, host)

    def service_members(self) -> list[dict]:
        return self.configs.service_members()

    def ha_config(self, pair: ServicePair, host: str) -> dict:
        return self.configs.ha_config(pair, host)

    def host_dir(self, host: str, label: str | None = None) -> Path:
        return self.procs.host_dir(host, label)

    def start(self, component: str, host: str, config: dict | None = None, *, label: str | None = None,
              argv: list[str] | None = None, wait: bool = True, timeout: float = 20.0) -> Process:
        return self.procs.start(component, host, config, label=label, argv=argv, wait=wait, timeout=timeout)

    def wait_event(self, proc: Process, event: str, timeout: float = 20.0, **match) -> dict:
        return self.procs.wait_event(proc, event, timeout, **match)

    def process(self, host: str, label: str | None = None) -> Process:
        return self.procs.process(host, label)

    def stop(self, host: str, label: str | None = None, timeout: float = 5.0) -> int | None:
        return self.procs.stop(host, label, timeout)

    def kill(self, host: str, label: str | None = None, sig: int = signal.SIGKILL, group: bool = False) -> None:
        self.procs.kill(host, label, sig, group)

    def start_services(self, kinds: tuple[str, ...] = COMPONENT_ORDER, timeout: float = 30.0) -> list[Process]:
        return self.procs.start_services(kinds, timeout)

    def admit(self, address: str, port: int) -> None:
        self.netops.admit(address, port)

    def listening(self, host: str, port: int) -> bool:
        return self.netops.listening(host, port)

    def set_link(self, host: str, network: str | None, up: bool) -> None:
        self.netops.set_link(host, network, up)

    def place_vip(self, pair: ServicePair, host: str, announce: bool = True) -> None:
        self.netops.place_vip(pair, host, announce)

    def redirect_vip(self, pair: ServicePair, host: str, epoch: int | None = None) -> tuple[int, dict]:
        return self.netops.redirect_vip(pair, host, epoch)

    def control_request(self, method: str, path: str, body: dict | None = None,
                        timeout: float = 5.0) -> tuple[int, dict]:
        return self.controller_process.request(method, path, body, timeout)

    def crash_controller(self, sig: int = signal.SIGKILL) -> None:
        self.controller_process.crash(sig)

    def restart_controller(self, timeout: float = 60.0) -> None:
        self.controller_process.restart(timeout)

    def member_state(self, host: str) -> str | None:
        """A component's current service state, from its own event log; "DEAD" when its process is gone."""
        return self.ha.member(host)[0]

    def redundant(self, pair) -> bool:
        return self.ha.redundant(pair)

    def wait_for_primaries(self, kind: str, timeout: float = 30.0) -> None:
        self.ha.wait_for_primaries(kind, timeout)

    def aws_client(self, service: str, host: str = "user", access_key: str | None = None,
                   secret_key: str | None = None, **config):
        return self.clients.aws_client(service, host, access_key, secret_key, **config)

    def in_host(self, name: str):
        return self.clients.in_host(name)
