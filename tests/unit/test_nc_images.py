"""The NC's image downloads and cache (components/nc/images.py), against a real HTTP
server on loopback: a download that stalls midway is cut by the idle timeout and the
rest fetched with a Range request; the cache stays within its bound, least recently
used first. (tests/unit/test_walrus.py resumes from the real Walrus.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from components.common.config import validate_config
from components.nc import images
from components.nc.images import ImageCache
from components.nc.instances import BootError
from components.nc.service import NodeController

TOKEN = "t0ken"
BODY = os.urandom(3 * 2**20 + 17)
ETAG = hashlib.md5(BODY).hexdigest()


class Walrus:
    """An object server whose first answer stalls (or is cut) after ``cut`` bytes."""

    def __init__(self, body: bytes = BODY, cut: int | None = None, stall: bool = True, honour_range: bool = True,
                 etag: str | None = None):
        self.body, self.cut, self.stall, self.honour_range, self.etag = body, cut, stall, honour_range, etag
        self.ranges: list[str | None] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        etag = self.etag or hashlib.md5(self.body).hexdigest()
        rng = request.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng[len("bytes="):].split("-")[0]) if rng and self.honour_range else 0
        headers = {"ETag": f'"{etag}"'}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(self.body))})
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(self.body) - start
        await resp.prepare(request)
        data = self.body[start:]
        if self.cut is not None and len(self.ranges) == 2:  # the first GET (after the HEAD)
            await resp.write(data[:self.cut])
            if self.stall:
                await self.release.wait()  # holds the connection open, sending nothing
            else:
                request.transport.close()
            return resp
        await resp.write(data)
        return resp


async def _serve(walrus: Walrus) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/internal/object", walrus.handle)
    server = TestServer(app)
    await server.start_server()
    return server


def _nc(tmp_path, base: str, **image_cfg) -> NodeController:
    return NodeController(validate_config({
        "host": "c1n1", "component": "nc", "port": 1, "listen_host": "127.0.0.1",
        "data_dir": str(tmp_path / "nc"), "events_path": str(tmp_path / "nc.jsonl"), "internal_token": TOKEN,
        "endpoints": {"walrus": f"{base}/services/Walrus"}, "images": image_cfg}))


def _fetch(tmp_path, walrus: Walrus, **image_cfg):
    """Boot-time image fetch by a real NC object against ``walrus``: (path or exception, seconds)."""
    async def scenario():
        server = await _serve(walrus)
        nc = _nc(tmp_path, str(server.make_url("")).rstrip("/"), **image_cfg)
        nc.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        t0 = time.monotonic()
        try:
            return await nc.fetcher.fetch({"bucket": "images", "key": "a.img"}), time.monotonic() - t0
        except Exception as exc:
            return exc, time.monotonic() - t0
        finally:
            walrus.release.set()
            await nc.http.close()
            await server.close()
    return asyncio.run(scenario())


def test_a_download_that_stalls_midway_resumes_with_a_range_request(tmp_path):
    walrus = Walrus(cut=2**20 + 5)
    path, took = _fetch(tmp_path, walrus, idle_timeout_s=0.5)
    assert not isinstance(path, Exception), path
    assert path.read_bytes() == BODY and path.name == ETAG
    # HEAD, the GET that stalled, then the rest only: not the whole image again.
    assert walrus.ranges == [None, None, f"bytes={2**20 + 5}-"]
    assert took < 5  # the idle timeout cut the stall, not a total timeout of a minute
    assert not list(path.parent.glob(".*"))  # no part file left


def test_a_download_cut_by_the_server_resumes_where_it_stopped(tmp_path):
    walrus = Walrus(cut=12345, stall=False)
    path, _ = _fetch(tmp_path, walrus, idle_timeout_s=0.5)
    assert not isinstance(path, Exception), path
    assert path.read_bytes() == BODY
    assert walrus.ranges[-1] == "bytes=12345-"


def test_a_server_that_ignores_the_range_still_gives_the_right_image(tmp_path):
    walrus = Walrus(cut=4096, stall=False, honour_range=False)
    path, _ = _fetch(tmp_path, walrus, idle_timeout_s=0.5)
    assert not isinstance(path, Exception), path
    assert path.read_bytes() == BODY


def test_a_download_that_never_moves_fails_after_its_attempts_not_a_minute(tmp_path):
    walrus = Walrus(cut=0)

    async def always_stall(request):  # every GET stalls before its first byte
        walrus.ranges.append(request.headers.get("Range"))
        if request.method == "HEAD":
            return web.Response(headers={"ETag": f'"{ETAG}"', "Content-Length": str(len(BODY))})
        await walrus.release.wait()
        return web.Response()
    walrus.handle = always_stall
    err, took = _fetch(tmp_path, walrus, idle_timeout_s=0.3, attempts=2)
    assert isinstance(err, BootError) and "2 attempts in a row brought no byte" in str(err)
    assert took < 3


def test_a_corrupt_download_is_refused_and_not_cached(tmp_path):
    walrus = Walrus()
    real = walrus.handle

    async def lying(request):  # an ETag that is not the MD5 of the bytes
        resp = await real(request) if request.method != "HEAD" else None
        if resp is None:
            return web.Response(headers={"ETag": '"' + "0" * 32 + '"', "Content-Length": str(len(BODY))})
        return resp
    walrus.handle = lying
    err, _ = _fetch(tmp_path, walrus, idle_timeout_s=0.5)
    assert isinstance(err, BootError)
    assert not [p for p in (tmp_path / "nc" / "images").iterdir()]


def _put(cache: ImageCache, tmp_path, n: int, size: int, used_at: float) -> str:
    etag = f"{n:032x}"
    part = cache.part(etag)
    part.write_bytes(b"x" * size)
    cache.admit(part, etag)
    os.utime(cache.path(etag), (used_at, used_at))
    return etag


def test_the_cache_evicts_the_least_recently_used_beyond_its_bound(tmp_path):
    events = []
    cache = ImageCache(tmp_path / "images", max_bytes=3000, emit=lambda e, **f: events.append((e, f)))
    a = _put(cache, tmp_path, 1, 1000, 100)
    b = _put(cache, tmp_path, 2, 1000, 200)
    c = _put(cache, tmp_path, 3, 1000, 300)
    assert cache.size() == 3000 and not events
    assert cache.get(a) is not None  # a boot from a: now the most recently used
    d = _put(cache, tmp_path, 4, 1000, time.time() + 10)
    assert cache.size() <= 3000
    assert sorted(e for _, e, _ in cache.entries()) == sorted([a, c, d])  # b was the least recently used
    assert events == [("image.evicted", {"etag": b, "size": 1000, "cache_bytes": 3000, "max_bytes": 3000})]


def test_an_image_larger_than_the_cache_is_kept_until_the_next(tmp_path):
    cache = ImageCache(tmp_path / "images", max_bytes=1000)
    big = _put(cache, tmp_path, 1, 5000, 100)
    assert cache.get(big) is not None
    small = _put(cache, tmp_path, 2, 10, 200)
    assert [e for _, e, _ in cache.entries()] == [small]


def test_the_nc_bounds_its_cache_as_configured(tmp_path):
    """Two images through a real NC whose cache holds one: the first is evicted."""
    bodies = [os.urandom(2**20), os.urandom(2**20)]

    async def scenario():
        walrus = Walrus()
        server = await _serve(walrus)
        nc = _nc(tmp_path, str(server.make_url("")).rstrip("/"), cache_mib=1.5)
        nc.http = aiohttp.ClientSession()
        try:
            for body in bodies:
                walrus.body = body
                await nc.fetcher.fetch({"bucket": "images", "key": "a.img"})
        finally:
            await nc.http.close()
            await server.close()
        return nc
    nc = asyncio.run(scenario())
    assert [e for _, e, _ in nc.image_cache.entries()] == [hashlib.md5(bodies[1]).hexdigest()]


@pytest.mark.parametrize("field,value", [("cache_mib", 0), ("idle_timeout_s", -1), ("attempts", 0), ("nope", 1)])
def test_bad_image_settings_are_refused_naming_the_field(tmp_path, field, value):
    from components.common.config import ConfigError
    with pytest.raises(ConfigError, match="images"):
        _nc(tmp_path, "http://127.0.0.1:1", **{field: value})


def test_an_image_uploaded_in_parts_boots(tmp_path):
    """A multipart upload's ETag (``aws s3 cp`` of a file over 8 MiB) is no MD5 of the
    bytes: its size is checked instead, and the cache keeps it under that ETag."""
    etag = hashlib.md5(b"part md5s").hexdigest() + "-2"
    walrus = Walrus(etag=etag, cut=2**20, stall=False)  # cut once: the resumed bytes count too
    path, _ = _fetch(tmp_path, walrus, idle_timeout_s=0.5)
    assert not isinstance(path, Exception), path
    assert path.read_bytes() == BODY and path.name == etag
    assert not images._multipart(ETAG) and not images._multipart("x" * 32 + "-2")
    assert not images._multipart(ETAG + "-0") and images._multipart(ETAG + "-10000")


def test_range_start():
    assert images._range_start("bytes 100-199/200") == 100
    assert images._range_start("nonsense") is None
