"""hademo: a test-only HTTP responder that embeds the HA agent (tests/integration/test_ha_agent.py).

It is no product component, so the deployment does not know it by name: ``start`` gives
it the configuration a component on that host would get and runs it as
``python -m tests.support.hademo``.
"""

from __future__ import annotations

import json
import sys

LABEL = "hademo"


def start(dep, host: str, timeout: float = 20.0):
    """Start hademo on a deployment's host with that host's component configuration (its
    pair, VIPs, arbitrators, heartbeat key); waits for its ``service.start``; returns the process."""
    pdir = dep.host_dir(host, LABEL)
    cfg = dep.component_config(LABEL, host)
    cfg["data_dir"], cfg["events_path"] = str(pdir / "data"), str(pdir / "events.jsonl")
    (pdir / "config").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    proc = dep.start(LABEL, host, label=LABEL,
                     argv=[sys.executable, "-m", "tests.support.hademo", "--config", str(pdir / "config")])
    dep.wait_event(proc, "service.start", timeout=timeout)
    return proc

