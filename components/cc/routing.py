"""The CC as the cluster's software router (MANAGED and MANAGED-NOVLAN), as Eucalyptus's CC was.

On the primary CC:
* each security group's gateway address sits on the private interface (VMs route
  through it), each elastic IP on the public interface;
* FORWARD policy DROP, established traffic accepted, one ACCEPT per security-group
  ingress rule (protocol, port range, CIDR or source group), VM-initiated traffic
  out, cluster infrastructure (NCs to Walrus) through;
* elastic IPs are DNAT (in) and SNAT (out); the metadata address
  169.254.169.254:80 is DNATed to the CLC's 8773 once (EUCA-3440 had one rule per CC),
  without SNAT so the CLC sees the instance's own address.
A CC that stops being primary removes its addresses and rules.

``render()`` is pure (tested without root); ``apply()`` runs in the CC's own namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

CHAIN_FWD = "EUCA-FORWARD"
CHAIN_DNAT = "EUCA-PREROUTING"
CHAIN_SNAT = "EUCA-POSTROUTING"
METADATA_IP = "169.254.169.254"


@dataclass
class RouterConfig:
    private_addresses: list[str] = field(default_factory=list)  # "10.101.16.1/27"
    public_addresses: list[str] = field(default_factory=list)  # "10.0.128.5/32"
    iptables: str = ""  # iptables-restore --noflush input


def _rule_matches(rule: dict, groups: dict[str, dict]) -> list[str]:
    """iptables match fragments (one per source) for one ingress rule."""
    proto = str(rule.get("protocol", "-1")).lower()
    parts = []
    if proto in ("tcp", "udp", "6", "17"):
        p = {"6": "tcp", "17": "udp"}.get(proto, proto)
        lo, hi = int(rule.get("from_port", 0)), int(rule.get("to_port", 65535))
        parts.append(f"-p {p} --dport {lo}:{hi}" if lo != hi else f"-p {p} --dport {lo}")
    elif proto in ("icmp", "1"):
        icmp_type = int(rule.get("from_port", -1))
        parts.append("-p icmp" + (f" --icmp-type {icmp_type}" if icmp_type >= 0 else ""))
    elif proto not in ("-1", "all"):
        return []
    proto_part = parts[0] if parts else ""
    sources = []
    if rule.get("cidr"):
        sources.append(f"-s {ipaddress.ip_network(rule['cidr'], strict=False)}")
    if rule.get("source_group"):
        src = groups.get(rule["source_group"])
        if src is not None:
            sources.append(f"-s {src['subnet']}")
    return [f"{s} {proto_part}".strip() for s in sources]


def render(intent: dict, private_if: str, public_if: str, clc_vip: str | None, cluster: int) -> RouterConfig:
    """The addresses and iptables rules that make a CC the router for ``intent``."""
    groups = {g["id"]: g for g in intent.get("groups", [])}
    cfg = RouterConfig()
    infra = f"10.{100 + cluster}.0.0/20"  # CC, SC and NC addresses of the cluster (plan.py)
    fwd = [f"-A {CHAIN_FWD} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
           f"-A {CHAIN_FWD} -s {infra} -j ACCEPT",
           f"-A {CHAIN_FWD} -d {infra} -j ACCEPT"]
    for g in intent.get("groups", []):
        net = ipaddress.ip_network(g["subnet"])
        cfg.private_addresses.append(f"{g['gateway']}/{net.prefixlen}")
        # Instances may open connections out of their group; what comes in is up to the rules.
        fwd.append(f"-A {CHAIN_FWD} -i {private_if} -s {net} -o {public_if} -j ACCEPT")
        for rule in g.get("rules", []):
            for match in _rule_matches(rule, groups):
                fwd.append(f"-A {CHAIN_FWD} -d {net} {match} -j ACCEPT")
    dnat, snat = [], []
    if clc_vip:
        dnat.append(f"-A {CHAIN_DNAT} -d {METADATA_IP}/32 -p tcp --dport 80 "
                    f"-j DNAT --to-destination {clc_vip}:8773")
        fwd.append(f"-A {CHAIN_FWD} -d {clc_vip}/32 -p tcp --dport 8773 -j ACCEPT")
    for inst in intent.get("instances", []):
        pub = inst.get("public_ip")
        if not pub:
            continue
        cfg.public_addresses.append(f"{pub}/32")
        dnat.append(f"-A {CHAIN_DNAT} -d {pub}/32 -j DNAT --to-destination {inst['ip']}")
        snat.append(f"-A {CHAIN_SNAT} -s {inst['ip']}/32 -o {public_if} -j SNAT --to-source {pub}")
    lines = ["*filter", f":{CHAIN_FWD} - [0:0]", *fwd, "COMMIT",
             "*nat", f":{CHAIN_DNAT} - [0:0]", f":{CHAIN_SNAT} - [0:0]", *dnat, *snat, "COMMIT", ""]
    cfg.iptables = "\n".join(lines)
    return cfg


async def _run(*argv: str, stdin: str | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode, out.decode()


async def _ensure_jumps() -> None:
    """Hook our chains into the built-in ones once, with FORWARD's policy DROP."""
    for table, builtin, chain in (("filter", "FORWARD", CHAIN_FWD), ("nat", "PREROUTING", CHAIN_DNAT),
                                  ("nat", "POSTROUTING", CHAIN_SNAT)):
        await _run("iptables", "-w", "-t", table, "-N", chain)
        code, _ = await _run("iptables", "-w", "-t", table, "-C", builtin, "-j", chain)
        if code != 0:
            await _run("iptables", "-w", "-t", table, "-A", builtin, "-j", chain)
    await _run("iptables", "-w", "-P", "FORWARD", "DROP")


async def _sync_addresses(intf: str, want: list[str], scope_net: str | None, keep: set[str]) -> list[str]:
    """Make the interface hold exactly ``want`` among addresses we manage; returns those added."""
    code, out = await _run("ip", "-o", "-4", "addr", "show", "dev", intf)
    have = {line.split()[3] for line in out.splitlines() if " inet " in line}
    managed = {a for a in have if a not in keep and (scope_net is None or
               ipaddress.ip_interface(a).ip in ipaddress.ip_network(scope_net))}
    added = []
    for addr in sorted(set(want) - have):
        await _run("ip", "addr", "replace", addr, "dev", intf)
        added.append(addr.split("/")[0])
    for addr in sorted(managed - set(want)):
        await _run("ip", "addr", "del", addr, "dev", intf)
    return added


_background: set[asyncio.Task] = set()


def announce(intf: str, addresses: list[str]) -> None:
    """Gratuitous ARP for addresses that moved here, so neighbours learn at once.

    arping lingers after sending; it runs in the background so routing is never held up.
    """
    for a in addresses:
        task = asyncio.get_running_loop().create_task(_run("arping", "-q", "-U", "-c", "2", "-I", intf, a))
        _background.add(task)
        task.add_done_callback(_background.discard)


async def apply(cc, intent: dict) -> None:
    """Make ``cc`` (a ClusterController on its own host) the router for ``intent``."""
    cfg = cc.config
    private_if, public_if = cfg["private_interface"], cfg["public_interface"]
    clc = (cfg.get("endpoints", {}).get("clc") or "").split("//")[-1].split(":")[0] or None
    rc = render(intent, private_if, public_if, clc, cc.cluster)
    await _ensure_jumps()
    code, out = await _run("iptables-restore", "-w", "--noflush", stdin=rc.iptables)
    if code != 0:
        cc.events.emit("router.error", error=out.strip()[:500])
        return
    # Group gateways live in the VM space 10.(100+k).16.0/20; the cluster router VIP
    # and the CC's own addresses are not ours to touch here.
    vm_space = f"10.{100 + cc.cluster}.16.0/20"
    added_priv = await _sync_addresses(private_if, rc.private_addresses, vm_space, set())
    added_pub = await _sync_addresses(public_if, rc.public_addresses, "10.0.128.0/17", set())
    announce(private_if, added_priv)
    announce(public_if, added_pub)
    cc.events.emit("router.applied", gateways=len(rc.private_addresses), elastic_ips=len(rc.public_addresses))


async def withdraw(cc) -> None:
    """Stop routing for the cluster on this host (it is no longer primary)."""
    cfg = cc.config
    await _sync_addresses(cfg["private_interface"], [], f"10.{100 + cc.cluster}.16.0/20", set())
    await _sync_addresses(cfg["public_interface"], [], "10.0.128.0/17", set())
    await _run("iptables-restore", "-w", "--noflush",
               stdin=f"*filter\n:{CHAIN_FWD} - [0:0]\nCOMMIT\n*nat\n:{CHAIN_DNAT} - [0:0]\n"
                     f":{CHAIN_SNAT} - [0:0]\nCOMMIT\n")
    cc.events.emit("router.withdrawn")
