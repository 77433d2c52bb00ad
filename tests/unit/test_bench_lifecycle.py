"""``eucalab bench lifecycle`` on a small scale: real CLC and CC processes on loopback."""

from __future__ import annotations

import pytest

from experiments.bench.lifecycle import measure

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


def test_terminated_instances_are_retired_while_lifecycles_go_on():
    # The CLC retires every 20 sync rounds (2 s): a run done sooner is given time for one pass.
    rows = measure(lifecycles=96, batch=8, retention_s=0.3, checkpoints=(16, 96), settle_s=15)
    assert [r["lifecycles"] for r in rows] == [16, 96]
    last = rows[-1]
    # 96 instances came and went; what the CLC and the CC still hold is what ended within
    # the retention, not all of them.
    assert last["cc_instances"] < 96 and last["clc_instances"] < 96
    assert last["cc_view_bytes"] > 0 and last["clc_probes"] > 0 and last["cc_probes"] > 0
    assert all(r["clc_stall_p99_ms"] > 0 and r["cc_stall_p99_ms"] > 0 for r in rows)
