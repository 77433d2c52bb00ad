"""VIP redirects (takeover sdn): which member of an HA pair receives its cloud VIP, with the epoch rule.

With ``ha.takeover: sdn`` a pair's service VIP on the cloud network keeps one
virtual MAC for the life of the deployment; the switches answer ARP for the VIP
with it and steer frames sent to it to the pair's current primary (docs/ha.md).
A member that promotes tells the controller ``{"pair", "epoch", "primary"}``;
a redirect with an epoch below the newest accepted for the pair is refused, so a
resumed ex-primary never pulls the VIP back. Pure apart from the file it writes.
"""

from __future__ import annotations

import ipaddress

from .intent import EpochStore, IntentError
from .topology import Topology

# Locally administered, unicast (0x02 in the first octet), then the VIP's four bytes:
# unique per pair since VIPs are, and never a host's (the plan's MACs are 02:ec:...).
VIRTUAL_MAC_PREFIX = "02:ee"


def virtual_mac(vip: str) -> str:
    """The pair's virtual MAC, derived from its service VIP: 10.0.0.10 -> 02:ee:0a:00:00:0a."""
    return VIRTUAL_MAC_PREFIX + "".join(f":{b:02x}" for b in ipaddress.IPv4Address(vip).packed)


def validate(body, pair: str, topo: Topology) -> dict:
    """Check a redirect; returns it. Raises IntentError naming the first offending field."""
    if not isinstance(body, dict):
        raise IntentError("redirect: expected a JSON object")
    extra = sorted(set(body) - {"pair", "epoch", "primary"})
    if extra:
        raise IntentError(f"redirect: unknown field(s) {', '.join(extra)}")
    pairs = topo.redirected_pairs()
    if pair not in pairs:
        known = ", ".join(sorted(pairs)) or "none: the deployment's takeover is not sdn"
        raise IntentError(f"redirect.pair: {pair!r} is not an HA pair whose VIP the controller steers ({known})")
    if body.get("pair") != pair:
        raise IntentError(f"redirect.pair: {body.get('pair')!r} does not match the URL's pair {pair!r}")
    epoch = body.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise IntentError(f"redirect.epoch: expected an int >= 0, got {epoch!r}")
    members = [pairs[pair]["primary"], pairs[pair]["secondary"]]
    if body.get("primary") not in members:
        raise IntentError(f"redirect.primary: {body.get('primary')!r} is not a member of {pair} "
                          f"({', '.join(members)})")
    return {"pair": pair, "epoch": epoch, "primary": body["primary"]}


class VipStore(EpochStore):
    """The accepted redirect of every pair: ``<dir>/vips.json`` holds {"pairs": {pair: redirect}}.
    An equal epoch is accepted (the primary asserting itself again, or the driver placing
    the VIP before the pair has elected)."""

    file, section = "vips.json", "pairs"

    def _validate(self, body, key) -> dict:
        return validate(body, key, self.topo)
