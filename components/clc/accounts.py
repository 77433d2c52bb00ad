"""Accounts and the administrator's actions: the EC2 extension CreateAccount, the
account lookup Walrus asks (by access key), and Eucalyptus's service API
(DescribeServices, ModifyService: components/clc/services.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time

from aiohttp import web

from components.common.routes import route

from .ec2 import EC2Error, Params, new_id
from .manager import Manager

ACCOUNT_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")


class Accounts(Manager):
    """Accounts, their keys, and what only the cloud administrator may do."""

    def ensure_admin(self) -> None:
        a = self.clc.admin
        if a and self.store.one("SELECT 1 FROM accounts WHERE id=?", a["account_id"]) is None:
            self._apply({"type": "account.create", "id": a["account_id"], "name": "eucalyptus",
                         "access_key": a["access_key"], "secret_key": a["secret_key"], "time": time.time(),
                         "default_group": "sg-" + hashlib.sha256(a["account_id"].encode()).hexdigest()[:8]})

    def lookup(self, access_key: str):
        row = self.store.one("SELECT secret_key, id FROM accounts WHERE access_key=?", access_key)
        return (row[0], row[1]) if row else None

    async def act_CreateAccount(self, p: Params, account: str) -> dict:
        """Euare-style extension: the admin creates an account and gets its first key."""
        self.require_admin(account, "create accounts")
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

    def require_admin(self, account: str, what: str) -> None:
        if account != self.clc.admin.get("account_id"):
            raise EC2Error("UnauthorizedOperation", f"only the cloud administrator may {what}", 403)

    # -- Eucalyptus's service API (components/clc/services.py) --------------------------------

    async def act_DescribeServices(self, p: Params, account: str) -> dict:
        """Every member of every pair: type, partition, name, URI, state and epoch (admin only)."""
        self.require_admin(account, "describe services")
        return {"serviceStatuses": await self.clc.services.describe(p.list("ServiceName"))}

    async def act_ModifyService(self, p: Params, account: str) -> dict:
        """A transition of one member (START, STOP, ENABLE, DISABLE, RESTART, or the state it
        leads to), as euca-modify-service asked it; admin only."""
        self.require_admin(account, "modify services")
        answer = await self.clc.services.modify(p.req("Name"), p.req("State"))
        self.events.emit("service.modify", name=p.req("Name"), state=p.req("State"), member=answer.get("name"),
                         transition=answer.get("transition"))
        return {"return": True}

    @route("GET", "/internal/accounts/{access_key}")
    async def handle_account_lookup(self, request: web.Request) -> web.Response:
        self.clc.require_internal(request, "walrus")
        found = self.lookup(request.match_info["access_key"])
        if found is None:
            return web.json_response({"error": "NoSuchEntity"}, status=404)
        return web.json_response({"account_id": found[1], "secret_key": found[0]})
