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

The decision itself (``check_round``, ``coordinator``, ``view_change_s``) and the constants
are one definition with the runtime coordinator (``ha.detector: coordinator``): both live in
components.common.coordinator.py, with the published names and values; JGroups' are its
2.x defaults (Eucalyptus set none of FD's or VERIFY_SUSPECT's). What the model assumes
beyond the source is named there too: ``HOST_CHECK_TIMEOUT_S``. This module adds what only
the model needs: the outage a fault allows at a given check phase.
"""

from __future__ import annotations

import random

from components.common.coordinator import (ARBITRATOR_REACHABLE_TIMEOUT_S, COORDINATOR_CHECK_BACKOFF_SECS,
                                              FD_MAX_TRIES, FD_TIMEOUT_S, HOST_CHECK_TIMEOUT_S,
                                              VERIFY_SUSPECT_TIMEOUT_S, ServiceView, check_round, coordinator,
                                              view_change_s)

__all__ = ["ARBITRATOR_REACHABLE_TIMEOUT_S", "COORDINATOR_CHECK_BACKOFF_SECS", "FD_MAX_TRIES", "FD_TIMEOUT_S",
           "HOST_CHECK_TIMEOUT_S", "VERIFY_SUSPECT_TIMEOUT_S", "ServiceView", "check_round", "coordinator",
           "view_change_s", "FAULTS", "outage", "bounds", "sample", "TARGETS"]

FAULTS = ("process", "host", "arbitrators")


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
