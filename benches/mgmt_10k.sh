#!/usr/bin/env bash
# Management API and metrics at scale: 10,000 queues (imported as definitions, a few with
# messages), then time GET /api/queues (whole list and a page) and GET /metrics with curl.
# Usage: benches/mgmt_10k.sh [path/to/warrenmq]   (default target/release/warrenmq)
set -euo pipefail
BIN=${1:-target/release/warrenmq}
N=${N:-10000}
RUNS=${RUNS:-20}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$N" > "$work/defs.json" <<'PY'
import json, sys
n = int(sys.argv[1])
queues = [{"name": f"bench.q{i:05d}", "vhost": "/", "durable": True, "auto_delete": False,
           "arguments": {"x-max-length": 100000} if i % 10 == 0 else {}} for i in range(n)]
bindings = [{"source": "amq.direct", "vhost": "/", "destination": q["name"], "destination_type": "queue",
             "routing_key": q["name"], "arguments": {}} for q in queues[:1000]]
json.dump({"queues": queues, "bindings": bindings}, sys.stdout)
PY

"$BIN" serve --data-dir "$work/data" --amqp-addr 127.0.0.1:35672 --http-addr 127.0.0.1:35673 \
    --metrics-addr 127.0.0.1:35674 --log-level warn &
pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null -u guest:guest http://127.0.0.1:35673/api/overview && break; sleep 0.1; done
kill -0 "$pid" || { echo "the broker did not start" >&2; exit 1; }
"$BIN" ctl --url http://127.0.0.1:35673 import "$work/defs.json"
# Some depth: 100 messages into each of the first 100 queues.
for i in $(seq 0 99); do
    q=$(printf 'bench.q%05d' "$i")
    for _ in $(seq 10); do
        curl -sf -o /dev/null -u guest:guest -H 'content-type: application/json' \
            -d "{\"properties\":{},\"routing_key\":\"$q\",\"payload\":\"x\",\"payload_encoding\":\"string\"}" \
            http://127.0.0.1:35673/api/exchanges/%2F/amq.default/publish
    done
done

time_it() { # label url [auth]
    local label=$1 url=$2; shift 2
    local times=()
    for _ in $(seq "$RUNS"); do
        times+=("$(curl -s -o "$work/out" -w '%{time_total}' "$@" "$url")")
    done
    local bytes; bytes=$(wc -c < "$work/out")
    printf '%s\n' "${times[@]}" | sort -n | awk -v l="$label" -v b="$bytes" \
        '{a[NR]=$1} END {printf "%-45s median %6.1f ms  min %6.1f ms  max %6.1f ms  (%d bytes)\n", l, a[int((NR+1)/2)]*1000, a[1]*1000, a[NR]*1000, b}'
}
echo "queues: $(curl -s -u guest:guest http://127.0.0.1:35673/api/overview | python3 -c 'import json,sys; print(json.load(sys.stdin)["object_totals"]["queues"])')"
time_it "GET /api/queues (all $N)" http://127.0.0.1:35673/api/queues -u guest:guest
time_it "GET /api/queues?page=1&page_size=100" "http://127.0.0.1:35673/api/queues?page=1&page_size=100" -u guest:guest
time_it "GET /api/queues?page=50&page_size=100" "http://127.0.0.1:35673/api/queues?page=50&page_size=100" -u guest:guest
time_it "GET /api/queues?sort=messages&page=1" "http://127.0.0.1:35673/api/queues?sort=messages&sort_reverse=true&page=1&page_size=100" -u guest:guest
time_it "GET /metrics" http://127.0.0.1:35674/metrics
