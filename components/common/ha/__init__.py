"""High availability for a primary/secondary pair: heartbeats, arbitrators, election, takeover.

Every HA component (CLC, Walrus, CC, SC) runs one ``HAAgent`` in its own event loop.
The design and its guarantees are in docs/ha.md; in short:

* Heartbeats every ``interval`` over two paths (the pair's heartbeat link and the
  cloud network). The peer is dead when nothing arrived on any path for
  ``misses x interval`` (the window). Cutting one path never causes a failover.
  Each heartbeat is sealed with the pair's key (HMAC-SHA256 over all of it) and taken
  only from the peer's planned addresses, and only when newer than the last one heard
  (boot, seq): a forged, garbled or replayed one changes nothing (docs/security.md).
* Arbitrators ping external entities (the border gateway, the external site) with
  ICMP. Some failing: advisory. All failing on the ENABLED member: it goes NOTREADY
  (fail-stop), drops its VIPs and says so at once on the heartbeat link; the peer
  takes over unless its own arbitrators all fail too.
* One ENABLED member. Promotion takes epoch = highest seen + 1 (persisted first);
  a member hearing a higher epoch while ENABLED steps down at once. Elections
  order members by (epoch, replicated state, configured priority): the member with
  the newest data wins, and a member that lacks acknowledged writes never promotes.
* A lease: the ENABLED member serves only while its last heartbeat went out less
  than a window ago, so its peer cannot have declared it dead yet. A member whose
  own loop ran late by more than the window (SIGSTOP, starvation) is fenced: it
  refuses every request until its peer has answered a heartbeat sent after the
  freeze, then steps down if the peer took over.
* A planned switchover (``transition("DISABLE")`` on the ENABLED member, Eucalyptus's
  ModifyService) loses no request: new requests are held, those in flight finish, the
  member turns DISABLED with a heartbeat that offers the pair; the caught-up peer takes
  it at once (a new epoch, the VIPs); the held requests, and any that still reach the
  old member while caches learn where the VIPs went, are forwarded to the new primary;
  only then does the old member let its VIPs go. STOPPED (maintenance) serves nothing,
  keeps heartbeating and never takes over: no failover towards a member stopped on purpose.
* Takeover adds the VIPs and sends gratuitous ARP (EUCA-2281 forgot this), or, for a
  VIP with takeover sdn, tells the SDN controller (with the epoch) to steer the VIP's
  fixed virtual MAC here: nobody's ARP cache has to change.

The agent (agent.py) is a facade over one part per concern, each a module of this package:
heartbeats.py (sealing, sending, receiving, judging heartbeats), heartbeat_thread.py (the
heartbeats' own thread, off the event loop), ticker.py (the ticker, the
pause detector, the silence deadline and the lease), decision.py (the state machine: decide,
promote, demote, the freeze fence), epochs.py (epochs and incarnations on disk), vips.py
(acquire, announce, redirect, release), arbitration.py (the arbitrators' rounds) and
switchover.py (operator transitions: the planned switchover and maintenance).

Everything that touches time, the network or the host is injectable (``clock``,
``transport``, ``run`` for `ip addr`, ``garp``, ``redirect``, ``offload``), so tests/unit/test_ha_*.py drive two agents
through the fault table without root or real time.
"""

from .agent import HAAgent
from .heartbeats import seal, unseal
from .model import (DISABLED, ENABLED, EPOCH_LOW_WATER, EPOCH_RESERVE, GARP_SCHEDULE_S, HANDOVER_AFTER_PROMOTE_S,
                    HANDOVER_DRAIN_S, HANDOVER_TIMEOUT_S, MAX_COUNTER, MAX_EPOCH, NOT_SERVING, NOTREADY,
                    REJECT_REPORT_S, STATES, STOPPED, TAG_BYTES, TRANSITION_FOR_STATE, TRANSITIONS, Arbitrator,
                    Handover, Peer, TransitionError, _mono)

__all__ = ["HAAgent", "seal", "unseal", "Arbitrator", "Handover", "Peer", "TransitionError", "_mono",
           "DISABLED", "ENABLED", "NOTREADY", "STOPPED", "STATES", "NOT_SERVING", "GARP_SCHEDULE_S",
           "TRANSITIONS", "TRANSITION_FOR_STATE", "HANDOVER_DRAIN_S", "HANDOVER_AFTER_PROMOTE_S",
           "HANDOVER_TIMEOUT_S", "EPOCH_RESERVE", "EPOCH_LOW_WATER", "MAX_EPOCH", "MAX_COUNTER", "TAG_BYTES",
           "REJECT_REPORT_S"]
