"""The NC's image cache and its downloads from Walrus.

Cache: image files named by their ETag (the MD5 of their bytes) in one directory,
bounded by ``max_bytes``. A file's modification time is the last time an instance
booted from it (a hit touches it), so the order survives an NC restart; admitting a
new image evicts the least recently used ones until the cache fits its bound again.
The image just admitted is never evicted (a single image larger than the bound stays
until the next one arrives), and an instance already running keeps its open image
(eviction unlinks the name only).

Download: bytes are written to ``.<etag>.part`` as they arrive. A read that waits
longer than the idle timeout ends the attempt (rather than a total timeout, which
cuts a slow but moving download and lets a stalled one hang for its whole length),
and the next attempt asks Walrus for the rest only (``Range: bytes=<have>-``). An
attempt that brought no new byte counts against ``attempts``; one that did does not,
so a download that keeps moving always finishes. The object changing under the
download (another ETag in the answer) starts it again from zero.

``ImageFetcher``: what a boot asks for, an image by bucket and key, found in Walrus (its
ETag and size by a HEAD request), taken from the cache or downloaded into it, one
download per image at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aiohttp

from components.common.service import INTERNAL_TOKEN_HEADER

from .instances import BootError

PART_SUFFIX = ".part"


@dataclass(frozen=True)
class ImageSettings:
    """NC config ``images``: the cache bound and how downloads give up."""

    cache_mib: float = 512.0  # the cache's bound; the least recently used images go beyond it
    idle_timeout_s: float = 3.0  # a read (or connect) waiting this long cuts the attempt
    attempts: int = 3  # attempts in a row without a new byte before the download fails

    def __post_init__(self):
        if not (isinstance(self.cache_mib, (int, float)) and self.cache_mib > 0):
            raise ValueError(f"images.cache_mib: must be a positive number, not {self.cache_mib!r}")
        if not (isinstance(self.idle_timeout_s, (int, float)) and self.idle_timeout_s > 0):
            raise ValueError(f"images.idle_timeout_s: must be a positive number, not {self.idle_timeout_s!r}")
        if not (isinstance(self.attempts, int) and self.attempts >= 1):
            raise ValueError(f"images.attempts: must be an integer >= 1, not {self.attempts!r}")

    @property
    def max_bytes(self) -> int:
        return int(self.cache_mib * 2**20)


class DownloadError(Exception):
    """An image could not be fetched (the message says why)."""


class ImageCache:
    """Images by ETag in ``directory``, at most ``max_bytes`` of them, LRU evicted."""

    def __init__(self, directory: Path, max_bytes: int, emit: Callable[..., None] | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.emit = emit or (lambda *a, **k: None)

    def path(self, etag: str) -> Path:
        return self.dir / etag

    def part(self, etag: str) -> Path:
        return self.dir / f".{etag}{PART_SUFFIX}"

    def get(self, etag: str) -> Path | None:
        """The cached image, marked as just used; None when it is not cached."""
        path = self.path(etag)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def entries(self) -> list[tuple[float, str, int]]:
        """(last use, etag, size) of every cached image, least recently used first."""
        out = []
        for p in self.dir.iterdir():
            if p.name.startswith("."):
                continue  # downloads under way
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, p.name, st.st_size))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, _, size in self.entries())

    def admit(self, part: Path, etag: str) -> Path:
        """Install a verified download under its ETag, then evict down to the bound."""
        final = self.path(etag)
        os.replace(part, final)
        os.utime(final)
        self.evict(keep=etag)
        return final

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove the least recently used images until the cache fits; the ETags removed."""
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        evicted = []
        for _, etag, size in entries:
            if total <= self.max_bytes:
                break
            if etag == keep:
                continue
            self.path(etag).unlink(missing_ok=True)
            total -= size
            evicted.append(etag)
            self.emit("image.evicted", etag=etag, size=size, cache_bytes=total, max_bytes=self.max_bytes)
        return evicted


async def download(http: aiohttp.ClientSession, url: str, params: dict, headers: dict, etag: str, size: int,
                   cache: ImageCache, settings: ImageSettings, name: str = "") -> tuple[Path, int]:
    """Fetch the object at ``url`` (``size`` bytes, ETag ``etag``) into ``cache``, resuming
    after stalls and cuts; returns its path and how many attempts resumed with a Range.

    Raises DownloadError when ``settings.attempts`` attempts in a row brought nothing, when
    Walrus refuses or answers another object, or when the bytes do not match the ETag.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.idle_timeout_s,
                                    sock_read=settings.idle_timeout_s)
    part = cache.part(etag)
    md5, have = hashlib.md5(), 0
    if part.exists():  # left by an NC that stopped mid-download: hash what is there
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                md5.update(block)
                have += len(block)
        if have > size:
            md5, have = hashlib.md5(), 0
    fruitless, resumed = 0, 0
    while have < size or not part.exists():
        ask = dict(headers, Range=f"bytes={have}-") if have else dict(headers)
        before = have
        try:
            async with http.get(url, params=params, headers=ask, timeout=timeout) as r:
                if r.status not in (200, 206):
                    raise DownloadError(f"Walrus answered {r.status} for image {name}")
                answer = r.headers.get("ETag", "").strip('"')
                if answer != etag:
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"image {name} changed during its download (ETag {answer}, not {etag})")
                if r.status == 206:
                    start = _range_start(r.headers.get("Content-Range", ""))
                    if start != have:
                        raise DownloadError(f"Walrus answered bytes from {start} when asked from {have}")
                    resumed += 1
                elif have:  # the Range was ignored: the whole object comes again
                    md5, have = hashlib.md5(), 0
                with open(part, "ab" if have else "wb") as f:
                    async for chunk in r.content.iter_chunked(1 << 20):
                        md5.update(chunk)
                        f.write(chunk)
                        have += len(chunk)
            if have >= size:
                break
            error = "the answer ended early"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            error = repr(exc)
        fruitless = 0 if have > before else fruitless + 1
        cache.emit("image.stalled", image=name, etag=etag, have=have, size=size, error=error)
        if fruitless >= settings.attempts:
            raise DownloadError(f"image {name}: {settings.attempts} attempts in a row brought no byte "
                                f"(idle timeout {settings.idle_timeout_s:g} s): {error}")
    if _multipart(etag):
        # A multipart upload's ETag is the MD5 of its parts' MD5s, "-" and their count: the
        # bytes alone cannot be checked against it without the part sizes (S3 clients, the
        # AWS CLI among them, skip the check too). Its size is checked; the event says so.
        if have != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"image {name} is corrupt: {have} bytes, not {size}")
        cache.emit("image.unverified", image=name, etag=etag, reason="multipart ETag: size checked, not MD5")
    elif md5.hexdigest() != etag:
        part.unlink(missing_ok=True)
        cache.emit("image.corrupt", image=name, etag=etag, md5=md5.hexdigest())
        raise DownloadError(f"image {name} is corrupt: MD5 {md5.hexdigest()} does not match ETag {etag}")
    return cache.admit(part, etag), resumed


def _multipart(etag: str) -> bool:
    """Whether ``etag`` is a multipart upload's (32 hex digits, "-", the part count)."""
    digest, dash, count = etag.partition("-")
    return (bool(dash) and len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)
            and count.isdigit() and int(count) > 0)


def _range_start(content_range: str) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/SIZE``."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


class ImageFetcher:
    """The images of the ``NodeController`` ``nc``: from its cache, or from Walrus into it."""

    def __init__(self, nc, settings: ImageSettings, cache: ImageCache):
        self.nc, self.settings, self.cache = nc, settings, cache
        walrus = nc.config.get("endpoints", {}).get("walrus") or ""
        self.walrus_base = walrus.split("/services/")[0]
        self._locks: dict[str, asyncio.Lock] = {}  # ETag -> held while that image downloads

    async def fetch_retrying(self, image: dict, attempts: int = 3) -> Path:
        """Walrus unreachable for the HEAD (a congested path, a Walrus failover): tried
        again. A download cut or stalled midway resumes by itself (``download``)."""
        for attempt in range(attempts):
            try:
                return await self.fetch(image)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise BootError(f"image download failed {attempts} times: {exc}") from None
                self.nc.events.emit("image.retry", image=f"{image['bucket']}/{image['key']}", error=str(exc))
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def fetch(self, image: dict) -> Path:
        """Download (or reuse the cached copy of) an image, verified against its ETag."""
        nc = self.nc
        key = f"{image['bucket']}/{image['key']}"
        url = f"{self.walrus_base}/internal/object"
        headers = {INTERNAL_TOKEN_HEADER: nc.config.get("internal_token", "")}
        params = {"bucket": image["bucket"], "key": image["key"]}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.idle_timeout_s,
                                        sock_read=self.settings.idle_timeout_s)
        async with nc.http.head(url, params=params, headers=headers, timeout=timeout) as r:
            if r.status == 404:
                raise BootError(f"image {key} not found in Walrus")
            if r.status != 200:
                raise BootError(f"Walrus answered {r.status} for image {key}")
            etag = r.headers.get("ETag", "").strip('"')
            size = int(r.headers.get("Content-Length", "0"))
        if not etag or "/" in etag or etag.startswith("."):
            raise BootError(f"Walrus gave image {key} no usable ETag ({etag!r})")
        # One download per image at a time: a second boot waits for the first one's file.
        async with self._locks.setdefault(etag, asyncio.Lock()):
            cached = self.cache.get(etag)
            if cached is not None:
                nc.events.emit("image.cached", image=key, etag=etag)
                return cached
            try:
                path, resumed = await download(nc.http, url, params, headers, etag, size, self.cache,
                                               self.settings, name=key)
            except DownloadError as exc:
                raise BootError(str(exc)) from None
            nc.events.emit("image.downloaded", image=key, etag=etag, size=size, resumed=resumed)
            return path
