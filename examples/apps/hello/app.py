"""Stamp's hello sample app: Python standard library only.

Answers every GET with one line naming the instance, the release and the GREETING setting,
so tests and people can see which instance served them:

    hello from hello-web-0-3f9a1c (release v2): hi

Also `/env/NAME` (a variable's value), `/status/CODE` (answers with that status),
`/headers` (the request headers as received) and `/burn?ms=N` (keeps a CPU busy for N ms).
"""

import os
import signal
import time
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 200
        path = self.path.split("?", 1)[0]
        if path.startswith("/env/"):
            name = path[len("/env/"):]
            body = (os.environ.get(name, "") + "\n").encode()
        elif path.startswith("/status/"):
            # /status/503 answers 503: lets tests make a health check fail.
            status = int(path[len("/status/"):] or "200")
            body = b"status %d\n" % status
        elif path == "/burn":
            # /burn?ms=200 keeps a CPU busy for that long: lets tests drive CPU autoscale.
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            ms = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("ms", "100"))
            deadline = time.monotonic() + min(ms, 5000) / 1000.0
            while time.monotonic() < deadline:
                pass
            body = b"burned %d ms\n" % ms
        elif path == "/headers":
            body = "".join("%s: %s\n" % (k, v) for k, v in self.headers.items()).encode()
        else:
            body = "hello from {} (release {}): {}\n".format(
                os.environ.get("STAMP_INSTANCE_ID", "local"),
                os.environ.get("STAMP_RELEASE", "-"),
                os.environ.get("GREETING", "hello"),
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    # Heroku and Stamp stop an instance with SIGTERM: finish and exit cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("hello listening on port %d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
