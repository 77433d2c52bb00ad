"""The aiohttp service skeleton every component process is built on.

A component subclasses ``Service``, adds its routes in ``setup_routes`` and runs as

    python -m components.<name> --config FILE

It gets: the config, an ``EventLog``, a Eucalyptus service state with
``set_state`` (emitting ``state.change``), ``GET /health`` and ``GET /status``, a
gate that answers API requests with the API's own 503 error unless the service
may serve (ENABLED, and, under HA, not fenced), role checks for component-to-component
routes (``require_internal``), and clean shutdown on SIGTERM/SIGINT (exit 0).

Internal credentials (docs/security.md): every role (clc, walrus, cc, sc, nc, and the
operator, the testbed driving the run) has a token of its own. A component's config
holds its own role's token (``internal_token``, sent on its calls) and, for checking
callers, only the SHA-256 digests of every role's token (``internal_callers``): reading
an NC's config gives no credential but the NC's. A route names the roles that may call
it; the operator may call any. Without ``internal_callers`` (a component run alone, as
unit tests do) its one ``internal_token`` is the operator's.

Eucalyptus's service API, member side: ``GET /internal/service`` says this member's
state and epoch, ``POST /internal/service/{transition}`` starts an operator's transition
(START, STOP, ENABLE, DISABLE, RESTART; the CLC's ModifyService calls it). During a
planned switchover the gate holds new API requests, then forwards them (and whatever still
reaches this member) to the new primary (components/common/ha/switchover.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import sys
import time
from typing import Callable

import aiohttp
from aiohttp import web

from .config import ConfigError, load_config
from .events import EventLog
from .kinds import NAMES
from .states import ServiceState

INTERNAL_TOKEN_HEADER = "X-Eucalab-Internal-Token"
# The instance a relayed metadata request is for (an EDGE NC's relay to the CLC), named by
# its address; the CLC takes it only with the nc role's token.
INSTANCE_HEADER = "X-Eucalab-Instance-Address"
OPERATOR = "operator"
ROLES = (*NAMES, OPERATOR)


def token_digest(token: str) -> str:
    """What a component keeps of a role's token to recognise it: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()
# Headers that belong to one connection, not to the request (RFC 9110, 7.6.1): a forwarded
# request or answer does not carry them on.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "content-length"))
FORWARD_CHUNK = 2**16
# Large enough for multi-megabyte objects and images; Walrus streams bigger bodies.
MAX_BODY = 64 * 2**20

log = logging.getLogger(__name__)


def scheduler_policy(inherited: bool) -> int:
    """SCHED_FIFO, with SCHED_RESET_ON_FORK unless what the process starts inherits it."""
    return os.SCHED_FIFO if inherited else os.SCHED_FIFO | os.SCHED_RESET_ON_FORK


def scheduler_name(tid: int = 0) -> str:
    """A thread's scheduling policy as events name it: "SCHED_FIFO" or "normal"."""
    return "SCHED_FIFO" if os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO else "normal"


def leave_realtime() -> None:
    """Every thread of this process back to the normal scheduler. A member shutting down
    does so first: its clean-up and the interpreter's finalization (a CLC's last event to its
    exit: 91 and 100 ms, measured) at SCHED_FIFO hold every other thread at the same priority on that core,
    other members' heartbeat threads among them (docs/ha.md, "The safe floor on this machine")."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile; or one never raised (lowering needs no privilege)


class Service:
    component = "service"
    # Paths under these prefixes (or exactly these paths) are the user-facing API, gated by
    # the service state.
    api_prefixes: tuple[str, ...] = ()
    api_paths: tuple[str, ...] = ()
    # Whether the threads and processes it starts once raised to ``realtime_priority``
    # inherit that priority (the CC's ip and nft commands must: they are its takeover).
    realtime_inherited = True

    def __init__(self, config: dict):
        self.config = config
        self.host = config["host"]
        self.role = config.get("role", "single")
        self.events = EventLog(config.get("events_path"), self.host, self.component)
        self.state = ServiceState(config.get("state", "ENABLED"))
        self.since = time.time()
        callers = config.get("internal_callers") or (
            {OPERATOR: token_digest(config["internal_token"])} if config.get("internal_token") else {})
        self.internal_callers = {role: bytes.fromhex(d) for role, d in callers.items()}
        # HA replaces this with its fencing-aware check.
        self.may_serve: Callable[[], bool] = lambda: self.state is ServiceState.ENABLED
        self.app = web.Application(client_max_size=config.get("max_body", MAX_BODY),
                                   middlewares=[self._gate])
        self.app.router.add_get("/health", self.handle_health)
        self.app.router.add_get("/status", self.handle_status)
        self.ha = None
        if config.get("ha"):
            from .ha import HAAgent

            self.ha = HAAgent(self, config)
            self.may_serve = self.ha.may_serve
            self.app.router.add_post("/ha/arbitrators/{name}/{action}", self.handle_arbitrator)
            self.app.router.add_post("/internal/ha/order/{order}", self.handle_order)
            self.ha.wait_idle = lambda timeout: self._wait_count("in_flight", timeout)
            self.ha.wait_forwarded = lambda timeout: self._wait_count("forwarding", timeout)
        self.app.router.add_get("/internal/service", self.handle_service)
        self.app.router.add_post("/internal/service/{transition}", self.handle_transition)
        # API requests this process is answering, and forwarding (a planned switchover).
        self.counts = {"in_flight": 0, "forwarding": 0}
        self._counts_changed: asyncio.Condition | None = None
        self._forwarder: aiohttp.ClientSession | None = None
        self.setup_routes(self.app)
        self._stop: asyncio.Event | None = None

    # -- for subclasses -------------------------------------------------------------------

    def setup_routes(self, app: web.Application) -> None:
        """Add the component's routes."""

    async def on_start(self) -> None:
        """Called once the event loop runs, before the socket listens."""

    async def on_stop(self) -> None:
        """Called on shutdown, before the socket closes."""

    def unavailable(self, request: web.Request) -> web.Response:
        """The API's own error for 'not serving now' (override per API dialect)."""
        return web.json_response({"error": "ServiceUnavailable", "state": self.state.value}, status=503)

    def status_extra(self) -> dict:
        return {}

    # -- state ----------------------------------------------------------------------------

    def set_state(self, new: ServiceState, reason: str = "") -> None:
        if new is self.state:
            return
        old, self.state, self.since = self.state, new, time.time()
        self.events.emit("state.change", **{"from": old.value, "to": new.value, "reason": reason})

    # -- routes ---------------------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler):
        if not ((self.api_prefixes and request.path.startswith(self.api_prefixes)) or request.path in self.api_paths):
            return await handler(request)
        handover = await self.handover_settled()
        if handover is not None:
            if handover.successor is not None:
                async with self._counting("forwarding"):
                    return await self._forward(request, handover.successor)
        if not self.may_serve():
            return self.unavailable(request)
        async with self._counting("in_flight"):
            return await handler(request)

    async def handover_settled(self):
        """During a planned switchover, wait until it is settled (held: the successor takes the
        pair within milliseconds) and return it; None when there is none."""
        handover = getattr(self.ha, "handover", None)  # tests stand in for the agent
        if handover is None or handover.phase == "waiting":
            return None
        await handover.settled.wait()
        return handover

    @contextlib.asynccontextmanager
    async def _counting(self, name: str):
        if self._counts_changed is None:
            self._counts_changed = asyncio.Condition()
        self.counts[name] += 1
        try:
            yield
        finally:
            self.counts[name] -= 1
            async with self._counts_changed:
                self._counts_changed.notify_all()

    async def _wait_count(self, name: str, timeout: float) -> bool:
        """Wait until no request of ``name`` ("in_flight", "forwarding") is left; False on timeout."""
        if self._counts_changed is None:
            self._counts_changed = asyncio.Condition()
        async with self._counts_changed:
            try:
                await asyncio.wait_for(self._counts_changed.wait_for(lambda: self.counts[name] == 0), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    async def _forward(self, request: web.Request, address: str) -> web.StreamResponse:
        """Send a request on, unchanged (its signature covers its Host header, which is kept),
        to the same port at ``address``, and stream the answer back."""
        if self._forwarder is None:
            self._forwarder = aiohttp.ClientSession(auto_decompress=False,
                                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        body = request.content.iter_chunked(FORWARD_CHUNK) if request.body_exists else None
        url = f"http://{address}:{self.config['port']}{request.rel_url}"
        try:
            async with self._forwarder.request(request.method, url, headers=headers, data=body,
                                               allow_redirects=False, skip_auto_headers=("User-Agent",
                                               "Accept-Encoding", "Accept", "Content-Type")) as r:
                answer = web.StreamResponse(status=r.status, reason=r.reason, headers={
                    k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP})
                if r.content_length is not None:
                    answer.content_length = r.content_length
                await answer.prepare(request)
                async for chunk in r.content.iter_chunked(FORWARD_CHUNK):
                    await answer.write(chunk)
                await answer.write_eof()
                self.events.emit("service.forwarded", to=address, path=request.path, status=r.status)
                return answer
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.events.emit("service.forward_failed", to=address, path=request.path, error=repr(exc))
            return self.unavailable(request)

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def handle_status(self, request: web.Request) -> web.Response:
        extra = {"ha": self.ha.status()} if self.ha else {}
        return web.json_response({"component": self.component, "host": self.host, "role": self.role,
                                  "state": self.state.value, "since": self.since, "pid": os.getpid(),
                                  "serving": self.may_serve(), **extra, **self.status_extra()})

    async def handle_arbitrator(self, request: web.Request) -> web.Response:
        """Stop or start an arbitrator (maintenance): POST /ha/arbitrators/{name}/stop|start."""
        self.require_internal(request)  # the operator's
        action = request.match_info["action"]
        if action not in ("stop", "start"):
            raise web.HTTPNotFound(text="stop or start")
        if not self.ha.set_arbitrator_stopped(request.match_info["name"], action == "stop"):
            raise web.HTTPNotFound(text="no such arbitrator")
        return web.json_response(self.ha.status())

    def service_status(self) -> dict:
        """This member as Eucalyptus's DescribeServices shows it."""
        ha = self.ha
        return {"name": self.host, "component": self.component, "state": self.state.value,
                "epoch": ha.epoch if ha else 0, "serving": self.may_serve(),
                "peer": ({"name": ha.peer.member, "alive": ha.peer_alive(), "state": ha.peer.state}
                         if ha else None),
                "handover": ha.handover.phase if ha and ha.handover else None,
                # Each arbitrator reachable? (the coordinator's check judges them)
                "arbitrators": [not a.failed for a in ha.arbitrators] if ha else []}

    async def handle_service(self, request: web.Request) -> web.Response:
        """GET /internal/service: this member's service state (the CLC's DescribeServices asks)."""
        self.require_internal(request, "clc")
        return web.json_response(self.service_status())

    async def handle_transition(self, request: web.Request) -> web.Response:
        """POST /internal/service/{transition}: an operator's transition (the CLC's ModifyService).
        A refusal is a 409 with its reason and changes nothing."""
        from .ha import TransitionError

        self.require_internal(request, "clc")
        if self.ha is None:
            return web.json_response({"error": "IncorrectState", "message": f"{self.host} is not a member of an "
                                      "HA pair: its state is not the operator's to change"}, status=409)
        try:
            taken = self.ha.transition(request.match_info["transition"])
        except TransitionError as exc:
            status = 400 if exc.code == "InvalidParameterValue" else 409
            return web.json_response({"error": exc.code, "message": exc.message}, status=status)
        return web.json_response({"transition": taken, **self.service_status()})

    async def handle_order(self, request: web.Request) -> web.Response:
        """POST /internal/ha/order/{order}: the coordinator CLC's DISABLE or ENABLE (ha.detector
        coordinator). A refusal is a 409 (400 for an unknown order) and changes nothing."""
        from .ha import TransitionError

        self.require_internal(request, "clc")
        try:
            done = self.ha.coordinator_order(request.match_info["order"])
        except TransitionError as exc:
            status = 400 if exc.code == "InvalidParameterValue" else 409
            return web.json_response({"error": exc.code, "message": exc.message}, status=status)
        return web.json_response({"order": request.match_info["order"].upper(), "done": done,
                                  **self.service_status()})

    def caller_role(self, request: web.Request) -> str | None:
        """The role whose token the request carries, or None. Every role's digest is
        compared, in constant time, whatever matched: the answer takes as long for any token."""
        digest = hashlib.sha256(request.headers.get(INTERNAL_TOKEN_HEADER, "").encode()).digest()
        role = None
        for name, known in self.internal_callers.items():
            if hmac.compare_digest(digest, known):
                role = name
        return role

    def require_internal(self, request: web.Request, *roles: str) -> str:
        """Refuse (403) an internal call unless it carries the token of one of ``roles`` or
        the operator's; returns the caller's role."""
        role = self.caller_role(request)
        if role is None:
            raise web.HTTPForbidden(text="internal route: bad or missing credential")
        if role != OPERATOR and role not in roles:
            raise web.HTTPForbidden(text=f"internal route: not for the {role} role")
        return role

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.ha is not None:
            # A member restarting after a crash may still hold the VIPs in its kernel:
            # let go of them before anything else, so no client is answered by a host
            # that does not serve.
            await self.ha.release_vips()
        await self.on_start()
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.get("listen_host", "0.0.0.0"), self.config["port"],
                           reuse_address=True)
        await site.start()
        prio = self.config.get("realtime_priority")
        if prio:
            try:
                os.sched_setscheduler(0, scheduler_policy(self.realtime_inherited), os.sched_param(int(prio)))
            except (PermissionError, OSError) as exc:
                self.events.emit("service.no_realtime", error=str(exc))
        if self.ha is not None:
            await self.ha.start()
        self.events.emit("service.start", port=self.config["port"], pid=os.getpid(),
                         state=self.state.value, role=self.role)
        try:
            await self._stop.wait()
        finally:
            if self.ha is not None:
                await self.ha.stop()
            if prio:
                leave_realtime()  # the rest is no heartbeat's business: it must not hold one up
            await self.on_stop()
            await runner.cleanup()
            if self._forwarder is not None:
                await self._forwarder.close()
            self.events.emit("service.stop", pid=os.getpid(), scheduler=scheduler_name())
            self.events.close()

    def run(self) -> None:
        asyncio.run(self.serve())


def main(service_cls: type[Service], argv: list[str] | None = None) -> int:
    """Entry point of ``python -m components.<name> --config FILE``."""
    parser = argparse.ArgumentParser(prog=f"components.{service_cls.component}")
    parser.add_argument("--config", required=True, help="JSON config written by the testbed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {service_cls.component} %(levelname)s %(message)s")
    try:
        service = service_cls(load_config(args.config))  # a component checks its own fields too
    except ConfigError as exc:
        print(f"{service_cls.component}: bad config: {exc}", file=sys.stderr)
        return 2
    service.run()
    return 0
