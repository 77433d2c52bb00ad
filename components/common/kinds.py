"""The components of a eucalab cloud, said once (after IPMininet's ``Daemon``, which carries
a daemon's name, start order and dependencies on its class).

Each kind has its name (also its package, ``components/<name>/``), what Eucalyptus
calls it, whether it runs as an HA pair, and which kinds must be serving before it
starts, with the reason. The start order follows from those dependencies; everything
that lists components (the config validator, the internal callers' roles, the spec's
pairs, the deployment's start order) reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    title: str
    paired: bool  # runs as a primary/secondary HA pair
    needs: tuple[str, ...] = ()  # kinds serving before this one starts
    why: str = ""  # what it needs them for at start


KINDS = (
    Kind("clc", "Cloud Controller", paired=True),
    Kind("walrus", "Walrus", paired=True, needs=("clc",), why="asks the CLC who owns an access key"),
    Kind("cc", "Cluster Controller", paired=True, needs=("nc",),
         why="rebuilds its view of the instances from its NCs when it starts"),
    Kind("sc", "Storage Controller", paired=True),
    Kind("nc", "Node Controller", paired=False, needs=("walrus",), why="fetches the images it boots from Walrus"),
)
NAMES = tuple(k.name for k in KINDS)
PAIRED = tuple(k.name for k in KINDS if k.paired)


def start_order(kinds: tuple[Kind, ...] = KINDS) -> tuple[str, ...]:
    """Names in an order where every kind starts after what it needs (among equals, the
    table's order). Raises ValueError on an unknown or circular dependency."""
    known = {k.name for k in kinds}
    for k in kinds:
        if set(k.needs) - known:
            raise ValueError(f"{k.name} needs unknown kinds {sorted(set(k.needs) - known)}")
    order: list[str] = []
    while len(order) < len(kinds):
        ready = next((k for k in kinds if k.name not in order and set(k.needs) <= set(order)), None)
        if ready is None:
            raise ValueError(f"circular dependencies among {sorted(known - set(order))}")
        order.append(ready.name)
    return tuple(order)


START_ORDER = start_order()
