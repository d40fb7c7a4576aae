#!/usr/bin/env bash
# End-to-end routing cost: publish through amq.topic carrying BINDINGS extra bindings (none
# of which matches the key) versus through amq.direct, with the same loadgen run otherwise
# (same key, message size, publisher and consumer). Runs alternate between the two.
#
#   benches/routing_e2e.sh                       # 10k bindings, 3 runs x 10 s each
#   BINDINGS=100000 RUNS=5 DURATION=15 benches/routing_e2e.sh
#
# Environment: BINDINGS (10000), RUNS (3), DURATION (10), PORT (5690), SIZE (256),
# LOADGEN_ARGS (extra loadgen options, default "--prefetch 1000 -A 100"),
# WARRENMQ_BIN (default $CARGO_TARGET_DIR/release/warrenmq), CARGO_TARGET_DIR, NO_BUILD=1.
# Everything talks to 127.0.0.1 only; the broker it starts is stopped on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BINDINGS="${BINDINGS:-10000}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
PORT="${PORT:-5690}"
SIZE="${SIZE:-256}"
LOADGEN_ARGS="${LOADGEN_ARGS:---prefetch 1000 -A 100}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
WARRENMQ_BIN="${WARRENMQ_BIN:-$TARGET_DIR/release/warrenmq}"
URI="amqp://guest:guest@127.0.0.1:${PORT}/%2f"
KEY="inference.summarize.gpu"
WORK="$(mktemp -d /tmp/warrenmq-routing-e2e.XXXXXX)"
PID=""

cleanup() {
    local rc=$?
    set +e
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID"
        for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$PID" 2>/dev/null && kill -KILL "$PID"
        wait "$PID" 2>/dev/null
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$REPO"
bench_bin() {
    cargo bench --bench "$1" --no-run 2>&1 | sed -n "s/.*(\(.*$1-[^)]*\)).*/\1/p" | tail -1
}
if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release >&2
fi
LOADGEN="$(bench_bin loadgen)"
ROUTING="$(bench_bin routing)"

"$WARRENMQ_BIN" serve --amqp-addr "127.0.0.1:${PORT}" --http-addr 127.0.0.1:0 \
    --metrics-addr 127.0.0.1:0 --data-dir "$WORK/data" --log-level warn \
    >"$WORK/broker.log" 2>&1 &
PID=$!
for _ in $(seq 1 150); do
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/${PORT}" 2>/dev/null && break
    sleep 0.1
done

"$ROUTING" --setup-topic "$URI" "$BINDINGS" >&2

run() { # run EXCHANGE N -> prints "publish_rate consume_rate"
    # shellcheck disable=SC2086
    "$LOADGEN" --uri "$URI" -e "$1" -k "$KEY" -u "routing-e2e-$2" -x 1 -y 1 -s "$SIZE" \
        -z "$DURATION" $LOADGEN_ARGS --json --quiet 2>/dev/null |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["publish_rate"], j["consume_rate"])'
}

: >"$WORK/direct"
: >"$WORK/topic"
for i in $(seq 1 "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then order="direct topic"; else order="topic direct"; fi
    for kind in $order; do
        r="$(run "amq.$kind" "$kind-$i")"
        echo "run $i amq.$kind: publish/s consume/s = $r" >&2
        echo "$r" >>"$WORK/$kind"
    done
done

python3 - "$WORK/direct" "$WORK/topic" "$BINDINGS" <<'EOF'
import statistics, sys
def load(p):
    rows = [tuple(map(float, l.split())) for l in open(p) if l.strip()]
    return [r[0] for r in rows], [r[1] for r in rows]
dp, dc = load(sys.argv[1])
tp, tc = load(sys.argv[2])
m = statistics.median
print(f"| exchange | publish msg/s (median) | consume msg/s (median) |")
print(f"|---|---|---|")
print(f"| amq.direct | {m(dp):,.0f} | {m(dc):,.0f} |")
print(f"| amq.topic + {int(sys.argv[3]):,} bindings | {m(tp):,.0f} | {m(tc):,.0f} |")
print(f"| topic / direct | {m(tp) / m(dp):.2f} | {m(tc) / m(dc):.2f} |")
EOF
