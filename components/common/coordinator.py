"""Eucalyptus 3.x's central failover decision, as pure functions: the coordinator CLC's check
round and the group membership that says who the coordinator is.

One definition for two users: the CLC's coordinator (components/clc/coordinator.py) runs these
rounds in the testbed when the spec says ``ha.detector: coordinator``, and the model of the
published source (experiments/failover/coordinator_model.py) computes outages from them.
docs/ha.md ("Eucalyptus 3.x's coordinator") gives the source of every constant below; the
names are the source's. In short:

* Every CLC runs ``Topology.RunChecks`` every ``COORDINATOR_CHECK_BACKOFF_SECS``; only the
  coordinator acts. A round checks every member of every service, then, in the same round,
  disables the NOTREADY ones and promotes a DISABLED member of each service left without an
  ENABLED one (``check_round``).
* A member's arbitrators are pinged with a 2000 ms reachability timeout; some unreachable is
  advisory, all unreachable is fatal (NOTREADY).
* The coordinator's own failure: the other CLC watches it through the group membership
  (JGroups: FD_SOCK, FD, VERIFY_SUSPECT); once the dead member leaves the view the survivor
  is the coordinator and its own next round promotes itself (``view_change_s``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# From the published source (eucalyptus/eucalyptus, maint-3.4): Topology's
# COORDINATOR_CHECK_BACKOFF_SECS, seconds between two RunChecks rounds.
COORDINATOR_CHECK_BACKOFF_SECS = 10.0
# From the source: ArbitratorControl pings with InetAddress.isReachable(address, 2000), in seconds.
ARBITRATOR_REACHABLE_TIMEOUT_S = 2.0
# JGroups 2.x defaults (Eucalyptus's setup_membership.groovy sets none of them): VERIFY_SUSPECT
# re-checks a suspect this long before it leaves the view; FD suspects a member that answered
# none of FD_MAX_TRIES are-you-alive messages sent FD_TIMEOUT_S apart. FD_SOCK suspects at once
# when the TCP connection to the member closes (its process died; the kernel closed it).
VERIFY_SUSPECT_TIMEOUT_S = 2.0
FD_TIMEOUT_S = 3.0
FD_MAX_TRIES = 2
# An assumption, not the source: a check of a host that does not answer fails after the same
# 2 s the arbitrator probes wait (the source's check request timeout is not modelled).
HOST_CHECK_TIMEOUT_S = ARBITRATOR_REACHABLE_TIMEOUT_S

# How a pair's members decide to fail over (spec ``ha.detector``): peer to peer on heartbeats
# (eucalab's), or centrally by the coordinator CLC's check rounds (Eucalyptus 3.x's).
DETECTORS = ("heartbeat", "coordinator")


@dataclass
class ServiceView:
    """What the coordinator's check round learns of one member of a service."""

    state: str  # ENABLED DISABLED NOTREADY ...
    answered: bool = True  # its check reached it
    arbitrators: list[bool] = field(default_factory=list)  # each one reachable?


def coordinator(clcs: dict[str, float], view: set[str]) -> str | None:
    """The coordinator among the CLCs in the group ``view`` (``Hosts.isCoordinator``): ``clcs``
    maps each CLC to the time it started; a CLC is the coordinator unless one in the view
    started after it."""
    members = {c: t for c, t in clcs.items() if c in view}
    return max(members, key=lambda c: (members[c], c)) if members else None


def is_coordinator(enabled: bool, peer_in_view: bool) -> bool:
    """Whether this CLC runs the rounds: the ENABLED CLC does (it runs the cloud-wide
    services), and so does any CLC whose group view holds no other CLC (its peer died)."""
    return enabled or not peer_in_view


def check_round(pairs: dict[str, dict[str, ServiceView]]) -> list[tuple[str, str, str]]:
    """One RunChecks round on the coordinator: (action, member, reason) in order.

    First every member is checked: one that did not answer, or whose arbitrators all
    failed, goes NOTREADY (some failing is advisory). Then each service without an
    ENABLED member has its NOTREADY members disabled and one DISABLED member promoted.
    ``pairs`` (service -> member -> view) is updated in place.
    """
    actions = []
    for members in pairs.values():
        for name, m in members.items():
            if m.state not in ("ENABLED", "DISABLED"):
                continue
            if not m.answered:
                m.state = "NOTREADY"
                actions.append(("notready", name, "check failed"))
            elif m.arbitrators and not any(m.arbitrators):
                m.state = "NOTREADY"
                actions.append(("notready", name, "all arbitrators unreachable"))
            elif m.arbitrators and not all(m.arbitrators):
                actions.append(("advisory", name, "some arbitrators unreachable"))
    for members in pairs.values():
        if any(m.state == "ENABLED" for m in members.values()):
            continue
        for name, m in members.items():
            if m.state == "NOTREADY":
                actions.append(("disable", name, "NOTREADY"))
        peer = next((n for n, m in members.items() if m.state == "DISABLED"), None)
        if peer is not None:
            members[peer].state = "ENABLED"
            actions.append(("enable", peer, "no ENABLED member"))
    return actions


def view_change_s(fault: str, verify_s: float = VERIFY_SUSPECT_TIMEOUT_S, fd_timeout_s: float = FD_TIMEOUT_S,
                  fd_max_tries: int = FD_MAX_TRIES) -> float:
    """How long the group takes to drop a dead member: a crashed process's FD_SOCK connection
    closes at once; a silent host is suspected by FD first. Either is then verified."""
    if fault not in ("process", "host"):
        raise ValueError("the group view drops a member for a process or host failure only")
    suspect = 0.0 if fault == "process" else fd_timeout_s * fd_max_tries
    return suspect + verify_s
