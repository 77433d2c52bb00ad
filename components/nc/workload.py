"""The workload an instance runs inside its VM slot: an HTTP server answering its id.

Reachability of an instance is then checkable with curl from anywhere the network
lets through. It imports nothing but the socket layer and is started with
``python -S``, so a boot costs milliseconds of CPU, not an interpreter's site set-up.
"""

import selectors
import signal
import socket
import sys


def serve(instance_id: str, port: int) -> None:
    body = (instance_id + "\n").encode()
    reply = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(body)).encode()
             + b"\r\nConnection: close\r\n\r\n" + body)
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
            if not data or b"\r\n\r\n" in pending[conn] or len(pending[conn]) > 16384:
                sel.unregister(conn)
                del pending[conn]
                try:
                    if data:
                        conn.sendall(reply)
                except OSError:
                    pass
                conn.close()


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    instance_id, port = None, 80
    for i, a in enumerate(args):
        if a == "--instance-id":
            instance_id = args[i + 1]
        elif a == "--port":
            port = int(args[i + 1])
    if not instance_id:
        print("usage: workload.py --instance-id ID [--port N]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    serve(instance_id, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
