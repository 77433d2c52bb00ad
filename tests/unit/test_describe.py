"""The describe tables and the diagram."""

from __future__ import annotations

import io

from rich.console import Console

from topologies.describe import COLLAPSE_SLOTS_ABOVE, _diagram_graph, draw_png, print_description
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec


def test_tables_name_every_host_pair_and_network():
    plan = build_plan(DeploymentSpec())
    buf = io.StringIO()
    print_description(plan, console=Console(file=buf, width=200))
    text = buf.getvalue()
    for name in list(plan.hosts) + list(plan.networks):
        assert name in text
    for pair in plan.pairs:
        assert pair.vip in text
    assert "27 hosts, 15 switches, 53 links" in text


def test_png_is_written(tmp_path):
    path = draw_png(build_plan(DeploymentSpec()), tmp_path / "d.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_large_plans_collapse_slots():
    plan = build_plan(DeploymentSpec(clusters=4, ncs_per_cluster=16))
    assert len(plan.hosts) > COLLAPSE_SLOTS_ABOVE
    g, layers = _diagram_graph(plan)
    assert not any(n in g for n in (h.name for h in plan.hosts_by_role("slot")))
    assert sum(1 for n in g if n.endswith("2 slots")) == 64
    assert set(layers) == set(g.nodes)


def test_host_tagging_draws_the_slots_under_their_nc(tmp_path):
    spec = dict(sdn=False, vlan_tagging="host")
    plan = build_plan(DeploymentSpec(**spec))
    assert draw_png(plan, tmp_path / "d.png").stat().st_size > 20_000
    big = build_plan(DeploymentSpec(clusters=4, ncs_per_cluster=16, **spec))
    g, _ = _diagram_graph(big)
    assert set(g.neighbors("c1n1: 2 slots")) == {"c1n1"}  # wired to the NC, not to its bridge


def test_edge_draws_each_nc_bridges_uplink(tmp_path):
    plan = build_plan(DeploymentSpec(mode="EDGE"))
    g, _ = _diagram_graph(plan)
    uplinks = [(u, v) for u, v in g.edges if u in plan.switches and v in plan.switches
               and plan.switches[u].network != plan.switches[v].network]
    assert sorted(v if "br" in v else u for u, v in uplinks) == ["br1n1", "br1n2", "br2n1", "br2n2"]
    assert draw_png(plan, tmp_path / "d.png").stat().st_size > 20_000
