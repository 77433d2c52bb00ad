"""A deployment's records: its run directory's files (spec, endpoints, credentials,
created.json) and its entry in the registry of live runs, from which ``eucalab cleanup``
finishes a run whose driver was killed (``cleanup_runs``)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from topologies.created import Created, kill_pids, teardown

from . import rundir as rd
from . import vswitchd

if TYPE_CHECKING:
    from .deployment import Deployment


class RunRecords:
    """The run directory of one deployment and its registry entry."""

    def __init__(self, dep: "Deployment"):
        self.dep = dep
        self.registry_file: Path | None = None

    def open(self, run_dir: Path | None) -> Path:
        """Make the run directory (``run_dir``, or a new one under results/) and write what
        is known before the network exists: spec, endpoints, credentials."""
        dep = self.dep
        if run_dir is None:
            path = rd.new_run_dir(dep.name)
        else:
            path = run_dir
            path.mkdir(parents=True, exist_ok=True)
        dep.run_dir = path
        dep.events = rd.EventWriter(path / "events.jsonl")
        (path / "spec.yaml").write_text(dep.spec.to_yaml())
        rd.write_json(path / "endpoints.json", dep.plan.endpoints())
        dep.configs.write_credentials()
        return path

    def record(self, created: Created) -> None:
        """Write what exists now to created.json and the registry entry."""
        dep = self.dep
        record = {
            "run_dir": str(dep.run_dir),
            "driver_pid": os.getpid(),
            "driver_start": rd.process_start_time(os.getpid()),
            "created": asdict(created),
            "shell_start": {str(pid): rd.process_start_time(pid) for pid in created.shell_pids},
            # Each host's shell: `eucalab services` acts from the user host's namespace.
            "hosts": {h.name: h.pid for h in dep.net.hosts} if dep.net is not None else {},
            "processes": [{"host": p.host, "label": p.label, "pid": p.pid, "start_time": p.start_time,
                           **({"server": p.remote.server} if p.remote else {})}
                          for p in dep.processes.values()] + dep.controller_process.record_entry(),
        }
        rd.write_json(dep.run_dir / "created.json", record)
        if self.registry_file is None:
            rd.REGISTRY.mkdir(parents=True, exist_ok=True)
            self.registry_file = rd.REGISTRY / f"{dep.run_dir.name}-{os.getpid()}.json"
        rd.write_json(self.registry_file, record)

    def close(self) -> None:
        """The run is gone: its registry entry goes too."""
        if self.registry_file is not None:
            self.registry_file.unlink(missing_ok=True)
            self.registry_file = None


def cleanup_runs(force: bool = False) -> list[str]:
    """Finish runs whose driver died: kill their processes, delete their bridges and links.

    Only what a run recorded creating is touched; a PID is killed only if its start
    time still matches the record (so a reused PID is left alone).
    """
    report = []
    for entry in rd.registry_entries():
        try:
            record = json.loads(entry.read_text())
        except (OSError, json.JSONDecodeError):
            report.append(f"{entry.name}: unreadable record, left alone")
            continue
        if not force and rd.driver_alive(record):
            report.append(f"{record.get('run_dir')}: driver {record['driver_pid']} still running, left alone")
            continue
        if "vm_server" in record:  # the kernel-lane VM serving as a second server
            from .vm_server import cleanup_server

            report.append(f"{record.get('run_dir')}: VM server: {cleanup_server(record)}")
            entry.unlink(missing_ok=True)
            continue
        created = Created(**record.get("created", {}))
        # Only namespaces whose holder shell is still the recorded process are ours.
        live_shells = [pid for pid in created.shell_pids
                       if rd.process_start_time(pid) == record.get("shell_start", {}).get(str(pid))]
        if not live_shells:
            created.netns = []
        created.shell_pids = live_shells
        procs = [p["pid"] for p in record.get("processes", [])
                 if "server" not in p and rd.process_start_time(p["pid"]) == p.get("start_time")]
        kill_pids(procs)
        problems = teardown(created) + _remote_teardown(created.remote)
        entry.unlink(missing_ok=True)
        report.append(f"{record.get('run_dir')}: cleaned ({len(procs)} processes, "
                      f"{len(live_shells)} hosts, {len(created.bridges)} bridges)"
                      + (f"; problems: {'; '.join(problems)}" if problems else ""))
    restored = vswitchd.release()  # a run killed with SIGKILL left it raised
    if restored:
        report.append(restored)
    return report


def _remote_teardown(remote: dict[str, dict]) -> list[str]:
    """On each other server of a deployment over several, delete what the run recorded
    making there (its processes by pid and start time, bridges, ports, run directory),
    over the ssh command it recorded; never Mininet's ``mn -c``."""
    import subprocess

    from topologies.created import remote_teardown_line

    problems = []
    for server, made in remote.items():
        try:
            out = subprocess.run(list(made["ssh"]) + [remote_teardown_line(made)], capture_output=True,
                                 text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired, KeyError) as exc:
            problems.append(f"{server}: {exc}")
            continue
        if out.returncode != 0 or out.stdout.strip():
            problems.append(f"{server}: {(out.stdout + out.stderr).strip()[:300]}")
    return problems
