"""What each Eucalyptus networking mode (VNET_MODE) offers: the one table of features.

Kept here, below every component and the topology code (which both import it), so the
CLC's refusals, the CC, the controller, ``eucalab describe`` and the README say the
same thing. The rows follow Eucalyptus 3.x's own pages per mode (the eucalyptus/documentation
repository, ``ig/planning_system.dita``, ``ig/planning_static.dita``,
``ig/planning_managed_novlan.dita``, ``ig/planning_managed.dita``):

* SYSTEM: no elastic IPs, no security groups, no VM isolation; instances bridged onto
  the physical network, addresses from the site's DHCP.
* STATIC: the same limitations; the CC hands out addresses from a configured map.
* MANAGED-NOVLAN: elastic IPs and security groups, the CC routing every group's subnet
  and filtering between them at layer 3; no layer-2 isolation (an instance can sniff or
  disturb the frames of others on the same segment).
* MANAGED: all of that plus one VLAN per security group (layer-2 isolation).
* EDGE (Eucalyptus 4.x, which dropped the CC-as-router modes for it): no CC in the
  instances' path, the site's router routes the cluster network as in SYSTEM, and every
  NC enforces the security groups of the instances it hosts, translates their elastic
  IPs and passes their metadata requests on. Eucalyptus did it with a per-NC agent
  (eucanetd) writing ebtables, ipset and iptables rules on the NC's bridge; here the
  SDN controller's flows on each NC's Open vSwitch bridge do it (controllers/edge.py,
  ``edge_flows``), and the NC proxies the metadata service (components/nc/metadata.py).

The metadata service: Eucalyptus's CC redirected 169.254.169.254 to the CLC as part of
the network it manages (its MANAGED-mode set-up in the cluster controller's vnetwork
code); in SYSTEM and STATIC the CC is not on the instances' path, so whether an instance
reached the metadata service depended on the site routing that address to the CLC.
This testbed's site does not: in SYSTEM and STATIC it offers no metadata service, and
says so here rather than pretending.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("SYSTEM", "STATIC", "MANAGED-NOVLAN", "MANAGED", "EDGE")


@dataclass(frozen=True)
class ModeFeatures:
    elastic_ips: bool
    security_groups: bool  # groups and their ingress rules are enforced
    l2_isolation: bool  # one VLAN per security group
    metadata: bool  # 169.254.169.254 answers from inside an instance
    anti_spoofing: str
    cc_routes: str
    cc_router: bool = False  # the primary CC routes the cluster's private network (MANAGED modes)
    enforced_by: str = "the CC (layer 3)"  # where security groups are enforced
    isolation: str = ""  # layer-2 isolation, said when it is not one VLAN per group

    def rows(self) -> list[tuple[str, str]]:
        """(feature, value) in the order the README and ``eucalab describe`` show them."""
        return [("elastic IPs", "yes" if self.elastic_ips else "no (the API refuses them)"),
                ("security groups and rules",
                 f"enforced by {self.enforced_by}" if self.security_groups else "no (the API refuses rules)"),
                ("layer-2 isolation", "one VLAN per group" if self.l2_isolation else self.isolation or "no"),
                ("metadata service", ("169.254.169.254, via the " + ("CC" if self.cc_router else "NC"))
                 if self.metadata else "no"),
                ("anti-spoofing", self.anti_spoofing),
                ("what the CC routes", self.cc_routes)]


_FLAT_ROUTES = "nothing: the site's router routes the instances"
_MANAGED_ROUTES = "every group's subnet, elastic IPs (NAT) and the metadata redirect"
_EDGE_ROUTES = "nothing: the site's router routes the instances; each NC translates its instances' elastic IPs"

FEATURES: dict[str, ModeFeatures] = {
    "SYSTEM": ModeFeatures(False, False, False, False, "no", _FLAT_ROUTES),
    "STATIC": ModeFeatures(False, False, False, False, "no", _FLAT_ROUTES),
    "MANAGED-NOVLAN": ModeFeatures(True, True, False, True, "no", _MANAGED_ROUTES, cc_router=True),
    "MANAGED": ModeFeatures(True, True, True, True, "with sdn: true, the switches' flows", _MANAGED_ROUTES,
                            cc_router=True),
    "EDGE": ModeFeatures(True, True, False, True, "each NC's bridge (the SDN controller's flows)", _EDGE_ROUTES,
                         enforced_by="each NC's bridge, per instance",
                         isolation="no VLANs; each NC's bridge passes a frame between two instances only where "
                                   "their groups allow it"),
}

# The modes whose CC routes a private network (elastic IPs, groups, the metadata redirect).
MANAGED_MODES = tuple(m for m in MODES if FEATURES[m].cc_router)
# The modes whose NCs' bridges enforce the groups: the SDN controller must run.
NC_ENFORCED_MODES = ("EDGE",)


def features(mode: str) -> ModeFeatures:
    try:
        return FEATURES[mode]
    except KeyError:
        raise ValueError(f"unknown networking mode {mode!r}; choose from {', '.join(MODES)}") from None


def table_markdown() -> str:
    """The README's table: one column per mode."""
    head = ["| feature | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
    rows = [FEATURES[m].rows() for m in MODES]
    return "\n".join(head + ["| " + name + " | " + " | ".join(r[i][1] for r in rows) + " |"
                             for i, (name, _) in enumerate(rows[0])])
