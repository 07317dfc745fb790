#!/usr/bin/env python3
"""The timing loop of bench/scale_out.sh (Python standard library only).

Given a running `stamp up` with a plan of one S1 worker and the fast sample app deployed on it,
measures, for a warm pool and then for no warm worker, the time from the `POST
/api/v1/plans/{plan}/scale {"workers": 2}` call to the first response served by the new
instance (worker index 1) through the front end; and, for reference, the fast app's own start
time (exec with PORT set until it accepts a TCP connection / answers a request). Prints a table
of medians. Every wait is bounded; a trial that times out is reported, not retried.

Run through bench/scale_out.sh, which builds, starts and cleans up; see bench/README.md.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time

SIZE = "small"  # the pool size of S1 (and B1)
POLL_S = 0.002  # pause between two front-end requests while waiting for the new instance
SERVE_LIMIT_S = 10.0  # a scale-out not served by then is a failed trial
SETTLE_LIMIT_S = 40.0  # scale back in: drain (>= 5 s MIN_DRAIN) and pool refill


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Stamp:
    def __init__(self, api_port, token, http_port, app, plan):
        self.api_port = api_port
        self.token = token
        self.http_port = http_port
        self.app = app
        self.plan = plan
        self.host = f"{app}.localhost"

    def api(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, "/api/v1" + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
            return raw
        finally:
            conn.close()

    def api_json(self, method, path, body=None):
        return json.loads(self.api(method, path, body) or b"null")

    def scale(self, workers):
        self.api("POST", f"/plans/{self.plan}/scale", {"workers": workers})

    def instances(self):
        return self.api_json("GET", f"/apps/{self.app}/instances")

    def pool(self):
        for p in self.api_json("GET", "/pools"):
            if p["size"] == SIZE:
                return p
        raise RuntimeError(f"GET /pools has no {SIZE} pool")

    def set_warm(self, n):
        self.api("PUT", f"/pools/{SIZE}", {"warm": n})

    def logs(self, lines=200):
        raw = self.api("GET", f"/apps/{self.app}/logs?lines={lines}")
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]

    def front(self):
        """One request on a fresh connection, no cookie: the body, or None on any error."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Host": self.host})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            return body if resp.status == 200 else None
        except OSError:
            return None
        finally:
            conn.close()


def worker_index(body):
    """`ok bench-web-1-3f9a1c` -> 1 (the third dash-separated field of the instance id)."""
    try:
        return int(body.split()[1].split("-")[2])
    except (IndexError, ValueError):
        return None


def wait_until(what, limit_s, check):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {limit_s:.0f} s waiting for {what}")


def settled(stamp, warm):
    """One ready instance, on worker 0, and nothing else; the pool at its warm target."""
    inst = stamp.instances()
    only_w0 = len(inst) == 1 and inst[0]["worker"].endswith("/0") and inst[0]["state"] == "ready"
    p = stamp.pool()
    return only_w0 and p["warm_target"] == warm and p["available"] == warm


def trial(stamp, warm):
    """One scale-out 1 -> 2 workers, then back to 1. Returns a dict of timings in ms."""
    wait_until("one instance on worker 0 and a settled pool", SETTLE_LIMIT_S, lambda: settled(stamp, warm))
    body = stamp.front()
    if body is None or worker_index(body) != 0:
        raise RuntimeError(f"before the scale-out the front end answered {body!r}, not worker 0")

    t0_wall_ms = time.time() * 1000
    t0 = time.perf_counter()
    stamp.scale(2)
    t_api = time.perf_counter()
    served = None
    requests = 0
    while time.perf_counter() - t0 < SERVE_LIMIT_S:
        body = stamp.front()
        requests += 1
        if body is not None and worker_index(body) == 1:
            served = time.perf_counter()
            break
        time.sleep(POLL_S)
    result = {"api": (t_api - t0) * 1000, "requests": requests}
    if served is None:
        result["total"] = None
        log(f"  no response from worker 1 within {SERVE_LIMIT_S:.0f} s")
    else:
        result["total"] = (served - t0) * 1000
        instance = body.split()[1]
        served_wall_ms = t0_wall_ms + result["total"]
        # When the agent had spawned the process (after unpacking the app and creating its group).
        spawned = next((i["started_at"] for i in stamp.instances() if i["id"] == instance), None)
        # The agent's own events for this instance, in Unix ms (1 ms resolution).
        took_warm = starting = ready = None
        for line in stamp.logs():
            if line["ts"] < t0_wall_ms - 1:
                continue
            text = line["text"]
            if "/1 takes warm" in text:
                took_warm = line["ts"]
            elif text.startswith(f"{instance} starting"):
                starting = line["ts"]
            elif text.startswith(f"{instance} ") and " ready on port" in text:
                ready = line["ts"]
        result["warm"] = took_warm is not None
        if starting is not None:
            result["to_starting"] = starting - t0_wall_ms
        if starting is not None and spawned is not None:
            result["starting_to_spawned"] = spawned - starting
        if spawned is not None and ready is not None:
            result["spawned_to_ready"] = ready - spawned
        if ready is not None:
            result["ready_to_served"] = served_wall_ms - ready
    stamp.scale(1)
    wait_until("worker 1's instance to drain and stop", SETTLE_LIMIT_S, lambda: settled(stamp, warm))
    return result


def app_start(fast, runs):
    """exec of the fast binary with PORT set -> accepts a TCP connection, -> answers a request."""
    accept, answer = [], []
    for _ in range(runs):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = dict(os.environ, PORT=str(port), STAMP_INSTANCE_ID="probe-web-0-000000")
        t0 = time.perf_counter()
        proc = subprocess.Popen([fast], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn = None
            while time.perf_counter() - t0 < 5:
                try:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.0002)
            if conn is None:
                raise RuntimeError(f"{fast} did not listen on port {port} within 5 s")
            t_accept = time.perf_counter()
            conn.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            data = b""
            while b"ok " not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            t_answer = time.perf_counter()
            conn.close()
            if b"ok " not in data:
                raise RuntimeError(f"{fast} answered {data!r}")
            accept.append((t_accept - t0) * 1000)
            answer.append((t_answer - t0) * 1000)
        finally:
            proc.kill()
            proc.wait(timeout=5)
    return accept, answer


def fmt(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} [{min(values):.0f}-{max(values):.0f}]"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api-port", type=int, required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--fast", required=True, help="the fast sample app's binary")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--start-runs", type=int, default=20)
    ap.add_argument("--warm", type=int, default=1, help="warm target of the warm case")
    ap.add_argument("--raw", help="write every trial's timings here (JSON)")
    args = ap.parse_args()
    with open(args.token_file) as f:
        token = f.read().strip()
    stamp = Stamp(args.api_port, token, args.http_port, args.app, args.plan)

    log(f"the fast app's own start time, {args.start_runs} runs")
    accept, answer = app_start(args.fast, args.start_runs)

    cases = {}
    for name, warm in (("warm worker", args.warm), ("no warm worker", 0)):
        stamp.set_warm(warm)
        log(f"{name}: pool {SIZE} warm={warm}, {args.trials} scale-outs")
        results = []
        for i in range(args.trials):
            r = trial(stamp, warm)
            results.append(r)
            total = "timeout" if r["total"] is None else f"{r['total']:.1f} ms"
            log(
                f"  {i + 1}/{args.trials}: {total} (API call {r['api']:.1f} ms, "
                f"{r['requests']} front-end requests, warm worker taken: {r.get('warm')})"
            )
        cases[name] = results
    stamp.set_warm(args.warm)

    if args.raw:
        with open(args.raw, "w") as f:
            json.dump({"app_accept_ms": accept, "app_answer_ms": answer, "cases": cases}, f, indent=1)

    app_ms = statistics.median(answer)
    target = 150 + app_ms
    print()
    print("Scale-out 1 -> 2 workers (S1), from the POST /plans/{plan}/scale call to the first")
    print("response from the new instance through the front end; ms, median [min-max]")
    print()
    cols = ["case", "served", "took warm", "total", "API call", "-> starting", "starting -> spawned", "spawned -> ready", "ready -> served"]
    rows = []
    for name, results in cases.items():
        ok = [r for r in results if r["total"] is not None]
        rows.append([
            name,
            f"{len(ok)}/{len(results)}",
            f"{sum(1 for r in ok if r.get('warm'))}/{len(results)}",
            fmt([r["total"] for r in ok]),
            fmt([r["api"] for r in results]),
            fmt([r.get("to_starting") for r in ok]),
            fmt([r.get("starting_to_spawned") for r in ok]),
            fmt([r.get("spawned_to_ready") for r in ok]),
            fmt([r.get("ready_to_served") for r in ok]),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    for row in [cols, ["-" * w for w in widths]] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    print()
    print(
        f"the fast app alone, {len(answer)} runs: exec -> accepts TCP {fmt(accept)}, "
        f"exec -> answers a request {fmt(answer)}"
    )
    warm_total = median([r["total"] for r in cases["warm worker"]])
    if warm_total is None:
        verdict = "NOT MET (no warm scale-out was served)"
    else:
        verdict = "met" if warm_total <= target else "NOT MET"
        verdict = f"{verdict}: warm median {warm_total:.1f} ms"
    print(f"target (issue 5): warm worker <= 150 ms + app start ({app_ms:.1f} ms) = {target:.1f} ms: {verdict}")
    print()
    print("columns: API call = until the scale call returned; -> starting = until the agent's '<id> starting'")
    print("event (controller, publish, agent, worker taken or created); starting -> spawned = until the")
    print("instance's started_at (unpack the app's artifact, create its control group, spawn);")
    print("spawned -> ready = the app's start and the agent's readiness probe (a connect at once, then after 1 ms doubling to 25 ms);")
    print("ready -> served = route update and the bench's polling (a fresh connection per request,")
    print(f"{POLL_S * 1000:.0f} ms pause between requests). Stamp's timestamps have 1 ms resolution.")
    if any(r["total"] is None for rs in cases.values() for r in rs):
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        log(f"error: {e}")
        sys.exit(1)
