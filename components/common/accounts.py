"""Who holds an access key: the run's admin account from the config, other accounts from the CLC.

The CLC is the account authority (as Eucalyptus's was); Walrus asks it once per
unknown key over the internal API and caches the answer. The cache is bounded: at most
MAX_CACHED keys the CLC knows and MAX_CACHED it called unknown, the least recently used
let go first, and an unknown key is forgotten after NEGATIVE_TTL. A key that is not an
access key at all (IAM's AccessKeyId: 16-128 word characters) is unknown without a lookup, and
a key goes into the lookup's URL escaped, whatever it holds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from urllib.parse import quote

import aiohttp

from .service import INTERNAL_TOKEN_HEADER

NEGATIVE_TTL = 2.0  # an unknown key is asked about again after this long
MAX_CACHED = 10_000  # keys kept per kind (known, unknown); the least recently used go first
ACCESS_KEY = re.compile(r"[A-Za-z0-9_]{16,128}")  # IAM: AccessKeyId, [\w]+, 16-128
LOOKUP_TIMEOUT_S = 2.0


class AccountsUnavailable(Exception):
    """The CLC could not say whether a key exists (unreachable, failing over, refusing us)."""


class AccountResolver:
    """Access key -> (secret, account id): the admin from the config, others asked of the CLC once."""

    def __init__(self, config: dict, clc_base: str | None = None):
        admin = config.get("admin") or {}
        self.admin = (admin["access_key"], (admin["secret_key"], admin["account_id"])) if admin else None
        self.known: OrderedDict[str, tuple[str, str]] = OrderedDict()  # from the CLC, oldest use first
        self.admin_account = admin.get("account_id")
        self.clc_base = clc_base
        self.token = config.get("internal_token", "")
        self._missing: OrderedDict[str, float] = OrderedDict()  # key -> when the CLC called it unknown
        self._pending: dict[str, asyncio.Future] = {}
        self._http: aiohttp.ClientSession | None = None

    def lookup(self, access_key: str) -> tuple[str, str] | None:
        if self.admin is not None and access_key == self.admin[0]:
            return self.admin[1]
        found = self.known.get(access_key)
        if found is not None:
            self.known.move_to_end(access_key)
        return found

    def _unknown(self, access_key: str) -> bool:
        """Whether the CLC called this key unknown less than NEGATIVE_TTL ago (expired entries dropped)."""
        now = time.monotonic()
        while self._missing:
            key, since = next(iter(self._missing.items()))
            if now - since < NEGATIVE_TTL:
                break
            del self._missing[key]
        return access_key in self._missing

    @staticmethod
    def _remember(cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > MAX_CACHED:
            cache.popitem(last=False)

    async def ensure(self, access_key: str | None) -> None:
        """Make ``lookup`` able to answer for this key (asking the CLC if needed).

        Only the CLC's 404 makes a key unknown (cached for NEGATIVE_TTL). When the CLC
        cannot answer (unreachable, failing over, any other status) this raises
        AccountsUnavailable, so the API answers 503, which clients retry, rather than
        calling a valid key invalid. Concurrent requests with one new key share one lookup.
        """
        if not access_key or self.lookup(access_key) is not None or not self.clc_base:
            return
        if not ACCESS_KEY.fullmatch(access_key) or self._unknown(access_key):
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
            async with self._http.get(f"{self.clc_base}/internal/accounts/{quote(access_key, safe='')}",
                                      headers={INTERNAL_TOKEN_HEADER: self.token}) as r:
                if r.status == 404:
                    self._remember(self._missing, access_key, time.monotonic())
                    return
                if r.status != 200:
                    raise AccountsUnavailable(f"the CLC answered {r.status} to an account lookup")
                data = await r.json(content_type=None)
                self._remember(self.known, access_key, (data["secret_key"], data["account_id"]))
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
