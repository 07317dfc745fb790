#!/usr/bin/env bash
# Slot swap (issue 6): with a client loop through the front end, the time from the swap's
# warm-up completion to the first response from the new production release (the routing flip),
# medians over SWAPS swaps, and the count of failed requests. Target: flip <= 10 ms, 0 failed.
# See bench/README.md for the method and the latest results.
#
#   bash bench/swap.sh             # ~1-2 min after the build; prints a table
#
# Knobs (environment): SWAPS (default 12, at least 10), CLIENTS (keep-alive client threads,
# default 4), INTERVAL_MS (each client sends at most one request per interval, default 4, so at
# most ~1000 requests/s in all; 0 = back to back, which saturates this 2-core machine when the
# app answers in ~1 ms), PAUSE (seconds between swaps, at least; default 1), BENCH_KEEP=1 keeps the work
# directory (stamp log, app log, raw figures).
#
# Setup: plan p (S1, 2 workers), app hello (the hello sample app, Python) with production on
# GREETING=old and a staging slot on GREETING=new. Every swap exchanges them. No CPU pinning;
# all traffic is to 127.0.0.1 and every wait is bounded. Exits 0 when it measured (whether or
# not the target is met); non-zero only when it cannot measure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWAPS=${SWAPS:-12}
CLIENTS=${CLIENTS:-4}
INTERVAL_MS=${INTERVAL_MS:-4}
PAUSE=${PAUSE:-1}
APP=hello
PLAN=p
SLOT=staging

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$SWAPS" -ge 10 ] 2>/dev/null || die "SWAPS must be a number >= 10 (issue 6 asks for medians over at least 10)"

# --- tools --------------------------------------------------------------------------------------

export PATH="$HOME/.cargo/bin:$PATH"
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

log "building stamp (release)"
(cd "$ROOT" && cargo build --release --quiet -p stamp)
STAMP="$ROOT/target/release/stamp"
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then
    COMMIT="$COMMIT with uncommitted changes"
fi

# --- work directory and cleanup -----------------------------------------------------------------

WORK=$(mktemp -d /tmp/stamp-bench-swap.XXXXXX)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STAMP_PID=
cleanup() {
    local status=$?
    if [ -n "$STAMP_PID" ]; then
        # stamp up stops its instances (SIGTERM to each group) and drains; give it a bounded time.
        kill -TERM "$STAMP_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$STAMP_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$STAMP_PID" 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ $status != 0 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Stamp --------------------------------------------------------------------------------------

export STAMP_DATA_DIR="$WORK/stamp"
log "starting stamp up (loopback, ports chosen by the kernel)"
# --node-cpus/--node-memory-mib: two slots of two S1 workers each must fit on this node whatever
# the machine has.
"$STAMP" up --api 127.0.0.1:0 --http 127.0.0.1:0 --https 127.0.0.1:0 \
    --node-cpus 8 --node-memory-mib 16384 >"$WORK/stamp.log" 2>&1 &
STAMP_PID=$!
wait_for 30 test -s "$STAMP_DATA_DIR/http-url" || { tail -20 "$WORK/stamp.log" >&2; die "stamp up wrote no http-url"; }
wait_for 30 "$STAMP" status || { tail -20 "$WORK/stamp.log" >&2; die "stamp up did not start"; }
HTTP_URL=$(cat "$STAMP_DATA_DIR/http-url") # http://127.0.0.1:PORT
HTTP_PORT=${HTTP_URL##*:}
[[ "$HTTP_PORT" =~ ^[0-9]+$ ]] || die "cannot read the front end's port from $HTTP_URL"
log "front end $HTTP_URL, API $(cat "$STAMP_DATA_DIR/api-url")"

greets() { # greets HOST GREETING: the front end answers GET / for HOST with that greeting
    curl -fsS --max-time 5 -H "Host: $1" "http://127.0.0.1:$HTTP_PORT/" | grep -q ": $2\$"
}

APP_DIR="$ROOT/examples/apps/hello"

log "setting up plan $PLAN (S1, 2 workers), app $APP and slot $SLOT"
{
    "$STAMP" plan create "$PLAN" --sku S1 --workers 2
    "$STAMP" app create "$APP" --plan "$PLAN"
    "$STAMP" config set "$APP" GREETING=old --no-wait
    "$STAMP" deploy "$APP_DIR" --app "$APP"
    "$STAMP" slot create "$APP" "$SLOT"
    "$STAMP" config set "$APP" GREETING=new --slot "$SLOT" --no-wait
    "$STAMP" deploy "$APP_DIR" --app "$APP" --slot "$SLOT"
} >"$WORK/setup.log" 2>&1 || { cat "$WORK/setup.log" >&2; die "setup failed"; }
wait_for 30 greets "$APP.localhost" old || die "production does not greet with old"
wait_for 30 greets "$APP-$SLOT.localhost" new || die "staging does not greet with new"

# --- measurements -------------------------------------------------------------------------------

started=$(date +%s)
set +e
# The whole loop is bounded (--limit, seconds) besides each swap's own bound in swap.py.
timeout 1200 python3 "$ROOT/bench/swap.py" --stamp "$STAMP" --http-port "$HTTP_PORT" \
    --app "$APP" --slot "$SLOT" --swaps "$SWAPS" --clients "$CLIENTS" --interval-ms "$INTERVAL_MS" --pause "$PAUSE" \
    --limit 900 --raw "$WORK/raw.json" | tee "$WORK/results.txt"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || [ "$status" = 2 ] || die "the swap loop failed (exit $status); see $WORK/stamp.log"
cp "$STAMP_DATA_DIR/logs/$APP.log" "$WORK/app.log" 2>/dev/null || true

alive=no
kill -0 "$STAMP_PID" 2>/dev/null && alive=yes
echo
echo "notes: app examples/apps/hello, $CLIENTS clients, INTERVAL_MS=$INTERVAL_MS, $SWAPS swaps"
echo "       commit $COMMIT, $(date -u '+%Y-%m-%d %H:%M UTC'), measured in $(($(date +%s) - started)) s"
echo "       machine: $(nproc) cores, load before ${LOAD_BEFORE}, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "       stamp up alive at the end: $alive; warning/error lines in its log: $(grep -ciE ' (WARN|ERROR) ' "$WORK/stamp.log" || true)"
[ "$status" = 0 ] || die "some swaps could not be measured; see $WORK/stamp.log"
