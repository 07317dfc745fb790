#!/usr/bin/env bash
# Stamp's front end against nginx 1.22 as a reverse proxy, in front of the same backend process,
# in one run on a 2-core machine. See bench/README.md for the method and the latest results.
#
#   bash bench/proxy.sh            # ~5 minutes; prints a table
#
# Knobs (environment): RUNS (repetitions, default 3), DURATION (seconds per closed-loop run,
# default 8), FIXED_DURATION (seconds measured per fixed-rate run, default 7, after WARMUP
# seconds, default 1, left out of the percentiles), RATE (fixed rate in requests/s, default
# 5000; lowered to half the slower proxy's throughput if that is less), CONNS (connections,
# default 50), BENCH_KEEP=1 keeps the work
# directory (logs, configs, raw results).
#
# Layout "server gets one core": the backend, the proxy under test and `stamp up` (with its
# instance, which inherits the pinning) run on core 0; the load generator runs on core 1. All
# traffic is to 127.0.0.1 and every load is bounded in time. The script exits 0 when targets are
# missed (it reports them); it exits non-zero only when it cannot measure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
FIXED_DURATION=${FIXED_DURATION:-7}
RATE=${RATE:-5000}
CONNS=${CONNS:-50}
# Seconds at the start of each fixed-rate run left out of its latency percentiles: connection
# set-up (TLS handshakes, for HTTPS) queues the first requests behind it.
WARMUP=${WARMUP:-1}
APP=bench
HOST="$APP.localhost"
SERVER_CPU=0
CLIENT_CPU=1

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# --- tools --------------------------------------------------------------------------------------

[ "$(nproc --all)" -ge 2 ] || die "needs at least 2 cores (server on core $SERVER_CPU, load generator on core $CLIENT_CPU)"
export PATH="$HOME/.cargo/bin:$PATH"
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v openssl >/dev/null || missing+=(openssl)
command -v taskset >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v oha >/dev/null; then
    # The fixed-rate generator (open loop, coordinated-omission corrected). Not in Debian;
    # built once from crates.io and kept in ~/.cargo/bin (several minutes on 2 cores).
    log "installing oha (cargo install oha --locked); this takes several minutes once"
    command -v cmake >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null; }
    cargo install oha --locked >&2
fi
nginx_version=$(nginx -v 2>&1 | sed 's/.*nginx\///')

log "building stamp and the fast sample app (release)"
(cd "$ROOT" && cargo build --release --quiet -p stamp -p stamp-example-fast)
STAMP="$ROOT/target/release/stamp"
FAST="$ROOT/target/release/fast"
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then
    COMMIT="$COMMIT with uncommitted changes"
fi

# --- work directory and cleanup -----------------------------------------------------------------

WORK=$(mktemp -d /tmp/stamp-bench.XXXXXX)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
PIDS=()
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # stamp up stops its instance (SIGTERM to the group) and drains; give it a bounded time.
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${INSTANCE_PID:-}" ]; then kill -KILL "$INSTANCE_PID" 2>/dev/null || true; fi
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ $status != 0 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

API_PORT=$(free_port); HTTP_PORT=$(free_port); HTTPS_PORT=$(free_port)
NGINX_PORT=$(free_port); NGINX_TLS_PORT=$(free_port); CALIB_PORT=$(free_port)
NGINX_PRIO_PORT=$(free_port)


cores_busy() { # "busy0 busy1": per-core non-idle jiffies and total jiffies since boot, for cpu0 and cpu1
    awk '/^cpu[01] / {idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; printf "%d %d ", total - idle, total}' /proc/stat
}

busy_percent() { # busy_percent "BEFORE" "AFTER" CORE_INDEX -> percent busy of that core between the samples
    python3 -c "import sys
b = list(map(int, sys.argv[1].split())); a = list(map(int, sys.argv[2].split())); i = 2 * int(sys.argv[3])
print(round(100 * (a[i] - b[i]) / max(a[i + 1] - b[i + 1], 1), 1))" "$1" "$2" "$3"
}

cpu_ticks() { # utime+stime of the given processes (all their threads), in clock ticks
    local total=0 pid
    for pid in "$@"; do
        # Fields after the command name, which may contain spaces: 14 and 15 overall.
        total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo $total
}

# --- Stamp --------------------------------------------------------------------------------------

HTTPS_ARGS=()
STAMP_HTTPS=0
if "$STAMP" up --help 2>/dev/null | grep -q -- '--https'; then
    STAMP_HTTPS=1
    HTTPS_ARGS=(--https "127.0.0.1:$HTTPS_PORT")
fi
export STAMP_DATA_DIR="$WORK/stamp"
log "starting stamp up on core $SERVER_CPU (front end http://127.0.0.1:$HTTP_PORT)"
taskset -c $SERVER_CPU "$STAMP" up --data-dir "$STAMP_DATA_DIR" --api "127.0.0.1:$API_PORT" \
    --http "127.0.0.1:$HTTP_PORT" "${HTTPS_ARGS[@]}" --node-cpus 4 >"$WORK/stamp.log" 2>&1 &
STAMP_PID=$!
PIDS+=("$STAMP_PID")
wait_for 30 "$STAMP" status || { tail -20 "$WORK/stamp.log" >&2; die "stamp up did not start"; }

mkdir -p "$WORK/app"
cp "$FAST" "$WORK/app/fast"
printf 'web: ./fast\n' >"$WORK/app/Procfile"
"$STAMP" plan create bench-plan --sku B1 --workers 1 >/dev/null
"$STAMP" app create "$APP" --plan bench-plan >/dev/null
log "deploying the fast app"
"$STAMP" deploy "$WORK/app" --app "$APP" >"$WORK/deploy.log" 2>&1 || { cat "$WORK/deploy.log" >&2; die "deploy failed"; }
read -r BACKEND_PORT INSTANCE_PID < <("$STAMP" ps "$APP" --output json | python3 -c '
import json, sys
ready = [i for i in json.load(sys.stdin) if i["state"] == "ready"]
if len(ready) != 1: sys.exit("expected one ready instance, got %d" % len(ready))
print(ready[0]["port"], ready[0]["pid"])')
[ -n "$BACKEND_PORT" ] || die "no ready instance"
wait_for 10 curl -fsS -H "Host: $HOST" "http://127.0.0.1:$HTTP_PORT/" || die "the front end does not serve $HOST"
log "instance pid $INSTANCE_PID on 127.0.0.1:$BACKEND_PORT; CPU affinity: stamp up $(taskset -cp "$STAMP_PID" | sed 's/.*: //'), its threads $(ps -L -o psr= -p "$STAMP_PID" | sort -u | paste -sd,), the instance $(taskset -cp "$INSTANCE_PID" | sed 's/.*: //')"

# --- nginx --------------------------------------------------------------------------------------

mkdir -p "$WORK/nginx/logs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=*.localhost" -addext "subjectAltName=DNS:*.localhost,DNS:localhost" \
    -keyout "$WORK/nginx/key.pem" -out "$WORK/nginx/cert.pem" 2>/dev/null
cat >"$WORK/nginx/nginx.conf" <<EOF
# Reverse proxy with upstream keep-alive (nginx 1.22 speaks HTTP/1.0 upstream and closes each
# connection unless told otherwise). One worker, as Stamp gets one core.
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $WORK/nginx/cert.pem;
        ssl_certificate_key $WORK/nginx/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The forwarding headers Stamp adds too.
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
    # Calibration: the reference's "backend alone" (nginx answering by itself), to tell how fast
    # this machine is compared with the one the reference numbers come from.
    server {
        listen 127.0.0.1:$CALIB_PORT;
        location / { return 200 "hello world\n"; }
    }
}
EOF
start_nginx() { # start_nginx DIR PORT: nginx on core 0 with DIR/nginx.conf; its master and worker pids
    local dir=$1 port=$2 pid
    taskset -c $SERVER_CPU nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf" \
        -g 'daemon off;' >"$dir/stdout.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_for 10 curl -fsS -H "Host: $HOST" "http://127.0.0.1:$port/" >/dev/null \
        || { cat "$dir/logs/error.log" >&2; die "nginx ($dir) does not proxy"; }
    STARTED_PIDS=("$pid" $(pgrep -P "$pid"))
}
log "starting nginx $nginx_version on core $SERVER_CPU (http://127.0.0.1:$NGINX_PORT)"
start_nginx "$WORK/nginx" "$NGINX_PORT"
NGINX_PIDS=("${STARTED_PIDS[@]}")

# The same nginx with its worker at the priority `stamp up` gives itself (nice -10, see
# `stamp up --nice`): shown apart, as the comparison at equal priority. HTTP only.
mkdir -p "$WORK/nginx-prio/logs"
sed -e "s#^worker_processes 1;#worker_processes 1;\nworker_priority -10;#" \
    -e "s#$WORK/nginx/nginx.pid#$WORK/nginx-prio/nginx.pid#" \
    -e "s#$WORK/nginx/logs#$WORK/nginx-prio/logs#" \
    -e "s#listen 127.0.0.1:$NGINX_PORT;#listen 127.0.0.1:$NGINX_PRIO_PORT;#" \
    -e "/listen 127.0.0.1:$NGINX_TLS_PORT ssl;/d" -e "/listen 127.0.0.1:$CALIB_PORT;/d" \
    -e "/location \/ { return 200/d" "$WORK/nginx/nginx.conf" >"$WORK/nginx-prio/nginx.conf"
start_nginx "$WORK/nginx-prio" "$NGINX_PRIO_PORT"
NGINX_PRIO_PIDS=("${STARTED_PIDS[@]}")
log "nginx (worker_priority -10) pids ${NGINX_PRIO_PIDS[*]}, nice $(ps -o ni= -p "${NGINX_PRIO_PIDS[1]}" | tr -d ' ')"
log "nginx master + worker pids ${NGINX_PIDS[*]}; CPU affinity: $(for p in "${NGINX_PIDS[@]}"; do taskset -cp "$p" | sed 's/.*: //'; done | paste -sd,)"

# --- measurements -------------------------------------------------------------------------------

RESULTS="$WORK/results.tsv" # scenario target run metric value
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

url_of() { # url_of TARGET SCHEME
    case "$1/$2" in
        direct/http) echo "http://127.0.0.1:$BACKEND_PORT/" ;;
        calib/http) echo "http://127.0.0.1:$CALIB_PORT/" ;;
        nginx/http) echo "http://127.0.0.1:$NGINX_PORT/" ;;
        nginx_prio/http) echo "http://127.0.0.1:$NGINX_PRIO_PORT/" ;;
        stamp/http) echo "http://127.0.0.1:$HTTP_PORT/" ;;
        nginx/https) echo "https://127.0.0.1:$NGINX_TLS_PORT/" ;;
        stamp/https) echo "https://127.0.0.1:$HTTPS_PORT/" ;;
    esac
}
port_of() { url_of "$@" | sed 's#.*:\([0-9]*\)/$#\1#'; }
proxy_pids() { # the processes whose CPU counts as the proxy's
    case "$1" in
        nginx | calib) echo "${NGINX_PIDS[@]}" ;;
        nginx_prio) echo "${NGINX_PRIO_PIDS[@]}" ;;
        stamp) echo "$STAMP_PID" ;;
        direct) echo "$INSTANCE_PID" ;;
    esac
}

# Closed loop: wrk keeps CONNS keep-alive connections busy; throughput and CPU per request at
# saturation.
closed_loop() { # closed_loop SCENARIO TARGET SCHEME RUN
    local scenario=$1 target=$2 scheme=$3 run=$4 out before after
    out="$WORK/wrk-$scenario-$target-$run.txt"
    local cores_before cores_after
    cores_before=$(cores_busy)
    before=$(cpu_ticks $(proxy_pids "$target"))
    taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -H "Host: $HOST" \
        "$(url_of "$target" "$scheme")" >"$out" 2>&1 || true
    after=$(cpu_ticks $(proxy_pids "$target"))
    cores_after=$(cores_busy)
    local rps requests errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    requests=$(awk '/requests in/ {print $1}' "$out")
    errors=$(awk '/Non-2xx or 3xx responses:/ {e += $NF} /Socket errors:/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$out")
    [ -n "$rps" ] || { cat "$out" >&2; die "wrk failed against $target ($scheme)"; }
    record "$scenario" "$target" "$run" rps "$rps"
    record "$scenario" "$target" "$run" errors "$errors"
    record "$scenario" "$target" "$run" core0_busy "$(busy_percent "$cores_before" "$cores_after" 0)"
    record "$scenario" "$target" "$run" core1_busy "$(busy_percent "$cores_before" "$cores_after" 1)"
    record "$scenario" "$target" "$run" cpu_us_per_req_sat "$(python3 -c "print(($after-$before)/$(getconf CLK_TCK)*1e6/max($requests,1))")"
    log "$scenario $target run $run: $rps req/s"
}

# Fixed rate: oha sends RATE requests/s over CONNS keep-alive connections and corrects for
# coordinated omission; latency percentiles and the proxy's CPU per request at that rate.
fixed_rate() { # fixed_rate SCENARIO TARGET SCHEME RUN RATE
    local scenario=$1 target=$2 scheme=$3 run=$4 rate=$5 out before after url
    out="$WORK/oha-$scenario-$target-$run.json"
    url=$(url_of "$target" "$scheme")
    local args=(-z "$((FIXED_DURATION + WARMUP))s" -c "$CONNS" -q "$rate" --latency-correction --no-tui
        --output-format json --db-url "$out.db")
    if [ "$scheme" = https ]; then
        # Real SNI for the app's name, connected to 127.0.0.1.
        local port; port=$(port_of "$target" "$scheme")
        args+=(--insecure --connect-to "$HOST:$port:127.0.0.1:$port")
        url="https://$HOST:$port/"
    else
        args+=(-H "Host: $HOST")
    fi
    before=$(cpu_ticks $(proxy_pids "$target"))
    taskset -c $CLIENT_CPU oha "${args[@]}" "$url" >"$out" 2>"$out.err" || true
    after=$(cpu_ticks $(proxy_pids "$target"))
    python3 - "$out" "$scenario" "$target" "$run" "$((after - before))" "$(getconf CLK_TCK)" "$rate" "$WARMUP" >>"$RESULTS" <<'PY' || { cat "$out.err" >&2; die "oha failed against $target ($scheme)"; }
import json, sqlite3, sys
path, scenario, target, run, ticks, hz, rate, warmup = sys.argv[1:]
data = json.load(open(path))
# Latency of each request from the moment it was due (coordinated-omission corrected), for the
# requests due after the warm-up.
db = sqlite3.connect(path + ".db")
durations = sorted(d for (d,) in db.execute(
    "SELECT duration FROM oha WHERE start_latency_correction >= ? AND status BETWEEN 200 AND 299",
    (float(warmup),)))
if not durations:
    sys.exit("no requests recorded after the warm-up")
def percentile(q):
    return durations[min(len(durations) - 1, max(0, int(q * len(durations) + 0.5) - 1))]
codes = data.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# Requests still in flight when the duration ends are "aborted due to deadline": not failures.
failed = {k: v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k}
total = sum(codes.values()) + sum(failed.values())
def row(metric, value):
    print(f"{scenario}\t{target}\t{run}\t{metric}\t{value}")
row("p50_ms", percentile(0.50) * 1e3)
row("p90_ms", percentile(0.90) * 1e3)
row("p99_ms", percentile(0.99) * 1e3)
row("p999_ms", percentile(0.999) * 1e3)
row("served_rps", data["summary"]["requestsPerSec"])
row("rate", rate)
row("errors", total - ok)
row("cpu_us_per_req_fixed", int(ticks) / int(hz) * 1e6 / max(ok, 1))
PY
    log "$scenario $target run $run: p50 $(awk -F'\t' -v t="$target" -v r="$run" -v s="$scenario" '$1==s && $2==t && $3==r && $4=="p50_ms" {printf "%.3f ms", $5}' "$RESULTS"), p99 $(awk -F'\t' -v t="$target" -v r="$run" -v s="$scenario" '$1==s && $2==t && $3==r && $4=="p99_ms" {printf "%.3f ms", $5}' "$RESULTS")"
}

tls_params() { # what a client negotiates with TARGET over TLS
    local port; port=$(port_of "$1" https)
    echo | timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername "$HOST" 2>/dev/null \
        | awk '/^New, / {sub(/^New, /, ""); sub(/, Cipher is /, " "); p = $0} /^Peer signature type:/ {s = $4} END {printf "%s %s", p, s}'
}

# Warm up every path (connection pools, caches, CPU frequency) before measuring.
log "warming up"
for target in direct nginx stamp nginx_prio; do
    taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d2s -H "Host: $HOST" "$(url_of $target http)" >/dev/null 2>&1 || true
done

# Runs interleave the targets so slow drift on the VM spreads over all of them.
HTTP_TARGETS=(direct nginx stamp nginx_prio)
for run in $(seq 1 "$RUNS"); do
    for target in calib "${HTTP_TARGETS[@]}"; do closed_loop http "$target" http "$run"; done
done
# The fixed rate must be below saturation for both proxies: RATE, or half the lower proxied
# closed-loop median if that is less (a busy machine), rounded down to 500/s.
fixed_rate_for() { # fixed_rate_for SCENARIO
    python3 - "$RESULTS" "$1" "$RATE" <<'PY'
import collections, statistics, sys
path, scenario, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
rps = collections.defaultdict(list)
for line in open(path):
    s, target, _run, metric, value = line.rstrip("\n").split("\t")
    if s == scenario and metric == "rps" and target in ("nginx", "stamp"):
        rps[target].append(float(value))
lowest = min(statistics.median(v) for v in rps.values())
print(max(500, min(rate, int(lowest / 2) // 500 * 500)))
PY
}
HTTP_RATE=$(fixed_rate_for http)
[ "$HTTP_RATE" = "$RATE" ] || log "fixed rate lowered to $HTTP_RATE/s (half the lower proxied throughput)"
for run in $(seq 1 "$RUNS"); do
    for target in "${HTTP_TARGETS[@]}"; do fixed_rate http "$target" http "$run" "$HTTP_RATE"; done
done

TLS_NOTE="HTTPS: not available in this build (stamp up has no --https)"
if [ $STAMP_HTTPS = 1 ]; then
    if wait_for 10 curl -fsSk --resolve "$HOST:$HTTPS_PORT:127.0.0.1" "https://$HOST:$HTTPS_PORT/"; then
        TLS_NOTE="HTTPS: nginx $(tls_params nginx); Stamp $(tls_params stamp)"
        for target in nginx stamp; do
            taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d2s -H "Host: $HOST" "$(url_of $target https)" >/dev/null 2>&1 || true
        done
        for run in $(seq 1 "$RUNS"); do
            for target in nginx stamp; do closed_loop https "$target" https "$run"; done
        done
        HTTPS_RATE=$(fixed_rate_for https)
        [ "$HTTPS_RATE" = "$RATE" ] || log "HTTPS fixed rate lowered to $HTTPS_RATE/s (half the lower proxied throughput)"
        for run in $(seq 1 "$RUNS"); do
            for target in nginx stamp; do fixed_rate https "$target" https "$run" "$HTTPS_RATE"; done
        done
    else
        TLS_NOTE="HTTPS: stamp up --https is there but https://$HOST:$HTTPS_PORT/ did not answer (see stamp.log)"
    fi
fi

# Did stamp up stay healthy under load?
STAMP_ALIVE=yes
kill -0 "$STAMP_PID" 2>/dev/null || STAMP_ALIVE="no: stamp up exited during the run"
STAMP_RSS_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$STAMP_PID/status" 2>/dev/null || echo "?")
NGINX_RSS_KIB=$(for p in "${NGINX_PIDS[@]}"; do awk '/^VmRSS:/ {print $2}' "/proc/$p/status"; done | awk '{t += $1} END {print t}')
# wrk connects to 127.0.0.1 and so sends "127.0.0.1" as SNI, which rustls ignores with a
# warning per handshake: counted apart from the rest.
IP_SNI_WARNINGS=$(grep -c 'ignoring IP address presented as hostname' "$WORK/stamp.log" || true)
STAMP_WARNINGS=$(grep -iE 'warn|error' "$WORK/stamp.log" | grep -vc 'ignoring IP address presented as hostname' || true)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The raw numbers outlive the work directory, to re-render or compare runs.
cp "$RESULTS" /tmp/stamp-bench-results.tsv
python3 "$ROOT/bench/report.py" "$RESULTS" \
    --commit "$COMMIT" --date "$(date -u +%Y-%m-%dT%H:%MZ)" --nginx "$nginx_version" \
    --runs "$RUNS" --duration "$DURATION" --fixed-duration "$FIXED_DURATION" --rate "$RATE" \
    --conns "$CONNS" --warmup "$WARMUP" --tls-note "$TLS_NOTE" --stamp-alive "$STAMP_ALIVE" \
    --rss "stamp up ${STAMP_RSS_KIB} KiB (controller, worker agent and front end), nginx ${NGINX_RSS_KIB} KiB" \
    --stamp-log-lines "$STAMP_WARNINGS (plus $IP_SNI_WARNINGS rustls warnings about wrk's IP-address SNI)" \
    --load "before $LOAD_BEFORE, after $LOAD_AFTER (1/5/15-minute load averages; the measurement itself keeps ~1.5 busy)"
