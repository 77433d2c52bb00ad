"""An instance's virtual disk without a network: the workload relays block requests over
its disk channel (a Unix socket), and the NC serves on that channel only the volumes
attached to that instance."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, UnixConnector

from components.common.config import validate_config
from components.common.events import read_events
from components.nc import workload as workload_module
from components.common.procs import process_start_time as _start_time
from components.nc.service import NodeController
from components.sc import blockproto as bp
from components.sc.service import StorageController
from tests.support.util import free_port

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

WORKLOAD = Path(__file__).resolve().parents[2] / "components" / "nc" / "workload.py"
TOKEN = "t0ken"


class FakeDisk(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A stand-in for the NC's disk channel: a dict of volumes; records each request.
    A read of volume ``vol-slow`` never gets an answer; when its relay closes the
    connection meanwhile, the time is recorded in ``abandoned``."""

    daemon_threads = True

    def __init__(self, path: str):
        self.volumes: dict[str, bytearray] = {"vol-00000001": bytearray(4096)}
        self.requests: list[bytes] = []
        self.release = threading.Event()
        self.abandoned: list[float] = []
        super().__init__(path, FakeDisk.Handler)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            headers = {}
            while (h := self.rfile.readline().strip()):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = self.rfile.read(int(headers.get("content-length", 0)))
            self.server.requests.append(line.strip())
            method, target, version = line.decode().split()
            path, _, query = target.partition("?")
            q = dict(p.split("=") for p in query.split("&") if p)
            vol = path.split("/")[2]
            if vol == "vol-slow":
                self.connection.settimeout(0.01)
                while not self.server.release.is_set():
                    try:
                        if self.connection.recv(1) == b"":
                            self.server.abandoned.append(time.monotonic())
                            return
                    except socket.timeout:
                        pass
                    except OSError:
                        return
                return
            if version != "HTTP/1.0" or vol not in self.server.volumes:
                self._answer("404 Not Found", b"volume not attached to this instance", "text/plain")
                return
            blocks, offset = self.server.volumes[vol], int(q["offset"])
            if method == "PUT":
                blocks[offset:offset + len(body)] = body
                self._answer("200 OK", b'{"written": true}', "application/json")
            else:
                self._answer("200 OK", bytes(blocks[offset:offset + int(q["length"])]), "application/octet-stream")

        def _answer(self, status: str, body: bytes, ctype: str):
            self.wfile.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                             f"Server: fake\r\n\r\n".encode() + body)


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("the workload did not listen")


@pytest.fixture
def workload(tmp_path):
    """Start workload.py (as the NC does: python -S) with a given disk path; stop it by PID."""
    started = []

    def start(disk: str | None, timeout: float = 2.0) -> int:
        port = free_port()
        argv = [sys.executable, "-S", str(WORKLOAD), "--instance-id", "i-0000beef", "--port", str(port),
                "--disk-timeout", str(timeout)] + (["--disk", disk] if disk else [])
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        wait_listening(port, proc)
        return port

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fake_disk(tmp_path):
    srv = FakeDisk(str(tmp_path / "disk.sock"))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def call(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body)
    r = c.getresponse()
    out = (r.status, r.read(), r.getheader("Content-Type"))
    c.close()
    return out


def test_block_requests_are_relayed_to_the_disk_channel(workload, fake_disk, tmp_path):
    port = workload(str(tmp_path / "disk.sock"))
    assert call(port, "PUT", "/volumes/vol-00000001/blocks?offset=100", b"through the disk") == \
        (200, b'{"written": true}', "application/json")
    assert call(port, "GET", "/volumes/vol-00000001/blocks?offset=100&length=16") == \
        (200, b"through the disk", "application/octet-stream")
    assert fake_disk.volumes["vol-00000001"][100:116] == b"through the disk"
    # The NC's own answer comes back, status and body.
    status, body, _ = call(port, "GET", "/volumes/vol-00000002/blocks?offset=0&length=4")
    assert (status, body) == (404, b"volume not attached to this instance")
    assert fake_disk.requests[:2] == [b"PUT /volumes/vol-00000001/blocks?offset=100 HTTP/1.0",
                                      b"GET /volumes/vol-00000001/blocks?offset=100&length=16 HTTP/1.0"]


def test_every_other_request_still_answers_the_instance_id(workload, fake_disk, tmp_path):
    port = workload(str(tmp_path / "disk.sock"))
    for method, path in (("GET", "/"), ("GET", "/volumes"), ("GET", "/volumes/vol-00000001"),
                         ("POST", "/volumes/vol-00000001/blocks?offset=0"), ("GET", "/x/volumes/v/blocks")):
        assert call(port, method, path)[:2] == (200, b"i-0000beef\n"), (method, path)
    assert fake_disk.requests == []


def test_a_large_write_with_curl_expect_continue(workload, fake_disk, tmp_path):
    port = workload(str(tmp_path / "disk.sock"))
    data = os.urandom(3000)
    (tmp_path / "data").write_bytes(data)
    t = time.monotonic()
    out = subprocess.run(["curl", "-s", "-m", "5", "-X", "PUT", "--data-binary", f"@{tmp_path / 'data'}",
                          f"http://127.0.0.1:{port}/volumes/vol-00000001/blocks?offset=0"],
                         capture_output=True, check=True)
    assert out.stdout == b'{"written": true}'
    assert time.monotonic() - t < 0.9  # answered the Expect: 100-continue, not curl's 1 s wait
    assert bytes(fake_disk.volumes["vol-00000001"][:3000]) == data


def test_no_disk_channel_is_503(workload, tmp_path):
    port = workload(None)
    assert call(port, "GET", "/volumes/vol-00000001/blocks?offset=0&length=4")[0] == 503
    port = workload(str(tmp_path / "nothing-listens-here.sock"))
    assert call(port, "PUT", "/volumes/vol-00000001/blocks?offset=0", b"abcd")[0] == 503
    assert call(port, "GET", "/")[:2] == (200, b"i-0000beef\n")


def test_a_slow_disk_times_out_and_holds_up_nothing_else(workload, fake_disk, tmp_path):
    port = workload(str(tmp_path / "disk.sock"), timeout=1.0)
    slow: list = []
    t = threading.Thread(target=lambda: slow.append(call(port, "GET", "/volumes/vol-slow/blocks?offset=0&length=4")))
    t0 = time.monotonic()
    t.start()
    while not fake_disk.requests:
        assert time.monotonic() - t0 < 5
        time.sleep(0.01)
    # While the slow read waits on the disk, the instance answers others.
    assert call(port, "GET", "/", timeout=0.5)[:2] == (200, b"i-0000beef\n")
    assert call(port, "GET", "/volumes/vol-00000001/blocks?offset=0&length=4", timeout=0.5)[0] == 200
    t.join(5)
    assert slow[0][0] == 503 and 0.9 < time.monotonic() - t0 < 3


def test_a_client_that_gives_up_gives_up_its_disk_request(workload, fake_disk, tmp_path):
    """The user's client stops waiting: the relay drops the disk request at once (the NC
    never serves it), and its slot is free again."""
    port = workload(str(tmp_path / "disk.sock"), timeout=5.0)
    for _ in range(3):
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        c.sendall(b"GET /volumes/vol-slow/blocks?offset=0&length=4 HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 5
        while len(fake_disk.requests) < len(fake_disk.abandoned) + 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t = time.monotonic()
        c.close()  # a 300 ms client timeout, say
        while len(fake_disk.abandoned) < len(fake_disk.requests):
            assert time.monotonic() - t < 1.0, "the disk request outlived its client"
            time.sleep(0.01)
        assert fake_disk.abandoned[-1] - t < 0.2
    assert call(port, "GET", "/volumes/vol-00000001/blocks?offset=0&length=4")[:2] == (200, b"\0\0\0\0")


def test_a_long_disk_path_still_connects(workload, fake_disk, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    os.symlink(tmp_path / "disk.sock", deep / "disk.sock")  # a path longer than sun_path holds
    port = workload(str(deep / "disk.sock"))
    assert call(port, "GET", "/volumes/vol-00000001/blocks?offset=0&length=4")[:2] == (200, b"\0\0\0\0")


# -- the NC's side of the channel, with a real SC on loopback ------------------------------


def test_the_nc_serves_an_instance_only_its_own_volumes(tmp_path):
    sc = StorageController(validate_config({
        "host": "c1sc1", "component": "sc", "port": free_port(), "listen_host": "127.0.0.1",
        "data_dir": str(tmp_path / "sc"), "events_path": str(tmp_path / "sc.jsonl"), "internal_token": TOKEN,
        "block_port": free_port(), "max_volume_mib": 64, "nc_addresses": {"c1n1": ["127.0.0.1"]}}))
    # A data directory deep enough that the socket path outgrows sun_path.
    nc_data = tmp_path / ("n" * 80) / "data"
    nc = NodeController(validate_config({
        "host": "c1n1", "component": "nc", "port": free_port(), "listen_host": "127.0.0.1",
        "data_dir": str(nc_data), "events_path": str(tmp_path / "nc.jsonl"), "internal_token": TOKEN}))
    # Two running instances, as an NC restarted under them finds them: their disk channels
    # open at the NC's start. Their workloads are stand-ins.
    stand_ins = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    for n, proc in enumerate(stand_ins, 1):
        iid = f"i-0000000{n}"
        nc.instances[iid] = {"id": iid, "slot": f"c1n1v{n}", "state": "running", "pid": proc.pid,
                             "pid_start": _start_time(proc.pid)}
    assert len(os.fsencode(nc.disk_path("i-00000001"))) > 107

    async def started(svc, events):
        task = asyncio.create_task(svc.serve())
        for _ in range(300):
            if any(e["event"] == "service.start" for e in read_events(events)):
                return task
            await asyncio.sleep(0.01)
        raise AssertionError(f"{svc.component} did not start")

    async def scenario():
        sc_task, nc_task = await started(sc, tmp_path / "sc.jsonl"), await started(nc, tmp_path / "nc.jsonl")
        h = {"X-Eucalab-Internal-Token": TOKEN}
        sc_base, nc_base = f"http://127.0.0.1:{sc.config['port']}", f"http://127.0.0.1:{nc.config['port']}"
        async with ClientSession(headers=h) as api:
            async with api.post(f"{sc_base}/volumes", json={"id": "vol-0000abcd", "size_mib": 1}) as r:
                assert r.status == 201
            async with api.post(f"{sc_base}/volumes/vol-0000abcd/attach",
                                json={"instance": "i-00000001", "nc": "c1n1"}) as r:
                assert r.status == 200
                target = (await r.json())["target"]
            async with api.post(f"{nc_base}/instances/i-00000001/volumes",
                                json={"volume": "vol-0000abcd", "target": target}) as r:
                assert r.status == 200, await r.text()
        assert nc.disk_path("i-00000001").is_socket() and nc.disk_path("i-00000002").is_socket()

        def disk(iid):
            path = nc.disk_path(iid)
            fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            return ClientSession(connector=UnixConnector(path=f"/proc/self/fd/{fd}/{path.name}")), fd

        own, fd1 = disk("i-00000001")
        other, fd2 = disk("i-00000002")
        url = "http://disk/volumes/vol-0000abcd/blocks"
        async with own, other:
            async with own.put(f"{url}?offset=512", data=b"own blocks") as r:
                assert (r.status, await r.json()) == (200, {"written": True})
            async with own.get(f"{url}?offset=512&length=10") as r:
                assert (r.status, await r.read()) == (200, b"own blocks")
            async with own.get(f"{url}?offset=512") as r:
                assert r.status == 400
            async with other.get(f"{url}?offset=512&length=10") as r:
                assert r.status == 404
            async with other.put(f"{url}?offset=0", data=b"not mine") as r:
                assert r.status == 404
            async with own.get("http://disk/instances") as r:  # the NC API is not on the channel
                assert r.status == 404
            async with ClientSession(headers=h) as api:
                async with api.get(f"{nc_base}/volumes/vol-0000abcd/blocks?offset=512&length=10") as r:
                    assert await r.read() == b"own blocks"  # the same bytes through the NC API
                async with api.delete(f"{nc_base}/instances/i-00000001/volumes/vol-0000abcd") as r:
                    assert r.status == 200
            async with own.get(f"{url}?offset=512&length=10") as r:
                assert r.status == 404  # detached
            # Attached to the other instance, then that instance terminated: its block
            # session ends with it (the SC sees the connection close).
            async with ClientSession(headers=h) as api:
                async with api.post(f"{sc_base}/volumes/vol-0000abcd/detach") as r:
                    assert r.status == 200
                async with api.post(f"{sc_base}/volumes/vol-0000abcd/attach",
                                    json={"instance": "i-00000002", "nc": "c1n1"}) as r:
                    target = (await r.json())["target"]
                async with api.post(f"{nc_base}/instances/i-00000002/volumes",
                                    json={"volume": "vol-0000abcd", "target": target}) as r:
                    assert r.status == 200, await r.text()
                assert sc.block.sessions.get("vol-0000abcd")
                async with api.delete(f"{nc_base}/instances/i-00000002") as r:
                    assert r.status == 200
                assert "vol-0000abcd" not in nc.attachments
                for _ in range(100):
                    if not sc.block.sessions.get("vol-0000abcd"):
                        break
                    await asyncio.sleep(0.01)
                assert not sc.block.sessions.get("vol-0000abcd")
        os.close(fd1)
        os.close(fd2)
        assert (tmp_path / "sc" / "volumes" / "vol-0000abcd.img").read_bytes()[512:522] == b"own blocks"
        await nc.volumes.close_disk("i-00000002")
        assert not nc.disk_path("i-00000002").parent.exists()
        nc.stop()
        await nc_task
        assert not nc.disk_path("i-00000001").exists()  # a stopped NC leaves no socket behind
        sc.stop()
        await sc_task

    try:
        asyncio.run(scenario())
    finally:
        for proc in stand_ins:
            proc.kill()
            proc.wait()
    events = [e["event"] for e in read_events(tmp_path / "nc.jsonl")]
    assert events.count("disk.open") == 2 and "disk.failed" not in events


def test_the_workload_relays_writes_as_large_as_the_block_protocol_takes():
    assert workload_module.MAX_DISK_BODY == bp.MAX_IO
