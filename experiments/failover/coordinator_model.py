"""A model of Eucalyptus 3.x's own failover decision: the coordinator CLC's service checks.

This is a model of the published source (the eucalyptus/eucalyptus repository, branch
maint-3.4), not a reimplementation and not a measurement. eucalab's own HA decides peer
to peer (components/common/ha/); Eucalyptus 3.x decided centrally:

* One CLC is the coordinator: in its ``Hosts.isCoordinator()``, a CLC is the coordinator
  unless another CLC (a host with the database) in the current group view started after
  it (``coordinator()``). The group view is a JGroups membership channel
  (``setup_membership.groovy``: FD_SOCK, FD and VERIFY_SUSPECT among its protocols).
* Every host runs ``Topology.RunChecks`` every ``COORDINATOR_CHECK_BACKOFF_SECS`` (10 s);
  on the coordinator it checks every service, then, in the same round, disables the
  NOTREADY ones and promotes a DISABLED peer of each service that has no ENABLED member
  (``check_round()``).
* A service's check includes its arbitrators (``ArbitratorControl.check``): each is
  pinged with a 2000 ms reachability timeout; some unreachable is advisory, all
  unreachable is fatal (the service goes NOTREADY). The pings run in the background and
  a check judges the results of the pings the previous check started, so an arbitrator
  failure is acted on one cycle late (``outage()`` with fault ``arbitrators``).
* When the coordinator itself dies nobody checks it: the surviving CLC learns of it from
  the group view (the dead member is suspected, verified and removed), becomes the
  coordinator because no later-started CLC is left in the view, and its own next
  RunChecks round promotes the DISABLED CLC services (``outage()`` with
  ``coordinator=True``). A process crash closes the FD_SOCK socket at once, so only
  VERIFY_SUSPECT's wait remains; a silent host is suspected by FD after its timeout times
  its tries, then verified.

The constants carry the published names and values; JGroups' are its 2.x defaults
(Eucalyptus set none of FD's or VERIFY_SUSPECT's). What the model assumes beyond the
source is named too: ``HOST_CHECK_TIMEOUT_S``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Topology.COORDINATOR_CHECK_BACKOFF_SECS: seconds between the coordinator's service checks.
COORDINATOR_CHECK_BACKOFF_SECS = 10.0
# The arbitrator probe: InetAddress.isReachable(address, 2000), in seconds.
ARBITRATOR_REACHABLE_TIMEOUT_S = 2.0
# JGroups 2.x defaults: VERIFY_SUSPECT re-checks a suspect this long; FD suspects a member
# that answered none of FD_MAX_TRIES are-you-alive messages, FD_TIMEOUT_S apart.
VERIFY_SUSPECT_TIMEOUT_S = 2.0
FD_TIMEOUT_S = 3.0
FD_MAX_TRIES = 2
# This model's assumption: a check of a host that is down fails after the same 2 s the
# arbitrator probes wait (the check request's own timeout is not modelled).
HOST_CHECK_TIMEOUT_S = ARBITRATOR_REACHABLE_TIMEOUT_S

FAULTS = ("process", "host", "arbitrators")


@dataclass
class ServiceView:
    """What the coordinator's check round learns of one member of a service."""

    state: str  # ENABLED DISABLED NOTREADY ...
    answered: bool = True  # its check reached it
    arbitrators: list[bool] = field(default_factory=list)  # each one reachable?


def coordinator(clcs: dict[str, float], view: set[str]) -> str | None:
    """The coordinator among the CLCs in the group ``view``: ``clcs`` maps each CLC to the
    time it started; a CLC is the coordinator unless one in the view started after it."""
    members = {c: t for c, t in clcs.items() if c in view}
    return max(members, key=lambda c: (members[c], c)) if members else None


def check_round(pairs: dict[str, dict[str, ServiceView]]) -> list[tuple[str, str, str]]:
    """One RunChecks round on the coordinator: (action, member, reason) in order.

    First every member is checked: one that did not answer, or whose arbitrators all
    failed, goes NOTREADY (some failing is advisory). Then each service without a serving
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


def view_change_s(fault: str) -> float:
    """How long the group takes to drop a dead member: a crashed process's FD_SOCK socket
    closes at once; a silent host is suspected by FD first. Either is then verified."""
    if fault not in ("process", "host"):
        raise ValueError("the group view drops a member for a process or host failure only")
    suspect = 0.0 if fault == "process" else FD_TIMEOUT_S * FD_MAX_TRIES
    return suspect + VERIFY_SUSPECT_TIMEOUT_S


def outage(fault: str, phase_s: float, coordinator: bool = False) -> float:
    """The outage of one service after a fault, in seconds, when the deciding CLC's next
    RunChecks round starts ``phase_s`` (0..COORDINATOR_CHECK_BACKOFF_SECS) after the
    moment it could first notice: the fault itself, or for the coordinator's own failure
    the view change that makes the survivor coordinator."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
    if not 0 <= phase_s < COORDINATOR_CHECK_BACKOFF_SECS:
        raise ValueError("phase_s lies within one check period")
    if fault == "arbitrators":
        # The next check starts pings that fail; the check after it acts on them.
        return phase_s + COORDINATOR_CHECK_BACKOFF_SECS
    start = view_change_s(fault) if coordinator else 0.0
    check = HOST_CHECK_TIMEOUT_S if fault == "host" and not coordinator else 0.0
    return start + phase_s + check


def bounds(fault: str, coordinator: bool = False) -> tuple[float, float]:
    """The shortest and longest outage the model allows, in seconds."""
    lo = outage(fault, 0.0, coordinator)
    return lo, lo + COORDINATOR_CHECK_BACKOFF_SECS


def sample(fault: str, coordinator: bool, n: int, seed: int = 1) -> list[float]:
    """``n`` outages at uniformly random check phases (a fault does not know the cycle)."""
    rng = random.Random(seed)
    return [outage(fault, rng.uniform(0, COORDINATOR_CHECK_BACKOFF_SECS) * (1 - 1e-12), coordinator)
            for _ in range(n)]


# The safe-floor experiment's targets: which fault each takes, and whether the member that
# fails is the coordinator. This model takes the ENABLED CLC to be the coordinator (the
# coordinator ran the cloud-wide services), so a CLC crash is the coordinator's own failure.
TARGETS = {"clc": ("process", True), "walrus": ("process", False), "sc": ("process", False),
           "cc": ("host", False)}
