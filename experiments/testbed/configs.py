"""What a deployment writes for its processes: the admin account's credentials, each
component's config file, the service list the CLC serves and each HA member's settings."""

from __future__ import annotations

import secrets
import string
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from components.common.ha.heartbeat_thread import FIFO_PRIORITY as HEARTBEAT_THREAD_PRIORITY
from components.common.ha_config import ha_config_for
from components.common.service import token_digest
from topologies.plan import PUBLIC_IP_POOL, ServicePair

if TYPE_CHECKING:
    from .deployment import Deployment

# SCHED_FIFO priority of the HA members once started (and of the experiments' prober).
REALTIME_PRIORITY = 10
# Their heartbeat threads run above them (components/common/ha/heartbeat_thread.py), and so
# does keepalived's VRRP process where it runs at realtime beside them: the detectors at one
# priority (keepalived also decides and moves its VIPs there; eucalab does that on the
# member's loop, at REALTIME_PRIORITY).
HEARTBEAT_PRIORITY = HEARTBEAT_THREAD_PRIORITY
# The NC's, below them: it carries every volume request between an instance and the SC
# (the block initiator, a kernel's work on a real node), and at the normal scheduler it
# queued behind whatever else the machine ran (docs/ha.md, "Beyond the
# detection bound"). Below the members, so it never delays a heartbeat.
NC_REALTIME_PRIORITY = 5


def realtime_priority(role: str, paired: bool, realtime: bool) -> int | None:
    """The SCHED_FIFO priority a component raises itself to once started, or None: the
    HA members' (``paired``) and the NC's, on a deployment that runs at realtime."""
    if not realtime:
        return None
    if paired:
        return REALTIME_PRIORITY
    return NC_REALTIME_PRIORITY if role == "nc" else None


def random_key(n: int, alphabet: str) -> str:
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
            access_key="AKIA" + random_key(16, string.ascii_uppercase + string.digits),
            secret_key=random_key(40, string.ascii_letters + string.digits + "+/"),
        )


class Configs:
    """Builds the config files of the deployment's components from its plan and secrets."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep

    def write_credentials(self) -> None:
        """The admin account's keys as an AWS credentials file in the run directory."""
        c = self.dep.credentials
        path = self.dep.run_dir / "credentials"
        path.write_text("[default]\n"
                        f"aws_access_key_id = {c.access_key}\n"
                        f"aws_secret_access_key = {c.secret_key}\n"
                        "region = eucalyptus\n")
        path.chmod(0o600)

    def component_config(self, component: str, host: str) -> dict:
        """The config file a component process gets (see components/common/config.py)."""
        dep, plan = self.dep, self.dep.plan
        ph = plan.hosts[host]
        pair = next((p for p in plan.pairs if host in p.members), None)
        hdir = dep.host_dir(host)
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
            "admin": asdict(dep.credentials),
            # Its own role's token (sent on its calls), and how to recognise every role's.
            "internal_token": dep.role_tokens.get(component, ""),
            "internal_callers": {role: token_digest(t) for role, t in dep.role_tokens.items()},
            "endpoints": plan.endpoints(),
            "zones": [f"cluster{k}" for k in range(1, dep.spec.clusters + 1)],
            "public_ips": str(PUBLIC_IP_POOL),
            "mode": dep.spec.mode.value,
            "cluster": ph.cluster,
            "run_dir": str(dep.run_dir),
            "control_socket": str(dep.control_socket),
        }
        if component == "clc":
            cfg["services"] = self.service_members()  # DescribeServices / ModifyService
        if pair is not None:
            cfg["pair"] = {"name": pair.name, "primary": pair.primary, "secondary": pair.secondary,
                           "vip": pair.vip, "private_vip": pair.private_vip}
        paired = pair is not None and pair.secondary is not None
        if paired:
            cfg["ha"] = self.ha_config(pair, host)
        # Heartbeats at realtime priority: CPU starvation, not the network, causes most
        # false failovers on a small host. The component raises itself once started, so
        # that starting processes never starve running ones.
        prio = realtime_priority(ph.role, paired, dep.realtime)
        if prio is not None:
            cfg["realtime_priority"] = prio
        if ph.role == "nc":
            # The NC boots instances into its VM slots by entering their namespaces.
            cfg["slots"] = [{"name": slot.name, "interface": slot.interfaces[0].name,
                             "netns": f"/proc/{dep.net[slot.name].pid}/ns/net",
                             "port": plan.nc_port(slot.name)}
                            for slot in plan.slots_of(host)]
            # vlan_tagging host: the NC bridges each slot's port into its instance's VLAN.
            cfg["vlan_tagging"] = dep.spec.vlan_tagging
            cfg["private_interface"] = ph.intf(f"priv{ph.cluster}").name
        if ph.role == "sc":
            # Block logins only from the cluster's NCs, on this member's own addresses and its VIP.
            cfg["nc_addresses"] = {nc.name: [i.ip.split("/")[0] for i in nc.interfaces if i.ip]
                                   for nc in plan.hosts_by_role("nc") if nc.cluster == ph.cluster}
            hb_net = pair.heartbeat_network if pair else None
            cfg["block_listen"] = ([pair.vip] if pair and pair.vip else []) + [
                i.ip.split("/")[0] for i in ph.interfaces if i.ip and i.network != hb_net]
        if ph.role == "cc":
            k = ph.cluster
            cfg["ncs"] = {nc.name: {"url": f"http://{nc.main_ip}:8775",
                                    "slots": [s.name for s in plan.slots_of(nc.name)]}
                          for nc in plan.hosts_by_role("nc") if nc.cluster == k}
            cfg["private_interface"] = ph.intf(f"priv{k}").name
            cfg["public_interface"] = ph.intf("cloud").name
            cfg["vlan_tagging"] = dep.spec.vlan_tagging
        return cfg

    def service_members(self) -> list[dict]:
        """Every member of every pair as Eucalyptus's service API names it, with the address
        the CLC reaches it on (its own, on the cloud network)."""
        from components.clc.services import SERVICE_TYPES

        plan = self.dep.plan
        paths = {"clc": "/services/Eucalyptus", "walrus": "/services/Walrus"}
        out = []
        for pair in plan.pairs:
            partition = {"clc": "eucalyptus", "walrus": "walrus"}.get(pair.kind, f"cluster{pair.cluster}")
            for m in pair.members:
                base = f"http://{plan.hosts[m].intf('cloud').ip.split('/')[0]}:{pair.port}"
                out.append({"type": SERVICE_TYPES[pair.kind], "partition": partition, "name": m,
                            "uri": base + paths.get(pair.kind, ""), "internal": base, "pair": pair.name})
        return out

    def ha_config(self, pair: ServicePair, host: str) -> dict:
        """What a member's HA agent needs: its peer's addresses, its own, its VIPs, its
        arbitrators, and its pair's heartbeat key (that pair's two members hold it, nobody else)."""
        dep = self.dep
        return ha_config_for(dep.plan, host, dep.pair_secrets[pair.name], dep.spec, str(dep.control_socket))
