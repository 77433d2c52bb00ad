"""The CLC (cloud controller, port 8773): the EC2 Query API at /services/Eucalyptus.

Users drive it with AWS tools (boto3, the AWS CLI). It authenticates SigV4
requests against accounts, keeps the cloud's bookkeeping in SQLite (state.py) and
hands instance and volume work to the zone's CC and SC (cluster.py). It also
answers the instance metadata service, which the cluster network forwards from
169.254.169.254 to here, identifying the instance by its source address.

This class is the facade: it answers HTTP, authenticates a request and hands its
action to the manager of that concern, each a module of this package (accounts.py,
images.py, groups.py, instances.py, addresses.py, volumes.py, metadata.py, the sync
with the CCs in sync.py, the HA peer's replication in replication.py). Every write goes
through ``_apply``: one op in the state store, logged, and replicated before the answer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from pathlib import Path

from aiohttp import web

from components.common.modes import features
from components.common.routes import add_routes, route
from components.common.service import Service
from components.common.sigv4 import SigV4Error, verify

from .accounts import Accounts
from .addresses import Addresses
from .cluster import ClusterClient
from .ec2 import EC2Error, error_xml, parse_query, request_id, response_xml
from .groups import SecurityGroups
from .images import Images
from .instances import Instances
from .metadata import Metadata
from .replication import ClcReplication
from .coordinator import Coordinator
from .services import ServiceDirectory
from .state import KEEP_OPS, Store, redact
from .sync import ClusterSync
from .volumes import Volumes

log = logging.getLogger(__name__)
MAX_QUERY_BYTES = 256 * 1024  # default of config max_query_bytes; EC2 itself takes far less
DEFAULT_PUBLIC_IPS = "10.0.128.0/24"  # the deployment plan's public pool (topologies/plan.py)
# Default of config ``terminated_retention_s``: how long a terminated instance stays in
# DescribeInstances before it is forgotten (EC2 shows one for about an hour).
TERMINATED_RETENTION_S = 3600.0
# Defaults of config ``quotas``: per account, as EC2's default limits (docs in README.md).
QUOTAS = {"elastic_ips": 5, "security_groups": 500, "instances": 20}


def public_pool(spec: str | list[str]) -> list[str]:
    """Elastic IPs from config ``public_ips``: a CIDR (its host addresses) or a list of addresses."""
    try:
        if isinstance(spec, str):
            return [str(ip) for ip in ipaddress.ip_network(spec, strict=False).hosts()]
        return [str(ipaddress.IPv4Address(ip)) for ip in spec]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"public_ips: expected a CIDR or a list of IPv4 addresses, got {spec!r} ({exc})") from None


class CloudController(Service):
    component = "clc"
    api_prefixes = ("/services/Eucalyptus", "/latest/")
    api_paths = ("/",)  # the EC2 API answers there too

    def __init__(self, config: dict):
        # The managers, one per concern; built before the base class sets up the routes to them.
        self.accounts, self.images, self.groups = Accounts(self), Images(self), SecurityGroups(self)
        self.instances, self.addresses, self.volumes = Instances(self), Addresses(self), Volumes(self)
        self.metadata, self.sync, self.replication = Metadata(self), ClusterSync(self), ClcReplication(self)
        self.managers = (self.accounts, self.images, self.groups, self.instances, self.addresses, self.volumes,
                         self.metadata, self.sync)
        super().__init__(config)
        self.store = Store(Path(config["data_dir"]) / "clc.db", keep_ops=int(config.get("oplog_keep", KEEP_OPS)))
        self.zones: list[str] = list(config.get("zones") or ["cluster1"])
        # One networking mode for the whole deployment (the spec has one), so every zone
        # offers the same features: components/common/modes.py.
        self.mode = str(config.get("mode", "MANAGED"))
        self.features = features(self.mode)
        self.public_pool = public_pool(config.get("public_ips", DEFAULT_PUBLIC_IPS))
        self.cluster = ClusterClient(config, self.zones)
        self.services = ServiceDirectory(config)
        self.admin = config.get("admin") or {}
        self.max_query_bytes = int(config.get("max_query_bytes", MAX_QUERY_BYTES))
        self.retention_s = float(config.get("terminated_retention_s", TERMINATED_RETENTION_S))
        self.quotas = {**QUOTAS, **{k: int(v) for k, v in (config.get("quotas") or {}).items()}}
        unknown = set(self.quotas) - set(QUOTAS)
        if unknown:
            raise ValueError(f"quotas: unknown {sorted(unknown)}; known: {sorted(QUOTAS)}")
        self.accounts.ensure_admin()
        self.actions = {name[len("act_"):]: getattr(manager, name) for manager in self.managers
                        for name in dir(manager) if name.startswith("act_")}
        self.replica = None  # the session to the HA peer, opened in on_start when HA is on
        # Eucalyptus 3.x's coordinator (ha.detector coordinator): this CLC's check rounds.
        self.coordinator = Coordinator(self) if self.ha is not None and self.ha.detector == "coordinator" else None
        if self.ha is not None:
            self.ha.last_seq = lambda: self.store.last_seq
            self.ha.on_promote = self.replication.on_promote
            self.ha.on_demote = self._on_demote

    def setup_routes(self, app: web.Application) -> None:
        add_routes(app, self, self.accounts, self.metadata, self.replication)

    async def on_start(self) -> None:
        await self.cluster.start()
        self.sync.start()
        await self.replication.start()
        if self.coordinator is not None:
            await self.coordinator.start()

    async def on_stop(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
        self.sync.stop()
        await self.cluster.close()
        await self.services.close()
        await self.replication.stop()

    # -- replication to the DISABLED peer (HA): replication.py ----------------------------------

    async def replicate(self, upto: int) -> None:
        """Before a write is acknowledged, the DISABLED peer has it too (ClcReplication.replicate)."""
        await self.replication.replicate(upto)

    async def _on_demote(self, reason: str) -> None:
        await self.replication.on_demote(reason)

    def status_extra(self) -> dict:
        return {"last_seq": self.store.last_seq}

    def unavailable(self, request: web.Request) -> web.Response:
        err = EC2Error("ServiceUnavailable", f"{self.host} is {self.state.value}", 503)
        return web.Response(body=error_xml(err, request_id()), status=503, content_type="text/xml")

    def _apply(self, op: dict) -> int:
        if op["type"] == "instance.update" and op.get("state") == "terminated":
            op = {"time": time.time(), **op}  # when it ended: retired ``terminated_retention_s`` later
        # Ops carry the HA epoch they were written in, so a log shows which primary wrote what.
        seq = self.store.apply(op, epoch=self.ha.epoch if self.ha is not None else None)
        self.events.emit("state.write", seq=seq, op_type=op["type"], op=redact(op))
        return seq

    # -- the API entry point ---------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        """The form body, refused once it passes ``max_query_bytes`` (even when chunked)."""
        limit = self.max_query_bytes
        too_large = EC2Error("InvalidParameterValue", f"the request body exceeds {limit} bytes", 413)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @route("GET", "/services/Eucalyptus", "/services/Eucalyptus/", "/", head=False)
    @route("POST", "/services/Eucalyptus", "/services/Eucalyptus/", "/")
    async def handle_api(self, request: web.Request) -> web.Response:
        """One EC2 Query request: parse, authenticate, dispatch; every failure as EC2 error XML."""
        rid = request_id()
        action = None
        try:
            body = await self._read_body(request) if request.method == "POST" else b""
            raw_path, _, raw_query = request.raw_path.partition("?")
            params = parse_query(raw_query, body)
            try:
                auth = verify(request.method, raw_path, raw_query, request.headers,
                              hashlib.sha256(body).hexdigest(), self.accounts.lookup, dialect="ec2", service="ec2",
                              region=self.config.get("region", "eucalyptus"))
            except SigV4Error as exc:
                raise EC2Error(exc.code, exc.message, exc.http_status) from None
            action = params.get("Action")
            if not action:
                raise EC2Error("MissingAction", "The request must contain the parameter Action")
            handler = self.actions.get(action)
            if handler is None:
                raise EC2Error("InvalidAction", f"The action {action} is not valid for this web service.")
            before = self.store.last_seq
            result = await handler(params, auth.account_id)
            if self.store.last_seq > before:
                await self.replicate(self.store.last_seq)
            return web.Response(body=response_xml(action, result, rid), content_type="text/xml")
        except EC2Error as err:
            return web.Response(body=error_xml(err, rid), status=err.status, content_type="text/xml")
        except Exception as exc:  # a bug must not take the API down, and clients still get EC2 XML
            log.exception("%s failed", action)
            self.events.emit("api.internal_error", action=action, error=repr(exc), request_id=rid)
            err = EC2Error("InternalError", "An internal error has occurred", 500)
            return web.Response(body=error_xml(err, rid), status=500, content_type="text/xml")

    def require_feature(self, feature: str, what: str) -> None:
        """Refuse, before anything changes, a request for a feature this cloud's mode lacks."""
        if not getattr(self.features, feature):
            raise EC2Error("UnsupportedOperation", f"{what} are not available in {self.mode} networking mode "
                           f"(zones {', '.join(self.zones)})")

