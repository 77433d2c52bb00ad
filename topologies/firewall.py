"""The site's firewall on the border gateway: what users and the outside may reach.

A real site puts its cloud behind its border router's filter; so does this testbed.
Traffic that enters the gateway from the user network or the external site may go to:

* the public services on their virtual IPs, TCP 8773 (the CLC's EC2 API, Walrus's
  S3 API);
* ICMP echo to every service's virtual IP, and nothing else of the CC's and SC's (the
  experiments measure the round trip users see to each service: a ping opens no port);
* elastic IPs (``10.0.128.0/24``), any protocol: the primary CC's security-group rules
  decide what reaches an instance (components/cc/router.py), in EDGE the flows of the
  bridge of the instance's NC (controllers/flows.py);
* in SYSTEM and STATIC, the instances' flat range on each cluster network (no CC in
  the path, as in Eucalyptus).

Everything else from outside is dropped: HA heartbeats (UDP 7800), the SC's block
protocol (3260), the CC's and NC's internal APIs (8774, 8775), the SC's API, every
member's own address, the heartbeat links, NCs. Replies to connections made from
inside (arbitrators pinging the external site, instances reaching out) pass.

Instances are filtered where their packets are routed, on the primary CC (MANAGED
modes); with ``sdn: true`` the switches also keep them off the cluster's
infrastructure at layer 2. docs/security.md, "Network", says why in both places.

``site_firewall(plan)`` is pure: nftables input text (``nft -f -``), unit-tested.
"""

from __future__ import annotations

from components.cc.netalloc import NetworkAllocator
from components.common.modes import features

from .plan import PUBLIC_IP_POOL, Plan

TABLE = "eucalab-site"
CHAIN = "forward"
PUBLIC_SERVICES = ("clc", "walrus")  # pairs whose VIP users reach (their port, 8773)


def public_endpoints(plan: Plan) -> list[tuple[str, int]]:
    """(VIP, TCP port) of every service users may reach."""
    return [(p.vip, p.port) for p in plan.pairs if p.kind in PUBLIC_SERVICES]


def flat_ranges(plan: Plan) -> list[str]:
    """Where instances sit on the cluster networks in SYSTEM and STATIC, whose instances users
    reach by their own address: the CC's flat range, components/cc/netalloc.py. None in the
    modes with elastic IPs (MANAGED*, EDGE): there users reach instances by those."""
    if features(plan.spec.mode.value).elastic_ips:
        return []
    return [str(NetworkAllocator(plan.spec.mode.value, p.cluster).flat_space) for p in plan.pairs if p.kind == "cc"]


def outside_interfaces(plan: Plan) -> list[str]:
    gw = plan.hosts_by_role("gateway")[0]
    return [i.name for i in gw.interfaces if plan.networks[i.network].kind in ("user", "external")]


def site_firewall(plan: Plan) -> str:
    """The gateway's nftables table: from outside, only the public services and elastic IPs."""
    outside = "{ " + ", ".join(f'"{i}"' for i in outside_interfaces(plan)) + " }"
    services = ", ".join(f"{ip} . {port}" for ip, port in public_endpoints(plan))
    vips = ", ".join(p.vip for p in plan.pairs)
    rules = ["ct state established,related accept"]
    if services:
        rules.append(f"iifname {outside} ip daddr . tcp dport {{ {services} }} counter accept")
        rules.append(f"iifname {outside} ip daddr {{ {vips} }} icmp type echo-request counter accept")
    rules.append(f"iifname {outside} ip daddr {PUBLIC_IP_POOL} counter accept")
    for net in flat_ranges(plan):
        rules.append(f"iifname {outside} ip daddr {net} counter accept")
    rules.append(f"iifname {outside} counter drop")
    lines = [f"table ip {TABLE} {{", f"  chain {CHAIN} {{", "    type filter hook forward priority filter; policy accept;"]
    lines += [f"    {r}" for r in rules]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def admit_rule(address: str, port: int) -> str:
    """nft input letting outside reach one more TCP service (an experiment's own, such as
    the keepalived baseline's responder on the CLC VIP's port 8080)."""
    return f"insert rule ip {TABLE} {CHAIN} ip daddr {address} tcp dport {port} counter accept\n"
