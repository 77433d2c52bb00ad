"""``eucalab describe``: a plan as tables, and as a diagram drawn with networkx + matplotlib."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx

from .plan import Plan

ROLE_COLOURS = {
    "user": "#9e9e9e", "external": "#9e9e9e", "gateway": "#455a64",
    "clc": "#1565c0", "walrus": "#6a1b9a", "cc": "#2e7d32", "sc": "#ef6c00",
    "nc": "#00838f", "slot": "#b2dfdb", "slots": "#b2dfdb",
    "core": "#263238", "access": "#546e7a", "ncbridge": "#78909c",
}
# Above this many hosts the diagram shows one "N slots" node per NC.
COLLAPSE_SLOTS_ABOVE = 120


def print_description(plan: Plan, console=None) -> None:
    """Print networks, hosts, HA pairs and arbitrators as tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(140, Console().width))
    spec = plan.spec
    console.print(f"[bold]{spec.name}[/]: {spec.clusters} cluster(s) x {spec.ncs_per_cluster} NC(s) x "
                  f"{spec.vm_slots_per_nc} VM slot(s), {spec.mode.value}; {len(plan.hosts)} hosts, "
                  f"{len(plan.switches)} switches, {len(plan.links)} links")

    t = Table(title="networks")
    for col in ("network", "kind", "subnet", "router", "switches"):
        t.add_column(col)
    for net in plan.networks.values():
        switches = [s.name for s in plan.switches.values() if s.network == net.name]
        t.add_row(net.name, net.kind, net.subnet, net.router or "-",
                  ", ".join(switches) if switches else "(point-to-point link)")
    console.print(t)

    t = Table(title="hosts")
    for col in ("host", "role", "cluster", "HA", "interfaces", "default route", "routes"):
        t.add_column(col)
    for h in plan.hosts.values():
        intfs = "\n".join(f"{i.name} {i.ip or '(idle slot)'}" for i in h.interfaces)
        routes = "\n".join(f"{d} via {v}" for d, v in h.routes) or "-"
        t.add_row(h.name, h.role, str(h.cluster or "-"), h.ha_role or "-", intfs,
                  h.default_route or "-", routes)
    console.print(t)

    t = Table(title="services and HA pairs")
    for col in ("service", "primary", "secondary", "virtual IP", "private VIP", "port", "heartbeat"):
        t.add_column(col)
    for p in plan.pairs:
        t.add_row(p.name, p.primary, p.secondary or "- (no HA)", p.vip, p.private_vip or "-",
                  str(p.port), p.heartbeat_network or "-")
    console.print(t)

    if plan.arbitrators:
        t = Table(title="arbitrators")
        for col in ("arbitrator", "host", "pings", "address"):
            t.add_column(col)
        for a in plan.arbitrators:
            t.add_row(a.name, a.host, a.target, a.target_ip)
        console.print(t)
    endpoints = plan.endpoints()
    console.print(f"endpoints: CLC {endpoints['clc']}  Walrus {endpoints['walrus']}")


def _diagram_graph(plan: Plan) -> tuple[nx.Graph, dict[str, int]]:
    """The plan's graph with a layer per node; slots collapsed for large plans."""
    g = plan.graph()
    collapse = len(plan.hosts) > COLLAPSE_SLOTS_ABOVE
    if collapse:
        for nc in plan.hosts_by_role("nc"):
            slots = plan.slots_of(nc.name)
            if not slots:
                continue
            bridge = next(iter(g.neighbors(nc.name)))
            g.remove_nodes_from(s.name for s in slots)
            node = f"{nc.name}: {len(slots)} slots"
            g.add_node(node, kind="host", role="slots", cluster=nc.cluster, ha_role=None)
            g.add_edge(bridge, node, network="private")
    layer_of_role = {"user": 0, "external": 0, "gateway": 1, "clc": 4, "walrus": 4, "cc": 4, "sc": 4,
                     "nc": 7, "slot": 8, "slots": 8}
    layers = {}
    for node, data in g.nodes(data=True):
        if data["kind"] == "host":
            layers[node] = layer_of_role[data["role"]]
        else:
            sw = plan.switches[node]
            net = plan.networks[sw.network]
            if net.kind in ("user", "external"):
                layers[node] = 0.5
            elif net.kind == "cloud":
                layers[node] = 2 if sw.tier == "core" else 3
            else:
                layers[node] = {"access": 5, "core": 5.6, "ncbridge": 6.3}[sw.tier]
    return g, layers


def draw_png(plan: Plan, path: str | Path) -> Path:
    """Draw the deployment: tiers top to bottom, coloured by role, secondaries hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = Path(path)
    g, layers = _diagram_graph(plan)
    # Order nodes within a layer by cluster, then name, so clusters stay together.
    by_layer: dict[float, list[str]] = {}
    for node in g.nodes:
        by_layer.setdefault(layers[node], []).append(node)

    def sort_key(node):
        data = g.nodes[node]
        cluster = data.get("cluster")
        if cluster is None and data["kind"] == "switch":
            net = plan.networks[plan.switches[node].network]
            cluster = net.cluster
        natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", node[len(plan.tag):]
                                                                  if data["kind"] == "switch" else node)]
        return (cluster or 0, natural)

    pos = {}
    width = max(len(v) for v in by_layer.values())
    for layer, nodes in by_layer.items():
        nodes.sort(key=sort_key)
        n = len(nodes)
        for i, node in enumerate(nodes):
            pos[node] = ((i + 0.5) * width / n, -layer)

    fig_w = min(40, max(12, width * 0.55))
    fig, ax = plt.subplots(figsize=(fig_w, 9))
    hb = [(u, v) for u, v, d in g.edges(data=True) if plan.networks.get(d["network"]) is not None
          and plan.networks[d["network"]].kind == "heartbeat"]
    other = [e for e in g.edges if e not in hb and (e[1], e[0]) not in hb]
    nx.draw_networkx_edges(g, pos, edgelist=other, ax=ax, edge_color="#90a4ae", width=1.0)
    nx.draw_networkx_edges(g, pos, edgelist=hb, ax=ax, edge_color="#c62828", width=1.4, style="dashed",
                           connectionstyle="arc3,rad=0.25", arrows=True, arrowstyle="-")
    for node, data in g.nodes(data=True):
        role = data["role"]
        colour = ROLE_COLOURS.get(role, "#bdbdbd")
        shape = "s" if data["kind"] == "switch" else "o"
        size = 220 if data["kind"] == "switch" else 520
        secondary = data.get("ha_role") == "secondary"
        ax.scatter(*pos[node], s=size, marker=shape, c=colour, edgecolors="#b71c1c" if secondary else "black",
                   linewidths=2.2 if secondary else 0.6, hatch="////" if secondary else None, zorder=3)
        label = node if data["kind"] == "host" else node[len(plan.tag):]
        ax.annotate(label, pos[node], textcoords="offset points", xytext=(0, -17 if shape == "o" else -12),
                    ha="center", fontsize=7 if len(g) < 80 else 5, zorder=4)
    legend = [Patch(color=ROLE_COLOURS[r], label=label) for r, label in (
        ("clc", "CLC"), ("walrus", "Walrus"), ("cc", "CC"), ("sc", "SC"), ("nc", "NC"),
        ("slot", "VM slot"), ("gateway", "border gateway"), ("user", "user / external site"),
        ("access", "switch"))]
    legend += [Patch(facecolor="white", edgecolor="#b71c1c", hatch="////", label="secondary (HA)"),
               Line2D([0], [0], color="#c62828", linestyle="--", label="heartbeat link")]
    ax.legend(handles=legend, loc="upper left", fontsize=8, framealpha=0.9, ncol=2)
    spec = plan.spec
    ax.set_title(f"eucalab deployment '{spec.name}': {spec.clusters} cluster(s) x {spec.ncs_per_cluster} NC(s) "
                 f"x {spec.vm_slots_per_nc} slot(s), {spec.mode.value} networking", fontsize=12)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
