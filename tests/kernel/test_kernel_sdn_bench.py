"""The SDN benchmark on the kernel datapath: routed (through the primary CC) against direct
throughput. It prints figures, indicative only under emulation; the test checks that the
benchmark ran through and that one switch holds exactly the flows the controller computes."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from experiments.bench import sdn as bench_sdn


def test_sdn_benchmark_runs_on_the_kernel_datapath():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench_sdn.run(setups=5, seconds=1, rounds=1) == 0
    text = out.getvalue()
    print(text)
    share = os.environ.get("EUCALAB_VM_OUT")
    if share:
        (Path(share) / "bench-sdn.txt").write_text(text)
    assert "OVS kernel datapath" in text
    ratio = re.search(r"routed through the CC (\d+) Mbit/s, ratio ([\d.]+)", text)
    assert ratio and float(ratio.group(1)) > 0, text
    held, wanted = re.search(r"br1n1 holds (\d+) flows, the computation wants (\d+)", text).groups()
    assert held == wanted, text
