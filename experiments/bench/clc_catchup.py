"""CLC catch-up timing: a DISABLED member N ops behind its ENABLED peer, no root, loopback only.

    eucalab bench clc-catchup 5000 50000   (or python -m experiments.bench.clc_catchup)

Two real CLC services in this process on loopback, the HA agent's view of the peer set
by hand (as tests/unit/test_clc_replication.py does). For each N the ENABLED member
writes N ops (launch, run, terminate one instance, over and over), then:

* pull: the empty DISABLED member learns the peer is ENABLED at N and catches up (what
  a member does after stepping down and resetting); the time includes up to one
  catch-up poll (0.2 s);
* push: a DISABLED member at 0 and one write: the time for ``replicate()``, i.e. before
  the write may be acknowledged, or refused (503) when the peer did not get it.

A ticker task wakes every millisecond on the shared event loop; its worst lateness is
the longest the loop was held (both members' work counts: the worst of either side).
Runs on older code as well, for a before/after figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestServer

from components.clc.ec2 import EC2Error
from components.clc.service import CloudController
from components.common.config import validate_config

from ..testbed.loopback import free_port

TOKEN = "bench-token"
TICK_S = 0.001


def _member(tmp: Path, name: str, state: str, port: int) -> CloudController:
    return CloudController(validate_config({
        "host": name, "component": "clc", "listen_host": "127.0.0.1", "port": port, "state": state,
        "role": "primary" if state == "ENABLED" else "secondary", "data_dir": str(tmp / name),
        "events_path": str(tmp / f"{name}.jsonl"), "internal_token": TOKEN, "pair": {"name": "clc"},
        "ha": {"peer_addresses": ["127.0.0.1"], "listen": ["127.0.0.1"], "secret": secrets.token_hex(32)}}))


def _fill(member: CloudController, n: int) -> None:
    i = 0
    while member.store.last_seq < n:
        iid = f"i-{i:08x}"
        for op in ({"type": "instances.create", "account": "000000000001", "reservation": f"r-{i:08x}",
                    "image": "emi-00000001", "zone": "cluster1", "instance_type": "m1.small",
                    "groups": ["sg-00000001"], "time": 1.0, "key_name": None,
                    "instances": [{"id": iid, "launch_index": 0}]},
                   {"type": "instance.update", "id": iid, "state": "running", "private_ip": "10.1.0.5"},
                   {"type": "instance.update", "id": iid, "state": "terminated", "reason": "user"}):
            if member.store.last_seq < n:
                member.store.apply(op)
        i += 1


class Ticker:
    """The longest the event loop went without running this task, beyond its sleep."""

    def __init__(self):
        self.worst = 0.0
        self._slept = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._slept = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.worst = max(self.worst, time.perf_counter() - self._slept - TICK_S)

    async def stop(self) -> float:
        """The worst lateness, counting the sleep still pending (the last hold ends the run)."""
        self._task.cancel()
        return max(self.worst, time.perf_counter() - self._slept - TICK_S)


@contextlib.asynccontextmanager
async def _pair(n: int, serving: str):
    """An ENABLED member holding ``n`` ops and an empty DISABLED one, ``serving`` ("clc1" or
    "clc2") behind a TestServer and the other started as its client; everything (the
    members, the server, the scratch directory) is gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="clc-catchup-") as name:
        tmp, port = Path(name), free_port()
        members = {"clc1": _member(tmp, "clc1", "ENABLED", port), "clc2": _member(tmp, "clc2", "DISABLED", port)}
        _fill(members["clc1"], n)
        client = members["clc2" if serving == "clc1" else "clc1"]
        server = TestServer(members[serving].app, host="127.0.0.1", port=port)
        await server.start_server()
        await client.on_start()
        try:
            yield members["clc1"], members["clc2"]
        finally:
            await client.on_stop()
            await server.close()


async def _pull(n: int) -> tuple[float, float, str]:
    async with _pair(n, serving="clc1") as (_, secondary):
        ticker = Ticker()
        t0 = time.perf_counter()
        secondary.ha.peer.heard, secondary.ha.peer.state = float("inf"), "ENABLED"
        secondary.ha.peer.last_seq = n
        while secondary.store.last_seq < n:
            await asyncio.sleep(0.002)
        took = time.perf_counter() - t0
        return took, await ticker.stop(), "caught up"


async def _push(n: int) -> tuple[float, float, str]:
    async with _pair(n, serving="clc2") as (primary, secondary):
        primary.ha.peer.heard, primary.ha.peer.state = float("inf"), "DISABLED"
        ticker = Ticker()
        t0 = time.perf_counter()
        try:
            await primary.replicate(n)
            outcome = "acknowledged"
        except EC2Error as exc:  # the write may not be acknowledged
            outcome = f"refused ({exc.status})"
        took = time.perf_counter() - t0
        worst = await ticker.stop()
        return took, worst, outcome + f", the peer at {secondary.store.last_seq}"


async def main(sizes: list[int]) -> None:
    for n in sizes:
        for name, run in (("pull", _pull), ("push", _push)):
            took, worst, outcome = await run(n)
            print(f"{name} {n:>6} ops behind: {took * 1000:5.0f} ms, longest event-loop hold "
                  f"{worst * 1000:6.1f} ms ({outcome})", flush=True)


def run(sizes: list[int]) -> int:
    """Print the pull and push figures for each N of ``sizes``."""
    asyncio.run(main(sizes))
    return 0


if __name__ == "__main__":
    sys.exit(run([int(a) for a in sys.argv[1:]] or [5000, 50000]))
