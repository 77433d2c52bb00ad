"""Turning raw probe streams and component events into numbers: outage, detection, takeover.

Definitions (also in docs/experiments.md):

* A probe is one request from the user host, recorded as (sent, done, ok) with
  CLOCK_MONOTONIC times. A probe starts every probe interval whatever the earlier ones
  are doing (they overlap: one that hangs on a dead primary is cut at its timeout and
  never delays the next), so the measurement's resolution is the probe interval; the
  start-to-start gaps actually achieved are recorded per trial (``resolution``).
* Outage of a trial: the longest time between two consecutive successful completions,
  from the last success before the fault up to the fault's restore. Probes in flight at
  the fault count for neither side (a request a hung process finishes when it resumes is
  no evidence of service); a probe slipping through before a fault bites, or one failing
  alone, does not shorten the gap that follows. With no failed probe this is about one
  probe interval.
* Served again: the end of that gap minus the fault time. The gap begins up to one
  probe interval before the fault, while users were still served; the detection bound
  (misses x interval) counts from the fault (the last heartbeat heard is no later), so
  what a failover adds beyond the bound is served again minus the bound, with one
  probe interval of resolution, at its end, not two.
* Detection = the new primary's ``ha.peer_dead`` (or the arbitrator-driven
  promotion) minus the fault time; takeover = the VIP being up (``ha.promote``'s
  ``vip_at``) minus detection.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass


@dataclass
class Probe:
    sent: float
    done: float
    ok: bool


def outage(probes: list[Probe], t_fault: float, until: float | None = None) -> float | None:
    """Seconds without service around a fault; None if service never resumed (or never ran).

    The length of ``outage_span``.
    """
    span = outage_span(probes, t_fault, until)
    return span[1] - span[0] if span else None


def outage_span(probes: list[Probe], t_fault: float, until: float | None = None) -> tuple[float, float] | None:
    """Where the outage around a fault begins and ends (probe completion times), or None.

    The longest time between two consecutive successful completions that began after the
    last success completed before the fault and before ``until`` (the fault's restore: a
    blip while the restored member rejoins is not the fault's outage). Probes in flight at
    the fault (sent before it, completed after it) count for neither side: a request a hung
    process finishes when it resumes is no evidence of service. Early noise does not
    matter either: a probe that slips through before a fault bites, or one that fails
    alone, does not shorten the gap that follows.
    """
    done = sorted(p.done for p in probes if p.ok and (p.done <= t_fault or p.sent >= t_fault))
    before = [d for d in done if d <= t_fault]
    if not before or not any(p.ok and p.sent >= t_fault for p in probes):
        return None
    gaps = [(a, b) for a, b in zip(done, done[1:]) if b > t_fault and a >= before[-1]
            and (until is None or a < until)]
    return max(gaps, key=lambda g: g[1] - g[0]) if gaps else None


def resolution(probes: list[Probe]) -> dict:
    """How finely the probes sample time: start-to-start gaps, as a researcher should read them."""
    starts = sorted(p.sent for p in probes)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    if not gaps:
        return {"interval_p50_ms": None, "interval_p99_ms": None, "interval_max_ms": None}
    return {"interval_p50_ms": 1000 * percentile(gaps, 50), "interval_p99_ms": 1000 * percentile(gaps, 99),
            "interval_max_ms": 1000 * max(gaps)}


def beyond_bound(trial: dict, probes: list[Probe] | None = None) -> dict | None:
    """Where a failover trial's time beyond the detection bound went, in ms; None for a
    trial without a promotion, detection or served-again time (the keepalived baseline,
    a fault that expects no failover) and for a promotion the heartbeats did not drive
    (``promote_reason`` other than "peer dead": the arbitrators', whose bound differs).

    ``late`` (detection minus the bound: negative when the last heartbeat heard came
    before the fault) + ``takeover`` + ``vip_to_served`` (VIP up to the first answer
    after the fault: the wait for the next probe, up to one probe interval, plus that
    request's own time) = ``served`` minus the bound, the "outage - bound" target's
    quantity. ``requests`` are the answered requests' times before the fault, what one
    request costs on this network when nothing fails (empty without probes).
    """
    need = ("served_again_s", "detection_s", "takeover_s", "detection_bound_s")
    if any(trial.get(k) is None for k in need) or not trial.get("new_primary") \
            or trial.get("promote_reason", "peer dead") != "peer dead":
        return None
    served, det, tk, bound = (1000 * trial[k] for k in need)
    t_fault = trial.get("t_fault")
    requests = [1000 * (p.done - p.sent) for p in probes or [] if p.ok and t_fault is not None and p.done <= t_fault]
    return {"beyond": served - bound, "late": det - bound, "takeover": tk, "vip_to_served": served - det - tk,
            "requests": requests}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def bootstrap_ci(values: list[float], stat=statistics.median, n: int = 2000, conf: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    rng = random.Random(seed)
    stats = sorted(stat([rng.choice(values) for _ in values]) for _ in range(n))
    lo = stats[int((1 - conf) / 2 * n)]
    hi = stats[min(n - 1, int((1 + conf) / 2 * n))]
    return lo, hi


def summarize(values: list[float]) -> dict:
    """p50/p95/max (and p99 only with at least 100 samples), with a bootstrap CI of the median."""
    if not values:
        return {"n": 0}
    out = {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values),
           "mean": statistics.mean(values)}
    if len(values) >= 100:
        out["p99"] = percentile(values, 99)
    out["p50_ci95"] = list(bootstrap_ci(values))
    return out


# A load sample (experiments/failover/stress.py LoadSampler) with at least this much CPU
# stolen from one core (in one burst or several) marks a moment the hypervisor may have
# stalled the machine (docs/ha.md, "What bounds the floor here").
STEAL_STALL_MS = 20.0
# An event counts as beside a steal when a load sample taken within this of it had one.
STEAL_WINDOW_S = 1.0


def steal_summary(samples: list[dict]) -> dict | None:
    """CPU stolen by the hypervisor over the ``samples`` that recorded it (LoadSampler's
    ``steal_ms``): in all, the most from one core in one sample, and the samples with at
    least STEAL_STALL_MS from a core. None when none recorded it (a run from before)."""
    recorded = [x["steal_ms"] for x in samples if x.get("steal_ms")]
    if not recorded:
        return None
    per = [max(cores) for cores in recorded]
    return {"total_ms": round(sum(map(sum, recorded)), 1), "max_ms": max(per),
            "stalls": sum(v >= STEAL_STALL_MS for v in per), "samples": len(per)}


def steal_near(samples: list[dict], t: float, window: float = STEAL_WINDOW_S) -> float:
    """The most CPU stolen from a core in the samples taken within ``window`` of ``t``
    (each covers the period before it): what the hypervisor took around a moment."""
    return max((max(x["steal_ms"]) for x in samples if x.get("steal_ms") and abs(x["t_mono"] - t) <= window),
               default=0.0)
