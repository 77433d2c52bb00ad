"""The deployment spec: what a Eucalyptus deployment looks like, as data.

A spec is a YAML file or the same fields as dataclasses. Loading validates every
field and names it in the error, so a typo never turns silently into a default.

    spec = load_spec("topologies/specs/default.yaml")
    spec = DeploymentSpec()            # the default deployment, in code

One file of about 500 lines, on purpose: the spec is one job (its fields, their limits,
their validation and the loader), and the sections, ``DeploymentSpec.validate`` and the
loader all use the field checks at its end.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.common.coordinator import COORDINATOR_CHECK_BACKOFF_SECS, DETECTORS
from components.common.ha_config import TAKEOVER_METHODS
from components.common.kinds import PAIRED
from components.common.modes import MANAGED_MODES, NC_ENFORCED_MODES

# Eucalyptus allows up to three arbitrators per component host.
MAX_ARBITRATORS_PER_HOST = 3
# Address plan limits (see topologies/plan.py): one /24 of the cloud network per cluster;
# NC bridge port names (tag + "br32n99-eth17") must fit Linux's 15 characters.
MAX_CLUSTERS = 32
MAX_NCS_PER_CLUSTER = 99
MAX_SLOTS_PER_NC = 16

ARBITRATOR_TARGETS = ("gateway", "external")


class SpecError(ValueError):
    """A spec that cannot be built. The message names the offending field."""

    def __init__(self, field_path: str, message: str):
        self.field_path = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}" if field_path else message)


class NetworkMode(str, enum.Enum):
    """Eucalyptus networking modes (VNET_MODE): 3.x's four, and 4.x's EDGE."""

    SYSTEM = "SYSTEM"
    STATIC = "STATIC"
    MANAGED = "MANAGED"
    MANAGED_NOVLAN = "MANAGED-NOVLAN"
    EDGE = "EDGE"

    @property
    def private_cluster_network(self) -> bool:
        """NCs sit on a private network behind the CC, which routes for them."""
        return self.value in MANAGED_MODES

    @property
    def needs_vlans(self) -> bool:
        """One VLAN per security group: the switches must pass tagged frames."""
        return self is NetworkMode.MANAGED

    @property
    def nc_enforced(self) -> bool:
        """Each NC's bridge enforces the groups and translates elastic IPs (EDGE): the
        NC bridges get an uplink to the cloud network, where elastic IPs live."""
        return self.value in NC_ENFORCED_MODES


# Where MANAGED mode's per-group VLAN tags are pushed and popped (DeploymentSpec.vlan_tagging).
VLAN_TAGGING = ("switch", "host")
# With host tagging a VLAN sub-interface is named <interface>.<vlan> (up to .4094): the CC's
# private interface c9cc1-eth1.4094 fills Linux's 15 characters, so clusters stop at 9.
MAX_CLUSTERS_HOST_TAGGING = 9

# Servers of a deployment spread over machines (Mininet Cluster Edition, topologies/placement.py).
# The first is the machine eucalab runs on: the cloud tier and the SDN controller live there.
LOCAL_SERVER = "localhost"
MAX_SERVERS = 16
# How hosts are spread over the servers: by-cluster puts cluster k on server k mod S.
PLACEMENTS = ("by-cluster",)

COMPONENT_KINDS = PAIRED  # the kinds that may run as HA pairs


@dataclass
class HASpec:
    """Which component kinds run as primary/secondary pairs, and how their VIPs move."""

    clc: bool = True
    walrus: bool = True
    cc: bool = True
    sc: bool = True
    # sdn: the deployment runs the SDN controller (Deployment starts it for this spec).
    takeover: str = "garp"
    # Who decides a failover (docs/ha.md): heartbeat, each pair's members on their peer's
    # heartbeats; coordinator, Eucalyptus 3.x's coordinator CLC on its check rounds, every
    # coordinator_check_s seconds (the source's COORDINATOR_CHECK_BACKOFF_SECS by default).
    detector: str = "heartbeat"
    coordinator_check_s: float = COORDINATOR_CHECK_BACKOFF_SECS

    def enabled(self, kind: str) -> bool:
        return bool(getattr(self, kind))


@dataclass
class ArbitratorSpec:
    """Arbitrators: ICMP reachability probes from each HA host to an external entity."""

    per_host: int = 2
    # Entities pinged, cycled over a host's arbitrators: the border gateway and the
    # external site behind it.
    targets: list[str] = field(default_factory=lambda: list(ARBITRATOR_TARGETS))
    period_s: float = 1.0
    timeout_s: float = 0.5
    fail_after: int = 2  # consecutive unanswered pings before an arbitrator counts as failed


@dataclass
class HeartbeatSpec:
    """Failure detection between the members of an HA pair (docs/ha.md justifies the defaults)."""

    interval_ms: float = 50.0
    misses: int = 3


# The kinds of network a host link can be on (topologies.plan.Network.kind).
LINK_NETWORKS = ("user", "external", "cloud", "private", "heartbeat")


@dataclass
class LinkSpec:
    """Parameters of every host link, applied at both ends (each direction of a link
    gets them once). None means: not shaped. ``by_network`` overrides them for the links
    of one kind of network (``external``: the site behind the border gateway, e.g. a WAN;
    ``heartbeat``: the HA pairs' own links), field by field."""

    bw_mbit: float | None = None
    delay_ms: float | None = None  # needs netem
    jitter_ms: float | None = None  # needs netem, and delay_ms
    loss_pct: float | None = None  # needs netem
    by_network: dict[str, "LinkSpec"] = field(default_factory=dict)

    @property
    def shaped(self) -> bool:
        """Whether any link is shaped at all."""
        return any(s.bw_mbit is not None or s.own_netem for s in (self, *self.by_network.values()))

    @property
    def own_netem(self) -> bool:
        return self.delay_ms is not None or self.loss_pct is not None or self.jitter_ms is not None

    @property
    def needs_netem(self) -> bool:
        return self.own_netem or any(s.own_netem for s in self.by_network.values())

    def for_network(self, kind: str) -> "LinkSpec":
        """The parameters of a link on a network of ``kind``: the overrides over the defaults."""
        over = self.by_network.get(kind)
        if over is None:
            return self
        pick = lambda name: getattr(over, name) if getattr(over, name) is not None else getattr(self, name)  # noqa: E731
        return LinkSpec(bw_mbit=pick("bw_mbit"), delay_ms=pick("delay_ms"), jitter_ms=pick("jitter_ms"),
                        loss_pct=pick("loss_pct"))

    def validate(self, path: str = "links") -> None:
        if self.bw_mbit is not None:
            _check_float(self.bw_mbit, f"{path}.bw_mbit", 0.1, 100_000)
        if self.delay_ms is not None:
            _check_float(self.delay_ms, f"{path}.delay_ms", 0, 60_000)
        if self.jitter_ms is not None:
            _check_float(self.jitter_ms, f"{path}.jitter_ms", 0, 60_000)
        if self.loss_pct is not None:
            _check_float(self.loss_pct, f"{path}.loss_pct", 0, 100)
        if not isinstance(self.by_network, dict):
            raise SpecError(f"{path}.by_network", "must be a mapping of network kind to link parameters")
        for kind, over in self.by_network.items():
            where = f"{path}.by_network.{kind}"
            if kind not in LINK_NETWORKS:
                raise SpecError(where, f"unknown network kind; choose from {', '.join(LINK_NETWORKS)}")
            if not isinstance(over, LinkSpec):
                raise SpecError(where, "must be a mapping of link parameters")
            if over.by_network:
                raise SpecError(f"{where}.by_network", "overrides do not nest")
            over.validate(where)
        for kind in ("", *self.by_network):
            eff = self.for_network(kind) if kind else self
            if eff.jitter_ms is not None and eff.delay_ms is None:
                where = f"{path}.by_network.{kind}" if kind else path
                raise SpecError(f"{where}.jitter_ms", "needs a delay_ms to vary around")

    def first_netem_field(self) -> str:
        """The path of the first field that needs netem (for an error naming it)."""
        for kind, spec in (("", self), *self.by_network.items()):
            for name in ("delay_ms", "jitter_ms", "loss_pct"):
                if getattr(spec, name) is not None:
                    return f"links.{'by_network.' + kind + '.' if kind else ''}{name}"
        return "links"


@dataclass
class DeploymentSpec:
    """A Eucalyptus deployment. The defaults are a real small Eucalyptus."""

    name: str = "default"
    clusters: int = 2
    ncs_per_cluster: int = 2
    vm_slots_per_nc: int = 2
    mode: NetworkMode = NetworkMode.MANAGED
    # Whether the site's switches pass 802.1Q-tagged frames ("VLAN clean").
    vlan_clean: bool = True
    ha: HASpec = field(default_factory=HASpec)
    arbitrators: ArbitratorSpec = field(default_factory=ArbitratorSpec)
    heartbeat: HeartbeatSpec = field(default_factory=HeartbeatSpec)
    links: LinkSpec = field(default_factory=LinkSpec)
    # Open vSwitch datapath: auto picks the kernel datapath where the module exists.
    datapath: str = "auto"
    # true: the SDN controller (controllers/) owns every bridge: layer-2 isolation of
    # security groups, the CC's routed path steered to the primary, fail-secure switches.
    # false: standalone MAC-learning switches (no layer-2 isolation). ha.takeover sdn
    # starts it whatever this says.
    sdn: bool = True
    # MANAGED only. switch: Open vSwitch pushes and pops the VLAN tags (the SDN
    # controller's flows; hosts, VM slots and the CC see untagged frames). host: as
    # Eucalyptus did, each NC tags on its private interface (a sub-interface
    # <interface>.<vlan> per group, bridged with the group's VM slots in a Linux bridge
    # eucabr<vlan>) and the CC routes between its own sub-interfaces; the switches only
    # pass tagged frames. Needs sdn: false and a kernel with 8021q.
    vlan_tagging: str = "switch"
    # The machines the deployment runs on, the first being this one (localhost): the cloud
    # tier and the SDN controller stay there, cluster k runs on servers[k mod S]. Others
    # are reached over ssh; links between servers are tunnels (docs/cluster.md).
    servers: list[str] = field(default_factory=lambda: [LOCAL_SERVER])
    placement: str = "by-cluster"
    # true: each HA pair's secondary runs on the server after its primary's, so that
    # heartbeats, replication and the client path after a takeover cross a tunnel.
    split_pairs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.mode, str) and not isinstance(self.mode, NetworkMode):
            self.mode = _parse_mode(self.mode, "mode")

    def validate(self, netem: bool | None = None, dot1q: bool | None = None) -> "DeploymentSpec":
        """Check every field; raise SpecError naming the first bad one.

        ``netem`` says whether this kernel can emulate delay and loss, ``dot1q`` whether
        it has 802.1Q (VLAN sub-interfaces, for vlan_tagging host); None skips that
        check (both are made again when a network is built).
        """
        _check_name(self.name, "name")
        _check_int(self.clusters, "clusters", 1, MAX_CLUSTERS)
        _check_int(self.ncs_per_cluster, "ncs_per_cluster", 1, MAX_NCS_PER_CLUSTER)
        _check_int(self.vm_slots_per_nc, "vm_slots_per_nc", 0, MAX_SLOTS_PER_NC)
        if not isinstance(self.mode, NetworkMode):
            raise SpecError("mode", f"unknown networking mode {self.mode!r}")
        _check_bool(self.vlan_clean, "vlan_clean")
        if self.mode.needs_vlans and not self.vlan_clean:
            raise SpecError(
                "mode",
                "MANAGED needs a VLAN-clean network (one VLAN per security group) but "
                "vlan_clean is false; use MANAGED-NOVLAN or set vlan_clean: true",
            )
        for kind in COMPONENT_KINDS:
            _check_bool(getattr(self.ha, kind), f"ha.{kind}")
        if self.ha.takeover not in TAKEOVER_METHODS:
            raise SpecError(
                "ha.takeover",
                f"unknown takeover method {self.ha.takeover!r}; choose garp (gratuitous ARP from "
                "the new primary) or sdn (the SDN controller redirects the VIP; the deployment "
                "then runs the controller)",
            )
        if self.ha.detector not in DETECTORS:
            raise SpecError(
                "ha.detector",
                f"unknown detector {self.ha.detector!r}; choose heartbeat (each pair's members fail over "
                "on their peer's heartbeats) or coordinator (Eucalyptus 3.x's coordinator CLC decides on "
                "its check rounds)",
            )
        _check_float(self.ha.coordinator_check_s, "ha.coordinator_check_s", 0.1, 3600)
        if self.ha.detector == "coordinator" and not self.ha.clc:
            raise SpecError("ha.detector", "the coordinator is the CLC pair's: detector coordinator needs ha.clc: true")
        arb = self.arbitrators
        _check_int(arb.per_host, "arbitrators.per_host", 0, MAX_ARBITRATORS_PER_HOST)
        if not isinstance(arb.targets, list) or not arb.targets:
            raise SpecError("arbitrators.targets", "must be a non-empty list")
        for i, target in enumerate(arb.targets):
            if target not in ARBITRATOR_TARGETS:
                raise SpecError(
                    f"arbitrators.targets[{i}]",
                    f"unknown target {target!r}; choose from {', '.join(ARBITRATOR_TARGETS)}",
                )
        _check_int(arb.fail_after, "arbitrators.fail_after", 1, 100)
        _check_float(self.heartbeat.interval_ms, "heartbeat.interval_ms", 5, 60_000)
        _check_int(self.heartbeat.misses, "heartbeat.misses", 1, 100)
        if self.heartbeat.misses == 1:
            # The window would equal the period: a heartbeat a millisecond late is a death.
            raise SpecError("heartbeat.misses", "must be at least 2 (with 1 the detection window equals the "
                            "heartbeat period, so any late heartbeat reads as a dead peer)")
        _check_float(arb.period_s, "arbitrators.period_s", 0.01, 3600)
        _check_float(arb.timeout_s, "arbitrators.timeout_s", 0.001, 3600)
        if arb.timeout_s > arb.period_s:
            raise SpecError("arbitrators.timeout_s", "must not exceed arbitrators.period_s")
        links = self.links
        if not isinstance(links, LinkSpec):
            raise SpecError("links", "must be a mapping of link parameters")
        links.validate()
        if netem is False and links.needs_netem:
            raise SpecError(
                links.first_netem_field(),
                "this kernel has no netem (sch_netem), so link delay and loss cannot be "
                "emulated here; remove the field, or run on a kernel with netem "
                "(`eucalab check` tells)",
            )
        if self.datapath not in ("auto", "kernel", "user"):
            raise SpecError("datapath", f"must be auto, kernel or user, not {self.datapath!r}")
        _check_bool(self.sdn, "sdn")
        if self.mode.nc_enforced and not self.sdn:
            raise SpecError("sdn", f"{self.mode.value} enforces security groups and translates elastic IPs with "
                            "the SDN controller's flows on each NC's bridge: it needs sdn: true (without the "
                            "controller nothing would keep one tenant's instances from another's)")
        self._validate_vlan_tagging(dot1q)
        self._validate_servers()
        return self

    def _validate_servers(self) -> None:
        servers = self.servers
        if not isinstance(servers, list) or not servers:
            raise SpecError("servers", f"must be a non-empty list of machines, the first being {LOCAL_SERVER}")
        if len(servers) > MAX_SERVERS:
            raise SpecError("servers", f"at most {MAX_SERVERS} servers, not {len(servers)}")
        if servers[0] != LOCAL_SERVER:
            raise SpecError("servers[0]", f"must be {LOCAL_SERVER} (the machine eucalab runs on, which "
                            f"holds the cloud tier and the SDN controller), not {servers[0]!r}")
        for i, server in enumerate(servers[1:], start=1):
            _check_server(server, f"servers[{i}]")
            if server in servers[:i]:
                raise SpecError(f"servers[{i}]", f"{server!r} is listed twice")
        if self.placement not in PLACEMENTS:
            raise SpecError("placement", f"unknown placement {self.placement!r}; choose from "
                            f"{', '.join(PLACEMENTS)} (cluster k on servers[k mod S])")
        _check_bool(self.split_pairs, "split_pairs")
        if self.split_pairs and len(servers) < 2:
            raise SpecError("split_pairs", "needs at least two servers to put a pair's members on")
        if self.split_pairs and not any(self.ha.enabled(kind) for kind in COMPONENT_KINDS):
            raise SpecError("split_pairs", "no HA pair to split: every ha.<kind> is false")
        # Every server must hold something.
        tiers = [(None, self.ha.clc or self.ha.walrus)] + \
            [(k, self.ha.cc or self.ha.sc) for k in range(1, self.clusters + 1)]
        used = {self.server_index(cluster, secondary) for cluster, paired in tiers
                for secondary in ((False, True) if paired else (False,))}
        idle = [i for i in range(len(servers)) if i not in used]
        if idle:
            raise SpecError(f"servers[{idle[0]}]", f"{servers[idle[0]]!r} would hold nothing: cluster k "
                            f"runs on servers[k mod {len(servers)}] and there are {self.clusters} "
                            "cluster(s); list fewer servers or add clusters")

    def _validate_vlan_tagging(self, dot1q: bool | None) -> None:
        if self.vlan_tagging not in VLAN_TAGGING:
            raise SpecError("vlan_tagging", f"must be switch (Open vSwitch tags) or host (the NCs and the CC "
                            f"tag on VLAN sub-interfaces), not {self.vlan_tagging!r}")
        if self.vlan_tagging != "host":
            return
        if self.mode is not NetworkMode.MANAGED:
            raise SpecError("vlan_tagging", f"host tagging puts each security group's VLAN on the NCs and the "
                            f"CC, which only MANAGED mode has; mode is {self.mode.value}")
        if self.sdn or self.ha.takeover == "sdn":
            field_name = "sdn" if self.sdn else "ha.takeover"
            raise SpecError("vlan_tagging", f"host tagging needs sdn: false and ha.takeover: garp ({field_name} "
                            "asks for the SDN controller): the controller's flows tag and isolate the groups "
                            "themselves and would drop the hosts' tagged frames; with host tagging the "
                            "switches are standalone and VLAN-clean, passing tagged frames as they are")
        if self.clusters > MAX_CLUSTERS_HOST_TAGGING:
            raise SpecError("clusters", f"at most {MAX_CLUSTERS_HOST_TAGGING} with vlan_tagging: host: the CC's "
                            "VLAN sub-interfaces (c10cc1-eth1.4094) would not fit Linux's 15-character "
                            "interface names")
        if dot1q is False:
            raise SpecError("vlan_tagging", "host tagging needs 802.1Q (the 8021q module) for the NCs' and the "
                            "CC's VLAN sub-interfaces, and this kernel has none; use vlan_tagging: switch, or "
                            "run on a kernel with 8021q (`eucalab check` tells; `eucalab vm` runs one)")

    def server_index(self, cluster: int | None, secondary: bool = False) -> int:
        """Index in ``servers`` of the hosts of ``cluster`` (None: the cloud tier, the border
        gateway and the user's and external site's hosts); ``secondary``: an HA pair's
        secondary member, which split_pairs puts on the next server."""
        base = 0 if cluster is None else cluster % len(self.servers)
        return (base + 1) % len(self.servers) if secondary and self.split_pairs else base

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- loading -------------------------------------------------------------------------

_SECTIONS = {"ha": HASpec, "arbitrators": ArbitratorSpec, "heartbeat": HeartbeatSpec, "links": LinkSpec}


def spec_from_dict(data: Any, netem: bool | None = None) -> DeploymentSpec:
    """Build and validate a spec from parsed YAML; unknown keys are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("", f"a spec is a mapping of fields, not {type(data).__name__}")
    top = {f.name: f for f in dataclasses.fields(DeploymentSpec)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in top:
            raise SpecError(str(key), f"unknown field; known fields: {', '.join(top)}")
        if key == "links":
            kwargs[key] = _links_from_dict(value)
        elif key in _SECTIONS:
            kwargs[key] = _section_from_dict(_SECTIONS[key], value, key)
        elif key == "mode":
            kwargs[key] = _parse_mode(value, "mode")
        else:
            kwargs[key] = value
    spec = DeploymentSpec(**kwargs)
    return spec.validate(netem=netem)


def load_spec(path: str | Path | None = None, netem: bool | None = None) -> DeploymentSpec:
    """Load a spec from YAML; None gives the default deployment."""
    if path is None:
        return DeploymentSpec().validate(netem=netem)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("", f"cannot read spec {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError("", f"{path} is not valid YAML: {exc}") from exc
    try:
        return spec_from_dict(data, netem=netem)
    except SpecError as exc:
        raise SpecError(exc.field_path, f"{exc.message} (in {path})") from None


def _section_from_dict(cls: type, value: Any, name: str) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise SpecError(name, f"must be a mapping, not {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in value:
        if key not in known:
            raise SpecError(f"{name}.{key}", f"unknown field; known fields: {', '.join(sorted(known))}")
    return cls(**value)


def _links_from_dict(value: Any) -> LinkSpec:
    links = _section_from_dict(LinkSpec, value, "links")
    if links.by_network is None:
        links.by_network = {}
    if not isinstance(links.by_network, dict):
        raise SpecError("links.by_network", "must be a mapping of network kind to link parameters")
    links.by_network = {str(kind): _section_from_dict(LinkSpec, over, f"links.by_network.{kind}")
                        for kind, over in links.by_network.items()}
    return links


def _parse_mode(value: Any, path: str) -> NetworkMode:
    if isinstance(value, NetworkMode):
        return value
    text = str(value).upper().replace("_", "-")
    try:
        return NetworkMode(text)
    except ValueError:
        choices = ", ".join(m.value for m in NetworkMode)
        raise SpecError(path, f"unknown networking mode {value!r}; choose from {choices}") from None


def _check_int(value: Any, path: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, not {value!r}")
    if value < low:
        raise SpecError(path, f"must be at least {low}, not {value}")
    if value > high:
        raise SpecError(path, f"must be at most {high}, not {value}")


def _check_float(value: Any, path: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, not {value!r}")
    if not low <= value <= high:
        raise SpecError(path, f"must be between {low} and {high}, not {value}")


def _check_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, not {value!r}")


def _check_server(value: Any, path: str) -> None:
    """A server other than the first: an IPv4 address or a DNS host name of another machine."""
    if not isinstance(value, str) or not value:
        raise SpecError(path, f"must be an IPv4 address or a host name, not {value!r}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        labels = value.split(".")
        if value == LOCAL_SERVER or not all(
                0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
                and all(c.isalnum() or c == "-" for c in label) for label in labels):
            why = "is this machine, listed first already" if value == LOCAL_SERVER else \
                "is neither an IPv4 address nor a host name"
            raise SpecError(path, f"{value!r} {why}") from None
        return
    if addr.version != 4:
        raise SpecError(path, f"{value!r}: tunnels between servers are IPv4 only")
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
        raise SpecError(path, f"{value!r} is not another machine's address (loopback, unspecified or multicast)")


def _check_name(value: Any, path: str) -> None:
    if not isinstance(value, str) or not value:
        raise SpecError(path, "must be a non-empty string")
    if not all(c.isalnum() or c in "-_." for c in value):
        raise SpecError(path, f"may hold only letters, digits, '-', '_' and '.', not {value!r}")
