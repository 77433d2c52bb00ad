"""Who holds an access key: the run's admin account from the config, other accounts from the CLC.

The CLC is the account authority (as Eucalyptus's was); Walrus asks it once per
unknown key over the internal API and caches the answer.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .service import INTERNAL_TOKEN_HEADER

NEGATIVE_TTL = 2.0  # an unknown key is asked about again after this long


class AccountResolver:
    def __init__(self, config: dict, clc_base: str | None = None):
        admin = config.get("admin") or {}
        self.known: dict[str, tuple[str, str]] = {}
        if admin:
            self.known[admin["access_key"]] = (admin["secret_key"], admin["account_id"])
        self.admin_account = admin.get("account_id")
        self.clc_base = clc_base
        self.token = config.get("internal_token", "")
        self._missing: dict[str, float] = {}
        self._http: aiohttp.ClientSession | None = None

    def lookup(self, access_key: str) -> tuple[str, str] | None:
        return self.known.get(access_key)

    async def ensure(self, access_key: str | None) -> None:
        """Make ``lookup`` able to answer for this key (asking the CLC if needed)."""
        if not access_key or access_key in self.known or not self.clc_base:
            return
        if time.monotonic() - self._missing.get(access_key, -1e9) < NEGATIVE_TTL:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            async with self._http.get(f"{self.clc_base}/internal/accounts/{access_key}",
                                      headers={INTERNAL_TOKEN_HEADER: self.token}) as r:
                if r.status == 200:
                    data = await r.json(content_type=None)
                    self.known[access_key] = (data["secret_key"], data["account_id"])
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            pass
        self._missing[access_key] = time.monotonic()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def access_key_of(headers, query) -> str | None:
    """The access key a request claims, from its Authorization header or presigned query."""
    auth = headers.get("Authorization", "")
    if "Credential=" in auth:
        return auth.split("Credential=", 1)[1].split("/", 1)[0]
    cred = query.get("X-Amz-Credential")
    return cred.split("/", 1)[0] if cred else None
