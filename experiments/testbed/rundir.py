"""Run directories and the registry of live runs.

Every run writes into one directory, ``results/<UTC timestamp>-<name>/``:

    spec.yaml          the deployment spec as run
    endpoints.json     service URLs through their virtual IPs
    credentials        the admin account's keys (AWS credentials-file format)
    created.json       what the run created (bridges, interfaces, PIDs), for cleanup
    events.jsonl       the driver's own events (network up, process start/exit, faults)
    hosts/<host>/      config, data/, events.jsonl, stdout.log, pid

and registers itself in ``/run/eucalab/runs/`` so that ``eucalab cleanup`` can find
and finish a run whose driver was killed, wherever its directory is.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from components.common.events import EventLog
from components.common.procs import process_start_time  # noqa: F401 (the testbed's name for it)

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "results"
REGISTRY = Path(os.environ.get("EUCALAB_REGISTRY", "/run/eucalab/runs"))


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def new_run_dir(name: str, root: Path | None = None) -> Path:
    """A fresh, unique run directory under ``root`` (default: results/)."""
    root = Path(root) if root else RESULTS
    base = root / f"{utc_stamp()}-{name}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class EventWriter(EventLog):
    """The driver's JSON-lines event log: the components' writer, as host ``driver``."""

    def __init__(self, path: Path, host: str = "driver", component: str = "eucalab"):
        super().__init__(path, host, component)


def driver_alive(record: dict) -> bool:
    """Whether the driver a registry record names still runs (its PID with the same start time)."""
    driver = record.get("driver_pid")
    start = process_start_time(driver) if driver else None
    return start is not None and start == record.get("driver_start")


def registry_entries() -> list[Path]:
    if not REGISTRY.is_dir():
        return []
    return sorted(REGISTRY.glob("*.json"))
