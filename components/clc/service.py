"""The CLC (cloud controller, port 8773): the EC2 Query API at /services/Eucalyptus.

Users drive it with AWS tools (boto3, the AWS CLI). It authenticates SigV4
requests against accounts, keeps the cloud's bookkeeping in SQLite (state.py) and
hands instance and volume work to the zone's CC and SC (cluster.py). It also
answers the instance metadata service, which the cluster network forwards from
169.254.169.254 to here, identifying the instance by its source address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import string
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from components.common.groups import digest as group_digest
from components.common.modes import features
from components.common.routes import add_routes, route
from components.common.service import INSTANCE_HEADER, Service
from components.common.sigv4 import SigV4Error, sign, verify
from components.common.names import valid_bucket, valid_key
from components.common.supervise import supervise

from .cluster import ClusterClient, ClusterError
from .replication import ClcReplication
from .services import ServiceDirectory
from .ec2 import (EC2Error, Params, check_id, error_xml, named, new_id, parse_query, request_id, response_xml,
                  sub_list)
from .state import KEEP_OPS, Store, redact

log = logging.getLogger(__name__)
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
MAX_QUERY_BYTES = 256 * 1024  # default of config max_query_bytes; EC2 itself takes far less
MAX_INSTANCES_PER_REQUEST = 64
DEFAULT_PUBLIC_IPS = "10.0.128.0/24"  # the deployment plan's public pool (topologies/plan.py)
# DescribeInstances filter name -> instances column (values compared as strings).
INSTANCE_FILTERS = {"instance-id": "id", "instance-state-name": "state", "availability-zone": "zone",
                    "image-id": "image", "instance-type": "type", "reservation-id": "reservation",
                    "private-ip-address": "private_ip", "ip-address": "public_ip", "key-name": "key_name"}
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")
IMAGE_NAME = re.compile(r"[A-Za-z0-9()\[\] ./'@_-]{3,128}")  # EC2's rule for AMI names
WALRUS_CHECK_S = 2.0  # RegisterImage's read check of the image object
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp", "-1": "-1"}
# Default of config ``terminated_retention_s``: how long a terminated instance stays in
# DescribeInstances before it is forgotten (EC2 shows one for about an hour).
TERMINATED_RETENTION_S = 3600.0
RETIRE_BATCH = 1000  # instances retired per op at most (one op stays small)
LIVE = "state IN ('pending', 'running', 'shutting-down')"
# Defaults of config ``quotas``: per account, as EC2's default limits (docs in README.md).
QUOTAS = {"elastic_ips": 5, "security_groups": 500, "instances": 20}
USER_DATA_MAX = 16 * 1024  # EC2's limit on user data, before base64


def user_data(value: str | None) -> str | None:
    """RunInstances' UserData (base64, as EC2 takes it and boto3 and the AWS CLI send it),
    checked and kept as sent; InvalidParameterValue when it is not base64 or too large."""
    if value is None:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EC2Error("InvalidParameterValue", "Invalid BASE64 encoding of user data") from None
    if len(raw) > USER_DATA_MAX:
        raise EC2Error("InvalidParameterValue", f"User data is limited to {USER_DATA_MAX} bytes")
    return value


def public_pool(spec: str | list[str]) -> list[str]:
    """Elastic IPs from config ``public_ips``: a CIDR (its host addresses) or a list of addresses."""
    try:
        if isinstance(spec, str):
            return [str(ip) for ip in ipaddress.ip_network(spec, strict=False).hosts()]
        return [str(ipaddress.IPv4Address(ip)) for ip in spec]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"public_ips: expected a CIDR or a list of IPv4 addresses, got {spec!r} ({exc})") from None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


class CloudController(Service):
    component = "clc"
    api_prefixes = ("/services/Eucalyptus", "/latest/")
    api_paths = ("/",)  # the EC2 API answers there too

    def __init__(self, config: dict):
        self.replication = ClcReplication(self)  # before the base class sets up the routes to it
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
        self._sync_rounds = 0
        # Instances whose elastic IP a request is changing right now (no repair meanwhile).
        self._address_busy: collections.Counter[str] = collections.Counter()
        # Instance ids handed out and not yet recorded (a run waiting on its CC), per account
        # how many instances those runs hold: both count as taken.
        self._reserved_ids: set[str] = set()
        self._launching: dict[str, int] = {}
        self._ensure_admin()
        self.actions = {name[len("act_"):]: getattr(self, name) for name in dir(self) if name.startswith("act_")}
        self._sync_task: asyncio.Task | None = None
        self.replica = None  # the session to the HA peer, opened in on_start when HA is on
        if self.ha is not None:
            self.ha.last_seq = lambda: self.store.last_seq
            self.ha.on_promote = self.replication.on_promote
            self.ha.on_demote = self._on_demote

    # -- set-up ---------------------------------------------------------------------------

    def _ensure_admin(self) -> None:
        a = self.admin
        if a and self.store.one("SELECT 1 FROM accounts WHERE id=?", a["account_id"]) is None:
            self._apply({"type": "account.create", "id": a["account_id"], "name": "eucalyptus",
                         "access_key": a["access_key"], "secret_key": a["secret_key"], "time": time.time(),
                         "default_group": "sg-" + hashlib.sha256(a["account_id"].encode()).hexdigest()[:8]})

    def setup_routes(self, app: web.Application) -> None:
        add_routes(app, self, self.replication)

    async def on_start(self) -> None:
        await self.cluster.start()
        self._sync_task = asyncio.create_task(self._sync_loop())
        await self.replication.start()

    async def on_stop(self) -> None:
        if self._sync_task:
            self._sync_task.cancel()
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

    def _lookup(self, access_key: str):
        row = self.store.one("SELECT secret_key, id FROM accounts WHERE access_key=?", access_key)
        return (row[0], row[1]) if row else None

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
                              hashlib.sha256(body).hexdigest(), self._lookup, dialect="ec2", service="ec2",
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

    # -- accounts ---------------------------------------------------------------------------

    async def act_CreateAccount(self, p: Params, account: str) -> dict:
        """Euare-style extension: the admin creates an account and gets its first key."""
        self._require_admin(account, "create accounts")
        name = p.req("AccountName")
        if not ACCOUNT_NAME.fullmatch(name):
            raise EC2Error("InvalidParameterValue", f"invalid account name {name!r}")
        if self.store.one("SELECT 1 FROM accounts WHERE name=?", name):
            raise EC2Error("EntityAlreadyExists", f"account {name} already exists", 409)
        acct = "".join(secrets.choice(string.digits) for _ in range(12))
        key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        secret = secrets.token_urlsafe(30)[:40]
        self._apply({"type": "account.create", "id": acct, "name": name, "access_key": key, "secret_key": secret,
                     "time": time.time(), "default_group": new_id("sg")})
        return {"account": {"accountId": acct, "accountName": name, "accessKeyId": key,
                            "secretAccessKey": secret}}

    def _require_admin(self, account: str, what: str) -> None:
        if account != self.admin.get("account_id"):
            raise EC2Error("UnauthorizedOperation", f"only the cloud administrator may {what}", 403)

    # -- Eucalyptus's service API (components/clc/services.py) --------------------------------

    async def act_DescribeServices(self, p: Params, account: str) -> dict:
        """Every member of every pair: type, partition, name, URI, state and epoch (admin only)."""
        self._require_admin(account, "describe services")
        return {"serviceStatuses": await self.services.describe(p.list("ServiceName"))}

    async def act_ModifyService(self, p: Params, account: str) -> dict:
        """A transition of one member (START, STOP, ENABLE, DISABLE, RESTART, or the state it
        leads to), as euca-modify-service asked it; admin only."""
        self._require_admin(account, "modify services")
        answer = await self.services.modify(p.req("Name"), p.req("State"))
        self.events.emit("service.modify", name=p.req("Name"), state=p.req("State"), member=answer.get("name"),
                         transition=answer.get("transition"))
        return {"return": True}

    @route("GET", "/internal/accounts/{access_key}")
    async def handle_account_lookup(self, request: web.Request) -> web.Response:
        self.require_internal(request, "walrus")
        found = self._lookup(request.match_info["access_key"])
        if found is None:
            return web.json_response({"error": "NoSuchEntity"}, status=404)
        return web.json_response({"account_id": found[1], "secret_key": found[0]})

    # -- zones and images --------------------------------------------------------------------

    async def act_DescribeAvailabilityZones(self, p: Params, account: str) -> dict:
        wanted = set(p.list("ZoneName"))
        return {"availabilityZoneInfo": [{"zoneName": z, "zoneState": "available", "regionName":
                                          self.config.get("region", "eucalyptus"), "messageSet": []}
                                         for z in self.zones if not wanted or z in wanted]}

    async def _may_read(self, account: str, bucket: str, key: str) -> bool:
        """Whether ``account`` may read ``bucket/key`` in Walrus: a HEAD signed with the
        account's own key, as EC2 reads an image's manifest with the caller's permissions."""
        import aiohttp

        walrus = (self.config.get("endpoints") or {}).get("walrus")
        row = self.store.one("SELECT access_key, secret_key FROM accounts WHERE id=?", account)
        if not walrus or row is None:
            raise EC2Error("ServiceUnavailable", "the object store is not configured", 503)
        url = urlsplit(walrus)
        path = f"{url.path.rstrip('/')}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        headers = sign("HEAD", path, "", url.netloc, row["access_key"], row["secret_key"],
                       self.config.get("region", "eucalyptus"), "s3")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WALRUS_CHECK_S)) as http:
                async with http.head(f"{url.scheme}://{url.netloc}{path}", headers=headers) as r:
                    if r.status in (200, 403, 404):
                        return r.status == 200
                    problem = f"Walrus answered {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            problem = f"Walrus cannot be reached: {exc!r}"
        raise EC2Error("ServiceUnavailable", f"cannot check the image location now ({problem})", 503)

    def _image(self, account: str, image_id: str):
        """An image ``account`` may see (its own or a public one); another account's private
        image is answered exactly as one that does not exist."""
        row = self.store.one("SELECT * FROM images WHERE id=? AND (account=? OR public=1)", image_id, account)
        if row is None:
            raise EC2Error("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        return row

    async def act_RegisterImage(self, p: Params, account: str) -> dict:
        location = p.req("ImageLocation")
        bucket, _, key = location.partition("/")
        if not valid_bucket(bucket) or not valid_key(key):
            raise EC2Error("InvalidParameterValue", "ImageLocation must be bucket/key")
        name = p.get("Name") or key
        if not IMAGE_NAME.fullmatch(name):
            raise EC2Error("InvalidParameterValue", f"Invalid image name {name!r}: 3 to 128 letters, digits and "
                           "( ) [ ] space . / - ' @ _")
        # One answer whether the object is missing or someone else's: no probing of other accounts.
        if not await self._may_read(account, bucket, key):
            raise EC2Error("InvalidManifest", f"Image location {location} cannot be read with your credentials")
        iid = new_id("emi")
        self._apply({"type": "image.register", "id": iid, "account": account, "location": location,
                     "name": name, "time": time.time()})
        return {"imageId": iid}

    async def act_DescribeImages(self, p: Params, account: str) -> dict:
        ids = [check_id("image", i) for i in p.list("ImageId")]
        rows = named(self.store.q("SELECT * FROM images WHERE account=? OR public=1 ORDER BY id", account), ids,
                     lambda missing: EC2Error("InvalidAMIID.NotFound",
                                              f"The image id '[{', '.join(missing)}]' does not exist"))
        return {"imagesSet": [{"imageId": r["id"], "imageLocation": r["location"], "imageState": "available",
                               "imageOwnerId": r["account"], "isPublic": bool(r["public"]), "architecture": "x86_64",
                               "imageType": "machine", "name": r["name"], "rootDeviceType": "instance-store",
                               "virtualizationType": "hvm", "hypervisor": "kvm"} for r in rows]}

    def _own_image(self, p: Params, account: str):
        row = self._image(account, check_id("image", p.req("ImageId")))
        if row["account"] != account:
            raise EC2Error("AuthFailure", f"Not authorized for image: {row['id']}", 401)
        return row

    async def act_DescribeImageAttribute(self, p: Params, account: str) -> dict:
        row = self._own_image(p, account)
        if p.req("Attribute") != "launchPermission":
            raise EC2Error("InvalidParameterValue", "eucalab describes the attribute launchPermission only")
        return {"imageId": row["id"], "launchPermission": [{"group": "all"}] if row["public"] else []}

    async def act_ModifyImageAttribute(self, p: Params, account: str) -> dict:
        """Launch permission for everyone (``Group=all``) added or removed; either form
        (``LaunchPermission.Add.N.Group`` or ``OperationType`` with ``UserGroup.N``)."""
        row = self._own_image(p, account)
        add = [s.get("Group") for s in p.structs("LaunchPermission.Add")]
        remove = [s.get("Group") for s in p.structs("LaunchPermission.Remove")]
        users = [s for s in p.structs("LaunchPermission.Add") + p.structs("LaunchPermission.Remove") if "UserId" in s]
        if p.get("OperationType") in ("add", "remove") and (p.get("Attribute") or "launchPermission") == \
                "launchPermission":
            (add if p.get("OperationType") == "add" else remove).extend(p.list("UserGroup"))
            users += p.list("UserId")
        if users:
            raise EC2Error("InvalidParameterValue", "eucalab grants launch permission to the group all only")
        if not add and not remove or any(g != "all" for g in add + remove):
            raise EC2Error("InvalidParameterValue", "launch permission changes must name Group=all")
        public = bool(add) and not remove
        if bool(row["public"]) != public:
            self._apply({"type": "image.launch_permission", "id": row["id"], "public": public})
        return {"return": True}

    # -- security groups ---------------------------------------------------------------------

    def _group(self, account: str, group_id: str | None = None, name: str | None = None):
        if group_id:
            check_id("group", group_id)
            row = self.store.one("SELECT * FROM groups WHERE id=? AND account=?", group_id, account)
            shown = group_id
        else:
            row = self.store.one("SELECT * FROM groups WHERE name=? AND account=?", name, account)
            shown = name
        if row is None:
            raise EC2Error("InvalidGroup.NotFound", f"The security group '{shown}' does not exist")
        return row

    def _group_info(self, row) -> dict:
        perms = []
        for r in self.store.q("SELECT * FROM rules WHERE group_id=? ORDER BY protocol, from_port, cidr", row["id"]):
            perm = {"ipProtocol": r["protocol"], "groups": [], "ipRanges": [], "ipv6Ranges": [],
                    "prefixListIds": []}
            if r["protocol"] != "-1":
                perm["fromPort"], perm["toPort"] = r["from_port"], r["to_port"]
            if r["cidr"]:
                perm["ipRanges"].append({"cidrIp": r["cidr"]})
            if r["source_group"]:
                perm["groups"].append({"userId": row["account"], "groupId": r["source_group"]})
            perms.append(perm)
        return {"ownerId": row["account"], "groupId": row["id"], "groupName": row["name"],
                "groupDescription": row["description"], "ipPermissions": perms,
                "ipPermissionsEgress": [{"ipProtocol": "-1", "groups": [], "ipRanges": [{"cidrIp": "0.0.0.0/0"}],
                                         "ipv6Ranges": [], "prefixListIds": []}]}

    async def act_CreateSecurityGroup(self, p: Params, account: str) -> dict:
        name, desc = p.req("GroupName"), p.req("GroupDescription")
        if len(name) > 255 or len(desc) > 255:
            raise EC2Error("InvalidParameterValue", "group name and description are at most 255 characters")
        if self.store.one("SELECT 1 FROM groups WHERE account=? AND name=?", account, name):
            raise EC2Error("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
        held = self.store.one("SELECT COUNT(*) FROM groups WHERE account=?", account)[0]
        if held >= self.quotas["security_groups"]:
            raise EC2Error("SecurityGroupLimitExceeded", f"The maximum number of security groups "
                           f"({self.quotas['security_groups']}) has been reached.")
        gid = new_id("sg")
        self._apply({"type": "group.create", "id": gid, "account": account, "name": name, "description": desc})
        return {"return": True, "groupId": gid}

    async def act_DeleteSecurityGroup(self, p: Params, account: str) -> dict:
        row = self._group(account, p.get("GroupId"), p.get("GroupName") or (None if p.get("GroupId") else
                                                                             p.req("GroupId")))
        if row["name"] == "default":
            raise EC2Error("CannotDelete", "the default security group cannot be deleted")
        for inst in self.store.q("SELECT groups FROM instances WHERE account=? AND state!='terminated'", account):
            if row["id"] in json.loads(inst["groups"]):
                raise EC2Error("InvalidGroup.InUse", f"There are active instances using security group '{row['name']}'")
        if self.store.one("SELECT 1 FROM rules WHERE source_group=? AND group_id!=?", row["id"], row["id"]):
            raise EC2Error("DependencyViolation", f"resource {row['id']} has a dependent object")
        self._apply({"type": "group.delete", "id": row["id"]})
        return {"return": True}

    async def act_DescribeSecurityGroups(self, p: Params, account: str) -> dict:
        ids, names = p.list("GroupId"), p.list("GroupName")
        rows = self.store.q("SELECT * FROM groups WHERE account=? ORDER BY name", account)
        for gid in ids:
            check_id("group", gid)
            if gid not in {r["id"] for r in rows}:
                raise EC2Error("InvalidGroup.NotFound", f"The security group '{gid}' does not exist")
        for name in names:
            if name not in {r["name"] for r in rows}:
                raise EC2Error("InvalidGroup.NotFound", f"The security group '{name}' does not exist")
        if ids or names:
            rows = [r for r in rows if r["id"] in ids or r["name"] in names]
        return {"securityGroupInfo": [self._group_info(r) for r in rows]}

    def _parse_permissions(self, p: Params, account: str) -> list[dict]:
        """IpPermissions.N.* (or the older top-level IpProtocol/FromPort/ToPort/CidrIp form) as rules."""
        rules = []
        perms = p.structs("IpPermissions")
        if not perms and p.get("IpProtocol"):
            legacy = {k: p.get(k) for k in ("IpProtocol", "FromPort", "ToPort") if p.get(k) is not None}
            if p.get("CidrIp"):
                legacy["IpRanges.1.CidrIp"] = p.get("CidrIp")
            if p.get("SourceSecurityGroupName"):
                legacy["Groups.1.GroupName"] = p.get("SourceSecurityGroupName")
            perms = [legacy]
        if not perms:
            raise EC2Error("MissingParameter", "The request must contain the parameter IpPermissions")
        for perm in perms:
            proto_raw = (perm.get("IpProtocol") or "").lower()
            proto = PROTOCOLS.get(proto_raw)
            if proto is None:
                raise EC2Error("InvalidParameterValue", f"Invalid value '{proto_raw}' for IP protocol")
            default = "-1" if proto in ("icmp", "-1") else ""
            ports = Params({k: perm.get(k, default) for k in ("FromPort", "ToPort")})
            lo, hi = ports.int("FromPort", low=-1, high=65535), ports.int("ToPort", low=-1, high=65535)
            if proto in ("tcp", "udp") and not (0 <= lo <= hi <= 65535):
                raise EC2Error("InvalidParameterValue", f"Invalid port range {lo}-{hi}")
            # For ICMP the "ports" are the ICMP type and code, -1 meaning all.
            if proto == "icmp" and not (-1 <= lo <= 255 and -1 <= hi <= 255):
                raise EC2Error("InvalidParameterValue", f"Invalid ICMP type {lo} or code {hi}")
            if proto == "-1":
                lo, hi = -1, -1
            cidrs = [r.get("CidrIp", "") for r in sub_list(perm, "IpRanges")]
            sources = []
            for g in sub_list(perm, "Groups"):
                if g.get("GroupId"):
                    sources.append(self._group(account, group_id=g["GroupId"])["id"])
                elif g.get("GroupName"):
                    sources.append(self._group(account, name=g["GroupName"])["id"])
                else:
                    raise EC2Error("MissingParameter", "a source group needs GroupId or GroupName")
            if not cidrs and not sources:
                raise EC2Error("MissingParameter", "a permission needs IpRanges or source groups")
            for cidr in cidrs:
                try:
                    net = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise EC2Error("InvalidParameterValue", f"Value ({cidr}) for parameter cidrIp is invalid") from None
                if net.version != 4:
                    raise EC2Error("InvalidParameterValue", f"Value ({cidr}) for parameter cidrIp is not IPv4")
                rules.append({"protocol": proto, "from_port": lo, "to_port": hi, "cidr": str(net), "source_group": ""})
            for src in sources:
                rules.append({"protocol": proto, "from_port": lo, "to_port": hi, "cidr": "", "source_group": src})
        return rules

    def _rule_exists(self, gid: str, r: dict) -> bool:
        return self.store.one("SELECT 1 FROM rules WHERE group_id=? AND protocol=? AND from_port=? AND to_port=? "
                              "AND cidr=? AND source_group=?", gid, r["protocol"], r["from_port"], r["to_port"],
                              r["cidr"], r["source_group"]) is not None

    def _require(self, feature: str, what: str) -> None:
        """Refuse, before anything changes, a request for a feature this cloud's mode lacks."""
        if not getattr(self.features, feature):
            raise EC2Error("UnsupportedOperation", f"{what} are not available in {self.mode} networking mode "
                           f"(zones {', '.join(self.zones)})")

    async def act_AuthorizeSecurityGroupIngress(self, p: Params, account: str) -> dict:
        self._require("security_groups", "security group rules")
        row = self._group(account, p.get("GroupId"), p.get("GroupName") or (None if p.get("GroupId") else
                                                                             p.req("GroupId")))
        rules = self._parse_permissions(p, account)
        for r in rules:
            if self._rule_exists(row["id"], r):
                raise EC2Error("InvalidPermission.Duplicate", "the specified rule already exists")
        self._apply({"type": "rules.add", "group": row["id"], "rules": rules})
        await self.cluster.push_group(self._group_for_cluster(row))
        return {"return": True}

    async def act_RevokeSecurityGroupIngress(self, p: Params, account: str) -> dict:
        self._require("security_groups", "security group rules")
        row = self._group(account, p.get("GroupId"), p.get("GroupName") or (None if p.get("GroupId") else
                                                                             p.req("GroupId")))
        rules = self._parse_permissions(p, account)
        for r in rules:
            if not self._rule_exists(row["id"], r):
                raise EC2Error("InvalidPermission.NotFound", "the specified rule does not exist in this group")
        self._apply({"type": "rules.revoke", "group": row["id"], "rules": rules})
        await self.cluster.push_group(self._group_for_cluster(row))
        return {"return": True}

    async def _resend_groups(self) -> None:
        held = await self.cluster.group_digests()
        if not held:
            return
        for g in self.store.q("SELECT * FROM groups"):
            group = self._group_for_cluster(g)
            want = group_digest(group)
            stale = [zone for zone, digests in held.items() if digests.get(group["id"]) != want]
            if stale:
                await self.cluster.push_group(group, stale)

    def _group_for_cluster(self, row) -> dict:
        rules = [{"protocol": r["protocol"], "from_port": r["from_port"], "to_port": r["to_port"],
                  **({"cidr": r["cidr"]} if r["cidr"] else {}),
                  **({"source_group": r["source_group"]} if r["source_group"] else {})}
                 for r in self.store.q("SELECT * FROM rules WHERE group_id=?", row["id"])]
        return {"id": row["id"], "name": row["name"], "account": row["account"], "rules": rules}

    # -- instances ------------------------------------------------------------------------------

    def _group_names(self, account: str) -> dict[str, str]:
        return {g["id"]: g["name"] for g in self.store.q("SELECT id, name FROM groups WHERE account=?", account)}

    def _instance_item(self, r, names: dict[str, str]) -> dict:
        groups = json.loads(r["groups"])
        item = {"instanceId": r["id"], "imageId": r["image"],
                "instanceState": {"code": STATE_CODES.get(r["state"], 0), "name": r["state"]},
                "privateDnsName": r["private_ip"] or "", "dnsName": r["public_ip"] or "",
                "reason": r["reason"] or "", "amiLaunchIndex": r["launch_index"], "instanceType": r["type"],
                "launchTime": _iso(r["launched"]), "placement": {"availabilityZone": r["zone"], "tenancy": "default"},
                "monitoring": {"state": "disabled"},
                "privateIpAddress": r["private_ip"], "ipAddress": r["public_ip"],
                "groupSet": [{"groupId": g, "groupName": names.get(g, g)} for g in groups],
                "architecture": "x86_64", "rootDeviceType": "instance-store", "virtualizationType": "hvm",
                "hypervisor": "kvm"}
        if r["key_name"]:
            item["keyName"] = r["key_name"]
        if r["state"] == "terminated" and r["reason"]:
            item["stateReason"] = {"code": "Server.InternalError" if "fail" in r["reason"] or "corrupt" in r["reason"]
                                   else "Client.UserInitiatedShutdown", "message": r["reason"]}
        return item

    def _instances(self, account: str, ids: list[str]) -> list:
        for i in ids:
            check_id("instance", i)
        rows = self.store.q("SELECT * FROM instances WHERE account=? ORDER BY launched, launch_index", account)
        if ids:
            have = {r["id"] for r in rows}
            missing = [i for i in ids if i not in have]
            if missing:
                raise EC2Error("InvalidInstanceID.NotFound",
                               f"The instance IDs '{', '.join(missing)}' do not exist")
            rows = [r for r in rows if r["id"] in ids]
        return rows

    def _new_instance_ids(self, n: int) -> list[str]:
        """``n`` fresh instance ids, each checked against the store and the runs in flight
        and reserved until its run is recorded (no await in between: nothing else can take
        one meanwhile). An id is 32 random bits as in Eucalyptus, so a collision is rare,
        not impossible; one that got through would leave instances the CC boots unrecorded."""
        ids: list[str] = []
        while len(ids) < n:
            iid = new_id("i")
            if iid in self._reserved_ids or self.store.one("SELECT 1 FROM instances WHERE id=?", iid):
                continue
            self._reserved_ids.add(iid)
            ids.append(iid)
        return ids

    def _within_instance_quota(self, account: str, lo: int, hi: int) -> int:
        """How many of MinCount..MaxCount instances the account's quota lets start (as many
        as fit, at least ``lo``), counting those not terminated and runs in flight; else
        InstanceLimitExceeded."""
        limit = self.quotas["instances"]
        held = self.store.one(f"SELECT COUNT(*) FROM instances WHERE account=? AND {LIVE}", account)[0]
        room = limit - held - self._launching.get(account, 0)
        if room < lo:
            raise EC2Error("InstanceLimitExceeded", f"Your quota allows for {max(room, 0)} more running instance(s). "
                           f"You requested at least {lo}")
        return min(hi, room)

    async def act_RunInstances(self, p: Params, account: str) -> dict:
        image = check_id("image", p.req("ImageId"))
        lo = p.int("MinCount", low=1, high=MAX_INSTANCES_PER_REQUEST)
        hi = p.int("MaxCount", low=1, high=MAX_INSTANCES_PER_REQUEST)
        if lo > hi:
            raise EC2Error("InvalidParameterValue", "MinCount must not exceed MaxCount")
        img = self._image(account, image)
        zone = p.get("Placement.AvailabilityZone") or self.zones[0]
        if zone not in self.zones:
            raise EC2Error("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        group_ids = [check_id("group", g) for g in p.list("SecurityGroupId")]
        group_ids += [self._group(account, name=n)["id"] for n in p.list("SecurityGroup")]
        if not group_ids:
            group_ids = [self._group(account, name="default")["id"]]
        groups = [self._group(account, group_id=g) for g in group_ids]
        itype = p.get("InstanceType") or "m1.small"
        data = user_data(p.get("UserData"))
        hi = self._within_instance_quota(account, lo, hi)
        drawn = self._new_instance_ids(hi)
        ids = list(drawn)
        reservation = new_id("r")
        bucket, _, key = img["location"].partition("/")
        self._launching[account] = self._launching.get(account, 0) + hi
        try:
            # Ask the zone's CC first: capacity decides how many start, and nothing is
            # recorded for a request the cluster refuses.
            try:
                placements = await self.cluster.run(zone, [{"id": i, "account": account,
                                                            "image": {"bucket": bucket, "key": key},
                                                            "group": self._group_for_cluster(groups[0])} for i in ids],
                                                    min_count=lo)
            except ClusterError as exc:
                raise EC2Error(exc.code, exc.message, exc.status) from None
            if placements is not None:
                ids = [pl["id"] for pl in placements]
            try:
                self._apply({"type": "instances.create", "account": account, "reservation": reservation,
                             "image": image, "zone": zone, "instance_type": itype, "groups": group_ids,
                             "time": time.time(), "key_name": p.get("KeyName"), "user_data": data,
                             "instances": [{"id": i, "launch_index": n} for n, i in enumerate(ids)]})
            except Exception:
                # Not recorded: the CC must not keep running what no account holds.
                await asyncio.gather(*(self.cluster.terminate(zone, i) for i in ids))
                raise
        finally:
            self._launching[account] -= hi
            if not self._launching[account]:
                del self._launching[account]
            self._reserved_ids.difference_update(drawn)  # recorded now, or never started
        for pl in placements or []:
            change = {"private_ip": pl["ip"], "nc": pl["nc"], "slot": pl["slot"]}
            if pl.get("state") == "terminated":  # its NC refused it or did not take it
                change.update(state="terminated", reason=pl.get("reason") or "")
            self._apply({"type": "instance.update", "id": pl["id"], **change})
        rows = self._instances(account, ids)
        names = self._group_names(account)
        return {"reservationId": reservation, "ownerId": account,
                "groupSet": [{"groupId": g["id"], "groupName": g["name"]} for g in groups],
                "instancesSet": [self._instance_item(r, names) for r in rows]}

    async def act_DescribeInstances(self, p: Params, account: str) -> dict:
        rows = self._instances(account, p.list("InstanceId"))
        for name, values in p.filters().items():
            column = INSTANCE_FILTERS.get(name)
            if column is None:
                raise EC2Error("InvalidParameterValue", f"The filter '{name}' is invalid")
            rows = [r for r in rows if r[column] in values]
        names = self._group_names(account)
        reservations: dict[str, dict] = {}
        for r in rows:
            item = self._instance_item(r, names)
            res = reservations.setdefault(r["reservation"], {"reservationId": r["reservation"], "ownerId": account,
                                                             "groupSet": item["groupSet"], "instancesSet": []})
            res["instancesSet"].append(item)
        return {"reservationSet": list(reservations.values())}

    async def act_TerminateInstances(self, p: Params, account: str) -> dict:
        ids = p.list("InstanceId")
        if not ids:
            raise EC2Error("MissingParameter", "The request must contain the parameter InstanceId")
        rows = self._instances(account, ids)
        out = []
        for r in rows:
            before = r["state"]
            if before != "terminated":
                await self.cluster.terminate(r["zone"], r["id"])
                # Its volumes are detached, as EC2 does: the SC's export and its sessions end.
                for vol in self.store.q("SELECT * FROM volumes WHERE instance=?", r["id"]):
                    try:
                        await self._detach_volume(vol)
                    except EC2Error as exc:
                        self.events.emit("volume.detach_failed", volume=vol["id"], instance=r["id"],
                                         error=exc.message)
                for a in self.store.q("SELECT public_ip FROM addresses WHERE instance=?", r["id"]):
                    self._apply({"type": "address.disassociate", "ip": a["public_ip"]})
                self._apply({"type": "instance.update", "id": r["id"], "state": "terminated",
                             "reason": "terminated by the user"})
            out.append({"instanceId": r["id"],
                        "previousState": {"code": STATE_CODES[before], "name": before},
                        "currentState": {"code": STATE_CODES["terminated"], "name": "terminated"}})
        return {"instancesSet": out}

    async def _sync_loop(self) -> None:
        """``_sync_once`` every ``cluster_poll_s`` (0.1 s), supervised (``clc.sync``)."""
        await supervise(self.events, "clc.sync", self._sync_once, pause=float(self.config.get("cluster_poll_s", 0.1)))

    async def _sync_once(self) -> None:
        """One round of the supervised loop ``clc.sync``: follow the CCs' view of instances
        (pending -> running, addresses, failures), bring a CC that lost an address
        association back in line (``_repair_addresses``), and retire what has been
        terminated for longer than ``terminated_retention_s``."""
        if not self.may_serve():
            return
        self._sync_rounds += 1
        if self._sync_rounds % 20 == 0:
            # Now and then, a group a CC lacks (a CC that restarted with nothing) or
            # holds differently is sent again (Eucalyptus's CLC re-sent network config
            # too). Only those: re-sending all of them, one request per group and CC,
            # kept the CLC, both CCs and the datapath busy for 100 ms every 2 s once
            # the experiments had made a hundred groups.
            await self._resend_groups()
            self._retire_terminated()
        zones = sorted({r["zone"] for r in self.store.q(f"SELECT DISTINCT zone FROM instances WHERE {LIVE}")})
        for zone in zones:
            view = await self.cluster.describe(zone)
            if view is None:
                continue
            # Read after the CC answered: a change made meanwhile is not undone.
            live = self.store.q("SELECT id, state, private_ip, public_ip, reason FROM instances "
                                f"WHERE zone=? AND {LIVE}", zone)
            for r in live:
                got = view.get(r["id"])
                if got is None:
                    continue
                change = {}
                if got["state"] != r["state"]:
                    change["state"] = got["state"]
                    if got.get("reason"):
                        change["reason"] = got["reason"]
                if got.get("ip") and got["ip"] != r["private_ip"]:
                    change["private_ip"] = got["ip"]
                if change:
                    self._apply({"type": "instance.update", "id": r["id"], **change})
                    if change.get("state") == "terminated":
                        for a in self.store.q("SELECT public_ip FROM addresses WHERE instance=?", r["id"]):
                            self._apply({"type": "address.disassociate", "ip": a["public_ip"]})
            await self._repair_addresses(zone, view)

    async def _repair_addresses(self, zone: str, view: dict[str, dict]) -> None:
        """The CLC's addresses are the truth: an instance the zone's CC routes with another
        elastic IP than the CLC records (or none) is told the CLC's again.

        A CC that took over from a peer whose last changes never reached it (the pair's
        link was cut) comes back in line this way within a round. Each instance is read
        again just before its repair is sent (no await in between): one whose address a
        request is changing right now is left to that request, and an address the CLC has
        meanwhile given to another instance is not taken from it."""
        for iid, got in view.items():
            if got.get("state") == "terminated" or iid in self._address_busy:
                continue
            row = self.store.one(f"SELECT public_ip FROM instances WHERE id=? AND zone=? AND {LIVE}", iid, zone)
            held = got.get("public_ip")
            if row is None or row["public_ip"] == held:
                continue
            if row["public_ip"]:
                self.events.emit("clc.address_repaired", instance=iid, zone=zone, cc_has=held, clc_has=row["public_ip"])
                await self.cluster.associate(zone, row["public_ip"], iid)
            elif self.store.one("SELECT 1 FROM addresses WHERE public_ip=? AND instance IS NOT NULL", held) is None:
                self.events.emit("clc.address_repaired", instance=iid, zone=zone, cc_has=held, clc_has=None)
                await self.cluster.disassociate(zone, held)

    def _retire_terminated(self) -> None:
        """Forget the instances terminated longer than ``terminated_retention_s`` ago (EC2
        shows a terminated instance for about an hour, then it is gone): one replicated op."""
        cutoff = time.time() - self.retention_s
        # One a volume still names (attached when it ended) stays until the volume lets go.
        old = [r["id"] for r in self.store.q(
            "SELECT id FROM instances WHERE state='terminated' AND ended < ? AND id NOT IN "
            "(SELECT instance FROM volumes WHERE instance IS NOT NULL) LIMIT ?", cutoff, RETIRE_BATCH)]
        if old:
            self._apply({"type": "instances.retire", "ids": old})

    # -- elastic IPs ------------------------------------------------------------------------------

    def _address(self, account: str, ip: str | None, allocation: str | None):
        if allocation:
            check_id("allocation", allocation)
            row = self.store.one("SELECT * FROM addresses WHERE allocation_id=?", allocation)
            if row is None or row["account"] != account:
                raise EC2Error("InvalidAllocationID.NotFound", f"The allocation ID '{allocation}' does not exist")
            return row
        if not ip:
            raise EC2Error("MissingParameter", "The request must contain the parameter PublicIp or AllocationId")
        row = self.store.one("SELECT * FROM addresses WHERE public_ip=?", ip)
        if row is None or row["account"] != account:
            raise EC2Error("AuthFailure" if row else "InvalidAddress.NotFound",
                           f"The address '{ip}' does not belong to you" if row else f"Address '{ip}' not found.",
                           400)
        return row

    async def act_AllocateAddress(self, p: Params, account: str) -> dict:
        self._require("elastic_ips", "elastic IPs")
        held = self.store.one("SELECT COUNT(*) FROM addresses WHERE account=?", account)[0]
        if held >= self.quotas["elastic_ips"]:
            raise EC2Error("AddressLimitExceeded", f"The maximum number of addresses ({self.quotas['elastic_ips']}) "
                           "has been reached.")
        used = {r["public_ip"] for r in self.store.q("SELECT public_ip FROM addresses")}
        free = [ip for ip in self.public_pool if ip not in used]
        if not free:
            raise EC2Error("AddressLimitExceeded", "Too many addresses allocated")
        alloc = new_id("eipalloc")
        self._apply({"type": "address.allocate", "ip": free[0], "account": account, "allocation_id": alloc})
        return {"publicIp": free[0], "domain": p.get("Domain") or "standard", "allocationId": alloc}

    async def act_AssociateAddress(self, p: Params, account: str) -> dict:
        self._require("elastic_ips", "elastic IPs")
        row = self._address(account, p.get("PublicIp"), p.get("AllocationId"))
        inst = self._instances(account, [p.req("InstanceId")])[0]
        if inst["state"] not in ("pending", "running"):
            raise EC2Error("IncorrectInstanceState", f"The instance '{inst['id']}' is not in a valid state")
        assoc = new_id("eipassoc")
        with self._changing_addresses(inst["id"], row["instance"]):
            await self.cluster.associate(inst["zone"], row["public_ip"], inst["id"])
            self._apply({"type": "address.associate", "ip": row["public_ip"], "instance": inst["id"],
                         "association_id": assoc})
        return {"return": True, "associationId": assoc}

    @contextlib.contextmanager
    def _changing_addresses(self, *instances: str | None):
        """Mark instances whose elastic IP a request changes, for ``_repair_addresses`` to leave alone."""
        busy = [i for i in instances if i]
        self._address_busy.update(busy)
        try:
            yield
        finally:
            self._address_busy.subtract(busy)
            self._address_busy += collections.Counter()  # drop the zeros

    async def act_DisassociateAddress(self, p: Params, account: str) -> dict:
        self._require("elastic_ips", "elastic IPs")
        assoc = p.get("AssociationId")
        if assoc:
            check_id("association", assoc)
            row = self.store.one("SELECT * FROM addresses WHERE association_id=? AND account=?", assoc, account)
            if row is None:
                raise EC2Error("InvalidAssociationID.NotFound", f"The association ID '{assoc}' does not exist")
        else:
            row = self._address(account, p.req("PublicIp"), None)
        with self._changing_addresses(row["instance"]):
            await self._disassociate_on_cluster(row)
            self._apply({"type": "address.disassociate", "ip": row["public_ip"]})
        return {"return": True}

    async def _disassociate_on_cluster(self, row) -> None:
        """Tell the CC of the instance an address row names (if any) to let go of the address."""
        if row["instance"]:
            inst = self.store.one("SELECT zone FROM instances WHERE id=?", row["instance"])
            if inst is not None:
                await self.cluster.disassociate(inst["zone"], row["public_ip"])

    async def act_ReleaseAddress(self, p: Params, account: str) -> dict:
        row = self._address(account, p.get("PublicIp"), p.get("AllocationId"))
        with self._changing_addresses(row["instance"]):
            await self._disassociate_on_cluster(row)
            self._apply({"type": "address.release", "ip": row["public_ip"]})
        return {"return": True}

    async def act_DescribeAddresses(self, p: Params, account: str) -> dict:
        rows = self.store.q("SELECT a.*, i.private_ip FROM addresses a LEFT JOIN instances i ON a.instance=i.id "
                            "WHERE a.account=? ORDER BY a.public_ip", account)
        ips, allocs = p.list("PublicIp"), p.list("AllocationId")
        for ip in ips:
            if ip not in {r["public_ip"] for r in rows}:
                raise EC2Error("InvalidAddress.NotFound", f"Address '{ip}' not found.")
        if ips or allocs:
            rows = [r for r in rows if r["public_ip"] in ips or r["allocation_id"] in allocs]
        return {"addressesSet": [{"publicIp": r["public_ip"], "allocationId": r["allocation_id"], "domain": "standard",
                                  "instanceId": r["instance"], "associationId": r["association_id"],
                                  "privateIpAddress": r["private_ip"] if r["instance"] else None} for r in rows]}

    # -- volumes ------------------------------------------------------------------------------------

    def _volume(self, account: str, vid: str):
        check_id("volume", vid)
        row = self.store.one("SELECT * FROM volumes WHERE id=? AND account=?", vid, account)
        if row is None:
            raise EC2Error("InvalidVolume.NotFound", f"The volume '{vid}' does not exist.")
        return row

    def _volume_item(self, r) -> dict:
        item = {"volumeId": r["id"], "size": r["size"], "availabilityZone": r["zone"], "status": r["state"],
                "createTime": _iso(r["created"]), "volumeType": "standard", "attachmentSet": []}
        if r["instance"]:
            item["attachmentSet"].append({"volumeId": r["id"], "instanceId": r["instance"], "device": r["device"],
                                          "status": r["attach_state"], "attachTime": _iso(r["attached"] or r["created"]),
                                          "deleteOnTermination": False})
        return item

    async def act_CreateVolume(self, p: Params, account: str) -> dict:
        size = p.int("Size", low=1, high=int(self.config.get("max_volume_gib", 1024)))
        zone = p.req("AvailabilityZone")
        if zone not in self.zones:
            raise EC2Error("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        vid = new_id("vol")
        try:
            await self.cluster.create_volume(zone, vid, size)
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        self._apply({"type": "volume.create", "id": vid, "account": account, "size": size, "zone": zone,
                     "state": "available", "time": time.time()})
        return self._volume_item(self._volume(account, vid))

    async def act_AttachVolume(self, p: Params, account: str) -> dict:
        vol = self._volume(account, p.req("VolumeId"))
        inst = self._instances(account, [p.req("InstanceId")])[0]
        device = p.req("Device")
        if vol["state"] != "available":
            raise EC2Error("VolumeInUse", f"{vol['id']} is already attached to an instance")
        if inst["zone"] != vol["zone"]:
            raise EC2Error("InvalidVolume.ZoneMismatch", "The volume is not in the same availability zone as the instance")
        if inst["state"] != "running":
            raise EC2Error("IncorrectState", f"Instance '{inst['id']}' is not 'running'.")
        try:
            await self.cluster.attach_volume(vol["zone"], vol["id"], inst["id"])
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        now = time.time()
        self._apply({"type": "volume.update", "id": vol["id"], "state": "in-use", "instance": inst["id"],
                     "device": device, "attach_state": "attached", "attached": now})
        return {"volumeId": vol["id"], "instanceId": inst["id"], "device": device, "status": "attached",
                "attachTime": _iso(now)}

    async def act_DetachVolume(self, p: Params, account: str) -> dict:
        vol = self._volume(account, p.req("VolumeId"))
        if not vol["instance"]:
            raise EC2Error("IncorrectState", f"Volume '{vol['id']}' is in the 'available' state.")
        await self._detach_volume(vol)
        return {"volumeId": vol["id"], "instanceId": vol["instance"], "device": vol["device"], "status": "detached",
                "attachTime": _iso(vol["attached"] or vol["created"])}

    async def _detach_volume(self, vol) -> None:
        """Detach a volume at its cluster (the NC's session and the SC's export end), then here."""
        try:
            await self.cluster.detach_volume(vol["zone"], vol["id"], vol["instance"])
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        self._apply({"type": "volume.update", "id": vol["id"], "state": "available", "instance": None,
                     "device": None, "attach_state": None, "attached": None})

    async def act_DeleteVolume(self, p: Params, account: str) -> dict:
        vol = self._volume(account, p.req("VolumeId"))
        if vol["instance"]:
            raise EC2Error("VolumeInUse", f"Volume {vol['id']} is currently attached to {vol['instance']}")
        try:
            await self.cluster.delete_volume(vol["zone"], vol["id"])
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        self._apply({"type": "volume.delete", "id": vol["id"]})
        return {"return": True}

    async def act_DescribeVolumes(self, p: Params, account: str) -> dict:
        ids = [check_id("volume", v) for v in p.list("VolumeId")]
        rows = named(self.store.q("SELECT * FROM volumes WHERE account=? ORDER BY created", account), ids,
                     lambda missing: EC2Error("InvalidVolume.NotFound", f"The volume '{missing[0]}' does not exist."))
        return {"volumeSet": [self._volume_item(r) for r in rows]}

    # -- the metadata service ---------------------------------------------------------------------

    def _caller_instance(self, request: web.Request):
        """The live instance whose private address sent the request, or None.

        In EDGE the instance's NC relays the request (components/nc/metadata.py) and names
        the instance's address in a header, which is taken from the nc role only."""
        address = request.remote
        relayed = request.headers.get(INSTANCE_HEADER)
        if relayed is not None:
            self.require_internal(request, "nc")
            try:
                address = str(ipaddress.ip_address(relayed))
            except ValueError:
                raise web.HTTPBadRequest(text="bad instance address\n") from None
        return self.store.one("SELECT * FROM instances WHERE private_ip=? AND state IN ('pending', 'running') "
                              "ORDER BY launched DESC LIMIT 1", address)

    @route("GET", "/latest/user-data")
    async def handle_user_data(self, request: web.Request) -> web.Response:
        """The calling instance's user data, as given to RunInstances (404 without any, as EC2)."""
        row = self._caller_instance(request)
        if row is None or row["user_data"] is None:
            return web.Response(status=404, text="not found\n")
        return web.Response(body=base64.b64decode(row["user_data"]), content_type="application/octet-stream")

    @route("GET", "/latest/meta-data/{path:.*}", "/latest/meta-data")
    async def handle_metadata(self, request: web.Request) -> web.Response:
        """Instance metadata for the instance whose private address sent the request (404 for others)."""
        row = self._caller_instance(request)
        if row is None:
            return web.Response(status=404, text="not an instance of this cloud\n")
        names = self._group_names(row["account"])
        data = {"instance-id": row["id"], "local-ipv4": row["private_ip"] or "",
                "security-groups": "\n".join(names.get(g, g) for g in json.loads(row["groups"])), "placement/availability-zone": row["zone"],
                "ami-id": row["image"], "instance-type": row["type"], "reservation-id": row["reservation"]}
        if row["public_ip"]:  # as in EC2: no public address, no public-ipv4 entry
            data["public-ipv4"] = row["public_ip"]
        path = request.match_info.get("path", "").strip("/")
        if path == "":
            return web.Response(text="\n".join(sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in data})))
        if path == "placement":
            return web.Response(text="availability-zone")
        if path not in data:
            return web.Response(status=404, text="not found\n")
        return web.Response(text=data[path])
