#!/usr/bin/env python3
"""The client loop and the arithmetic of bench/swap.sh (Python standard library only).

Given a running `stamp up` with app `hello` (the hello sample app) whose production and staging
slots greet differently, runs a few keep-alive HTTP/1.1 clients against the front end
(`Host: hello.localhost`, GET / continuously) and, meanwhile, N times `stamp slot swap hello
--source staging`. Every swap exchanges the two greetings, so each swap's "new" greeting is the
one staging served before it.

Per swap, from Stamp's app log (events in Unix ms, 1 ms resolution): the warm-up completion is
the `ts` of the last `swap staging → production: warm-up of instance ...` event before the
`... routing switched ...` one; the flip latency is the wall-clock receive time of the first
response carrying the new greeting after that ts, minus that ts. Failed requests are non-200
answers and connection errors of the loop. Prints per-swap figures, the median, p90 and max
flip latency, the failures, and the loop's median round-trip time (the measurement's step).

Every wait is bounded. Exit 0 when measured (target met or not), 1 when it cannot measure.
Run through bench/swap.sh, which builds, starts, sets up and cleans up; see bench/README.md.
"""

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

TARGET_FLIP_MS = 10.0  # issue 6
STAGING_READY_S = 60.0  # the previous production lane, restarted as staging, must greet by then
SWAP_LIMIT_S = 180.0  # one `stamp slot swap` (follows the swap) must return by then
CLI_LIMIT_S = 60.0  # any other CLI call


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_ms():
    """Wall clock in Unix ms: the clock Stamp's log timestamps come from."""
    return time.time() * 1000


def greeting(body):
    """`hello from hello-web-0-3f9a1c (release v2): old\\n` -> `old`."""
    text = body.decode(errors="replace").rstrip("\n")
    return text.rsplit(": ", 1)[1] if ": " in text else text


class Loop:
    """`clients` threads, each one keep-alive connection, GET / back to back until stopped."""

    def __init__(self, port, host, clients, interval_ms, deadline):
        self.port = port
        self.host = host
        self.interval_ms = interval_ms  # a client sends at most one request per interval
        self.deadline = deadline  # time.monotonic() at which the loop stops on its own
        self.stop = threading.Event()
        # Per thread: (sent ms, received ms, greeting) and (received ms, error text).
        self.ok = [[] for _ in range(clients)]
        self.failed = [[] for _ in range(clients)]
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)

    def run(self, i):
        ok, failed, names = self.ok[i], self.failed[i], {}
        conn = None
        due = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if self.interval_ms > 0:
                # Paced: the next request is due one interval after the last one was due, never
                # earlier than now (a slow answer is not followed by a burst).
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                due = max(due, time.monotonic()) + self.interval_ms / 1000
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            sent = now_ms()
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read()
                received = now_ms()
                if resp.status == 200:
                    g = greeting(body)
                    ok.append((sent, received, names.setdefault(g, g)))
                else:
                    failed.append((received, f"HTTP {resp.status}: {body[:120]!r}"))
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                failed.append((now_ms(), f"{type(e).__name__}: {e}"))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def responses(self):
        return sorted((r for rs in self.ok for r in rs), key=lambda r: r[1])

    def failures(self):
        return sorted((f for fs in self.failed for f in fs), key=lambda f: f[0])

    def latest(self):
        """The greeting of the most recent response any client got, or None."""
        best = None
        for rs in self.ok:
            if rs and (best is None or rs[-1][1] > best[1]):
                best = rs[-1]
        return best[2] if best else None


def cli(stamp, *args, limit=CLI_LIMIT_S):
    r = subprocess.run([stamp, *args], capture_output=True, text=True, timeout=limit)
    if r.returncode != 0:
        raise RuntimeError(f"stamp {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout


def probe(port, host):
    """One GET / on a fresh connection: the greeting, or None on any error or non-200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        return greeting(body) if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_greeting(port, host, want, limit_s):
    """Until 5 consecutive fresh-connection requests to `host` greet with `want` (bounded)."""
    deadline = time.monotonic() + limit_s
    streak = 0
    while time.monotonic() < deadline:
        streak = streak + 1 if probe(port, host) == want else 0
        if streak >= 5:
            return
        time.sleep(0.05 if streak else 0.2)
    raise RuntimeError(f"{host} did not greet with {want!r} within {limit_s:.0f} s")


def swap_events(stamp, app, slot, since_ms):
    """This swap's events from the app log: (ts, text) of `swap <slot> → production: ...`."""
    raw = cli(stamp, "logs", app, "-n", "50000", "--output", "json")
    prefix = f"swap {slot} → production: "
    events = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        l = json.loads(line)
        if l["source"] == "stamp" and l["ts"] >= since_ms - 1 and l["text"].startswith(prefix):
            events.append((l["ts"], l["text"][len(prefix):]))
    return events


def analyse(events):
    """Timestamps of the swap's steps: started, restarted, last warm-up, routing switched."""
    steps = {}
    for ts, text in events:
        if "routing switched" in text:
            steps["switched"] = ts
            break  # later events belong to the lane's restart, not to this flip
        if text.startswith("started"):
            steps["started"] = ts
        elif "restarted with" in text:
            steps["restarted"] = ts
        elif text.startswith("warm-up of instance"):
            steps["warmed"] = ts  # the last one before the flip wins
            steps["warmups"] = steps.get("warmups", 0) + 1
    return steps


def flip(responses, warmed, new):
    """First response with the `new` greeting received at or after `warmed` (Unix ms)."""
    for sent, received, g in responses:
        if received >= warmed and g == new:
            return sent, received
    return None


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-p * len(s) // 100) - 1))
    return s[int(k)]


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stamp", required=True, help="the stamp binary (STAMP_DATA_DIR set)")
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--app", default="hello")
    ap.add_argument("--slot", default="staging")
    ap.add_argument("--swaps", type=int, default=12)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--interval-ms", type=float, default=4.0,
                    help="each client sends at most one request per this interval (0: back to back)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between swaps, at least")
    ap.add_argument("--limit", type=float, default=900.0, help="hard limit of the whole loop, s")
    ap.add_argument("--prod", default="old", help="production's greeting at the start")
    ap.add_argument("--staging", default="new", help="staging's greeting at the start")
    ap.add_argument("--raw", help="write every swap's figures and the failures here (JSON)")
    args = ap.parse_args()
    host = f"{args.app}.localhost"
    staging_host = f"{args.app}-{args.slot}.localhost"

    deadline = time.monotonic() + args.limit
    loop = Loop(args.http_port, host, args.clients, args.interval_ms, deadline)
    loop.start()
    swaps = []
    prod, staging = args.prod, args.staging
    try:
        time.sleep(1.0)  # the loop gets going: connections open, a baseline of responses
        for i in range(args.swaps):
            if time.monotonic() > deadline - SWAP_LIMIT_S:
                log(f"hard limit near: stopping after {i} swaps")
                break
            # The previous production lane restarted as staging and serves the other greeting.
            wait_greeting(args.http_port, staging_host, staging, STAGING_READY_S)
            if loop.latest() != prod:
                raise RuntimeError(f"before swap {i + 1} production greets {loop.latest()!r}, not {prod!r}")
            time.sleep(args.pause)
            called = now_ms()
            out = cli(args.stamp, "slot", "swap", args.app, "--source", args.slot, limit=SWAP_LIMIT_S)
            returned = now_ms()
            if "routing switched" not in out:
                raise RuntimeError(f"swap {i + 1} did not switch routing:\n{out}")
            steps = analyse(swap_events(args.stamp, args.app, args.slot, called))
            if "switched" not in steps or "warmed" not in steps:
                raise RuntimeError(f"swap {i + 1}: no warm-up or routing-switched event in the log: {steps}")
            swaps.append({"n": i + 1, "new": staging, "old": prod, "called": called, "returned": returned, **steps})
            log(
                f"swap {i + 1}/{args.swaps}: {prod} -> {staging}, CLI {returned - called:.0f} ms, "
                f"last warm-up -> routing switched event {steps['switched'] - steps['warmed']} ms"
            )
            prod, staging = staging, prod
        # Every swap's first new response is in by now (the CLI polls every 100 ms); a last
        # quarter second so the final swap has some requests after it as well.
        time.sleep(0.25)
    finally:
        loop.finish()

    responses = loop.responses()
    failures = loop.failures()
    rtts = [r - s for s, r, _ in responses]
    rows = []
    for i, s in enumerate(swaps):
        # Each swap owns the time from its call to the next swap's call (or the loop's end).
        end = swaps[i + 1]["called"] if i + 1 < len(swaps) else float("inf")
        first = flip(responses, s["warmed"], s["new"])
        # Until the first new response: requests answered with the old greeting after the
        # warm-up ended (the in-flight ones); after it: old answers to requests SENT after it,
        # which would mean production flipped back or served both.
        s["flip"] = None if first is None else first[1] - s["warmed"]
        s["switched_to_first"] = None if first is None else first[1] - s["switched"]
        # When the routing flipped, as requests saw it: the front end routes a request when it
        # arrives, just after it is sent, so the flip lies between the last send answered by the
        # old release and the first send answered by the new one (relative to the warm-up).
        window = [(snt, g) for snt, r, g in responses if s["called"] <= r < end]
        old_sent = [snt for snt, g in window if g == s["old"]]
        new_sent = [snt for snt, g in window if g == s["new"]]
        s["last_old_sent"] = max(old_sent) - s["warmed"] if old_sent else None
        s["first_new_sent"] = min(new_sent) - s["warmed"] if new_sent else None
        s["first_response_ms"] = None if first is None else first[1] - first[0]
        # For the raw file: every request around the flip, times relative to the warm-up event.
        s["around"] = [
            (round(snt - s["warmed"], 2), round(r - s["warmed"], 2), g)
            for snt, r, g in responses
            if -50 <= r - s["warmed"] <= 150
        ]
        s["early_new"] = sum(1 for _, r, g in responses if s["called"] <= r < s["warmed"] and g == s["new"])
        s["stale_after"] = 0 if first is None else sum(
            1 for snt, r, g in responses if snt > first[1] and r < end and g == s["old"]
        )
        s["failed"] = sum(1 for t, _ in failures if s["called"] <= t < end)
        rows.append(s)

    if args.raw:
        with open(args.raw, "w") as f:
            json.dump({"swaps": rows, "failures": failures, "requests": len(responses)}, f, indent=1)

    print()
    pace = f"at most one request per {args.interval_ms:g} ms each" if args.interval_ms > 0 else "back to back"
    print(f"Slot swap {args.slot} -> production of app {args.app}, {len(rows)} swaps, {args.clients} keep-alive")
    print(f"clients on GET / through the front end ({pace}); ms from Stamp's log timestamps")
    print("(1 ms resolution) and the clients' receive times")
    print()
    cols = ["swap", "new", "started->restarted", "restarted->warmed", "warm-ups", "warmed->switched ev",
            "flip", "switched ev->first new", "last old sent", "first new sent", "its round trip",
            "new before warm", "old after flip", "failed", "CLI"]
    table = []
    for s in rows:
        table.append([
            s["n"], s["new"],
            fmt(s["restarted"] - s["started"], 0) if "restarted" in s and "started" in s else "-",
            fmt(s["warmed"] - s["restarted"], 0) if "restarted" in s else "-",
            s.get("warmups", 0),
            fmt(s["switched"] - s["warmed"], 0),
            fmt(s["flip"]), fmt(s["switched_to_first"]),
            fmt(s["last_old_sent"]), fmt(s["first_new_sent"]), fmt(s["first_response_ms"]),
            s["early_new"], s["stale_after"], s["failed"],
            fmt(s["returned"] - s["called"], 0),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *table)]
    for row in [cols, ["-" * w for w in widths]] + table:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)).rstrip())
    print()
    print("columns (ms): started->restarted = staging's lane restarts with production's slot settings;")
    print("restarted->warmed = the warm-up requests, to the last 'warm-up of instance' event; warmed->switched ev")
    print("= to the 'routing switched' event (store commit, publish); flip = the first response with the new")
    print("greeting minus the warm-up event; last old sent / first new sent = send times, relative to the")
    print("warm-up event, of the last request answered by the old release and the first answered by the new")
    print("one (the front end routes on arrival, so the flip lies between them); its round trip = that first")
    print("new request's; new before warm, old after flip = anomalies (requests); CLI = `stamp slot swap`.")
    print()

    flips = [s["flip"] for s in rows if s["flip"] is not None]
    missing = len(rows) - len(flips)
    to_switch = [s["switched"] - s["warmed"] for s in rows]
    after_switch = [s["switched_to_first"] for s in rows if s["switched_to_first"] is not None]
    sends = sorted(snt for snt, _, _ in responses)
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    print(f"requests: {len(responses) + len(failures)} ({len(responses)} answered 200), "
          f"round trip median {fmt(statistics.median(rtts), 2)} ms, p90 {fmt(percentile(rtts, 90), 2)} ms; "
          f"time between two sends (any client) median {fmt(statistics.median(gaps), 2)} ms, "
          f"p90 {fmt(percentile(gaps, 90), 2)} ms: the step of the flip measurement")
    if flips:
        med = statistics.median(flips)
        verdict = "met" if med <= TARGET_FLIP_MS else "NOT MET"
        print(f"flip latency (last warm-up event -> first new response), {len(flips)} swaps: "
              f"median {fmt(med)} ms, p90 {fmt(percentile(flips, 90))} ms, max {fmt(max(flips))} ms"
              f"   target <= {TARGET_FLIP_MS:.0f} ms: {verdict}")
        print(f"  of which: last warm-up -> 'routing switched' event median {fmt(statistics.median(to_switch))} ms "
              f"[{min(to_switch)}-{max(to_switch)}], that event -> first new response median "
              f"{fmt(statistics.median(after_switch))} ms [{fmt(min(after_switch))}-{fmt(max(after_switch))}]")
        sent = [s["first_new_sent"] for s in rows if s["first_new_sent"] is not None]
        rt = [s["first_response_ms"] for s in rows if s["first_response_ms"] is not None]
        print(f"  split by request: first request answered by the new release was sent median "
              f"{fmt(statistics.median(sent))} ms after the warm-up (routing flip, at most), its round trip "
              f"median {fmt(statistics.median(rt))} ms")
    else:
        print("flip latency: no swap's new greeting was seen")
    print(f"failed requests (non-200 or connection error): {len(failures)}   target 0: "
          f"{'met' if not failures else 'NOT MET'}")
    for t, text in failures[:10]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(t / 1000))}.{int(t) % 1000:03d} {text}")
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more")
    stale = sum(s["stale_after"] for s in rows)
    early = sum(s["early_new"] for s in rows)
    print(f"checks: old greeting to a request sent after the first new response: {stale}; "
          f"new greeting before the warm-up ended: {early}; swaps without a new response: {missing}")
    if missing or len(rows) < args.swaps:
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log(f"error: {e}")
        sys.exit(1)
