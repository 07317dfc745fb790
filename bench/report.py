"""Prints bench/proxy.sh's table: medians of the runs, Stamp next to nginx and direct, the
targets, and the reference numbers measured on this kind of machine
(shared/reference/front-end-proxy.md §1.10: nginx 1.22 proxy with upstream keep-alive in front
of an nginx `return 200` backend, same pinning; single runs, treat as +-10 %).

Input: a TSV of `scenario target run metric value` lines.
"""

import argparse
import collections
import statistics

# §1.10, measured on a 2-vCPU EPYC VM like this one; the backend there was nginx, not `fast`.
REFERENCE = {
    ("rps", "direct"): "122k (133k calib.)",
    ("rps", "nginx"): "43.6k (42.2k calib.)",
    ("cpu_us_per_req_sat", "nginx"): "15.0",
    ("cpu_us_per_req_fixed", "nginx"): "28.1 @5k",
    ("p50_ms", "direct"): "0.132",
    ("p50_ms", "nginx"): "0.275",
    ("p99_ms", "direct"): "0.387",
    ("p99_ms", "nginx"): "0.646",
    ("added_p50_ms", "nginx"): "+0.14",
    ("added_p99_ms", "nginx"): "+0.26",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    for flag in ("commit", "date", "nginx", "runs", "duration", "fixed-duration", "rate", "conns",
                 "tls-note", "stamp-alive", "rss", "stamp-log-lines", "load", "warmup"):
        ap.add_argument("--" + flag, default="")
    args = ap.parse_args()

    values = collections.defaultdict(list)  # (scenario, target, metric) -> [value per run]
    with open(args.results) as f:
        for line in f:
            scenario, target, _run, metric, value = line.rstrip("\n").split("\t")
            values[(scenario, target, metric)].append(float(value))

    def med(scenario, target, metric):
        runs = values.get((scenario, target, metric))
        return statistics.median(runs) if runs else None

    def spread(scenario, target, metric):
        runs = values.get((scenario, target, metric))
        if not runs or len(runs) < 2:
            return ""
        return f" [{fmt_num(min(runs))}-{fmt_num(max(runs))}]"

    print()
    print(f"Stamp front end vs nginx {args.nginx} -- {args.date}, commit {args.commit}")
    print(f"server side (backend + proxy) on core 0, load generator on core 1; medians of "
          f"{args.runs} runs [min-max]; closed loop: wrk -t1 -c{args.conns} -d{args.duration}s; "
          f"fixed rate: oha -c{args.conns} -q<rate> --latency-correction for {args.fixed_duration}s "
          f"after a {args.warmup}s warm-up (rate {args.rate}/s unless lowered to stay below saturation)")
    print()

    checks = []
    for scenario in ("http", "https"):
        if not any(k[0] == scenario for k in values):
            continue
        targets = [t for t in ("direct", "nginx", "stamp") if (scenario, t, "rps") in values]
        rates = [v for (s, _t, m), vs in values.items() if s == scenario and m == "rate" for v in vs]
        rate = f"{statistics.median(rates):.0f}" if rates else args.rate
        header = ["metric"] + targets + ["Stamp/nginx", "target", "met", "reference nginx (1.10)"]
        rows = []

        def add(label, metric, better, target_ratio=None, show_ref=True, added=False):
            cells = []
            meds = {}
            for t in targets:
                if added:
                    if t == "direct" or med(scenario, "direct", metric) is None:
                        cells.append("")
                        continue
                    v = med(scenario, t, metric) - med(scenario, "direct", metric)
                    meds[t] = v
                    cells.append(f"+{fmt_num(v)}" if v >= 0 else fmt_num(v))
                else:
                    v = med(scenario, t, metric)
                    meds[t] = v
                    cells.append("" if v is None else fmt_num(v) + spread(scenario, t, metric))
            ratio = ""
            # A ratio of added latencies means nothing when nginx added none (noise can make it
            # negative); the target then compares the values.
            if meds.get("stamp") is not None and meds.get("nginx") and meds["nginx"] > 0:
                ratio = f"{meds['stamp'] / meds['nginx']:.2f}"
            target_text, met = "", ""
            if target_ratio is not None and meds.get("stamp") is not None and meds.get("nginx") is not None:
                r = meds["stamp"] / meds["nginx"] if meds["nginx"] > 0 else float("inf")
                if better == "higher":
                    target_text = f">= {target_ratio}x"
                    ok = r >= target_ratio
                else:
                    target_text = f"<= {target_ratio}x" if target_ratio != 1.0 else "<= nginx"
                    ok = meds["stamp"] <= target_ratio * meds["nginx"]
                met = "yes" if ok else "NO"
                checks.append((f"{scenario}: {label}", ok))
            ref_key = ("added_" + metric) if added else metric
            ref = REFERENCE.get((ref_key, "nginx"), "") if show_ref and scenario == "http" else ""
            if show_ref and scenario == "http" and (ref_key, "direct") in REFERENCE:
                ref = f"{ref} (direct {REFERENCE[(ref_key, 'direct')]})"
            rows.append([label] + cells + [ratio, target_text, met, ref])

        add("throughput, req/s (closed loop)", "rps", "higher", 1.2)
        add("proxy CPU us/request at saturation", "cpu_us_per_req_sat", "lower")
        add("core 0 (server side) busy % at saturation", "core0_busy", "lower", show_ref=False)
        add("core 1 (load generator) busy % at saturation", "core1_busy", "lower", show_ref=False)
        if (scenario, "stamp", "p50_ms") in values or (scenario, "nginx", "p50_ms") in values:
            add(f"proxy CPU us/request at {rate}/s", "cpu_us_per_req_fixed", "lower", 0.8)
            add(f"latency p50 ms at {rate}/s", "p50_ms", "lower")
            add(f"latency p90 ms at {rate}/s", "p90_ms", "lower", show_ref=False)
            add(f"latency p99 ms at {rate}/s", "p99_ms", "lower")
            add(f"latency p99.9 ms at {rate}/s", "p999_ms", "lower", show_ref=False)
            if "direct" in targets:
                add("added p50 ms over direct", "p50_ms", "lower", added=True)
                add("added p99 ms over direct", "p99_ms", "lower", 1.0, added=True)
            add("served req/s in the fixed-rate runs", "served_rps", "higher", show_ref=False)
        errs = {t: sum(values.get((scenario, t, "errors"), [])) for t in targets}
        rows.append(["errors / non-2xx (all runs)"] + [f"{errs[t]:.0f}" for t in targets]
                    + ["", "0", "yes" if not any(errs.values()) else "NO", ""])
        print(scenario.upper())
        print_table(header, rows)
        print()

    # Stamp runs its front end at nice -10 (`stamp up --nice`); nginx can do the same with
    # `worker_priority -10`. Shown apart: the targets compare nginx as commonly configured.
    if ("http", "nginx_prio", "rps") in values:
        print("equal priority: nginx with `worker_priority -10` (the nice `stamp up` gives itself), HTTP:")
        rows = []
        for label, metric, added in (
                ("throughput, req/s (closed loop)", "rps", False),
                ("proxy CPU us/request at saturation", "cpu_us_per_req_sat", False),
                ("proxy CPU us/request at the fixed rate", "cpu_us_per_req_fixed", False),
                ("latency p50 ms at the fixed rate", "p50_ms", False),
                ("latency p99 ms at the fixed rate", "p99_ms", False),
                ("added p99 ms over direct", "p99_ms", True)):
            prio, stamp = med("http", "nginx_prio", metric), med("http", "stamp", metric)
            if prio is None or stamp is None:
                continue
            if added:
                direct = med("http", "direct", metric)
                if direct is None:
                    continue
                prio, stamp = prio - direct, stamp - direct
                rows.append([label, f"{prio:+.3f}", f"{stamp:+.3f}", ""])
                continue
            ratio = f"{stamp / prio:.2f}" if prio > 0 else ""
            rows.append([label, fmt_num(prio) + spread("http", "nginx_prio", metric), fmt_num(stamp), ratio])
        print_table(["metric", "nginx -10", "stamp", "Stamp/nginx -10"], rows)
        print()

    # The direct path has no proxy: its "CPU/request" is the backend's own, shown for scale.
    calib = med("http", "calib", "rps")
    if calib:
        print(f"calibration: nginx `return 200` alone on core 0 did {fmt_num(calib)} req/s here "
              f"({fmt_num(med('http', 'calib', 'cpu_us_per_req_sat'))} us CPU/request); the "
              f"reference machine did 122k (133k), so this machine ran at "
              f"~{calib / 122342:.2f}x its speed: compare ratios, not absolute numbers.")
        print()
    print("notes: direct CPU us/request is the backend (fast) process's own; proxy CPU for Stamp is")
    print("       the whole `stamp up` process (front end + controller + agent), not its instance.")
    print(f"       {args.tls_note}")
    print(f"       memory after the run: {args.rss}")
    print(f"       machine load: {args.load}")
    print(f"       stamp up alive at the end: {args.stamp_alive}; "
          f"warning/error lines in its log: {args.stamp_log_lines or 0}")
    if checks:
        print()
        print("targets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))


def fmt_num(v):
    if v is None:
        return ""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
