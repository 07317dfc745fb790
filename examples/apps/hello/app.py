"""Stamp's hello sample app: Python standard library only.

Answers every GET with one line naming the instance, the release and the GREETING setting,
so tests and people can see which instance served them:

    hello from hello-web-0-3f9a1c (release v2): hi

Also `/env/NAME` (a variable's value), `/status/CODE` (answers with that status),
`/headers` (the request headers as received) and `/burn?ms=N` (keeps a CPU busy for N ms).

And, to let tests probe an instance's sandbox and limits from inside:

- `/read?path=P`: 200 with the first 200 bytes of file P; 403 with the error
  (`PermissionError: ...`) when refused, 404 when missing, 400 when P is a directory.
- `/list?path=P`: 200 with directory P's entries, one per line, sorted; 403 or 404 likewise.
- `/hog?mb=N`: allocates N MiB more (every page written, so it is resident) and holds it;
  answers `holding T MiB`.
- `/connect?port=P&n=N`: opens N more TCP connections to 127.0.0.1:P and holds them; answers
  `holding T connections`, or 502 with the error and the count held when a connect fails.
"""

import os
import signal
import socket
import threading
import time
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

# What /hog and /connect hold until the process exits, under one lock: requests run in threads.
HELD_LOCK = threading.Lock()
HELD_MEMORY = []
HELD_CONNECTIONS = []

# What /read and /list answer for the errors they expect; any other error is a 500.
ERROR_STATUS = {
    PermissionError: 403,
    FileNotFoundError: 404,
    NotADirectoryError: 404,
    IsADirectoryError: 400,
}


def describe(error):
    """`PermissionError: [Errno 13] Permission denied: '/root'`: what the test asserts on."""
    return "%s: %s\n" % (type(error).__name__, error)


def file_probe(read):
    """Runs `read()` (a file or directory read); returns (status, body)."""
    try:
        return 200, read()
    except OSError as e:
        return ERROR_STATUS.get(type(e), 500), describe(e).encode()


def head(name):
    """The first 200 bytes of file `name`."""
    with open(name, "rb") as f:
        return f.read(200)


def listing(name):
    """Directory `name`'s entries, one per line, sorted."""
    return "".join(e + "\n" for e in sorted(os.listdir(name))).encode()


def hog(mb):
    """Allocates `mb` MiB more, every page written (b"x" * n fills it), and holds it."""
    block = b"x" * (mb << 20)
    with HELD_LOCK:
        HELD_MEMORY.append(block)
        return sum(len(b) for b in HELD_MEMORY) >> 20


def connect(port, n):
    """Opens `n` more connections to 127.0.0.1:port and holds them; returns (status, body)."""
    for _ in range(n):
        # A socket and a numeric address, not create_connection: no name lookup to fail.
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.settimeout(5)
        try:
            conn.connect(("127.0.0.1", port))
        except OSError as e:
            conn.close()
            with HELD_LOCK:
                held = len(HELD_CONNECTIONS)
            return 502, ("holding %d connections; " % held + describe(e)).encode()
        with HELD_LOCK:
            HELD_CONNECTIONS.append(conn)
    with HELD_LOCK:
        return 200, b"holding %d connections\n" % len(HELD_CONNECTIONS)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two sends; with Nagle's algorithm the body would wait ~40 ms
    # for the front end's delayed ACK on every keep-alive request.
    disable_nagle_algorithm = True

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
        elif path == "/read":
            # /read?path=/etc/hostname: lets tests check what an instance may read.
            name = self.query("path", "")
            status, body = file_probe(lambda: head(name))
        elif path == "/list":
            name = self.query("path", "")
            status, body = file_probe(lambda: listing(name))
        elif path == "/hog":
            # /hog?mb=64: lets tests drive memory autoscale and memory limits.
            try:
                body = b"holding %d MiB\n" % hog(int(self.query("mb", "16")))
            except MemoryError:
                status, body = 500, b"MemoryError\n"
        elif path == "/connect":
            # /connect?port=5432&n=10: lets tests drive the outbound connection limit.
            status, body = connect(int(self.query("port", "0")), int(self.query("n", "1")))
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

    def query(self, name, default):
        """The query parameter `name` (percent-decoded), or `default`."""
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        return parse_qs(query).get(name, [default])[0]

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
