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
LOOKUP_TIMEOUT_S = 2.0


class AccountsUnavailable(Exception):
    """The CLC could not say whether a key exists (unreachable, failing over, refusing us)."""


class AccountResolver:
    """Access key -> (secret, account id): the admin from the config, others asked of the CLC once."""

    def __init__(self, config: dict, clc_base: str | None = None):
        admin = config.get("admin") or {}
        self.known: dict[str, tuple[str, str]] = {}
        if admin:
            self.known[admin["access_key"]] = (admin["secret_key"], admin["account_id"])
        self.admin_account = admin.get("account_id")
        self.clc_base = clc_base
        self.token = config.get("internal_token", "")
        self._missing: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._http: aiohttp.ClientSession | None = None

    def lookup(self, access_key: str) -> tuple[str, str] | None:
        return self.known.get(access_key)

    async def ensure(self, access_key: str | None) -> None:
        """Make ``lookup`` able to answer for this key (asking the CLC if needed).

        Only the CLC's 404 makes a key unknown (cached for NEGATIVE_TTL). When the CLC
        cannot answer (unreachable, failing over, any other status) this raises
        AccountsUnavailable, so the API answers 503, which clients retry, rather than
        calling a valid key invalid. Concurrent requests with one new key share one lookup.
        """
        if not access_key or access_key in self.known or not self.clc_base:
            return
        if time.monotonic() - self._missing.get(access_key, -1e9) < NEGATIVE_TTL:
            return
        pending = self._pending.get(access_key)
        if pending is None:
            pending = asyncio.ensure_future(self._ask_clc(access_key))
            self._pending[access_key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(access_key, None))
        await asyncio.shield(pending)

    async def _ask_clc(self, access_key: str) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT_S))
        try:
            async with self._http.get(f"{self.clc_base}/internal/accounts/{access_key}",
                                      headers={INTERNAL_TOKEN_HEADER: self.token}) as r:
                if r.status == 404:
                    self._missing[access_key] = time.monotonic()
                    return
                if r.status != 200:
                    raise AccountsUnavailable(f"the CLC answered {r.status} to an account lookup")
                data = await r.json(content_type=None)
                self.known[access_key] = (data["secret_key"], data["account_id"])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AccountsUnavailable(f"cannot reach the CLC for an account lookup: {exc!r}") from None
        except (KeyError, ValueError, TypeError) as exc:
            raise AccountsUnavailable(f"the CLC's account answer is malformed: {exc!r}") from None

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
