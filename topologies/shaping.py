"""Link shaping: HTB bandwidth, and netem delay/loss where the kernel has netem.

Mininet's TCLink prints netem errors and carries on; here every requested
parameter is checked to have taken effect, and the build fails if it has not.

A link's qdiscs: HTB at the root (handle 5:, one class 5:1) when it has a rate, and
netem (handle 10:) below that class, or at the root without a rate. ``added_delay``
puts a fault's delay on top of what the spec gives an interface and says how to put
exactly that back.
"""

from __future__ import annotations

from .plan import Plan
from .spec import LinkSpec


class ShapingError(RuntimeError):
    """A requested link parameter did not take effect."""


def shape_commands(intf: str, bw_mbit: float | None, delay_ms: float | None,
                   loss_pct: float | None, jitter_ms: float | None = None) -> list[str]:
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
        cmds.append(_netem("add", intf, parent, delay_ms, jitter_ms, loss_pct))
    return cmds


def _netem(verb: str, intf: str, parent: str, delay_ms: float | None, jitter_ms: float | None,
           loss_pct: float | None) -> str:
    """The tc batch line that adds (or changes) an interface's netem qdisc."""
    netem = f"qdisc {verb} dev {intf} {parent} handle 10: netem"
    if delay_ms is not None:
        netem += f" delay {delay_ms}ms"
        if jitter_ms is not None:
            netem += f" {jitter_ms}ms"
    if loss_pct is not None:
        netem += f" loss {loss_pct}%"
    return netem


def added_delay(intf: str, shape: LinkSpec | None, delay_ms: float) -> tuple[list[str], list[str]]:
    """tc batch lines adding ``delay_ms`` to an interface on top of the shaping its spec
    gives it (``shape``, None: none; its rate, delay, jitter and loss stay), and the lines
    that restore exactly that shaping. The root qdisc is never replaced: a spec's netem is
    changed in place (packets queued in it stay), else a netem is added and then removed."""
    parent = "parent 5:1" if shape is not None and shape.bw_mbit is not None else "root"
    if shape is None or not shape.own_netem:
        return [_netem("add", intf, parent, delay_ms, None, None)], [f"qdisc del dev {intf} {parent} handle 10:"]
    more = _netem("change", intf, parent, (shape.delay_ms or 0) + delay_ms, shape.jitter_ms, shape.loss_pct)
    return [more], [_netem("change", intf, parent, shape.delay_ms, shape.jitter_ms, shape.loss_pct)]


def link_shapes(plan: Plan):
    """(link, its LinkSpec) for every host link the spec shapes."""
    for link in plan.links:
        if not link.shaped:
            continue
        shape = plan.spec.links.for_network(plan.networks[link.network].kind)
        if shape.bw_mbit is not None or shape.own_netem:
            yield link, shape


def interface_shape(plan: Plan, node: str, intf: str) -> LinkSpec | None:
    """The link parameters the spec gives one end of a link (None: not shaped)."""
    for link, shape in link_shapes(plan):
        if (node, intf) in ((link.a, link.a_intf), (link.b, link.b_intf)):
            return shape
    return None


def interface_commands(plan: Plan) -> list[tuple[str, str, list[str]]]:
    """(node, interface, tc batch lines) for both ends of every shaped link."""
    out = []
    for link, shape in link_shapes(plan):
        for node, intf in ((link.a, link.a_intf), (link.b, link.b_intf)):
            out.append((node, intf, shape_commands(intf, shape.bw_mbit, shape.delay_ms, shape.loss_pct,
                                                   shape.jitter_ms)))
    return out


def expected_qdiscs(cmds: list[str]) -> list[str]:
    """The qdisc kinds a list of tc lines adds (what ``tc qdisc show`` must list)."""
    return [c.split(" handle ")[1].split()[1] for c in cmds if c.startswith("qdisc add")]


def verify_shaping(net, plan: Plan) -> None:
    """Read back the qdiscs of every shaped host interface; raise if one is missing."""
    want: dict[str, list[tuple[str, list[str]]]] = {}
    for node, intf, cmds in interface_commands(plan):
        if node in plan.hosts:
            want.setdefault(node, []).append((intf, expected_qdiscs(cmds)))
    for name in want:
        net[name].sendCmd("tc qdisc show")
    missing = []
    for name, intfs in want.items():
        out = net[name].waitOutput()
        for intf, kinds in intfs:
            lines = [l for l in out.splitlines() if f" dev {intf} " in l + " "]
            for kind in kinds:
                if not any(f"qdisc {kind} " in l for l in lines):
                    missing.append(f"{intf}: no {kind}")
    if missing:
        raise ShapingError("link parameters did not take effect: " + ", ".join(missing[:10]))
