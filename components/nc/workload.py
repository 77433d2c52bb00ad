"""The workload an instance runs inside its VM slot: an HTTP server answering its id.

Reachability of an instance is then checkable with curl from anywhere the network
lets through.
"""

from __future__ import annotations

import argparse
import http.server
import signal
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="components.nc.workload")
    p.add_argument("--instance-id", required=True)
    p.add_argument("--port", type=int, default=80)
    args = p.parse_args(argv)
    body = (args.instance_id + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
