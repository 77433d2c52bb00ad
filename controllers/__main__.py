"""The SDN controller launcher: ``python -m controllers --run-dir RUN --port P``.

One os-ken process in the root namespace owns every bridge of the deployment (it
listens on loopback; the bridges are fail-secure). It reads ``RUN/topology.json``,
serves the intent API on ``RUN/control.sock``, keeps accepted intents, standby
reports, VIP redirects and its events under ``RUN/controller/``, and logs ``controller.ready`` once every switch
is connected and synchronised.

SIGTERM and SIGINT end it cleanly with exit code 0. If the API's thread dies, the
controller logs ``controller.api_died`` and exits with code 1: a controller nobody can
reach must not look alive (the deployment reports its exit). os-ken's native hub cannot stop
its threads (HubThread has no kill(); run_apps raises on shutdown and a run_apps
process ignored SIGINT here), so the main thread keeps the signals, closes the
API, logs ``controller.stop`` and leaves with os._exit: the switches keep their
flows and the next controller resynchronises from the stored intent.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from components.common import control
from components.common.events import EventLog

from .api import IntentAPI, serve
from .intent import IntentStore, StandbyStore
from .topology import Topology
from .vips import VipStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controllers", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int, help="OpenFlow port on the listen host")
    parser.add_argument("--host", default="127.0.0.1", help="OpenFlow listen address (loopback)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = args.run_dir.resolve()
    topology_file = run_dir / "topology.json"
    if not topology_file.exists():
        print(f"no {topology_file}: the deployment writes it before starting the controller", file=sys.stderr)
        return 2
    cdir = run_dir / "controller"
    cdir.mkdir(parents=True, exist_ok=True)
    events = EventLog(cdir / "events.jsonl", host="controller", component="controller")

    stop = threading.Event()
    received: list[int] = []
    api_died: list[BaseException | None] = []  # the API thread's end, when it was not ours

    def on_signal(signum, frame):
        received.append(signum)
        stop.set()

    def on_api_exit(error: BaseException | None) -> None:
        if not stop.is_set():  # not our own shutdown
            api_died.append(error)
            stop.set()

    # SIGUSR1 dumps every thread's stack to the log: os-ken runs many threads.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    topo = Topology.load(topology_file)
    store = IntentStore(cdir, topo)
    vips = VipStore(cdir, topo)
    standbys = StandbyStore(cdir, topo)
    from . import oskit  # os-ken only once the process is set up

    fabric = oskit.start(topo, store, vips, standbys, events, args.host, args.port)
    api = IntentAPI(store, fabric.apply, events=events, vips=vips, apply_redirect=fabric.apply_redirect,
                    standbys=standbys, apply_standby=fabric.apply_standby,
                    health=lambda: {"switches": len(topo.switches), "synced": len(fabric.synced),
                                    "clusters": {str(k): v["epoch"] for k, v in store.snapshot().items()},
                                    "vips": {k: v["epoch"] for k, v in vips.snapshot().items()}})
    server = serve(control.socket_path(run_dir), api, on_exit=on_api_exit)
    events.emit("controller.start", pid=os.getpid(), port=args.port,
                intents={str(k): v["epoch"] for k, v in store.snapshot().items()})
    while not stop.wait(0.5):
        pass
    if not api_died:
        server.shutdown()
    server.server_close()
    for s in (store, vips, standbys):
        s.flush()
    control.socket_path(run_dir).unlink(missing_ok=True)
    if api_died:
        logging.getLogger(__name__).error("the intent API thread died (%r): exiting with code 1", api_died[0])
        events.emit("controller.api_died", error=repr(api_died[0]))
    else:
        events.emit("controller.stop", signal=signal.Signals(received[0]).name)
    events.close()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if api_died else 0)


if __name__ == "__main__":
    sys.exit(main())
