"""Cluster intents: strict validation, the epoch rule, and their persistence.

A primary CC pushes its cluster's whole network intent (docs/intent.md). The
controller refuses an intent older than the newest it accepted for that cluster (a
stale ex-primary's), rejects a malformed one without changing anything, and keeps
every accepted intent on disk so that a restarted controller resynchronises the
switches from it. Pure apart from the file it writes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from pathlib import Path

from components.common.modes import MANAGED_MODES, MODES, features

from .topology import Topology

PUBLIC_IP_POOL = ipaddress.ip_network("10.0.128.0/24")
PROTOCOLS = ("tcp", "udp", "icmp", "-1", "all")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_GROUP_ID = re.compile(r"^sg-[0-9a-zA-Z]+$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-zA-Z]+$")


class IntentError(ValueError):
    """A malformed intent; the message names the field."""


class StaleEpoch(Exception):
    def __init__(self, current: int):
        super().__init__(f"stale epoch (current {current})")
        self.current = current


def vm_space(cluster: int) -> ipaddress.IPv4Network:
    """Where a cluster's security-group subnets live (the CC's allocator carves them)."""
    return ipaddress.ip_network(f"10.{100 + cluster}.16.0/20")


def _need(obj: dict, key: str, types, where: str, nullable: bool = False):
    if key not in obj:
        raise IntentError(f"{where}.{key}: missing")
    value = obj[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise IntentError(f"{where}.{key}: expected {names}{' or null' if nullable else ''}, got {value!r}")
    return value


def _unknown(obj: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise IntentError(f"{where}: unknown field(s) {', '.join(extra)}")


def _objects(parent: dict, key: str, allowed: set[str], where: str):
    """Each element of the list ``parent[key]`` with its path (``where.key[n]``), checked to be an
    object that holds no field outside ``allowed``."""
    for n, item in enumerate(_need(parent, key, list, where)):
        at = f"{where}.{key}[{n}]"
        if not isinstance(item, dict):
            raise IntentError(f"{at}: expected an object")
        _unknown(item, allowed, at)
        yield at, item


def _port(rule: dict, key: str, where: str, lo: int, hi: int) -> int:
    value = _need(rule, key, int, where)
    if not lo <= value <= hi:
        raise IntentError(f"{where}.{key}: {value} outside {lo}..{hi}")
    return value


def validate(intent, cluster: int, topo: Topology) -> dict:
    """Check a cluster intent field by field; returns it normalised (MACs lower case).

    Raises IntentError naming the first offending field.
    """
    if not isinstance(intent, dict):
        raise IntentError("intent: expected a JSON object")
    _unknown(intent, {"cluster", "epoch", "mode", "primary_cc", "groups", "instances"}, "intent")
    if _need(intent, "cluster", int, "intent") != cluster:
        raise IntentError(f"intent.cluster: {intent['cluster']} does not match the URL's cluster {cluster}")
    if cluster not in topo.clusters():
        raise IntentError(f"intent.cluster: no cluster {cluster} in this deployment")
    epoch = _need(intent, "epoch", int, "intent")
    if epoch < 0:
        raise IntentError("intent.epoch: must be >= 0")
    mode = _need(intent, "mode", str, "intent")
    if mode not in MODES:
        raise IntentError(f"intent.mode: {mode!r} is not one of {', '.join(MODES)}")
    if mode != topo.mode:
        raise IntentError(f"intent.mode: {mode} but the deployment runs {topo.mode}")
    primary = _need(intent, "primary_cc", str, "intent")
    if primary not in topo.cc_members(cluster):
        raise IntentError(f"intent.primary_cc: {primary!r} is not a CC of cluster {cluster} "
                          f"({', '.join(topo.cc_members(cluster))})")
    space = vm_space(cluster)
    out_groups, by_id, vlans, subnets = [], {}, set(), []
    for where, g in _objects(intent, "groups", {"id", "name", "account", "vlan", "subnet", "gateway", "rules"},
                             "intent"):
        gid = _need(g, "id", str, where)
        if not _GROUP_ID.match(gid):
            raise IntentError(f"{where}.id: {gid!r} is not a group id (sg-...)")
        if gid in by_id:
            raise IntentError(f"{where}.id: duplicate group {gid}")
        _need(g, "name", str, where)
        _need(g, "account", str, where, nullable=True)
        vlan = _need(g, "vlan", int, where, nullable=True)
        if features(mode).l2_isolation:
            if vlan is None or not 2 <= vlan <= 4094:
                raise IntentError(f"{where}.vlan: MANAGED needs a VLAN in 2..4094, got {vlan!r}")
            if vlan in vlans:
                raise IntentError(f"{where}.vlan: VLAN {vlan} used by two groups")
            vlans.add(vlan)
        try:
            subnet = ipaddress.ip_network(_need(g, "subnet", str, where))
        except ValueError as exc:
            raise IntentError(f"{where}.subnet: {exc}") from None
        try:
            gateway = ipaddress.ip_address(_need(g, "gateway", str, where))
        except ValueError as exc:
            raise IntentError(f"{where}.gateway: {exc}") from None
        # SYSTEM/STATIC: every group shares the cluster's flat range behind the site router.
        if mode in MANAGED_MODES:
            if not subnet.subnet_of(space):
                raise IntentError(f"{where}.subnet: {subnet} is outside the cluster's VM space {space}")
            if subnet.num_addresses < 4:
                raise IntentError(f"{where}.subnet: {subnet} is too small (at least a /30)")
            if any(subnet.overlaps(s) for s in subnets):
                raise IntentError(f"{where}.subnet: {subnet} overlaps another group's subnet")
            if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
                raise IntentError(f"{where}.gateway: {gateway} is not a host address of {subnet}")
        subnets.append(subnet)
        out_rules = []
        for rw, rule in _objects(g, "rules", {"protocol", "from_port", "to_port", "cidr", "source_group"}, where):
            proto = str(_need(rule, "protocol", (str, int), rw)).lower()
            proto = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
            if proto not in PROTOCOLS:
                raise IntentError(f"{rw}.protocol: {rule['protocol']!r} is not one of tcp, udp, icmp, -1")
            if proto in ("tcp", "udp"):
                lo, hi = _port(rule, "from_port", rw, 0, 65535), _port(rule, "to_port", rw, 0, 65535)
                if lo > hi:
                    raise IntentError(f"{rw}: from_port {lo} > to_port {hi}")
            elif proto == "icmp":
                _port(rule, "from_port", rw, -1, 255)
                _port(rule, "to_port", rw, -1, 255)
            cidr = rule.get("cidr")
            source = rule.get("source_group")
            if (cidr is None) == (source is None):
                raise IntentError(f"{rw}: exactly one of cidr and source_group")
            if cidr is not None:
                try:
                    ipaddress.ip_network(_need(rule, "cidr", str, rw))
                except ValueError as exc:
                    raise IntentError(f"{rw}.cidr: {exc}") from None
            if source is not None and not _GROUP_ID.match(_need(rule, "source_group", str, rw)):
                raise IntentError(f"{rw}.source_group: {source!r} is not a group id")
            out_rules.append(dict(rule, protocol=proto))
        norm = dict(g, rules=out_rules)
        by_id[gid] = norm
        out_groups.append(norm)
    slots = {hp.host: hp for hp in topo.host_ports(topo.private_network(cluster)) if hp.kind == "slot"}
    out_instances, ids, macs, ips, used_slots, publics = [], set(), set(), set(), set(), set()
    for where, inst in _objects(intent, "instances", {"id", "mac", "ip", "nc", "slot", "group", "public_ip"},
                                "intent"):
        iid = _need(inst, "id", str, where)
        if not _INSTANCE_ID.match(iid) or iid in ids:
            raise IntentError(f"{where}.id: {iid!r} is not a unique instance id (i-...)")
        ids.add(iid)
        mac = _need(inst, "mac", str, where).lower()
        if not _MAC.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise IntentError(f"{where}.mac: {inst['mac']!r} is not a unicast MAC address")
        if mac in macs:
            raise IntentError(f"{where}.mac: {mac} used by two instances")
        macs.add(mac)
        gid = _need(inst, "group", str, where)
        if gid not in by_id:
            raise IntentError(f"{where}.group: {gid!r} is not among intent.groups")
        group = by_id[gid]
        try:
            ip = ipaddress.ip_address(_need(inst, "ip", str, where))
        except ValueError as exc:
            raise IntentError(f"{where}.ip: {exc}") from None
        subnet = ipaddress.ip_network(group["subnet"])
        if mode in MANAGED_MODES and (ip not in subnet or str(ip) == group["gateway"]
                                      or ip in (subnet.network_address, subnet.broadcast_address)):
            raise IntentError(f"{where}.ip: {ip} is not a free host address of {gid}'s subnet {subnet}")
        if ip in ips:
            raise IntentError(f"{where}.ip: {ip} used by two instances")
        ips.add(ip)
        nc = _need(inst, "nc", str, where, nullable=True)
        slot = _need(inst, "slot", str, where, nullable=True)
        if slot is not None:
            if slot not in slots:
                raise IntentError(f"{where}.slot: {slot!r} is not a VM slot of cluster {cluster}")
            if nc is not None and slots[slot].nc != nc:
                raise IntentError(f"{where}.slot: {slot} belongs to {slots[slot].nc}, not {nc}")
            if slot in used_slots:
                raise IntentError(f"{where}.slot: {slot} holds two instances")
            used_slots.add(slot)
        pub = _need(inst, "public_ip", str, where, nullable=True)
        if pub is not None:
            try:
                pub_ip = ipaddress.ip_address(pub)
            except ValueError as exc:
                raise IntentError(f"{where}.public_ip: {exc}") from None
            if pub_ip not in PUBLIC_IP_POOL or pub_ip in publics:
                raise IntentError(f"{where}.public_ip: {pub} is not a free address of {PUBLIC_IP_POOL}")
            publics.add(pub_ip)
        out_instances.append(dict(inst, mac=mac))
    return dict(intent, groups=out_groups, instances=out_instances)


class LatestWriter:
    """Writes the newest text handed to it to ``path`` (write and rename: a crash leaves the
    old file or the new one), in a thread of its own.

    Off the request path: a rename waits for the filesystem journal, and an intent
    waited 250 ms for one in the middle of a CC takeover. Not fsynced: the file must
    survive the controller's crash, and the page cache does (a machine crash takes the
    whole emulated cloud with it). ``flush()`` waits until the newest text is written.
    """

    def __init__(self, path: Path):
        self.path = path
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._busy = False
        threading.Thread(target=self._run, name=f"write-{path.name}", daemon=True).start()

    def write(self, text: str) -> None:
        with self._cond:
            self._pending = text
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                text, self._pending, self._busy = self._pending, None, True
            try:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, self.path)
            except OSError:
                pass  # the next write tries again; the state in memory is what counts
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)


class EpochStore:
    """Accepted records by key under the epoch rule (an older epoch is refused, an equal one
    accepted), in memory and in ``<dir>/<file>`` as {section: {key: record}}, written by a
    ``LatestWriter`` as soon as a record is accepted, so a restarted controller starts where
    the last one stopped. Subclasses name the file and validate (and may drop the epoch
    rule: ``monotonic``)."""

    file = section = ""
    monotonic = True

    def __init__(self, directory: str | Path, topo: Topology):
        self.path = Path(directory) / self.file
        self.topo = topo
        self._lock = threading.Lock()
        saved = json.loads(self.path.read_text()).get(self.section, {}) if self.path.exists() else {}
        self.records: dict = {self._key(k): v for k, v in saved.items()}
        self._writer = LatestWriter(self.path)

    @staticmethod
    def _key(raw: str):
        return raw

    def _validate(self, body, key) -> dict:
        raise NotImplementedError

    def put(self, key, body) -> tuple[dict, dict | None]:
        """Validate and accept a record; returns (new, previous). Raises IntentError or StaleEpoch."""
        clean = self._validate(body, key)
        with self._lock:
            previous = self.records.get(key)
            if self.monotonic and previous is not None and clean["epoch"] < previous["epoch"]:
                raise StaleEpoch(previous["epoch"])
            self.records[key] = clean
            self._writer.write(json.dumps({self.section: {str(k): v for k, v in sorted(self.records.items())}},
                                          sort_keys=True))
        return clean, previous

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.records)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the newest accepted records are on disk."""
        return self._writer.flush(timeout)


def validate_standby(body, cluster: int, topo: Topology) -> dict:
    """Check a standby report ({"host": CC, "epoch": E}); returns it normalised."""
    if not isinstance(body, dict):
        raise IntentError("standby: expected a JSON object")
    _unknown(body, {"host", "epoch"}, "standby")
    if cluster not in topo.clusters():
        raise IntentError(f"standby: no cluster {cluster} in this deployment")
    host = _need(body, "host", str, "standby")
    if host not in topo.cc_members(cluster):
        raise IntentError(f"standby.host: {host!r} is not a CC of cluster {cluster} "
                          f"({', '.join(topo.cc_members(cluster))})")
    epoch = _need(body, "epoch", int, "standby")
    if epoch < 0:
        raise IntentError("standby.epoch: must be >= 0")
    return {"host": host, "epoch": epoch}


def staged_standby(intent: dict | None, standby: dict | None) -> str | None:
    """The CC the switches keep ready beside the primary (in the groups' VLANs), or None.

    A secondary CC reports itself once it holds none of the router's addresses (its rules
    are armed, inert without them), with the epoch of the cluster's intent as it knows it. It is staged while that is
    the epoch of the accepted intent and it is not that intent's primary. So a takeover
    by the staged CC needs no flow change before its traffic flows, and the intent of a
    new primary (a higher epoch) unstages everyone who reported before it: the old
    primary, possibly only frozen and still holding the gateways, is out of the groups'
    VLANs until it reports again, withdrawn, under the new epoch. Equal, not at least:
    a report naming a future epoch would otherwise stay staged through every promotion
    up to it.
    """
    if not intent or not standby:
        return None
    if standby["host"] == intent["primary_cc"] or standby["epoch"] != intent["epoch"]:
        return None
    return standby["host"]


class IntentStore(EpochStore):
    """The accepted intent of every cluster: ``<dir>/intent.json`` holds {"clusters": {"1": intent, ...}}."""

    file, section = "intent.json", "clusters"

    @staticmethod
    def _key(raw: str) -> int:
        return int(raw)

    def _validate(self, body, key) -> dict:
        return validate(body, key, self.topo)

    def epoch(self, cluster: int) -> int | None:
        intent = self.records.get(cluster)
        return None if intent is None else intent["epoch"]


class StandbyStore(EpochStore):
    """Each cluster's standby CC as it last reported itself: ``<dir>/standby.json`` holds
    {"clusters": {"1": {"host": ..., "epoch": E}}} (see ``staged_standby``). A report
    replaces the last one whatever its epoch: the API checks it against the intent."""

    file, section = "standby.json", "clusters"
    monotonic = False

    @staticmethod
    def _key(raw: str) -> int:
        return int(raw)

    def _validate(self, body, key) -> dict:
        return validate_standby(body, key, self.topo)
