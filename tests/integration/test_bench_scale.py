"""The scale benchmark end to end at a small size (2 clusters x 2 NCs x 2 VM slots): every
figure is measured and printed with its target, the instances all ran, every target's
failover trial was judged, at scale and on the default deployment, and nothing it started
outlives it. The full size (topologies/specs/xl.yaml) is a benchmark run by hand (README)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from experiments.bench.scale import TARGETS_ORDER, run
from topologies.network import existing_bridges


@pytest.fixture
def short_dir():
    """A results root short enough for the run's control socket (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="scale", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_scale_bench_measures_every_figure_at_a_small_size(short_dir, capsys):
    tmp_path = short_dir
    before = set(existing_bridges())
    # Two of everything the bench scales (clusters, NCs per cluster, slots per NC), and more
    # instances than one batch: each figure still has its phase to measure.
    rc = run(size=(2, 2, 2), instances=6, batch=2, trials=1, results_root=tmp_path, in_flight=4)
    assert rc == 0
    out = capsys.readouterr().out
    bench = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH "))[len("BENCH "):])
    rows = {r["figure"].split(" (")[0]: r for r in bench["rows"]}
    for name in ("network up", "network down", "services up", "peak memory", "6/6 instances running",
                 *(f"{t.upper()} outage p50" for t in TARGETS_ORDER)):
        assert name in rows, (name, list(rows))
        assert rows[name]["eucalab"] != "-", rows[name]
        assert rows[name]["target"], rows[name]
    # Plain Mininet built the same network beside it.
    assert rows["network up"]["mininet"] != "-" and rows["peak memory"]["mininet"] != "-"

    saved = json.loads((tmp_path.glob("*-bench-scale-*").__next__() / "scale.json").read_text())
    fig = saved["figures"]
    assert fig["hosts"] == saved["mininet"]["hosts"] and fig["links"] == saved["mininet"]["links"]
    assert fig["ncs_running"] == fig["ncs"] == 4
    assert fig["as_planned"] == fig["members"] and not fig["not_as_planned"]
    assert fig["instances_running"] == 6 and fig["instances_failed"] == 0 and not fig["run_refused"]
    # Memory counts the driver and everything it started: far more than the driver alone.
    assert fig["peak"]["count"] > fig["hosts"] and fig["peak_total"] > fig["peak"]["driver"]
    for t in TARGETS_ORDER:  # one trial each (make run's faults), at scale and on the default deployment
        for side in (fig["outages"], saved["default"]):
            assert side[t]["trials"] == 1 and side[t]["p50"] is not None, (t, side)
    assert set(existing_bridges()) <= before  # nothing left behind
