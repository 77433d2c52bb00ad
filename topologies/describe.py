"""``eucalab describe``: a plan as tables, and as a diagram drawn with networkx + matplotlib.

    print_description(plan)                  # rich tables on the terminal
    draw_png(plan, "deployment.png")         # layered deployment diagram

Both only read the plan (topologies/plan.py); neither needs root or Mininet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import networkx as nx

from components.common.modes import features

from .plan import Plan
from .spec import COMPONENT_KINDS

ROLE_COLOURS = {
    "user": "#9e9e9e", "external": "#9e9e9e", "gateway": "#455a64",
    "clc": "#1565c0", "walrus": "#6a1b9a", "cc": "#2e7d32", "sc": "#ef6c00",
    "nc": "#00838f", "slot": "#b2dfdb", "slots": "#b2dfdb",
    "core": "#263238", "access": "#607d8b", "ncbridge": "#90a4ae",
}
# Links coloured by the kind of network they belong to.
NETWORK_COLOURS = {"user": "#9e9e9e", "external": "#9e9e9e", "cloud": "#5c6bc0",
                   "private": "#a1887f", "heartbeat": "#c62828"}
SECONDARY_EDGE = "#b71c1c"
# Above this many hosts the diagram shows one "N slots" node per NC.
COLLAPSE_SLOTS_ABOVE = 120

# Vertical position (top to bottom) of each tier of the diagram.
_LAYER = {
    "user": 0.0, "external": 0.0, "site-switch": 0.6, "gateway": 1.3,
    "cloud-core": 2.2, "cloud-access": 3.0,
    "clc": 4.0, "walrus": 4.0, "cc": 4.0, "sc": 4.0,
    "cluster-access": 5.0, "cluster-core": 5.7, "ncbridge": 6.4,
    "nc": 7.2, "slot": 8.2, "slots": 8.2,
}
_TIER_LABELS = (
    (0.0, "users, external site"), (1.3, "border gateway"), (2.6, "cloud network"),
    (4.0, "CLC, Walrus, CC, SC"), (5.35, "cluster networks"), (6.4, "NC bridges"),
    (7.2, "node controllers"), (8.2, "VM slots"),
)


# -- tables ---------------------------------------------------------------------------

def summary_line(plan: Plan) -> str:
    """One line: the deployment's size and mode."""
    spec = plan.spec
    ha = [k for k in COMPONENT_KINDS if spec.ha.enabled(k)]
    return (f"{spec.name}: {spec.clusters} cluster(s) x {spec.ncs_per_cluster} NC(s) x "
            f"{spec.vm_slots_per_nc} VM slot(s), {spec.mode.value} networking; "
            f"{len(plan.hosts)} hosts, {len(plan.switches)} switches, {len(plan.links)} links; "
            f"HA: {', '.join(ha) if ha else 'off'}")


def describe_table(plan: Plan) -> list[Any]:
    """The plan as rich renderables: summary, networks, hosts, HA pairs, arbitrators, endpoints."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = [Text(summary_line(plan), style="bold")]

    mode = plan.spec.mode.value
    t = Table(title=f"{mode} networking: what the cloud offers (components/common/modes.py)")
    for col in ("feature", mode):
        t.add_column(col)
    for name, value in features(mode).rows():
        t.add_row(name, value)
    out.append(t)

    t = Table(title="networks")
    for col in ("network", "kind", "subnet", "router", "switches"):
        t.add_column(col)
    for net in plan.networks.values():
        switches = [s.name for s in plan.switches.values() if s.network == net.name]
        t.add_row(net.name, net.kind, net.subnet, net.router or "-",
                  ", ".join(switches) if switches else "(point-to-point link)")
    out.append(t)

    t = Table(title="hosts")
    for col in ("host", "role", "cluster", "HA role", "interfaces (network: address)", "default route",
                "extra routes"):
        t.add_column(col)
    for h in plan.hosts.values():
        intfs = "\n".join(f"{i.name} {i.network}: {i.ip or '(unaddressed until an instance boots)'}"
                          for i in h.interfaces)
        routes = "\n".join(f"{dest} via {via}" for dest, via in h.routes) or "-"
        role = h.role + (" (forwarding)" if h.forwarding else "")
        t.add_row(h.name, role, "-" if h.cluster is None else str(h.cluster), h.ha_role or "-", intfs,
                  h.default_route or "-", routes)
    out.append(t)

    t = Table(title="services and HA pairs")
    for col in ("service", "primary", "secondary", "service VIP", "private VIP", "heartbeat network", "port"):
        t.add_column(col)
    for p in plan.pairs:
        hb = "-"
        if p.heartbeat_network:
            hb = f"{p.heartbeat_network} {plan.networks[p.heartbeat_network].subnet}"
        t.add_row(p.name, p.primary, p.secondary or "- (no HA)", p.vip, p.private_vip or "-", hb, str(p.port))
    out.append(t)

    if plan.arbitrators:
        t = Table(title="arbitrators")
        for col in ("arbitrator", "host", "target", "target IP"):
            t.add_column(col)
        for a in plan.arbitrators:
            t.add_row(a.name, a.host, a.target, a.target_ip)
        out.append(t)
    else:
        out.append(Text("arbitrators: none (no HA pairs, or arbitrators.per_host is 0)"))

    if len(plan.spec.servers) > 1:
        out.append(servers_table(plan))

    endpoints = plan.endpoints()
    out.append(Text(f"endpoints: CLC {endpoints['clc']}  Walrus {endpoints['walrus']}"))
    return out


def servers_table(plan: Plan) -> Any:
    """Per server: its hosts and switches, and the links that leave it through a tunnel."""
    from rich.table import Table

    from .placement import place

    placement = place(plan)
    t = Table(title=f"servers ({plan.spec.placement}{', split pairs' if plan.spec.split_pairs else ''}): "
                    f"{len(placement.tunnels)} link(s) cross as tunnels")
    for col in ("server", "hosts", "switches", "tunnels (key: link)"):
        t.add_column(col)
    for server in placement.servers:
        nodes = placement.on(server)
        tunnels = [f"{tn.key}: {tn.link.a}-{tn.link.b}" for tn in placement.tunnels if server in tn.servers]
        t.add_row(server, str(sum(n in plan.hosts for n in nodes)), ", ".join(n for n in nodes if n in plan.switches),
                  "\n".join(tunnels) or "-")
    return t


def print_description(plan: Plan, console=None) -> None:
    """Print networks, hosts, HA pairs and arbitrators as tables."""
    from rich.console import Console

    console = console or Console(width=max(140, Console().width))
    for renderable in describe_table(plan):
        console.print(renderable)


# -- diagram --------------------------------------------------------------------------

def _diagram_graph(plan: Plan) -> tuple[nx.Graph, dict[str, float]]:
    """The plan's graph with a layer per node; slots collapsed for large plans."""
    g = plan.graph()
    for node, data in g.nodes(data=True):
        data["label"] = node[len(plan.tag):] if data["kind"] == "switch" else node
    if len(plan.hosts) > COLLAPSE_SLOTS_ABOVE:
        for nc in plan.hosts_by_role("nc"):
            slots = plan.slots_of(nc.name)
            if not slots:
                continue
            bridge = next(n for n in g.neighbors(nc.name) if n in plan.switches)
            g.remove_nodes_from(s.name for s in slots)
            node = f"{nc.name}: {len(slots)} slots"
            g.add_node(node, kind="host", role="slots", cluster=nc.cluster, ha_role=None,
                       label=f"{len(slots)} slots", nc=nc.name)
            # Host tagging wires the slots to the NC itself.
            g.add_edge(nc.name if plan.nc_port(slots[0].name) else bridge, node,
                       network=plan.switches[bridge].network)
    layers = {}
    for node, data in g.nodes(data=True):
        if data["kind"] == "host":
            layers[node] = _LAYER[data["role"]]
            continue
        sw = plan.switches[node]
        kind = plan.networks[sw.network].kind
        if kind in ("user", "external"):
            layers[node] = _LAYER["site-switch"]
        elif kind == "cloud":
            layers[node] = _LAYER["cloud-core" if sw.tier == "core" else "cloud-access"]
        else:
            layers[node] = _LAYER[{"access": "cluster-access", "core": "cluster-core",
                                   "ncbridge": "ncbridge"}[sw.tier]]
    return g, layers


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _switches(plan: Plan, network: str, tier: str) -> list[str]:
    return sorted((s.name for s in plan.switches.values() if s.network == network and s.tier == tier),
                  key=_natural)


def _layout(plan: Plan, g: nx.Graph) -> tuple[dict[str, tuple[float, float]], float, list[tuple]]:
    """Column positions: a band for CLC/Walrus, then one band per cluster.

    Inside a cluster band each NC gets its own columns (its slots either side of it, the
    NC's column left free below it so no slot link runs through the NC), the bridge sits
    above its NC, the cluster core above the middle of the band. Returns positions
    (x in columns, y = -layer), the total width in columns and the cluster bands.
    """
    pos: dict[str, tuple[float, float]] = {}

    def switches(network: str, tier: str) -> list[str]:
        return _switches(plan, network, tier)

    def spread(nodes: list[str], start: float, width: float, layer: float) -> None:
        for i, node in enumerate(nodes):
            pos[node] = (start + (i + 0.5) * width / len(nodes), -layer)

    x = 0.0
    cloud_hosts = sorted((h.name for h in plan.hosts.values() if h.role in ("clc", "walrus")), key=_natural)
    spread(cloud_hosts, x, 1.5 * len(cloud_hosts), _LAYER["clc"])
    x += 1.5 * len(cloud_hosts) + 1
    bands = []
    for k in range(1, plan.spec.clusters + 1):
        start = x
        for nc in sorted((h.name for h in plan.hosts_by_role("nc") if h.cluster == k), key=_natural):
            bridge = next(n for n in g.neighbors(nc) if n in plan.switches)
            items = sorted((n for n in {*g.neighbors(bridge), *g.neighbors(nc)}
                            if g.nodes[n].get("role") in ("slot", "slots")), key=_natural)
            nc_col = len(items) // 2
            columns = items[:nc_col] + [nc] + items[nc_col:]
            for i, node in enumerate(columns):
                pos[node] = (x + i + 0.5, -_LAYER["slot"])
            pos[nc] = (x + nc_col + 0.5, -_LAYER["nc"])
            pos[bridge] = (pos[nc][0], -_LAYER["ncbridge"])
            x += len(columns)
        components = sorted((h.name for h in plan.hosts.values() if h.role in ("cc", "sc") and h.cluster == k),
                            key=_natural)
        width = max(x - start, len(components))
        x = start + width
        # CC and SC members close together over the middle of the band: short heartbeat arcs.
        span = min(width, 2.0 * len(components))
        middle = start + width / 2
        spread(components, middle - span / 2, span, _LAYER["cc"])
        quarter = max(span / 4, 0.75)
        net = plan.networks[f"priv{k}"]
        for core in switches(net.name, "core"):
            pos[core] = (middle, -_LAYER["cluster-core"])
        spread(switches(net.name, "access"), middle - 2 * quarter, 4 * quarter, _LAYER["cluster-access"])
        bands.append((k, start, x, net))
        x += 1
    width = x - 1
    middle = width / 2
    site = max(2.0, width / 8)
    pos["gw"] = (middle, -_LAYER["gateway"])
    for core in switches("cloud", "core"):
        pos[core] = (middle, -_LAYER["cloud-core"])
    spread(switches("cloud", "access"), 0, width, _LAYER["cloud-access"])
    for side, network in ((-1, "external"), (1, "user")):
        for host in (h.name for h in plan.hosts.values() if h.role == network):
            pos[host] = (middle + side * site, -_LAYER[network])
        for sw in switches(network, "core"):
            pos[sw] = (middle + side * site, -_LAYER["site-switch"])
    missing = set(g.nodes) - set(pos)
    if missing:
        raise ValueError(f"diagram layout has no place for {sorted(missing)[:5]}")
    return pos, width, bands


def draw_png(plan: Plan, path: str | Path) -> Path:
    """Draw the deployment: tiers top to bottom, coloured by role, secondaries hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    path = Path(path)
    g, _ = _diagram_graph(plan)
    pos, width, bands = _layout(plan, g)

    fig_w = min(48.0, max(13.0, width * 0.5 + 4))
    pitch = (fig_w - 4) / max(width, 1)  # inches per column
    host_size = min(520.0, (pitch * 72 * 0.7) ** 2)
    switch_size = host_size * 0.45
    font = 7.5 if pitch >= 0.45 else 6 if pitch >= 0.3 else 5 if pitch >= 0.2 else 0
    fig, ax = plt.subplots(figsize=(fig_w, 10.5))

    # Cluster bands, drawn first so everything else sits on top.
    for k, start, end, net in bands:
        ax.add_patch(Rectangle((start - 0.15, -9.3), end - start + 0.3, 5.75, facecolor="#efebe9",
                               edgecolor="#d7ccc8", zorder=0))
        router = "CC private VIP" if plan.spec.mode.private_cluster_network else "gateway"
        if plan.spec.mode.nc_enforced:
            router += ")\n(groups, elastic IPs: each NC bridge"
        ax.text((start + end) / 2, -9.22, f"cluster {k}: {net.name} {net.subnet}\nrouter {net.router} ({router})",
                fontsize=max(font, 6), va="bottom", ha="center", color="#5d4037", zorder=1)

    edges: dict[tuple[str, bool], list] = {}
    for u, v, data in g.edges(data=True):
        kind = plan.networks[data["network"]].kind
        trunk = u in plan.switches and v in plan.switches
        edges.setdefault((kind, trunk), []).append((u, v))
    # SYSTEM/STATIC: the gateway's links down to the cluster networks are bowed so they
    # cannot be mistaken for trunks through the cloud switches they pass.
    routed = [(u, v) for u, v in edges.get(("private", False), []) if "gw" in (u, v)]
    if routed:
        edges[("private", False)] = [e for e in edges[("private", False)] if e not in routed]
        nx.draw_networkx_edges(g, pos, edgelist=routed, ax=ax, edge_color=NETWORK_COLOURS["private"], width=1.4,
                               connectionstyle="arc3,rad=0.25", arrows=True, arrowstyle="-", node_size=host_size)
    # EDGE: each NC bridge's uplink to the cloud network, bowed and dashed: it carries
    # elastic IPs only, translated by the bridge's flows, and is no trunk of either network.
    uplinks = [(u, v) for u, v in edges.get(("cloud", True), [])
               if plan.switches[u].network != plan.switches[v].network]
    if uplinks:
        edges[("cloud", True)] = [e for e in edges[("cloud", True)] if e not in uplinks]
        nx.draw_networkx_edges(g, pos, edgelist=uplinks, ax=ax, edge_color=NETWORK_COLOURS["cloud"], width=1.2,
                               style="dotted", connectionstyle="arc3,rad=-0.15", arrows=True, arrowstyle="-",
                               node_size=switch_size)
    for (kind, trunk), edgelist in edges.items():
        if kind == "heartbeat":
            nx.draw_networkx_edges(g, pos, edgelist=edgelist, ax=ax, edge_color=NETWORK_COLOURS[kind], width=1.6,
                                   style="dashed", connectionstyle="arc3,rad=0.3", arrows=True, arrowstyle="-",
                                   node_size=host_size)
        else:
            nx.draw_networkx_edges(g, pos, edgelist=edgelist, ax=ax, edge_color=NETWORK_COLOURS[kind],
                                   width=2.2 if trunk else 1.0, alpha=0.85)

    for node, data in g.nodes(data=True):
        switch = data["kind"] == "switch"
        colour = ROLE_COLOURS[data["role"]]
        secondary = data.get("ha_role") == "secondary"
        ax.scatter(*pos[node], s=switch_size if switch else host_size, marker="s" if switch else "o", c=colour,
                   edgecolors=SECONDARY_EDGE if secondary else "black", linewidths=2.2 if secondary else 0.6,
                   hatch="////" if secondary else None, zorder=3)
        if font and (pitch >= 0.2 or data["role"] not in ("slot", "slots", "ncbridge")):
            offset = -(host_size ** 0.5) / 2 - 2 if not switch else -(switch_size ** 0.5) / 2 - 2
            ax.annotate(data["label"], pos[node], textcoords="offset points", xytext=(0, offset),
                        ha="center", va="top", fontsize=font, zorder=4,
                        bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75})
    cloud = plan.networks["cloud"]
    ax.annotate(f"cloud network {cloud.subnet}", pos[_switches(plan, "cloud", "core")[0]],
                textcoords="offset points", xytext=(10, 4), fontsize=max(font, 6), color=NETWORK_COLOURS["cloud"])

    for layer, text in _TIER_LABELS:
        ax.text(-0.3, -layer, text, ha="right", va="center", fontsize=8, color="#616161", style="italic")

    legend = [Patch(facecolor=ROLE_COLOURS[r], edgecolor="black", label=label) for r, label in (
        ("clc", "CLC"), ("walrus", "Walrus"), ("cc", "CC"), ("sc", "SC"), ("nc", "NC"),
        ("slot", "VM slot"), ("gateway", "border gateway"), ("user", "user / external site"))]
    legend += [Line2D([0], [0], marker="s", linestyle="", markerfacecolor=ROLE_COLOURS[t],
                      markeredgecolor="black", label=label)
               for t, label in (("core", "core switch"), ("access", "access switch"), ("ncbridge", "NC bridge"))]
    ha = any(p.secondary for p in plan.pairs)
    if ha:
        legend += [Patch(facecolor="white", edgecolor="black", label="primary (or no HA): solid"),
                   Patch(facecolor="white", edgecolor=SECONDARY_EDGE, hatch="////", linewidth=2,
                         label="secondary: hatched, red edge")]
    legend += [Line2D([0], [0], color=NETWORK_COLOURS["cloud"], label="cloud network link"),
               Line2D([0], [0], color=NETWORK_COLOURS["private"], label="cluster network link"),
               Line2D([0], [0], color="#616161", linewidth=2.2, label="trunk between switches")]
    if ha:
        legend.append(Line2D([0], [0], color=NETWORK_COLOURS["heartbeat"], linestyle="--", label="heartbeat link"))
    if uplinks:
        legend.append(Line2D([0], [0], color=NETWORK_COLOURS["cloud"], linestyle=":",
                             label="EDGE: NC bridge uplink (elastic IPs)"))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, framealpha=0.95)
    spec = plan.spec
    ax.set_title(f"eucalab deployment '{spec.name}', {spec.mode.value} networking\n"
                 f"{summary_line(plan).split(': ', 1)[1].replace(f', {spec.mode.value} networking', '')}",
                 fontsize=12)
    ax.set_xlim(-0.3 - 14 * 8 / 72 / pitch, width + 0.5)
    ax.set_ylim(-9.4, 0.5)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110 if fig_w <= 40 else 90)
    plt.close(fig)
    return path
