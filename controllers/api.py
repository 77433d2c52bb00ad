"""The intent API: HTTP/1.1 over the run directory's Unix socket ``control.sock``.

CCs run in network namespaces of their own, where the controller's loopback is out
of reach; the run directory's filesystem is shared, so a Unix socket reaches every
emulated host. Standard library only (os-ken 4.x's native hub has no WSGI server).

    PUT /intent/clusters/{k}   200 {"accepted": true, "epoch": E, ...}
                               409 {"error": "stale epoch", "current": E}
                               400 {"error": "<field>: <what is wrong>"}
    PUT /intent/clusters/{k}/standby
                               200 {"accepted": true, "epoch": E, "staged": bool, ...}  (a withdrawn secondary CC)
                               409 {"error": "stale epoch" | "no intent of that epoch yet" | "<host> is the primary",
                                    "current": E (the accepted intent's)}
                               400 {"error": "<field>: <what is wrong>"}
    GET /intent                {"clusters": {"1": intent, ...}}
    GET /intent/standby        {"clusters": {"1": {"host", "epoch", "staged"}, ...}}
    PUT /vips/{pair}           200 {"accepted": true, "epoch": E, "primary": host, ...}  (takeover sdn)
                               409 {"error": "stale epoch", "current": E}
                               400 {"error": "<field>: <what is wrong>"}
    GET /vips                  {"pairs": {"clc": {"pair", "epoch", "primary", "mac"}, ...}}
    GET /health                {"status": "ok", "switches": ..., "synced": ...}
"""

from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from components.common import control

from .intent import IntentError, StaleEpoch, staged_standby, validate_standby
from .vips import virtual_mac

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024
_CLUSTER_PATH = re.compile(r"^/intent/clusters/(\d+)$")
_STANDBY_PATH = re.compile(r"^/intent/clusters/(\d+)/standby$")
_VIP_PATH = re.compile(r"^/vips/([a-z0-9]+)$")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "eucalab-sdn"

    def address_string(self) -> str:  # a Unix socket peer has no address
        return "unix"

    def log_message(self, fmt, *args) -> None:
        log.debug("api: " + fmt, *args)

    def _reply(self, status: int, body: dict) -> None:
        """Answer; a client that has gone meanwhile (its own timeout) is recorded as an
        ``api.client_gone`` event, not a traceback: what it asked for has been done."""
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close_connection = True
            self.server.api._emit("api.client_gone", path=self.path, status=status, error=type(exc).__name__)

    def do_GET(self) -> None:  # noqa: N802
        api: IntentAPI = self.server.api
        if self.path == "/health":
            self._reply(200, api.health())
        elif self.path == "/intent":
            self._reply(200, {"clusters": {str(k): v for k, v in sorted(api.store.snapshot().items())}})
        elif self.path == "/intent/standby":
            self._reply(200, {"clusters": api.standby_table()})
        elif self.path == "/vips":
            self._reply(200, {"pairs": api.vip_table()})
        else:
            self._reply(404, {"error": f"no resource {self.path}"})

    def do_PUT(self) -> None:  # noqa: N802
        api: IntentAPI = self.server.api
        cluster, vip = _CLUSTER_PATH.match(self.path), _VIP_PATH.match(self.path)
        standby = _STANDBY_PATH.match(self.path)
        if not cluster and not vip and not standby:
            self._reply(404, {"error": f"no resource {self.path}"})
            return
        what = "intent" if cluster else "standby" if standby else "redirect"
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": f"{what} larger than {MAX_BODY} bytes"})
            return
        raw = self.rfile.read(length)
        # When it arrived, apart from when it was accepted (after the one before it).
        api._emit(f"{what}.received", path=self.path, bytes=length)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._reply(400, {"error": f"{what}: not JSON ({exc})"})
            return
        if cluster:
            status, answer = api.put(int(cluster.group(1)), body)
        elif standby:
            status, answer = api.put_standby(int(standby.group(1)), body)
        else:
            status, answer = api.put_vip(vip.group(1), body)
        self._reply(status, answer)


class IntentAPI:
    """Validates, stores and applies intents, standby reports and VIP redirects; ``apply``,
    ``apply_standby`` and ``apply_redirect`` are the fabric's (or a test's)."""

    def __init__(self, store, apply, health=None, events=None, vips=None, apply_redirect=None,
                 standbys=None, apply_standby=None):
        self.store = store
        self._apply = apply
        self.vips = vips
        self._apply_redirect = apply_redirect
        self.standbys = standbys
        self._apply_standby = apply_standby
        self._health = health or (lambda: {})
        self.events = events
        # Checked and stored one request at a time, in arrival order. Applied outside the
        # lock: the fabric pushes the newest accepted state (under its own lock), so a
        # request never waits on another's barriers (up to barrier_timeout for a switch
        # that does not answer), and an older request's push is never the last word.
        self._lock = threading.Lock()

    def put(self, cluster: int, body) -> tuple[int, dict]:
        with self._lock:
            stored, refusal = self._put_checked("intent", self.store, cluster, {"cluster": cluster}, body, ("epoch",))
            if refusal is not None:
                return refusal
            intent, previous = stored
            self._emit("intent.accepted", cluster=cluster, epoch=intent["epoch"], primary_cc=intent["primary_cc"],
                       groups=len(intent["groups"]), instances=len(intent["instances"]))
        result = self._apply(intent, previous)
        return 200, {"accepted": True, "epoch": intent["epoch"], **result}

    def _put_checked(self, kind: str, store, key, who: dict, body, stale: tuple[str, ...]):
        """``store.put(key, body)`` (the caller holds the lock): ((new, previous), None) when
        accepted, else (None, the answer): 400 when invalid, 409 below the newest epoch, each
        said in a ``<kind>.rejected`` or ``<kind>.stale`` event (with the body's ``stale`` fields)."""
        try:
            return store.put(key, body), None
        except IntentError as exc:
            self._emit(f"{kind}.rejected", **who, error=str(exc))
            return None, (400, {"error": str(exc)})
        except StaleEpoch as exc:
            self._emit(f"{kind}.stale", **who, **{f: body.get(f) for f in stale}, current=exc.current)
            return None, (409, {"error": "stale epoch", "current": exc.current})

    def put_standby(self, cluster: int, body) -> tuple[int, dict]:
        """A secondary CC that holds none of the router's addresses asks to be kept ready
        (``intent.staged_standby``).

        Validated first (400 naming the field). Refused (409, ``current`` the epoch of the
        cluster's accepted intent) from the intent's own primary (it routes already) and
        when its epoch is not the intent's: below it, the report may predate a newer
        primary (its sender may have been primary since); above it, the intent of that
        epoch has not arrived yet (the reporter asks again)."""
        if self.standbys is None:
            return 404, {"error": "this controller keeps no standby CCs"}
        with self._lock:
            try:
                clean = validate_standby(body, cluster, self.store.topo)
            except IntentError as exc:
                self._emit("standby.rejected", cluster=cluster, error=str(exc))
                return 400, {"error": str(exc)}
            host, epoch = clean["host"], clean["epoch"]
            intent = self.store.snapshot().get(cluster)
            if intent is not None and host == intent["primary_cc"]:
                self._emit("standby.refused", cluster=cluster, host=host, epoch=epoch, current=intent["epoch"])
                return 409, {"error": f"{host} is the primary", "current": intent["epoch"]}
            if intent is not None and epoch != intent["epoch"]:
                self._emit("standby.stale", cluster=cluster, host=host, epoch=epoch, current=intent["epoch"])
                return 409, {"error": "stale epoch" if epoch < intent["epoch"] else "no intent of that epoch yet",
                             "current": intent["epoch"]}
            standby, _ = self.standbys.put(cluster, clean)
            staged = staged_standby(intent, standby) == host
            self._emit("standby.accepted", cluster=cluster, host=host, epoch=epoch, staged=staged)
        result = self._apply_standby(cluster, standby, staged)
        return 200, {"accepted": True, "epoch": epoch, "staged": staged, **result}

    def standby_table(self) -> dict:
        """Every cluster's standby report and whether the switches hold it ready now."""
        if self.standbys is None:
            return {}
        intents = self.store.snapshot()
        return {str(k): dict(v, staged=staged_standby(intents.get(k), v) == v["host"])
                for k, v in sorted(self.standbys.snapshot().items())}

    def put_vip(self, pair: str, body) -> tuple[int, dict]:
        """A promoted member claims its pair's VIP (takeover sdn); refused below the newest epoch."""
        if self.vips is None:
            return 404, {"error": "this controller steers no VIPs"}
        with self._lock:
            stored, refusal = self._put_checked("vip", self.vips, pair, {"pair": pair}, body, ("epoch", "primary"))
            if refusal is not None:
                return refusal
            redirect, previous = stored
            self._emit("vip.accepted", pair=pair, epoch=redirect["epoch"], primary=redirect["primary"])
        result = self._apply_redirect(redirect, previous)
        return 200, {"accepted": True, "epoch": redirect["epoch"], "primary": redirect["primary"], **result}

    def vip_table(self) -> dict:
        """Every steered pair with its virtual MAC and the accepted redirect (primary null before one)."""
        if self.vips is None:
            return {}
        accepted = self.vips.snapshot()
        return {name: {"pair": name, "vip": p["vip"], "mac": virtual_mac(p["vip"]),
                       "epoch": accepted.get(name, {}).get("epoch"),
                       "primary": accepted.get(name, {}).get("primary")}
                for name, p in sorted(self.vips.topo.redirected_pairs().items())}

    def health(self) -> dict:
        return {"status": "ok", **self._health()}

    def _emit(self, event: str, **fields) -> None:
        if self.events is not None:
            self.events.emit(event, **fields)


def serve(path: str | Path, api: IntentAPI, on_exit=None) -> _Server:
    """Listen on the Unix socket ``path`` in a thread of its own; ``shutdown()`` ends it.
    ``on_exit(error)`` is called from that thread when it ends: ``error`` is the exception
    that ended it, or None (ended by ``shutdown()``)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        path.unlink()  # left by a controller that was killed
    with control.reachable(path) as name:  # a run directory may be too deep for its plain path
        server = _Server(name, _Handler)
    os.chmod(path, 0o660)
    server.api = api

    def run() -> None:
        error = None
        try:
            server.serve_forever()
        except BaseException as exc:  # noqa: BLE001 (reported to the launcher, which exits)
            error = exc
            log.exception("the intent API thread died")
        finally:
            if on_exit is not None:
                on_exit(error)

    threading.Thread(target=run, name="intent-api", daemon=True).start()
    return server
