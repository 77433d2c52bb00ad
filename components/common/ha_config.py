"""The ``ha`` section of a component's config: what its HA agent needs, and where it comes from.

The testbed computes it from a plan with ``ha_config_for(plan, host, secret, spec)``; the agent
reads it with ``HAConfig.from_config(config)``. Keys (all under ``config["ha"]``):

    peer                  the peer member's host name (for events)
    peer_addresses        [peer's heartbeat-link IP, peer's cloud IP]: heartbeats go to each
    port                  UDP port of heartbeats (7800)
    listen                this member's own addresses the heartbeat sockets bind, path by path
                          as peer_addresses (its heartbeat-link IP, its cloud IP), never 0.0.0.0
    secret                the pair's heartbeat key (hex, at least 32 bytes), generated per run
                          and written into the configs of that pair's two members only
    interval_ms, misses   heartbeat period and how many may be missed before the peer is dead
    vips                  [{address, prefix, interface, takeover}]: the service VIP on the cloud
                          network, and for a CC the cluster router address on its private
                          network (``vip`` and ``private_vip`` as single dicts are accepted too);
                          ``takeover`` garp (default) or sdn: the SDN controller steers it
    control_socket        the SDN controller's Unix socket (needed by a VIP with takeover sdn)
    detector              heartbeat (default: the members fail over on their peer's heartbeats) or
                          coordinator (only the coordinator CLC's orders fail a pair over)
    coordinator_check_s   seconds between the coordinator's check rounds (read by the CLC)
    arbitrators           [{name, target}] (``target_ip`` accepted for ``target``)
    arbitrator_period_s, arbitrator_timeout_s, arbitrator_fail_after

The component config around it supplies ``host``, ``role`` (primary/secondary),
``pair.name`` and ``data_dir``. This module imports nothing of the testbed: a plan is
read by duck typing, so components stay ordinary programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .coordinator import COORDINATOR_CHECK_BACKOFF_SECS, DETECTORS

HEARTBEAT_PORT = 7800
MIN_SECRET_BYTES = 32

# How a service VIP follows a takeover (docs/ha.md): the new primary announces it by
# gratuitous ARP, or the SDN controller steers the VIP's fixed virtual MAC to it.
TAKEOVER_METHODS = ("garp", "sdn")


@dataclass(frozen=True)
class VIP:
    address: str
    prefix: int
    interface: str
    # garp: announced by gratuitous ARP from this member; sdn: the SDN controller steers
    # the VIP's fixed virtual MAC to this member once told (docs/ha.md, Takeover).
    takeover: str = "garp"


@dataclass(frozen=True)
class ArbitratorConfig:
    name: str
    target: str


@dataclass
class HAConfig:
    """The parsed ``ha`` section, with the defaults docs/ha.md justifies."""

    pair: str
    host: str
    priority: int  # 1 for the configured primary: it wins ties
    data_dir: str
    peer_addresses: list[str]
    secret: bytes
    listen: list[str]
    peer: str | None = None
    port: int = HEARTBEAT_PORT
    interval_ms: float = 50.0
    misses: int = 3
    vips: list[VIP] = field(default_factory=list)
    arbitrators: list[ArbitratorConfig] = field(default_factory=list)
    arbitrator_period_s: float = 1.0
    arbitrator_timeout_s: float = 0.5
    arbitrator_fail_after: int = 2
    control_socket: str | None = None
    detector: str = "heartbeat"
    coordinator_check_s: float = COORDINATOR_CHECK_BACKOFF_SECS

    @property
    def interval(self) -> float:
        return self.interval_ms / 1000

    @property
    def window(self) -> float:
        """Silence after which the peer is dead (and lateness after which this member is frozen)."""
        return self.interval * self.misses

    @classmethod
    def from_config(cls, config: dict) -> "HAConfig":
        ha = config["ha"]
        vips = [dict(v) for v in ha.get("vips", [])]
        for key in ("vip", "private_vip"):
            if ha.get(key):
                vips.append(dict(ha[key]))
        if not ha.get("peer_addresses"):
            raise ValueError("ha.peer_addresses: at least one address of the peer is needed")
        try:
            secret = bytes.fromhex(ha.get("secret") or "")
        except ValueError:
            raise ValueError("ha.secret must be hex") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"ha.secret: the pair's heartbeat key must be at least {MIN_SECRET_BYTES} bytes")
        listen = list(ha.get("listen") or [])
        if not listen or "0.0.0.0" in listen:
            raise ValueError("ha.listen: this member's own heartbeat-link and cloud addresses, not 0.0.0.0")
        interval_ms, misses = float(ha.get("interval_ms", 50)), int(ha.get("misses", 3))
        if interval_ms <= 0 or misses < 1:
            raise ValueError("ha.interval_ms must be > 0 and ha.misses >= 1")
        detector = ha.get("detector", "heartbeat")
        if detector not in DETECTORS:
            raise ValueError(f"ha.detector must be one of {', '.join(DETECTORS)}, not {detector!r}")
        check_s = float(ha.get("coordinator_check_s", COORDINATOR_CHECK_BACKOFF_SECS))
        if check_s <= 0:
            raise ValueError("ha.coordinator_check_s must be > 0")
        for v in vips:
            if v.get("takeover", "garp") not in TAKEOVER_METHODS:
                raise ValueError(f"ha.vips: takeover of {v['address']} must be garp or sdn, not {v['takeover']!r}")
            if v.get("takeover") == "sdn" and not ha.get("control_socket"):
                raise ValueError(f"ha.vips: {v['address']} has takeover sdn but ha.control_socket is not set")
        return cls(
            pair=config["pair"]["name"], host=config["host"],
            priority=1 if config.get("role") == "primary" else 0,
            data_dir=config["data_dir"], peer=ha.get("peer"),
            peer_addresses=list(ha["peer_addresses"]), secret=secret, listen=listen,
            port=int(ha.get("port", HEARTBEAT_PORT)), interval_ms=interval_ms, misses=misses,
            vips=[VIP(v["address"], int(v["prefix"]), v["interface"], v.get("takeover", "garp")) for v in vips],
            arbitrators=[ArbitratorConfig(a["name"], a.get("target") or a["target_ip"])
                         for a in ha.get("arbitrators", [])],
            arbitrator_period_s=float(ha.get("arbitrator_period_s", 1.0)),
            arbitrator_timeout_s=float(ha.get("arbitrator_timeout_s", 0.5)),
            arbitrator_fail_after=int(ha.get("arbitrator_fail_after", 2)),
            control_socket=ha.get("control_socket"), detector=detector, coordinator_check_s=check_s,
        )


def ha_config_for(plan, host: str, secret: str, spec=None, control_socket: str | None = None) -> dict:
    """The ``ha`` config section of ``host`` (a member of an HA pair) in ``plan``.

    ``secret`` is the pair's heartbeat key (hex): the caller generates one per pair and run
    and gives it to that pair's two members only.

    ``spec`` (a DeploymentSpec) gives the timers and the takeover method; it defaults
    to the plan's own spec. ``control_socket`` is the SDN controller's (takeover sdn).
    Raises ValueError for a host that is not a member of an HA pair.
    """
    spec = spec if spec is not None else plan.spec
    pair = next((p for p in plan.pairs if host in p.members), None)
    if pair is None or pair.secondary is None:
        raise ValueError(f"{host} is not a member of an HA pair")
    peer = pair.secondary if host == pair.primary else pair.primary
    me, other = plan.hosts[host], plan.hosts[peer]

    def vip(address: str, network: str) -> dict:
        intf = me.intf(network)
        return {"address": address, "prefix": int(intf.ip.split("/")[1]), "interface": intf.name}

    # The controller steers the cloud VIP; a CC's private router address keeps garp.
    vips = [dict(vip(pair.vip, "cloud"), takeover=spec.ha.takeover)]
    if pair.private_vip:
        vips.append(vip(pair.private_vip, f"priv{pair.cluster}"))
    # The heartbeat link first, the cloud network second: either path alone suffices.
    networks = [n for n in (pair.heartbeat_network, "cloud") if n]
    return {
        "peer": peer,
        "peer_addresses": [other.ip_on(n) for n in networks],
        "port": HEARTBEAT_PORT,
        # Bound to this member's own address on each path, in the same order: heartbeats leave
        # from (and are accepted at) the planned addresses only.
        "listen": [me.ip_on(n) for n in networks],
        "secret": secret,
        "interval_ms": spec.heartbeat.interval_ms,
        "misses": spec.heartbeat.misses,
        "vips": vips,
        "arbitrators": [{"name": a.name, "target": a.target_ip} for a in plan.arbitrators if a.host == host],
        "arbitrator_period_s": spec.arbitrators.period_s,
        "arbitrator_timeout_s": spec.arbitrators.timeout_s,
        "arbitrator_fail_after": spec.arbitrators.fail_after,
        "control_socket": control_socket,
        "detector": spec.ha.detector,
        "coordinator_check_s": spec.ha.coordinator_check_s,
    }
