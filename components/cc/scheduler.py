"""Instance scheduling over a cluster's NCs, with Eucalyptus's policies (SCHEDPOLICY).

* ROUNDROBIN (Eucalyptus's default): the next NC after the last one used that has a free slot.
* GREEDY: the first NC (in order) with a free slot, filling NCs one by one.
* POWERSAVE: like GREEDY, but prefers NCs already running instances, so idle NCs
  could be powered down.

Pure: the scheduler sees capacities and usage, never the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

POLICIES = ("ROUNDROBIN", "GREEDY", "POWERSAVE")


class InsufficientCapacity(Exception):
    """Fewer free VM slots than instances asked for."""


@dataclass
class NodeState:
    name: str
    slots: list[str]  # slot host names, in order
    used: dict[str, str] = field(default_factory=dict)  # slot -> instance id
    healthy: bool = True

    def free_slots(self) -> list[str]:
        return [s for s in self.slots if s not in self.used]


class Scheduler:
    """Chooses (NC, slot) for new instances; all-or-nothing per request."""

    def __init__(self, nodes: list[NodeState], policy: str = "ROUNDROBIN"):
        policy = policy.upper()
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose from {', '.join(POLICIES)}")
        self.nodes = {n.name: n for n in nodes}
        self.order = [n.name for n in nodes]
        self.policy = policy
        self._next = 0  # round-robin cursor

    def capacity(self) -> dict:
        total = sum(len(n.slots) for n in self.nodes.values() if n.healthy)
        free = sum(len(n.free_slots()) for n in self.nodes.values() if n.healthy)
        return {"total": total, "free": free,
                "nodes": {n.name: {"slots": len(n.slots), "free": len(n.free_slots()), "healthy": n.healthy}
                          for n in self.nodes.values()}}

    def place(self, instance_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Assign each instance an (NC, slot); raises InsufficientCapacity and assigns nothing."""
        if self.capacity()["free"] < len(instance_ids):
            raise InsufficientCapacity(
                f"{len(instance_ids)} instance(s) asked for, {self.capacity()['free']} VM slot(s) free")
        placed: dict[str, tuple[str, str]] = {}
        for iid in instance_ids:
            node = self._pick()
            slot = node.free_slots()[0]
            node.used[slot] = iid
            placed[iid] = (node.name, slot)
        return placed

    def _pick(self) -> NodeState:
        candidates = [self.nodes[n] for n in self.order if self.nodes[n].healthy and self.nodes[n].free_slots()]
        if self.policy == "GREEDY":
            return candidates[0]
        if self.policy == "POWERSAVE":
            busy = [n for n in candidates if n.used]
            return (busy or candidates)[0]
        count = len(self.order)
        for step in range(count):
            name = self.order[(self._next + step) % count]
            node = self.nodes[name]
            if node.healthy and node.free_slots():
                self._next = (self.order.index(name) + 1) % count
                return node
        raise InsufficientCapacity("no free VM slot")  # unreachable after the capacity check

    def release(self, instance_id: str) -> tuple[str, str] | None:
        """Free the slot of an instance; returns where it was."""
        for node in self.nodes.values():
            for slot, iid in list(node.used.items()):
                if iid == instance_id:
                    del node.used[slot]
                    return node.name, slot
        return None

    def occupy(self, nc: str, slot: str, instance_id: str) -> None:
        """Record an instance already running (rebuilding the view after a restart)."""
        node = self.nodes[nc]
        if slot not in node.slots:
            raise KeyError(f"{nc} has no slot {slot}")
        holder = node.used.get(slot)
        if holder not in (None, instance_id):
            raise ValueError(f"slot {slot} of {nc} already holds {holder}")
        node.used[slot] = instance_id
