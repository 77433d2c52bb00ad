"""``eucalab services``: every component's service state, like euca-describe-services.

Read from the run directory alone (each process's event log), so it works from any
shell while a deployment runs, and afterwards on its results.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from components.common.events import read_events

from .rundir import RESULTS, registry_entries


def _live_run() -> Path | None:
    runs = []
    for entry in registry_entries():
        try:
            record = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        runs.append((entry.stat().st_mtime, Path(record["run_dir"])))
    if runs:
        return max(runs)[1]
    dirs = sorted((p for p in RESULTS.glob("*/") if (p / "hosts").is_dir() or (p / "deployment").is_dir()),
                  key=lambda p: p.stat().st_mtime)
    return dirs[-1] if dirs else None


def service_rows(run_dir: Path) -> list[dict]:
    if (run_dir / "deployment" / "hosts").is_dir():  # an experiment's run directory
        run_dir = run_dir / "deployment"
    rows = []
    for host_dir in sorted((run_dir / "hosts").glob("*")):
        events = read_events(host_dir / "events.jsonl")
        if not events:
            continue
        row = {"host": host_dir.name, "component": events[0]["component"], "state": None, "since": None,
               "epoch": None, "arbitrators": {}, "pid": None, "alive": False}
        for e in events:
            kind = e["event"]
            if kind == "service.start":
                row.update(state=e.get("state"), since=e["t_wall"], pid=e.get("pid"))
            elif kind == "state.change":
                row.update(state=e["to"], since=e["t_wall"], reason=e.get("reason"))
            elif kind == "ha.promote":
                row["epoch"] = e["epoch"]
            elif kind == "ha.start":
                row["epoch"] = row["epoch"] or e.get("epoch")
            elif kind in ("arbitrator.fail", "arbitrator.stop"):
                row["arbitrators"][e["arbitrator"]] = "failed" if kind == "arbitrator.fail" else "stopped"
            elif kind in ("arbitrator.recover", "arbitrator.start"):
                row["arbitrators"][e["arbitrator"]] = "ok"
            elif kind == "service.stop":
                row["state"] = "STOPPED"
        pid = row["pid"]
        row["alive"] = bool(pid) and os.path.exists(f"/proc/{pid}")
        if not row["alive"] and row["state"] not in ("STOPPED",):
            row["state"] = f"{row['state']} (process gone)"
        rows.append(row)
    return rows


def print_services(run_dir: str | None) -> int:
    from rich.console import Console
    from rich.table import Table

    path = Path(run_dir) if run_dir else _live_run()
    if path is None or not path.exists():
        raise SystemExit("eucalab services: no run directory found (give one)")
    table = Table(title=f"services of {path}")
    for col in ("SERVICE", "host", "state", "epoch", "since", "last transition", "arbitrators failed"):
        table.add_column(col)
    for r in service_rows(path):
        since = dt.datetime.fromtimestamp(r["since"]).strftime("%H:%M:%S.%f")[:-3] if r["since"] else "-"
        failed = [n for n, s in r["arbitrators"].items() if s != "ok"]
        colour = {"ENABLED": "green", "DISABLED": "cyan", "NOTREADY": "yellow"}.get(r["state"], "red")
        table.add_row(r["component"].upper(), r["host"], f"[{colour}]{r['state']}[/]", str(r["epoch"] or "-"),
                      since, r.get("reason") or "-", ", ".join(failed) or "none")
    Console(width=max(130, Console().width)).print(table)
    return 0
