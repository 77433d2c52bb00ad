"""The workload an instance runs inside its VM slot: an HTTP server answering its id.

Reachability of an instance is then checkable with curl from anywhere the network
lets through. It imports nothing but the socket layer (and threads, for its disk) and
is started with ``python -S``, so a boot costs milliseconds of CPU, not an
interpreter's site set-up.

Its one other duty is its virtual disk: ``GET /volumes/{volume}/blocks?offset=&length=``
and ``PUT /volumes/{volume}/blocks?offset=`` are relayed, as HTTP/1.0, over the NC's
disk channel (``--disk``, a Unix socket) and the NC's status and body returned, so a
user reaches the instance's volumes through its elastic IP. Without a disk channel,
or when the NC does not answer in time, those requests get 503. Each disk request has
its own thread: a slow disk never holds up the answers to other requests. A client that
gives up on a disk request (closes its connection) gives it up on the disk too: its
channel connection is closed at once, so the NC never serves it, and its thread and slot
are free for the next request.
"""

import os
import selectors
import signal
import socket
import sys
import threading
import time

MAX_HEADER = 16384
# The largest body relayed to the disk: the block protocol's largest I/O.
MAX_DISK_BODY = 4 * 2**20
# A disk request beyond this many in flight is refused with 503 rather than queued.
MAX_DISK_REQUESTS = 64
# sun_path holds 108 bytes with its terminating NUL.
UNIX_PATH_MAX = 107


def response(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (b"HTTP/1.0 " + status.encode() + b"\r\nContent-Type: " + content_type.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def disk_target(head: bytes):
    """(method, target, headers) when the request is a block read or write, else None."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"PUT"):
        return None
    target = parts[1].decode("latin-1")
    path = target.split("?", 1)[0].split("/")
    if len(path) != 4 or path[0] or path[1] != "volumes" or not path[2] or path[3] != "blocks":
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return parts[0].decode(), target, headers


def connect_unix(path: str, timeout: float) -> socket.socket:
    """A connection to the Unix socket at ``path``, however long the path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= UNIX_PATH_MAX:
            sock.connect(path)
        else:
            directory, name = os.path.split(path)
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{fd}/{name}")
            finally:
                os.close(fd)
    except OSError:
        sock.close()
        raise
    return sock


def client_gone(conn: socket.socket) -> bool:
    """Whether the client of a request read in full has closed its connection (anything
    else it sends is not ours to read yet)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def ask_disk(disk: str, method: str, target: str, body: bytes, timeout: float,
             client: socket.socket | None = None) -> bytes | None:
    """Relay one block request to the NC; its answer as our reply (503 if there is none),
    or None once ``client`` has closed its connection (the request is then dropped)."""
    deadline = time.monotonic() + timeout
    try:
        sock = connect_unix(disk, timeout)
        sel = selectors.DefaultSelector()
        try:
            sock.sendall(f"{method} {target} HTTP/1.0\r\nHost: disk\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode("latin-1") + body)
            sel.register(sock, selectors.EVENT_READ)
            if client is not None:
                sel.register(client, selectors.EVENT_READ)
            chunks = []
            while True:
                remaining = deadline - time.monotonic()
                ready = sel.select(remaining) if remaining > 0 else []
                if not ready:
                    raise socket.timeout("timed out")
                if any(key.fileobj is client for key, _ in ready):
                    if client_gone(client):
                        return None
                    sel.unregister(client)  # it sent more: seen to when its answer has gone out
                if any(key.fileobj is sock for key, _ in ready):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        finally:
            sel.close()
            sock.close()
    except OSError as exc:
        return response("503 Service Unavailable", f"disk unavailable: {exc}\n".encode())
    head, sep, rest = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ", 1)
    if not sep or len(status) != 2 or not status[0].startswith(b"HTTP/"):
        return response("503 Service Unavailable", b"disk unavailable: no answer from the NC\n")
    content_type = "application/octet-stream"
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")
    return response(status[1].decode("latin-1"), rest, content_type)


def serve_disk(conn: socket.socket, data: bytes, request, disk, timeout: float, slots) -> None:
    """One disk request, in its own thread: finish reading its body, relay it, answer."""
    method, target, headers = request
    body = data.partition(b"\r\n\r\n")[2]
    try:
        conn.setblocking(True)
        conn.settimeout(timeout)
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_DISK_BODY:
            conn.sendall(response("400 Bad Request", b"bad Content-Length\n"))
            return
        if len(body) < length and headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(body) < length:
            chunk = conn.recv(min(65536, length - len(body)))
            if not chunk:
                return
            body += chunk
        if disk is None:
            conn.sendall(response("503 Service Unavailable", b"no disk attached to this instance\n"))
        else:
            answer = ask_disk(disk, method, target, body[:length], timeout, client=conn)
            if answer is not None:
                conn.sendall(answer)
    except OSError:
        pass
    finally:
        slots.release()
        conn.close()


def serve(instance_id: str, port: int, disk: str | None = None, disk_timeout: float = 2.0) -> None:
    body = (instance_id + "\n").encode()
    reply = response("200 OK", body)
    busy = response("503 Service Unavailable", b"too many disk requests\n")
    slots = threading.BoundedSemaphore(MAX_DISK_REQUESTS)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    pending = {}
    while True:
        for key, _ in sel.select():
            if key.fileobj is srv:
                try:
                    conn, _ = srv.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                pending[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(4096)
            except (BlockingIOError, ConnectionError):
                data = b""
            pending[conn] += data
            if not data or b"\r\n\r\n" in pending[conn] or len(pending[conn]) > MAX_HEADER:
                sel.unregister(conn)
                received = pending.pop(conn)
                request = disk_target(received.partition(b"\r\n\r\n")[0]) if data else None
                if request is not None:
                    if slots.acquire(blocking=False):
                        threading.Thread(target=serve_disk, args=(conn, received, request, disk, disk_timeout, slots),
                                         daemon=True).start()
                        continue
                    answer = busy
                else:
                    answer = reply
                try:
                    if data:
                        conn.sendall(answer)
                except OSError:
                    pass
                conn.close()


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    instance_id, port, disk, disk_timeout = None, 80, None, 2.0
    for i, a in enumerate(args):
        if a == "--instance-id":
            instance_id = args[i + 1]
        elif a == "--port":
            port = int(args[i + 1])
        elif a == "--disk":
            disk = args[i + 1]
        elif a == "--disk-timeout":
            disk_timeout = float(args[i + 1])
    if not instance_id:
        print("usage: workload.py --instance-id ID [--port N] [--disk PATH] [--disk-timeout S]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    serve(instance_id, port, disk, disk_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
