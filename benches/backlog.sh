#!/usr/bin/env bash
# Persistent backlog: memory with a large queue of 1 KB persistent messages, and the time a
# restart takes until the queue serves its first message.
#
# Usage: NO_BUILD=1 bash benches/backlog.sh          (PUBLISH_SECS=20 by default)
#        PUBLISH_COUNT=500000 ...                     (stop after that many messages)
#        QUEUE_ARGS=x-max-length=500000 ...           (queue arguments)
#        WARRENMQ_DEFAULT_QUEUE_TYPE=quorum ...       (a quorum queue)
#
# Publishes for PUBLISH_SECS with rawgen (1 publisher, confirms window 1000, no consumer)
# into one durable queue, prints the queue depth, the broker's RSS and the data dir size,
# stops the broker with SIGTERM, starts it again on the same data dir and measures the
# time from the start until an HTTP basic.get on the queue returns a message.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
BIN="${WARRENMQ_BIN:-$TARGET_DIR/release/warrenmq}"
PUBLISH_SECS="${PUBLISH_SECS:-20}"
PORT="${PORT:-5698}"
HTTP="${HTTP_PORT:-15698}"
DATA="$(mktemp -d /tmp/warrenmq-backlog.XXXXXX)"
PID=""

cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$DATA"
}
trap cleanup EXIT

if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO" && cargo build --release && cargo build --release --bench rawgen) >&2
fi
RAWGEN="${RAWGEN:-$(ls -t "$TARGET_DIR"/release/deps/rawgen-* | grep -v '\.d$' | head -1)}"

start() {
    "$BIN" --data-dir "$DATA/d" --amqp-addr "127.0.0.1:$PORT" --http-addr "127.0.0.1:$HTTP" \
        --metrics-addr "127.0.0.1:$((HTTP + 1))" >>"$DATA/log" 2>&1 &
    PID=$!
}

now_ms() { date +%s%3N; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status"; }
depth() {
    curl -s -u guest:guest "http://127.0.0.1:$HTTP/api/queues/%2f/backlog" |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("messages", 0))'
}

start
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$HTTP/api/health/checks/alarms" && break; sleep 0.1; done
RSS0=$(rss_mb)
"$RAWGEN" --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" -x 1 -y 0 -s 1024 --persistent -c 1000 \
    --durable-queue -u backlog --keep-queues ${QUEUE_ARGS:+--queue-args "$QUEUE_ARGS"} \
    ${PUBLISH_COUNT:+--pmessages "$PUBLISH_COUNT"} -z "$PUBLISH_SECS" --quiet --json >"$DATA/pub.json"
echo "queued:        $(depth) messages"
echo "broker RSS:    $(rss_mb) MB (after publishing; $RSS0 MB before)"
echo "data dir:      $(du -sh "$DATA/d" | cut -f1)"

kill -TERM "$PID"; wait "$PID" || true; PID=""
t0=$(now_ms)
start
until curl -s -u guest:guest -H 'content-type: application/json' \
    -d '{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}' \
    "http://127.0.0.1:$HTTP/api/queues/%2f/backlog/get" 2>/dev/null | grep -q payload; do
    sleep 0.05
done
t1=$(now_ms)
echo "restart:       $(( t1 - t0 )) ms until the queue served its first message"
echo "broker RSS:    $(rss_mb) MB (after restart)"
echo "queued:        $(depth) messages (after restart)"
grep -E "recovered persistent messages" "$DATA/log" | tail -1 || true
