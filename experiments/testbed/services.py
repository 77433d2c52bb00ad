"""``eucalab services``: every component's service state, like euca-describe-services.

On a live run it asks the CLC (DescribeServices, signed with the run's admin credentials,
sent from the user host's network namespace as any user's request) and prints each pair
with whether it is redundant (one ENABLED member and one DISABLED); ``--enable``,
``--disable``, ``--stop``, ``--start NAME`` send ModifyService (euca-modify-service) and
wait until the member got there. On a finished run it reads each process's event log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from components.common.events import read_events

from .rundir import RESULTS, driver_alive, process_start_time, registry_entries

EC2_NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"
# What a transition asked through `eucalab services` leads the member (or its pair) to.
OUTCOME = {"ENABLE": "ENABLED", "DISABLE": "DISABLED", "STOP": "STOPPED", "START": "DISABLED"}
MODIFY_TIMEOUT_S = 15.0


def _registry_records() -> list[tuple[Path, dict]]:
    """Every readable entry of the registry of live runs, with its record."""
    out = []
    for entry in registry_entries():
        try:
            out.append((entry, json.loads(entry.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _live_run() -> Path | None:
    runs = [(entry.stat().st_mtime, Path(record["run_dir"])) for entry, record in _registry_records()]
    if runs:
        return max(runs)[1]
    dirs = sorted((p for p in RESULTS.glob("*/") if (p / "hosts").is_dir() or (p / "deployment").is_dir()),
                  key=lambda p: p.stat().st_mtime)
    return dirs[-1] if dirs else None


def _live_record(run_dir: Path | None) -> dict | None:
    """The registry record of a live run (``run_dir``, or the newest live one)."""
    live = [(entry.stat().st_mtime, entry.name, record) for entry, record in _registry_records()
            if driver_alive(record) and (run_dir is None or Path(record["run_dir"]).resolve() == run_dir.resolve())]
    return max(live)[2] if live else None


def parse_services(xml: bytes) -> list[dict]:
    """DescribeServices' answer as rows: type, partition, name, state, epoch, uri."""
    import xml.etree.ElementTree as ET

    rows = []
    for item in ET.fromstring(xml).iter(f"{EC2_NS}serviceStatuses"):
        for status in item.findall(f"{EC2_NS}item"):
            sid = status.find(f"{EC2_NS}serviceId")
            row = {k: sid.findtext(f"{EC2_NS}{k}") for k in ("type", "partition", "name", "uri")}
            row.update(state=status.findtext(f"{EC2_NS}localState"), epoch=int(status.findtext(f"{EC2_NS}localEpoch") or 0),
                       detail=" ".join(m.text or "" for m in status.iter(f"{EC2_NS}message")) or None)
            rows.append(row)
    return rows


def pairs(rows: list[dict]) -> list[dict]:
    """Members grouped by pair (type and partition), each pair with whether it is redundant:
    one member ENABLED and the other DISABLED, ready to take over. A pair with a member
    STOPPED (maintenance), NOTREADY or gone is not."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        grouped.setdefault((r["type"], r["partition"]), []).append(r)
    return [{"type": t, "partition": part, "members": ms,
             "redundant": sorted(m["state"] for m in ms) == ["DISABLED", "ENABLED"]}
            for (t, part), ms in grouped.items()]


def reached(rows: list[dict], name: str, transition: str) -> bool:
    """Whether what ``transition`` of ``name`` asked for is there: ENABLE and DISABLE are
    planned switchovers, done when the pair has turned around (the peer ENABLED after
    DISABLE); STOP and START when the member is STOPPED or a standby again."""
    member = next(r for r in rows if r["name"] == name)
    pair = next(p for p in pairs(rows) if member in p["members"])
    peers = [m for m in pair["members"] if m is not member]
    if transition == "DISABLE":
        return member["state"] == "DISABLED" and any(m["state"] == "ENABLED" for m in peers)
    if transition == "RESTART":
        return member["state"] == "DISABLED"
    return member["state"] == OUTCOME[transition]


class ServiceAPI:
    """DescribeServices / ModifyService on a live run's CLC, from its user host."""

    def __init__(self, run_dir: Path, user_pid: int):
        import configparser

        self.run_dir, self.user_pid = Path(run_dir), user_pid
        self.url = json.loads((self.run_dir / "endpoints.json").read_text())["clc"]
        creds = configparser.ConfigParser()
        creds.read(self.run_dir / "credentials")
        self.access_key = creds["default"]["aws_access_key_id"]
        self.secret = creds["default"]["aws_secret_access_key"]

    def call(self, params: dict) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request
        from urllib.parse import quote, urlencode, urlsplit

        from components.common.sigv4 import sign
        from topologies.network import namespace

        u = urlsplit(self.url)
        query = urlencode(sorted({**params, "Version": "2016-11-15"}.items()), quote_via=quote)
        headers = sign("GET", u.path, query, u.netloc, self.access_key, self.secret, "eucalyptus", "ec2")
        with namespace(self.user_pid):
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.url}?{query}", headers=headers),
                                            timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

    def describe(self) -> list[dict]:
        status, body = self.call({"Action": "DescribeServices"})
        if status != 200:
            raise SystemExit(f"eucalab services: DescribeServices answered {status}: {_error(body)}")
        return parse_services(body)

    def modify(self, name: str, transition: str, timeout: float = MODIFY_TIMEOUT_S) -> list[dict]:
        """ModifyService, then wait until the member got where the transition leads."""
        import time

        status, body = self.call({"Action": "ModifyService", "Name": name, "State": transition})
        if status != 200:
            raise SystemExit(f"eucalab services: ModifyService {name} {transition}: {status} {_error(body)}")
        deadline = time.monotonic() + timeout
        while True:
            rows = self.describe()
            if reached(rows, name, transition):
                return rows
            if time.monotonic() > deadline:
                raise SystemExit(f"eucalab services: {name} did not get there within {timeout:.0f} s:\n"
                                 + "\n".join(f"  {r['name']} {r['state']}" for r in rows))
            time.sleep(0.1)


def _error(body: bytes) -> str:
    import re

    found = re.search(rb"<Code>(.*?)</Code><Message>(.*?)</Message>", body, re.S)
    return f"{found.group(1).decode()}: {found.group(2).decode()}" if found else body[:300].decode(errors="replace")


def print_pairs(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("SERVICE type", "partition", "name", "state", "epoch", "uri", "pair redundant"):
        table.add_column(col)
    for p in pairs(rows):
        for i, m in enumerate(p["members"]):
            colour = {"ENABLED": "green", "DISABLED": "cyan", "STOPPED": "yellow"}.get(m["state"], "red")
            redundant = ("[green]yes[/]" if p["redundant"] else "[red]NO[/]") if i == 0 else ""
            table.add_row(p["type"], p["partition"], m["name"], f"[{colour}]{m['state']}[/]", str(m["epoch"]),
                          m["uri"], redundant)
    Console(width=max(130, Console().width)).print(table)


def services_command(run_dir: str | None, transition: str | None = None, name: str | None = None) -> int:
    """`eucalab services`: a live run through the CLC's service API; a finished one from its logs."""
    path = Path(run_dir) if run_dir else None
    record = _live_record(path)
    if record is None:
        if transition:
            raise SystemExit("eucalab services: no live run to change (" + (run_dir or "none found") + ")")
        return print_services(run_dir)
    pid = (record.get("hosts") or {}).get("user")
    if not pid or process_start_time(pid) != record.get("shell_start", {}).get(str(pid)):
        raise SystemExit(f"eucalab services: the user host of {record['run_dir']} is gone")
    api = ServiceAPI(Path(record["run_dir"]), pid)
    rows = api.modify(name, transition) if transition else api.describe()
    print_pairs(rows, f"services of {api.run_dir}")
    return 0


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
