"""What the emulated links really do: round-trip time and loss measured with ping.

Used where a spec shapes links (netem delay, jitter, loss): the kernel-lane tests check
that the configured parameters took effect on the wire, and failover experiments record
the user's measured round trip to each service beside their outages.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_REPLY = re.compile(r"time=([\d.]+) ms")
_QDISC = re.compile(r"^qdisc (\S+) .*\n\s*Sent \d+ bytes (\d+) pkt \(dropped (\d+),", re.M)


@dataclass
class PingResult:
    """One ping run: packets sent and answered, and each answer's round trip (ms)."""

    sent: int
    received: int
    rtts_ms: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Fraction of echo requests without an answer."""
        return 1.0 - self.received / self.sent if self.sent else 1.0


def parse_ping(text: str) -> PingResult:
    """ping's output as a PingResult; raises ValueError if it has no summary line."""
    match = _SUMMARY.search(text)
    if not match:
        raise ValueError(f"no ping summary in: {text.strip()[-300:]!r}")
    return PingResult(int(match.group(1)), int(match.group(2)), [float(x) for x in _REPLY.findall(text)])


def ping(node, ip: str, count: int = 20, interval_s: float = 0.05, wait_s: float = 2.0,
         deadline_s: float | None = None) -> PingResult:
    """Ping ``ip`` from an emulated host (a Mininet node), numerically, ``count`` times.

    ping leaves two of its longest round trips after its last request, so a reply a
    loaded machine holds up longer counts as lost; with ``deadline_s`` it waits for every
    reply until then (``ping -w``), ending as soon as all ``count`` are in."""
    deadline = f" -w {deadline_s:g}" if deadline_s is not None else ""
    return parse_ping(node.cmd(f"ping -n -c {count} -i {interval_s:g} -W {wait_s:g}{deadline} {ip}"))


def qdisc_counts(text: str, kind: str = "netem") -> tuple[int, int]:
    """Packets the qdiscs of ``kind`` in ``tc -s qdisc show`` output sent and dropped, summed."""
    sent = dropped = 0
    for found, pkts, drops in _QDISC.findall(text):
        if found == kind:
            sent, dropped = sent + int(pkts), dropped + int(drops)
    return sent, dropped


def netem_counts(dep, network_kind: str) -> tuple[int, int]:
    """Packets the netem queues at both ends of every link on networks of ``network_kind``
    have sent and dropped so far, by their own counters: what netem did, apart from what
    else a ping may count as lost (a neighbour resolution netem's loss held up, a reply
    later than ping waited for)."""
    from topologies.shaping import link_shapes

    sent = dropped = 0
    for link, _ in link_shapes(dep.plan):
        if dep.plan.networks[link.network].kind != network_kind:
            continue
        for node, intf in ((link.a, link.a_intf), (link.b, link.b_intf)):
            argv = ["tc", "-s", "qdisc", "show", "dev", intf]
            out = (dep[node].cmd(" ".join(argv)) if node in dep.plan.hosts  # a switch's end: the root namespace
                   else subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
            s, d = qdisc_counts(out)
            sent, dropped = sent + s, dropped + d
    return sent, dropped


def binomial_interval(n: int, p: float, z: float = 4.5) -> tuple[int, int]:
    """The range of successes out of ``n`` trials of probability ``p`` outside which a
    count is implausible (normal approximation, ``z`` standard deviations either side,
    widened by one for the discreteness): for checking measured loss against a rate."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return max(0, math.floor(mean - z * sd) - 1), min(n, math.ceil(mean + z * sd) + 1)


def round_trip_loss(loss_pcts: list[float]) -> float:
    """Probability that an echo request or its reply is lost, given the loss (percent) of
    every netem queue it passes on the way there and back."""
    keep = 1.0
    for pct in loss_pcts:
        keep *= 1 - pct / 100
    return 1 - keep


def measure_paths(dep, count: int = 20, interval_s: float = 0.02) -> list[dict]:
    """The round trip and loss users and arbitrators see, measured with ping: from the user
    host to every service's virtual IP, and from the CLC's first member to the external
    site (an arbitrator target, behind the WAN link a spec may shape). One record a path."""
    import statistics

    plan = dep.plan
    paths = [("user", p.name, p.vip) for p in plan.pairs]
    if "ext" in plan.hosts and plan.pairs:
        paths.append((plan.pairs[0].primary, "external site", plan.hosts["ext"].interfaces[0].ip.split("/")[0]))
    records = []
    for src, name, ip in paths:
        result = ping(dep[src], ip, count=count, interval_s=interval_s, wait_s=1)
        rtts = result.rtts_ms
        records.append({"from": src, "to": name, "ip": ip, "sent": result.sent, "received": result.received,
                        "rtt_ms": {"min": min(rtts), "p50": statistics.median(rtts), "max": max(rtts)}
                        if rtts else None})
    return records
