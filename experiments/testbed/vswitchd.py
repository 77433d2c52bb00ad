"""ovs-vswitchd ahead of the emulated hosts on the CPU, while deployments run.

With the userspace datapath (no Open vSwitch kernel module) ovs-vswitchd's main thread
forwards every packet between the emulated hosts: the network shares the CPU with the
hosts on it. The HA members and the experiments' prober run at SCHED_FIFO 10 (heartbeats
must not starve); ovs-vswitchd, at the normal scheduler, then waits behind them, and the
wait counts as network latency, and in a failover as outage. A real switch does not queue
behind the servers it connects. So while a deployment on the userspace datapath runs,
every ovs-vswitchd thread runs at SCHED_FIFO ``PRIORITY``, above the hosts.

The scheduling the threads had before is written to ``SAVED`` before anything changes;
the last deployment to go puts it back (``release``), and ``eucalab cleanup`` does for a
run killed with SIGKILL. A restarted ovs-vswitchd (another PID or start time than the
record's) is left as it is: its scheduling is its own. With the kernel datapath the
kernel forwards and nothing is changed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from . import rundir as rd

log = logging.getLogger(__name__)

# Above the HA members and the prober (deployment.REALTIME_PRIORITY, 10).
PRIORITY = 20
SAVED = rd.REGISTRY.parent / "vswitchd-sched.json"
PIDFILE = Path(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")) / "ovs-vswitchd.pid"


def vswitchd_pid(pidfile: Path = PIDFILE) -> int | None:
    """ovs-vswitchd's PID, from its pidfile; None when it is not running."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if rd.process_start_time(pid) is not None else None


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def scheduling(tid: int) -> tuple[int, int]:
    """(policy, realtime priority) of a thread."""
    return os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority


def _load(saved: Path) -> dict | None:
    try:
        record = json.loads(saved.read_text())
        return record if isinstance(record, dict) and isinstance(record.get("threads"), dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def raise_priority(pid: int | None = None, priority: int = PRIORITY, saved: Path = SAVED) -> int | None:
    """Every thread of ovs-vswitchd (or of ``pid``) to SCHED_FIFO ``priority``, its former
    scheduling saved first (kept if already saved for this very process: another run
    raised it). The priority set, or None when there is nothing to raise or it failed
    (logged: the deployment runs on, its network only slower under load)."""
    pid = vswitchd_pid() if pid is None else pid
    start = rd.process_start_time(pid) if pid else None
    if start is None:
        return None
    record = _load(saved)
    fresh = record is None or record.get("pid") != pid or record.get("start_time") != start
    if fresh:
        try:
            record = {"pid": pid, "start_time": start,
                      "threads": {str(t): list(scheduling(t)) for t in threads(pid)}}
        except OSError as exc:
            log.warning("ovs-vswitchd %d: cannot read its scheduling (%s): left as it is", pid, exc)
            return None
        saved.parent.mkdir(parents=True, exist_ok=True)
        rd.write_json(saved, record)
    for t in threads(pid):
        try:
            os.sched_setscheduler(t, os.SCHED_FIFO, os.sched_param(priority))
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
        except OSError as exc:
            log.warning("ovs-vswitchd %d: no realtime priority (%s): the datapath may wait behind the hosts",
                        pid, exc)
            if fresh:
                restore(saved)  # what this call changed, as it was
            return None
    return priority


def restore(saved: Path = SAVED) -> str | None:
    """Put back the scheduling recorded in ``saved`` and remove the record. What was
    done, or None when there was no record."""
    record = _load(saved)
    if record is None:
        saved.unlink(missing_ok=True)
        return None
    pid = record.get("pid")
    try:
        if not isinstance(pid, int) or rd.process_start_time(pid) != record.get("start_time"):
            return f"ovs-vswitchd {pid}: no longer running, its scheduling record dropped"
        before = record["threads"]
        main = before.get(str(pid), [os.SCHED_OTHER, 0])
        for t in threads(pid):
            policy, prio = before.get(str(t), main)  # a thread started since: as the main one was
            try:
                os.sched_setscheduler(t, policy, os.sched_param(prio))
            except ProcessLookupError:
                pass
        return f"ovs-vswitchd {pid}: scheduling put back"
    finally:
        saved.unlink(missing_ok=True)


def live_runs(exclude: Path | None = None) -> list[Path]:
    """Registry entries of runs whose driver still runs (``exclude``: the caller's own)."""
    live = []
    for entry in rd.registry_entries():
        if exclude is not None and entry == exclude:
            continue
        try:
            record = json.loads(entry.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rd.driver_alive(record):
            live.append(entry)
    return live


def release(exclude: Path | None = None, saved: Path = SAVED) -> str | None:
    """Put ovs-vswitchd's scheduling back unless another run still uses the datapath."""
    if live_runs(exclude):
        return None
    return restore(saved)
