#!/usr/bin/env bash
# Scale-out latency: from the `POST /api/v1/plans/{plan}/scale` call to the first request served
# by the NEW instance through the front end, with a warm worker in the pool and without one, plus
# the fast sample app's own start time for reference. See bench/README.md for the method and the
# latest results.
#
#   bash bench/scale_out.sh        # ~15 s after the build; prints a table
#
# Knobs (environment): TRIALS (scale-outs per case, default 20), START_RUNS (runs of the app's
# own start time, default 20), STRIP=1 deploys the fast binary stripped of its symbols and line
# tables (1.1 MB instead of 10.8 MB: shows what unpacking the app costs each new instance),
# BENCH_KEEP=1 keeps the work directory (stamp log, raw timings).
#
# No CPU pinning: `stamp up`, its instances and the timing loop (bench/scale_out.py) share the
# machine's cores. All traffic is to 127.0.0.1 and every wait is bounded. The script exits 0 when
# the target is missed (it reports it); it exits non-zero only when it cannot measure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRIALS=${TRIALS:-20}
START_RUNS=${START_RUNS:-20}
APP=bench
PLAN=bench-plan
HOST="$APP.localhost"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# --- tools --------------------------------------------------------------------------------------

export PATH="$HOME/.cargo/bin:$PATH"
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

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

API_PORT=$(free_port); HTTP_PORT=$(free_port); HTTPS_PORT=$(free_port)


# --- Stamp --------------------------------------------------------------------------------------

export STAMP_DATA_DIR="$WORK/stamp"
log "starting stamp up (front end http://127.0.0.1:$HTTP_PORT)"
# --node-cpus: two S1 workers (one core each) must fit on this node whatever the machine has.
"$STAMP" up --data-dir "$STAMP_DATA_DIR" --api "127.0.0.1:$API_PORT" \
    --http "127.0.0.1:$HTTP_PORT" --https "127.0.0.1:$HTTPS_PORT" --node-cpus 8 >"$WORK/stamp.log" 2>&1 &
STAMP_PID=$!
wait_for 30 "$STAMP" status || { tail -20 "$WORK/stamp.log" >&2; die "stamp up did not start"; }

mkdir -p "$WORK/app"
cp "$FAST" "$WORK/app/fast"
if [ "${STRIP:-0}" = 1 ]; then
    command -v strip >/dev/null || die "STRIP=1 needs strip (Debian: binutils)"
    strip "$WORK/app/fast"
    FAST="$WORK/app/fast" # the app-start reference runs the same binary
fi
log "the app: $(stat -c %s "$WORK/app/fast") bytes"
printf 'web: ./fast\n' >"$WORK/app/Procfile"
"$STAMP" plan create "$PLAN" --sku S1 --workers 1 >/dev/null
"$STAMP" app create "$APP" --plan "$PLAN" >/dev/null
log "deploying the fast app"
"$STAMP" deploy "$WORK/app" --app "$APP" >"$WORK/deploy.log" 2>&1 || { cat "$WORK/deploy.log" >&2; die "deploy failed"; }
wait_for 10 curl -fsS -H "Host: $HOST" "http://127.0.0.1:$HTTP_PORT/" || die "the front end does not serve $HOST"

# --- measurements -------------------------------------------------------------------------------

started=$(date +%s)
set +e
python3 "$ROOT/bench/scale_out.py" --api-port "$API_PORT" --token-file "$STAMP_DATA_DIR/admin-token" \
    --http-port "$HTTP_PORT" --app "$APP" --plan "$PLAN" --fast "$FAST" \
    --trials "$TRIALS" --start-runs "$START_RUNS" --raw "$WORK/raw.json" | tee "$WORK/results.txt"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || [ "$status" = 2 ] || die "the timing loop failed (exit $status); see $WORK/stamp.log"

alive=no
kill -0 "$STAMP_PID" 2>/dev/null && alive=yes
echo
echo "notes: app binary $(stat -c %s "$WORK/app/fast") bytes$([ "${STRIP:-0}" = 1 ] && echo ' (stripped)'), trials $TRIALS per case"
echo "       commit $COMMIT, $(date -u '+%Y-%m-%d %H:%M UTC'), measured in $(($(date +%s) - started)) s"
echo "       machine: $(nproc) cores, load before ${LOAD_BEFORE}, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "       stamp up alive at the end: $alive; warning/error lines in its log: $(grep -ciE ' (WARN|ERROR) ' "$WORK/stamp.log" || true)"
[ "$status" = 0 ] || die "some scale-outs were not served within the bound; see $WORK/stamp.log"
