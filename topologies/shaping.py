"""Link shaping: HTB bandwidth, and netem delay/loss where the kernel has netem.

Mininet's TCLink prints netem errors and carries on; here every requested
parameter is checked to have taken effect, and the build fails if it has not.
"""

from __future__ import annotations

from .plan import Plan


class ShapingError(RuntimeError):
    """A requested link parameter did not take effect."""


def shape_commands(intf: str, bw_mbit: float | None, delay_ms: float | None,
                   loss_pct: float | None) -> list[str]:
    """tc batch lines shaping one interface (HTB root, netem below it)."""
    cmds = []
    parent = "root"
    if bw_mbit is not None:
        # burst: enough for one timer tick at this rate, at least one MTU-sized frame.
        rate_bytes = bw_mbit * 1e6 / 8
        burst = max(15_000, int(rate_bytes / 250))
        # An explicit quantum keeps HTB from warning (rate / r2q outside 1514..200000).
        quantum = int(min(200_000, max(1514, rate_bytes / 10)))
        cmds.append(f"qdisc add dev {intf} root handle 5: htb default 1")
        cmds.append(f"class add dev {intf} parent 5: classid 5:1 htb rate {bw_mbit}mbit "
                    f"burst {burst} quantum {quantum}")
        parent = "parent 5:1"
    if delay_ms is not None or loss_pct is not None:
        netem = f"qdisc add dev {intf} {parent} handle 10: netem"
        if delay_ms is not None:
            netem += f" delay {delay_ms}ms"
        if loss_pct is not None:
            netem += f" loss {loss_pct}%"
        cmds.append(netem)
    return cmds


def verify_shaping(net, plan: Plan) -> None:
    """Read back the qdiscs of every shaped host interface; raise if one is missing."""
    spec = plan.spec.links
    want = []
    if spec.bw_mbit is not None:
        want.append("htb")
    if spec.needs_netem:
        want.append("netem")
    shaped_hosts = {l.a for l in plan.links if l.shaped and l.a in plan.hosts}
    shaped_hosts |= {l.b for l in plan.links if l.shaped and l.b in plan.hosts}
    for name in shaped_hosts:
        net[name].sendCmd("tc qdisc show")
    missing = []
    for name in shaped_hosts:
        out = net[name].waitOutput()
        for intf in plan.hosts[name].interfaces:
            lines = [l for l in out.splitlines() if f" dev {intf.name} " in l + " "]
            for kind in want:
                if not any(f"qdisc {kind} " in l for l in lines):
                    missing.append(f"{intf.name}: no {kind}")
    if missing:
        raise ShapingError("link parameters did not take effect: " + ", ".join(missing[:10]))
