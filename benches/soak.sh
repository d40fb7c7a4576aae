#!/usr/bin/env bash
# Soak run: start WarrenMQ on a fresh data dir (its own ports) and run benches/soak.rs
# against it: mixed persistent/transient traffic, connection and queue churn, hostile
# half handshakes and management polling, RSS and open descriptors sampled every 10 s.
# Passes (exit 0) with no errors, no lost confirmed message, and flat RSS and descriptors.
#
# Usage: benches/soak.sh                 (30 minutes)
#        DURATION=120 benches/soak.sh    (a short check)
#
# Environment: DURATION (s, default 1800), OUT (directory for soak.csv, summary.json and
# the broker log; default a new temp dir), NO_BUILD=1 (use target/release/warrenmq as is),
# SOAK_ARGS (more options for the soak binary, e.g. "--durable-rate 500").
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-1800}"
OUT="${OUT:-$(mktemp -d /tmp/warrenmq-soak.XXXXXX)}"
AMQP_PORT="${AMQP_PORT:-5691}"
HTTP_PORT="${HTTP_PORT:-15691}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$OUT"
cd "$REPO"
if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release --bin warrenmq >&2
fi
SOAK="$(cargo build --release --bench soak --message-format=json \
    | grep -o '"executable":"[^"]*/soak-[^"]*"' | tail -1 \
    | sed 's/^"executable":"//; s/"$//')"
[ -x "$SOAK" ] || { echo "soak binary not found" >&2; exit 1; }

"$TARGET_DIR/release/warrenmq" serve \
    --amqp-addr "127.0.0.1:${AMQP_PORT}" --http-addr "127.0.0.1:${HTTP_PORT}" \
    --metrics-addr 127.0.0.1:0 --data-dir "$OUT/data" > "$OUT/broker.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/${AMQP_PORT}" 2>/dev/null && break
    sleep 0.1
done
echo "[soak] broker pid $PID, ${DURATION}s, output in $OUT" >&2
rc=0
# shellcheck disable=SC2086
"$SOAK" --uri "amqp://guest:guest@127.0.0.1:${AMQP_PORT}/%2f" \
    --http "http://127.0.0.1:${HTTP_PORT}" --pid "$PID" --duration "$DURATION" \
    --csv "$OUT/soak.csv" ${SOAK_ARGS:-} > "$OUT/summary.json" || rc=$?
cat "$OUT/summary.json"
grep -ciE 'panic|ERROR' "$OUT/broker.log" | sed 's/^/[soak] broker log lines with panic or ERROR: /' >&2 || true
exit $rc
