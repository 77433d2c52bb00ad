"""Plots and a report made from a run's raw data alone: ``eucalab report DIR`` regenerates them."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .measures import STEAL_STALL_MS, Probe, beyond_bound, percentile, steal_summary, summarize


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def load(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    return {"trials": _jsonl(run_dir / "trials.jsonl"), "probes": _jsonl(run_dir / "probes.jsonl"),
            "load": _jsonl(run_dir / "load.jsonl"), "paths": _jsonl(run_dir / "paths.jsonl"),
            "experiment": json.loads((run_dir / "experiment.json").read_text())
            if (run_dir / "experiment.json").exists() else {},
            "versions": json.loads((run_dir / "versions.json").read_text())
            if (run_dir / "versions.json").exists() else {},
            "timing": json.loads((run_dir / "timing.json").read_text())
            if (run_dir / "timing.json").exists() else {}}


def _recompute_outages(data: dict) -> None:
    """Outage from the raw probes (the definition in experiments/analysis/measures.py), not as the
    trial recorded it: a report regenerated after a change of definition follows it."""
    from .measures import outage_span

    streams = {(p["set"], p["trial"]): p for p in data["probes"]}
    for t in data["trials"]:
        p = streams.get((t.get("set"), t.get("trial")))
        if p is not None and t.get("status") in ("ok", "no-recovery"):
            until = p["t_fault"] + t["hold_s"] if t.get("hold_s") is not None else None
            span = outage_span([Probe(*x) for x in p["probes"]], p["t_fault"], until)
            t["outage_s"] = span[1] - span[0] if span else None
            t["served_again_s"] = span[1] - p["t_fault"] if span else None


def summary(data: dict) -> dict:
    sets: dict[str, dict] = {}
    streams = {(p.get("set"), p.get("trial")): p for p in data.get("probes", [])}
    for t in data["trials"]:
        s = sets.setdefault(t["set"], {"target": t.get("target"), "fault": t.get("fault"), "expect": t.get("expect"),
                                       "detector": detector_of(t),
                                       "trials": 0, "ok": 0, "as_expected": 0, "flagged": [],
                                       "outage_ms": [], "detection_ms": [], "takeover_ms": [],
                                       "lost_writes": 0, "split_brain": 0, "two_enabled_ms": 0.0,
                                       "false_failovers": 0, "probe_p99_ms": [], "restored_s": [],
                                       "failed_probes": []})
        s["trials"] += 1
        # Older runs (and the keepalived baseline) carry no verdict: a trial that ran is as expected.
        as_expected = t.get("as_expected", t.get("status") == "ok")
        s["as_expected"] += 1 if as_expected else 0
        s["two_enabled_ms"] += 1000 * (t.get("two_enabled_s") or 0)
        if t.get("failed_probes") is not None:
            s["failed_probes"].append(t["failed_probes"])
        s["false_failovers"] += 1 if "false failover" in (t.get("flags") or []) else 0
        if not as_expected:
            s["flagged"].append({"trial": t["trial"], "status": t.get("status"), "error": t.get("error"),
                                 "flags": t.get("flags") or [], "capture": t.get("capture")})
        if t.get("status") == "ok" and t.get("outage_s") is not None:
            s["ok"] += 1
            s["outage_ms"].append(1000 * t["outage_s"])
            if t.get("detection_s") is not None:
                s["detection_ms"].append(1000 * t["detection_s"])
            if t.get("takeover_s") is not None:
                s["takeover_ms"].append(1000 * t["takeover_s"])
            if t.get("probe_interval_p99_ms") is not None:
                s["probe_p99_ms"].append(t["probe_interval_p99_ms"])
        if t.get("status") == "ok" and t.get("outage_s") is not None and t.get("detection_bound_s") is not None \
                and t.get("expect", "failover") == "failover" and t.get("new_primary"):
            # From the fault, as the bound counts (older runs: from the gap's start).
            served = t.get("served_again_s") if t.get("served_again_s") is not None else t["outage_s"]
            s.setdefault("beyond_bound_ms", []).append(1000 * (served - t["detection_bound_s"]))
            s.setdefault("gap_beyond_bound_ms", []).append(1000 * (t["outage_s"] - t["detection_bound_s"]))
            stream = streams.get((t.get("set"), t.get("trial")))
            parts = beyond_bound({"t_fault": stream and stream.get("t_fault"), **t},
                                 [Probe(*x) for x in stream["probes"]] if stream else None)
            if parts is not None:
                for k, v in parts.items():
                    s.setdefault("parts", {}).setdefault(k, []).extend(v if isinstance(v, list) else [v])
        if t.get("redundancy_restored_s") is not None:
            s["restored_s"].append(t["redundancy_restored_s"])
        if t.get("datapath_ports") is not None:
            s.setdefault("ports", set()).add(t["datapath_ports"])
        if "datapath_priority" in t:  # None: ovs-vswitchd at the normal scheduler
            s.setdefault("priorities", set()).add(t["datapath_priority"] or 0)
        s["lost_writes"] += t.get("lost_writes") or 0
        s["split_brain"] += 1 if t.get("two_enabled_at_end") else 0
    out = {}
    for name, s in sets.items():
        out[name] = {"target": s["target"], "fault": s["fault"], "expect": s["expect"], "trials": s["trials"],
                     "detector": s["detector"],
                     "ok": s["ok"], "as_expected": s["as_expected"], "flagged": s["flagged"],
                     "two_enabled_ms": s["two_enabled_ms"], "false_failovers": s["false_failovers"],
                     "redundancy_restored_s": summarize(s["restored_s"]),
                     "outage_beyond_detection_bound_ms": summarize(s.get("beyond_bound_ms", [])),
                     "outage_gap_beyond_detection_bound_ms": summarize(s.get("gap_beyond_bound_ms", [])),
                     # Where "outage - bound" went (experiments/analysis/measures.py, beyond_bound), in ms.
                     "beyond_bound_parts_ms": {k: _quantiles(v) for k, v in s.get("parts", {}).items()},
                     "datapath_ports": sorted(s.get("ports", ())),
                     "datapath_priority": sorted(s.get("priorities", ())),
                     "outage_ms": summarize(s["outage_ms"]), "detection_ms": summarize(s["detection_ms"]),
                     "takeover_ms": summarize(s["takeover_ms"]), "lost_writes": s["lost_writes"],
                     "two_enabled_after_trial": s["split_brain"],
                     # User requests that failed during the fault, per trial (p50 and max).
                     "failed_probes": ({"p50": percentile(s["failed_probes"], 50), "max": max(s["failed_probes"])}
                                       if s["failed_probes"] else None),
                     "probe_interval_p99_ms": max(s["probe_p99_ms"]) if s["probe_p99_ms"] else None}
    return out


def _quantiles(values: list[float]) -> dict:
    """n, p50, p95, max, and p99 from 100 values on (no bootstrap: the request times of a
    run are thousands)."""
    if not values:
        return {"n": 0}
    out = {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}
    if len(values) >= 100:
        out["p99"] = percentile(values, 99)
    return out


PARTS = (("beyond", "outage - bound"), ("late", "detection - bound"), ("takeover", "takeover"),
         ("vip_to_served", "VIP up -> served"), ("requests", "one request, before the fault"))


def _parts_rows(summ: dict) -> list[list[str]]:
    """Per failover configuration: p50 / p99 (max below 100 samples) of each part."""
    rows = []
    for name, s in summ.items():
        parts = s.get("beyond_bound_parts_ms") or {}
        if not parts.get("beyond", {}).get("n"):
            continue
        cells = []
        for key, _ in PARTS:
            q = parts.get(key) or {}
            tail = q.get("p99", q.get("max"))
            cells.append("-" if not q.get("n") else f"{q['p50']:.1f} / {tail:.1f}")
        ports = s.get("datapath_ports") or []
        prios = s.get("datapath_priority") or []
        rows.append([name, str(parts["beyond"]["n"]), "-" if not ports else "/".join(map(str, ports)),
                     "-" if not prios else "/".join(f"FIFO {p}" if p else "normal" for p in prios)] + cells)
    return rows


PARTS_NOTE = ("Served again minus the detection bound, split: detection - bound (negative when the last "
              "heartbeat heard came before the fault) + takeover + VIP up -> served (the wait for the next "
              "probe, up to one probe interval, plus that request). \"One request\" is what an answered probe "
              "took before the fault, on this network with nothing failing. Datapath ports: on the Open "
              "vSwitch datapath the bridges shared (the userspace datapath polls every one on each wake-up, "
              "so a request's time grows with them). ovs-vswitchd: its scheduling during the trials (FIFO: "
              "realtime, ahead of the HA members and the prober, experiments/testbed/vswitchd.py). Each cell: p50 / p99 "
              "(max below 100 samples), ms.")


def plots(data: dict, run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    by_set: dict[str, list[float]] = {}
    for t in data["trials"]:
        if t.get("status") == "ok":
            by_set.setdefault(t["set"], []).append(1000 * t["outage_s"])
    if by_set:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, values in sorted(by_set.items()):
            v = sorted(values)
            ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=f"{name} (n={len(v)})")
        ax.set_xscale("log")
        ax.set_xlabel("client-observed outage (ms, log scale)")
        ax.set_ylabel("fraction of trials")
        ax.set_title("Client-observed outage per configuration")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "outage_cdf.png", dpi=110)
        plt.close(fig)
        made.append("outage_cdf.png")
    parts = {}
    for t in data["trials"]:
        if t.get("status") == "ok" and t.get("detection_s") is not None:
            served = t.get("served_again_s")
            parts.setdefault(t["set"], []).append((1000 * t["detection_s"], 1000 * t["takeover_s"],
                                                   1000 * t["outage_s"], None if served is None else
                                                   1000 * (served - t["detection_s"] - t["takeover_s"])))
    if parts:
        import statistics

        fig, ax = plt.subplots(figsize=(8, 4))
        names = sorted(parts)
        det = [statistics.median(p[0] for p in parts[n]) for n in names]
        tak = [statistics.median(p[1] for p in parts[n]) for n in names]
        out = [statistics.median(p[2] for p in parts[n]) for n in names]
        ax.barh(names, det, label="detection (fault -> peer declared dead)")
        ax.barh(names, tak, left=det, label="takeover (-> VIP up, ARP sent)")
        served = [statistics.median([p[3] for p in parts[n] if p[3] is not None] or [0]) for n in names]
        if any(served):
            ax.barh(names, served, left=[a + b for a, b in zip(det, tak)],
                    label="VIP up -> served (next probe, one request)")
        ax.scatter(out, names, color="black", zorder=3, label="client-observed outage")
        ax.set_xlabel("median, ms")
        ax.set_title("Where the outage goes")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "breakdown.png", dpi=110)
        plt.close(fig)
        made.append("breakdown.png")
    made += _sweep_plots(data, run_dir, plt)
    sample = next((p for p in data["probes"] if any(t.get("set") == p["set"] and t.get("trial") == p["trial"]
                                                       and t.get("status") == "ok" for t in data["trials"])), None)
    if sample:
        fig, ax = plt.subplots(figsize=(9, 3))
        t0 = sample["t_fault"]
        probes = [Probe(*p) for p in sample["probes"]]
        ok = [(1000 * (p.sent - t0), 1000 * (p.done - p.sent)) for p in probes if p.ok]
        bad = [(1000 * (p.sent - t0), 1000 * (p.done - p.sent)) for p in probes if not p.ok]
        if ok:
            ax.scatter(*zip(*ok), s=8, color="tab:green", label="probe answered")
        if bad:
            ax.scatter(*zip(*bad), s=8, color="tab:red", label="probe failed")
        ax.axvline(0, color="black", linestyle="--", label="fault (SIGKILL)")
        trial = next(t for t in data["trials"] if t.get("set") == sample["set"] and t.get("trial") == sample["trial"])
        if trial.get("detection_s") is not None:
            ax.axvline(1000 * trial["detection_s"], color="tab:orange", label="peer declared dead")
            ax.axvline(1000 * (trial["detection_s"] + trial["takeover_s"]), color="tab:blue", label="VIP up")
        ax.set_xlabel("ms since the fault")
        ax.set_ylabel("probe latency (ms)")
        ax.set_title(f"One trial: {sample['set']} #{sample['trial']}")
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(run_dir / "timeline.png", dpi=110)
        plt.close(fig)
        made.append("timeline.png")
    return made


def _sweep_plots(data: dict, run_dir: Path, plt) -> list[str]:
    """Outage against each swept parameter (median, with the 5th-95th percentile range)."""
    from .measures import percentile

    swept = sorted({k for t in data["trials"] for k in (t.get("point") or {})})
    made = []
    for key in swept:
        series: dict[str, dict] = {}
        for t in data["trials"]:
            point = t.get("point") or {}
            if key not in point or t.get("status") != "ok" or t.get("outage_s") is None:
                continue
            base = t["set"].split(" [")[0]
            others = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items() if k != key)
            series.setdefault(base + (f" ({others})" if others else ""), {}).setdefault(point[key], []).append(
                1000 * t["outage_s"])
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        values = sorted({v for s in series.values() for v in s}, key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, (int, float)) for v in values)
        for name, by_value in sorted(series.items()):
            xs = [v for v in values if v in by_value]
            med = [percentile(by_value[v], 50) for v in xs]
            lo = [m - percentile(by_value[v], 5) for m, v in zip(med, xs)]
            hi = [percentile(by_value[v], 95) - m for m, v in zip(med, xs)]
            pos = xs if numeric else [values.index(v) for v in xs]
            ax.errorbar(pos, med, yerr=[lo, hi], marker="o", capsize=3, label=name)
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel("client-observed outage (ms): median, 5th-95th percentile")
        ax.set_title(f"Outage versus {key.split('.')[-1]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"sweep_{key.replace('.', '_')}.png"
        fig.savefig(run_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def _html_targets(big: list) -> str:
    if not big:
        return ""
    head = ["configuration", "trials", "outage p50", "outage p99", "outage - bound p99", "gap - bound p99",
            "takeover p99"]
    rows = [[n, str(s["trials"]), _fmt(s["outage_ms"], "p50"), _fmt(s["outage_ms"], "p99"),
             _fmt(s.get("outage_beyond_detection_bound_ms") or {}, "p99"),
             _fmt(s.get("outage_gap_beyond_detection_bound_ms") or {}, "p99"), _fmt(s["takeover_ms"], "p99")]
            for n, s in big]
    return ("<h2>Against the HA targets</h2><p>Outage p50 &lt;= 160 ms and p99 &lt;= 200 ms; outage minus the "
            "detection bound &lt;= 20 ms at p99 (from the fault, as the bound counts; gap - bound from the last "
            "success before the fault); takeover after detection &lt;= 10 ms at p99.</p>" + _html_table(head, rows))


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    return ("<table border=1 cellpadding=4><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")


def _fmt(s: dict, key: str) -> str:
    v = s.get(key)
    return "-" if v is None else f"{v:.1f}"


def build(run_dir: str | Path) -> Path:
    """Write summary.json, the plots, report.md and report.html from the raw data."""
    run_dir = Path(run_dir)
    data = load(run_dir)
    _recompute_outages(data)
    summ = summary(data)
    (run_dir / "summary.json").write_text(json.dumps(summ, indent=2, sort_keys=True))
    images = plots(data, run_dir)
    exp, ver, timing = data["experiment"], data["versions"], data["timing"]
    rows = []
    for name, s in summ.items():
        o, d, k = s["outage_ms"], s["detection_ms"], s["takeover_ms"]
        ci = o.get("p50_ci95")
        rows.append([name, s.get("expect") or "failover", f"{s['as_expected']}/{s['trials']}", _fmt(o, "p50"),
                     f"{ci[0]:.1f}-{ci[1]:.1f}" if ci else "-", _fmt(o, "p95"),
                     _fmt(o, "p99") if "p99" in o else "(n<100)", _fmt(o, "max"), _fmt(d, "p50"), _fmt(k, "p50"),
                     _fmt(s.get("redundancy_restored_s") or {}, "p50"),
                     str(s["lost_writes"]), f"{s['two_enabled_ms']:.0f}",
                     "-" if not s["failed_probes"] else f"{s['failed_probes']['p50']:g} / {s['failed_probes']['max']}",
                     "-" if s["probe_interval_p99_ms"] is None else f"{s['probe_interval_p99_ms']:.1f}"])
    head = ["configuration", "expected", "as expected/trials", "outage p50 ms", "p50 95% CI", "p95", "p99", "max",
            "detection p50", "takeover p50", "redundancy back p50 s", "lost writes", "two ENABLED ms",
            "failed requests p50 / max", "probe gap p99 ms"]
    load_vals = [x["cpu_percent"] for x in data["load"]]
    md = [f"# Failover report: {exp.get('name', run_dir.name)}", "",
          f"Run directory `{run_dir}`; seed {exp.get('seed')}; probe every {exp.get('probe_interval_ms')} ms "
          f"from the user host with a {exp.get('probe_timeout_ms')} ms timeout and no retries.", "",
          "Outage = the longest time between two consecutive successful probe completions from the last "
          "success before the fault up to the fault's restore, probes in flight at the fault left out "
          "(resolution: the probe gap, reported per configuration). Detection = "
          "fault to the surviving member declaring its peer dead; takeover = from there to the VIP being up "
          "with gratuitous ARP sent. p99 is reported only for configurations with at least 100 trials; "
          "the median's 95% confidence interval is a percentile bootstrap.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    big = [(n, s) for n, s in summ.items() if s["trials"] >= 100 and "p99" in s["outage_ms"]]
    if big:
        md += ["", "## Against the HA targets (configurations with at least 100 trials)", "",
               "Targets: outage p50 <= 160 ms and p99 <= 200 ms; outage minus the detection bound "
               "(misses x interval) <= 20 ms at p99; takeover after detection <= 10 ms at p99. "
               "Outage - bound counts from the fault, as the bound does (served again minus the bound); "
               "gap - bound counts from the last success before the fault, up to a probe interval earlier.", "",
               "| configuration | trials | outage p50 | outage p99 | outage - bound p99 | gap - bound p99 "
               "| takeover p99 |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {n} | {s['trials']} | {_fmt(s['outage_ms'], 'p50')} | {_fmt(s['outage_ms'], 'p99')} | "
               f"{_fmt(s.get('outage_beyond_detection_bound_ms') or {}, 'p99')} | "
               f"{_fmt(s.get('outage_gap_beyond_detection_bound_ms') or {}, 'p99')} | {_fmt(s['takeover_ms'], 'p99')} |"
               for n, s in big]
    parts_rows = _parts_rows(summ)
    parts_head = ["configuration", "trials", "datapath ports", "ovs-vswitchd"] + [label for _, label in PARTS]
    if parts_rows:
        md += ["", "## Where the time beyond the detection bound goes", "", PARTS_NOTE, "",
               "| " + " | ".join(parts_head) + " |", "|" + "---|" * len(parts_head)]
        md += ["| " + " | ".join(r) + " |" for r in parts_rows]
    detectors = detector_table(summ)
    if detectors is not None:
        md += ["", "## Detectors side by side", "", DETECTORS_NOTE, "",
               "| " + " | ".join(detectors[0]) + " |", "|" + "---|" * len(detectors[0])]
        md += ["| " + " | ".join(r) + " |" for r in detectors[1]]
    flagged = [(n, f) for n, s in summ.items() for f in s["flagged"]]
    md += ["", "## Trials that went wrong", ""]
    md += [f"- {n} trial {f['trial']}: {f['status']}; " + "; ".join(f.get("flags") or [])
           + (f" ({f['error']})" if f.get("error") else "") + (f"; capture `{f['capture']}`" if f.get("capture") else "")
           for n, f in flagged] or ["None."]
    path_lines = _path_lines(data["paths"])
    if path_lines:
        md += ["", "## The network as measured", "", PATHS_NOTE, ""] + path_lines
    md += ["", "## Plots", ""] + [f"![{i}]({i})" for i in images]
    md += ["", "## Context", "",
           f"- CPU during the run: mean {sum(load_vals) / len(load_vals):.0f}%, max {max(load_vals):.0f}% "
           f"({len(load_vals)} samples)" if load_vals else "- CPU: not recorded",
           steal_line(data["load"]),
           f"- wall time {timing.get('wall_s', 0):.0f} s, {timing.get('trials_per_minute', 0):.1f} trials/minute",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items())]
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    table = _html_table(head, rows)
    body = [f"<h1>Failover report: {html.escape(str(exp.get('name', run_dir.name)))}</h1>",
            f"<p>{html.escape(md[2])}</p><p>{html.escape(md[4])}</p>", table,
            _html_targets(big),
            ("<h2>Detectors side by side</h2><p>" + html.escape(DETECTORS_NOTE) + "</p>"
             + _html_table(*detectors)) if detectors is not None else "",
            ("<h2>Where the time beyond the detection bound goes</h2><p>" + html.escape(PARTS_NOTE) + "</p>"
             + _html_table(parts_head, parts_rows)) if parts_rows else "",
            "<h2>Trials that went wrong</h2><ul>" + ("".join(
                f"<li>{html.escape(n)} trial {f['trial']}: {html.escape(str(f['status']))}; "
                f"{html.escape('; '.join(f.get('flags') or []))}</li>" for n, f in flagged)
                or "<li>None.</li>") + "</ul>",
            ("<h2>The network as measured</h2><p>" + html.escape(PATHS_NOTE) + "</p><ul>" + "".join(
                f"<li>{html.escape(line[2:])}</li>" for line in path_lines) + "</ul>") if path_lines else "",
            "<h2>Plots</h2>" + "".join(f'<p><img src="{i}" alt="{i}"></p>' for i in images),
            "<h2>Context</h2><ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in md[-3:]) + "</ul>"]
    (run_dir / "report.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>eucalab report"
                                         "</title></head><body>" + "\n".join(body) + "</body></html>\n")
    return run_dir / "report.md"


# Who decides a failover, by the set's spec (ha.detector) or target, in the order of the table.
DETECTOR_COLUMNS = {"coordinator": "Eucalyptus 3.x's coordinator", "keepalived": "keepalived's VRRP",
                    "heartbeat": "eucalab's peer heartbeats"}
DETECTORS_NOTE = ("The same faults under each detector, outage p50 / max ms (trials): Eucalyptus 3.x's "
                  "coordinator CLC (ha.detector coordinator: check rounds every ha.coordinator_check_s), "
                  "keepalived's VRRP (fronting a responder on the CLC pair's hosts and VIP, so in the CLC row "
                  "only) and eucalab's peer heartbeats (ha.detector heartbeat). Under the coordinator, detection "
                  "above runs from the fault to the standby's decision on the coordinator's ENABLE order (the "
                  "members' own heartbeats decide nothing there), and takeover from that decision to its VIP.")


def detector_of(trial: dict) -> str:
    """Who decided a trial's failover: keepalived for its target, else the spec's ha.detector the
    trial recorded (older runs recorded none: eucalab's heartbeats, the only one then)."""
    return "keepalived" if trial.get("target") == "keepalived" else trial.get("detector") or "heartbeat"


def detector_table(summ: dict) -> tuple[list[str], list[list[str]]] | None:
    """Outage by fault (rows) and detector (columns), from the sets' summaries; None unless the
    run's crash and host-failure sets ran under more than one detector."""
    cells: dict[tuple, dict[str, dict]] = {}
    for s in summ.values():
        if s["fault"] not in ("sigkill", "host"):
            continue
        row = ("clc", "sigkill") if s["detector"] == "keepalived" else (s["target"], s["fault"])
        cells.setdefault(row, {})[s["detector"]] = s
    used = [k for k in DETECTOR_COLUMNS if any(k in c for c in cells.values())]
    if len(used) < 2:
        return None
    words = {"sigkill": "process crash", "host": "host failure"}
    rows = []
    for (target, fault), by in cells.items():
        rows.append([f"{target.upper()} {words[fault]}"] + [
            f"{_fmt(by[k]['outage_ms'], 'p50')} / {_fmt(by[k]['outage_ms'], 'max')} ({by[k]['trials']})"
            if k in by else "-" for k in used])
    return ["fault"] + [DETECTOR_COLUMNS[k] for k in used], rows


PATHS_NOTE = ("Round trips measured with ping (20 echo requests, 20 ms apart) once the services were up, "
              "before the first fault: every probe's time includes them. Link parameters are the "
              "deployment's (links.*: each applies at both ends of a link, so once per direction).")


def _path_lines(paths: list[dict]) -> list[str]:
    """The link parameters of each deployment, then one line a measured path."""
    lines, seen = [], []
    for p in paths:
        where = f" [{', '.join(f'{k}={v}' for k, v in p['point'].items())}]" if p.get("point") else ""
        if p.get("links") is not None and (where, p["links"]) not in seen:
            seen.append((where, p["links"]))
            lines.append(f"- links{where}: {json.dumps(p['links'], sort_keys=True)}")
        rtt = p.get("rtt_ms")
        text = (f"RTT p50 {rtt['p50']:.2f} ms (min {rtt['min']:.2f}, max {rtt['max']:.2f})" if rtt
                else "no answer")
        lines.append(f"- {p['from']} -> {p['to']} ({p['ip']}){where}: {text}; "
                     f"{p['sent'] - p['received']}/{p['sent']} lost")
    return lines


def compare(a: str | Path, b: str | Path) -> str:
    """Two runs' summaries side by side (markdown)."""
    da, db = load(Path(a)), load(Path(b))
    _recompute_outages(da)
    _recompute_outages(db)
    sa, sb = summary(da), summary(db)
    lines = [f"| configuration | {Path(a).name} outage p50 / max ms | {Path(b).name} outage p50 / max ms |",
             "|---|---|---|"]
    for name in sorted(set(sa) | set(sb)):
        cell = lambda s: (f"{s[name]['outage_ms'].get('p50', float('nan')):.1f} / "
                          f"{s[name]['outage_ms'].get('max', float('nan')):.1f}") if name in s and s[name]["ok"] else "-"
        lines.append(f"| {name} | {cell(sa)} | {cell(sb)} |")
    return "\n".join(lines)


def steal_line(load: list[dict]) -> str:
    """The report's line on CPU the hypervisor stole (load samples with ``steal_ms``)."""
    st = steal_summary(load)
    if st is None:
        return "- CPU stolen by the hypervisor: not recorded"
    return (f"- CPU stolen by the hypervisor: {st['total_ms'] / 1000:.2f} s over the run, at most "
            f"{st['max_ms']:.0f} ms from one core in one sample; {st['stalls']} of {st['samples']} samples "
            f"with {STEAL_STALL_MS:g} ms or more from one core (in one burst or several; a burst that long "
            "holds every thread on that core, heartbeat threads included: docs/ha.md, \"What bounds the floor "
            "here\")")
