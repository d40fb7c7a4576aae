#!/usr/bin/env bash
# Side-by-side benchmark: RabbitMQ (127.0.0.1:5673) vs WarrenMQ (127.0.0.1:5680).
#
# Usage: benches/compare.sh            (all scenarios)
#        SCENARIOS="a" RUNS=5 DURATION=15 benches/compare.sh
#
# Environment:
#   SCENARIOS   space separated scenario ids (default: "a b c d e f g")
#   IDLE_CONNS  connections of scenario (g) (default 10000; both brokers and the
#               generator need that many file descriptors: see `ulimit -n`)
#   RUNS        runs per broker and scenario (default 3, minimum 1)
#   DURATION    seconds per run (default 10)
#   SETTLE      seconds of pause between runs (default 2); before each run the
#               script also waits (at most IDLE_MAX=30 s) for the broker to go idle
#   RABBIT_PORT / WARREN_PORT   AMQP ports (default 5673 / 5680)
#   NO_BUILD=1  do not rebuild WarrenMQ; use the binary as it is
#   WARRENMQ_BIN  WarrenMQ binary (default $CARGO_TARGET_DIR/release/warrenmq, i.e. target/release/warrenmq)
#   GEN         load generator: rawgen (default; raw sockets, cheap per message)
#               or loadgen (lapin client); both take the same options
#   LOADGEN     path of an already built binary of $GEN (skips its build)
#   CARGO_TARGET_DIR            honoured for both builds
#   KEEP_LOGS=1 keep the temp dir with per-run outputs and the broker log
#
# Traffic goes only to 127.0.0.1. Everything it starts (WarrenMQ; RabbitMQ if
# it was not already running) is stopped on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCENARIOS="${SCENARIOS:-a b c d e f g}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
SETTLE="${SETTLE:-2}"
RABBIT_PORT="${RABBIT_PORT:-5673}"
WARREN_PORT="${WARREN_PORT:-5680}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
WARRENMQ_BIN="${WARRENMQ_BIN:-$TARGET_DIR/release/warrenmq}"
RABBIT_URI="amqp://guest:guest@127.0.0.1:${RABBIT_PORT}/%2f"
WARREN_URI="amqp://guest:guest@127.0.0.1:${WARREN_PORT}/%2f"
[ "$RUNS" -ge 1 ] 2>/dev/null || RUNS=1
GEN="${GEN:-rawgen}"
case "$GEN" in
    rawgen|loadgen) ;;
    *) echo "GEN must be rawgen or loadgen, not '$GEN'" >&2; exit 2 ;;
esac

WORK="$(mktemp -d /tmp/warrenmq-compare.XXXXXX)"
WARREN_PID=""
STARTED_RABBIT=0

log() { echo "[compare] $*" >&2; }

# stop_warrenmq: TERM, then KILL after 5 s; no-op when it is not running
stop_warrenmq() {
    if [ -n "$WARREN_PID" ] && kill -0 "$WARREN_PID" 2>/dev/null; then
        log "stopping WarrenMQ (pid $WARREN_PID)"
        kill -TERM "$WARREN_PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$WARREN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$WARREN_PID" 2>/dev/null && kill -KILL "$WARREN_PID" 2>/dev/null
        wait "$WARREN_PID" 2>/dev/null || true
    fi
    WARREN_PID=""
}

cleanup() {
    local rc=$?
    set +e
    stop_warrenmq
    if [ "$STARTED_RABBIT" = 1 ]; then
        log "stopping RabbitMQ (started by this script)"
        timeout 60 rabbitmqctl stop >/dev/null 2>&1
    fi
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_port PORT SECONDS
wait_port() {
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}

# cpu_ticks PID: utime+stime of a process (clock ticks), empty if gone
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || true
}

# wait_idle PID: wait (at most IDLE_MAX seconds) until PID uses < 10% of a
# core over half a second, so a run does not start while the broker is still
# digesting the previous run's backlog.
wait_idle() {
    local pid="$1" a b i hz
    [ -n "$pid" ] || return 0
    hz="$(getconf CLK_TCK 2>/dev/null || echo 100)"
    for i in $(seq 1 $(( ${IDLE_MAX:-30} * 2 ))); do
        a="$(cpu_ticks "$pid")"; sleep 0.5; b="$(cpu_ticks "$pid")"
        [ -n "$a" ] && [ -n "$b" ] || return 0
        [ $(( (b - a) * 100 * 2 )) -lt $(( hz * 10 )) ] && return 0
    done
    log "  (broker pid $pid still busy after ${IDLE_MAX:-30}s; starting anyway)"
}

# ---------------------------------------------------------------- RabbitMQ
ensure_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        log "installing rabbitmq-server from Debian"
        timeout 600 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    mkdir -p /etc/rabbitmq
    if ! grep -qs "listeners.tcp.default = 127.0.0.1:${RABBIT_PORT}" /etc/rabbitmq/rabbitmq.conf; then
        log "writing /etc/rabbitmq/rabbitmq.conf (loopback only, port ${RABBIT_PORT})"
        [ -f /etc/rabbitmq/rabbitmq.conf ] && cp /etc/rabbitmq/rabbitmq.conf "/etc/rabbitmq/rabbitmq.conf.bak.$$"
        cat > /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.default = 127.0.0.1:${RABBIT_PORT}
management.tcp.ip = 127.0.0.1
management.tcp.port = 15673
loopback_users.guest = true
CONF
    fi
    if ! grep -qs '^NODE_IP_ADDRESS=127.0.0.1' /etc/rabbitmq/rabbitmq-env.conf; then
        echo NODE_IP_ADDRESS=127.0.0.1 >> /etc/rabbitmq/rabbitmq-env.conf
    fi
    # rabbitmq-server switches to the rabbitmq user through su, whose pam_limits
    # session gives the node a soft limit of 1024 descriptors unless told
    # otherwise: too few for scenario (g), as RabbitMQ admits sockets up to about
    # 90 % of its limit. Ask for as many as this shell may have.
    local nofile
    nofile="$(ulimit -Hn)"
    [ "$nofile" = unlimited ] && nofile=65536
    if ! grep -qs "rabbitmq soft nofile ${nofile}$" /etc/security/limits.d/rabbitmq-bench.conf; then
        mkdir -p /etc/security/limits.d
        printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$nofile" "$nofile" \
            > /etc/security/limits.d/rabbitmq-bench.conf
    fi
    [ "$nofile" -ge $(( IDLE_CONNS * 12 / 10 + 200 )) ] \
        || log "warning: RabbitMQ may open only $nofile files; (g) needs about $(( IDLE_CONNS * 12 / 10 + 200 ))"
    if port_open "$RABBIT_PORT"; then
        log "RabbitMQ already listening on 127.0.0.1:${RABBIT_PORT}"
        local beam lim
        beam="$(pgrep -o -f 'beam.smp.*rabbit' || true)"
        lim="$(awk '/^Max open files/ { print $4 }' "/proc/${beam:-0}/limits" 2>/dev/null || true)"
        case " $SCENARIOS " in *" g "*)
            if [ -n "$lim" ] && [ "$lim" -lt $(( IDLE_CONNS * 12 / 10 + 200 )) ]; then
                log "warning: RabbitMQ may open only $lim files, too few for (g): restart it"
            fi ;;
        esac
        return 0
    fi
    log "starting RabbitMQ"
    rabbitmq-server -detached
    STARTED_RABBIT=1
    # On a loaded machine the node may not have registered with epmd yet, and
    # `rabbitmqctl await_startup` then fails at once: wait for the port instead.
    wait_port "$RABBIT_PORT" 180 || { log "RabbitMQ did not open port ${RABBIT_PORT}"; return 1; }
    timeout 120 rabbitmqctl await_startup >/dev/null || true
}

# ---------------------------------------------------------------- builds
LOADGEN="${LOADGEN:-}"
build_all() {
    cd "$REPO"
    if [ "${NO_BUILD:-0}" != 1 ]; then
        log "building WarrenMQ (cargo build --release)"
        timeout 3600 cargo build --release --bin warrenmq >&2
    fi
    if [ -z "$LOADGEN" ]; then
        # Builds the generator if needed (a no-op when it is up to date) and
        # reports where the binary is.
        log "building $GEN (cargo build --release --bench $GEN)"
        LOADGEN="$(timeout 3600 cargo build --release --bench "$GEN" --message-format=json \
            | grep -o "\"executable\":\"[^\"]*/${GEN}-[^\"]*\"" | tail -1 \
            | sed 's/^"executable":"//; s/"$//')"
    fi
    [ -n "$LOADGEN" ] && [ -x "$LOADGEN" ] || { log "$GEN binary not found"; return 1; }
    [ -x "$WARRENMQ_BIN" ] || { log "no WarrenMQ binary at $WARRENMQ_BIN"; return 1; }
}

# ---------------------------------------------------------------- WarrenMQ
start_warrenmq() {
    mkdir -p "$WORK/warren-data"
    log "starting WarrenMQ on 127.0.0.1:${WARREN_PORT}"
    "$WARRENMQ_BIN" serve \
        --amqp-addr "127.0.0.1:${WARREN_PORT}" \
        --http-addr 127.0.0.1:0 \
        --data-dir "$WORK/warren-data" \
        > "$WORK/warrenmq.log" 2>&1 &
    WARREN_PID=$!
    if ! wait_port "$WARREN_PORT" 30; then
        log "WarrenMQ did not open port ${WARREN_PORT}; log:"
        tail -20 "$WORK/warrenmq.log" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- scenarios
# Each scenario: a title, the generator arguments, and the metric(s) compared.
# Metrics: consume_rate, publish_rate, confirm_rate (msg/s, higher is
# better) and lat_p50, lat_p99 (microseconds, lower is better).
scenario_title() {
    case "$1" in
        a) echo "(a) 16 B, 1 pub -> 1 cons, no-ack" ;;
        b) echo "(b) 1 KB, 1 pub -> 1 cons, manual ack every 100, prefetch 1000" ;;
        c) echo "(c) 1 KB persistent, durable queue, confirms (window 1000)" ;;
        q) echo "(q) as (c) on a quorum queue" ;;
        d) echo "(d) 1 KB fanout, 1 pub -> 4 queues x 1 cons" ;;
        e) echo "(e) 256 B at fixed 10k msg/s, latency" ;;
        f) echo "(f) 100 queues, 100 pubs, 100 cons, 16 B, no-ack" ;;
        g) echo "(g) ${IDLE_CONNS} idle connections, 1 channel each" ;;
        *) return 1 ;;
    esac
}
scenario_args() {
    case "$1" in
        a) echo "--publishers 1 --consumers 1 --size 16 --auto-ack" ;;
        b) echo "--publishers 1 --consumers 1 --size 1024 --prefetch 1000 --multi-ack-every 100" ;;
        c) echo "--publishers 1 --consumers 1 --size 1024 --persistent --durable-queue --confirm 1000 --prefetch 1000 --multi-ack-every 100" ;;
        q) echo "--publishers 1 --consumers 1 --size 1024 --persistent --durable-queue --queue-args x-queue-type=quorum --confirm 1000 --prefetch 1000 --multi-ack-every 100" ;;
        d) echo "--publishers 1 --consumers 4 --size 1024 --fanout-queues 4 --prefetch 1000 --multi-ack-every 100" ;;
        e) echo "--publishers 1 --consumers 1 --size 256 --rate 10000 --prefetch 1000 --multi-ack-every 100" ;;
        f) echo "--publishers 100 --consumers 100 --queues 100 --size 16 --auto-ack --pipeline 32" ;;
        g) echo "--idle-connections ${IDLE_CONNS}" ;;
    esac
}
scenario_metrics() {
    case "$1" in
        a|b|d) echo "consume_rate" ;;
        f) echo "consume_rate" ;;
        c|q) echo "confirm_rate consume_rate" ;;
        e) echo "lat_p50 lat_p99 consume_rate" ;;
        g) echo "rss_per_conn_kb" ;;
    esac
}
metric_label() {
    case "$1" in
        consume_rate) echo "consume msg/s" ;;
        publish_rate) echo "publish msg/s" ;;
        confirm_rate) echo "confirmed msg/s" ;;
        lat_p50) echo "latency p50 us (lower better)" ;;
        lat_p99) echo "latency p99 us (lower better)" ;;
        rss_per_conn_kb) echo "RSS KB per connection (lower better)" ;;
    esac
}

# extract METRIC FILE: print the metric from a generator's --json summary
extract() {
    local m="$1" f="$2" lat
    case "$m" in
        consume_rate|publish_rate|confirm_rate|rss_per_conn_kb)
            grep -o "\"$m\":[0-9.]*" "$f" | head -1 | cut -d: -f2 || true ;;
        lat_p50|lat_p99)
            # the first latency_us object is the run summary
            lat="$(grep -o '"latency_us":{[^}]*}' "$f" | head -1 || true)"
            printf '%s\n' "$lat" | grep -o "\"${m#lat_}\":[0-9.]*" | cut -d: -f2 || true ;;
    esac
    return 0
}

# values METRIC SCENARIO BROKER: the metric of every successful run, one a line
values() {
    local f
    for f in "$WORK/$2-$3-"*.json; do
        [ -f "$f" ] || continue
        extract "$1" "$f"
    done
}

# cpu_values FIELD SCENARIO BROKER: broker (1) or generator (2) CPU of every
# successful run, one a line
cpu_values() {
    local f
    for f in "$WORK/$2-$3-"*.cpu; do
        [ -f "$f" ] || continue
        awk -v i="$1" '{ print $i }' "$f"
    done
}

# nruns SCENARIO BROKER: number of successful runs
nruns() {
    local f n=0
    for f in "$WORK/$1-$2-"*.json; do
        [ -f "$f" ] && n=$(( n + 1 ))
    done
    echo "$n"
}

# median of numbers on stdin (one per line); "-" when none
median() {
    sort -g | awk 'NF { v[++n] = $1 } END {
        if (n == 0) { print "-"; exit }
        if (n % 2) printf "%.1f\n", v[(n+1)/2];
        else printf "%.1f\n", (v[n/2] + v[n/2+1]) / 2 }'
}

# run_one BROKER SCENARIO RUN: run the generator once, keep JSON in $WORK, and
# the CPU (% of one core) the broker and the generator used between the end of the
# warm-up second and half a second before the end in $WORK/*.cpu
# ("broker generator"), to tell which of the two was the bottleneck.
run_one() {
    local broker="$1" sc="$2" run="$3" uri out
    local pid
    if [ "$broker" = rabbitmq ]; then
        uri="$RABBIT_URI"; pid="$(pgrep -o -f 'beam.smp.*rabbit' || true)"
    else
        uri="$WARREN_URI"; pid="$WARREN_PID"
    fi
    wait_idle "$pid"
    out="$WORK/$sc-$broker-$run.json"
    # A fresh, named queue per run; the generator deletes it at the end, and it is
    # auto-delete in case the broker is too busy to answer the delete in time (not quorum
    # queues, which cannot be auto-delete).
    local ad="--auto-delete"
    [ "$sc" = q ] && ad=""
    # shellcheck disable=SC2046,SC2086
    timeout $(( DURATION + 90 )) "$LOADGEN" --uri "$uri" --duration "$DURATION" --json --quiet \
        --queue "bench-$sc-$run-$$" $ad $(scenario_args "$sc") \
        > "$out" 2> "$WORK/$sc-$broker-$run.err" &
    local gpid=$! b0 g0 t0 b1 g1 t1 rc=0
    if [ "$DURATION" -ge 3 ]; then
        sleep 1
        # $! is `timeout`; the generator is its child
        local gen; gen="$(pgrep -P "$gpid" | head -1 || true)"
        b0="$(cpu_ticks "$pid")"; g0="$(cpu_ticks "${gen:-$gpid}")"; t0="$(date +%s.%N)"
        sleep "$(awk -v d="$DURATION" 'BEGIN { print d - 1.5 }')"
        b1="$(cpu_ticks "$pid")"; g1="$(cpu_ticks "${gen:-$gpid}")"; t1="$(date +%s.%N)"
        if [ -n "$b0" ] && [ -n "$b1" ] && [ -n "$g0" ] && [ -n "$g1" ]; then
            awk -v b="$(( b1 - b0 ))" -v g="$(( g1 - g0 ))" -v t0="$t0" -v t1="$t1" \
                -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" \
                'BEGIN { printf "%.1f %.1f\n", 100 * b / hz / (t1 - t0), 100 * g / hz / (t1 - t0) }' \
                > "$WORK/$sc-$broker-$run.cpu"
        fi
    fi
    wait "$gpid" || rc=$?
    if [ "$rc" = 0 ]; then
        log "  $broker run $run: $(for m in $(scenario_metrics "$sc"); do printf '%s=%s ' "$m" "$(extract "$m" "$out")"; done)cpu(broker gen)=$(cat "$WORK/$sc-$broker-$run.cpu" 2>/dev/null)"
    else
        log "  $broker run $run: FAILED ($(tail -1 "$WORK/$sc-$broker-$run.err" 2>/dev/null))"
        rm -f "$out" "$WORK/$sc-$broker-$run.cpu"
    fi
    sleep "$SETTLE"
}

# rss_kb PID: resident set size of a process in KB, empty if gone
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

# run_idle BROKER RUN: scenario (g). Samples the broker's RSS, opens
# IDLE_CONNS connections with a channel each, samples it again once they are
# all open (the largest of three samples a second apart) and records the
# growth per connection in KB. WarrenMQ is restarted before each run so that
# memory freed by earlier runs cannot be reused (this can only make its
# number larger); RabbitMQ is measured as it runs.
run_idle() {
    local broker="$1" run="$2" uri pid out err before after a i gpid rc=0
    if [ "$broker" = rabbitmq ]; then
        uri="$RABBIT_URI"; pid="$(pgrep -o -f 'beam.smp.*rabbit' || true)"
    else
        stop_warrenmq; start_warrenmq
        uri="$WARREN_URI"; pid="$WARREN_PID"
    fi
    wait_idle "$pid"
    out="$WORK/g-$broker-$run.json"; err="$WORK/g-$broker-$run.err"
    before="$(rss_kb "$pid")"
    timeout 600 "$LOADGEN" --uri "$uri" --idle-connections "$IDLE_CONNS" \
        --duration 5 --json --quiet > "$out.gen" 2> "$err" &
    gpid=$!
    for i in $(seq 1 3000); do
        grep -qE '^(idle: all|error)' "$err" 2>/dev/null && break
        kill -0 "$gpid" 2>/dev/null || break
        sleep 0.1
    done
    after=0
    if grep -q '^idle: all' "$err"; then
        for i in 1 2 3; do
            sleep 1
            a="$(rss_kb "$pid")"
            [ -n "$a" ] && [ "$a" -gt "$after" ] && after="$a"
        done
    fi
    wait "$gpid" || rc=$?
    if [ "$rc" = 0 ] && [ -n "$before" ] && [ "$after" -gt 0 ]; then
        awk -v b="$before" -v a="$after" -v n="$IDLE_CONNS" 'BEGIN {
            printf "{\"rss_per_conn_kb\":%.2f,\"rss_before_kb\":%d,\"rss_after_kb\":%d}\n", (a - b) / n, b, a }' > "$out"
        log "  $broker run $run: $(cat "$out") $(grep '^idle:' "$err")"
    else
        log "  $broker run $run: FAILED ($(tail -1 "$err" 2>/dev/null))"
        rm -f "$out"
    fi
    rm -f "$out.gen"
    sleep "$SETTLE"
}

main() {
    local sc run m r w ratio
    # WarrenMQ and the generator inherit this shell's limit; (g) needs
    # IDLE_CONNS descriptors in each.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    case " $SCENARIOS " in *" g "*)
        if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $(( IDLE_CONNS + 100 )) ]; then
            log "warning: ulimit -n is $(ulimit -n); (g) needs more than ${IDLE_CONNS}"
        fi ;;
    esac
    for sc in $SCENARIOS; do
        scenario_title "$sc" >/dev/null || { log "unknown scenario '$sc'"; exit 2; }
    done
    ensure_rabbitmq
    build_all
    start_warrenmq

    for sc in $SCENARIOS; do
        log "scenario $(scenario_title "$sc"): ${RUNS} runs x ${DURATION}s per broker"
        for run in $(seq 1 "$RUNS"); do
            # alternate which broker goes first
            if [ "$sc" = g ]; then
                run_idle rabbitmq "$run"; run_idle warrenmq "$run"
            elif [ $(( run % 2 )) = 1 ]; then
                run_one rabbitmq "$sc" "$run"; run_one warrenmq "$sc" "$run"
            else
                run_one warrenmq "$sc" "$run"; run_one rabbitmq "$sc" "$run"
            fi
            if ! kill -0 "$WARREN_PID" 2>/dev/null; then
                log "WarrenMQ exited; log tail:"; tail -20 "$WORK/warrenmq.log" >&2
                log "restarting WarrenMQ"; start_warrenmq
            fi
        done
    done

    echo
    echo "GEN=$GEN RUNS=$RUNS DURATION=${DURATION}s; medians over successful runs (n = successful runs); ratio = WarrenMQ / RabbitMQ"
    echo
    echo "| scenario | metric | RabbitMQ median | WarrenMQ median | ratio |"
    echo "|---|---|---:|---:|---:|"
    for sc in $SCENARIOS; do
        for m in $(scenario_metrics "$sc"); do
            local rn wn
            r="$(values "$m" "$sc" rabbitmq | median)"
            w="$(values "$m" "$sc" warrenmq | median)"
            rn="$(nruns "$sc" rabbitmq)"
            wn="$(nruns "$sc" warrenmq)"
            if [ "$r" != "-" ] && [ "$w" != "-" ]; then
                ratio="$(awk -v a="$w" -v b="$r" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
            else
                ratio="-"
            fi
            echo "| $(scenario_title "$sc") | $(metric_label "$m") | $r (n=$rn) | $w (n=$wn) | $ratio |"
        done
    done
    echo
    echo "CPU in % of one core (medians; the machine may have 2) while the runs were measured."
    echo "A generator near 100 % (or broker + generator near all cores) caps the numbers."
    echo
    echo "| scenario | RabbitMQ broker | $GEN vs RabbitMQ | WarrenMQ broker | $GEN vs WarrenMQ |"
    echo "|---|---:|---:|---:|---:|"
    for sc in $SCENARIOS; do
        echo "| $(scenario_title "$sc") | $(cpu_values 1 "$sc" rabbitmq | median) | $(cpu_values 2 "$sc" rabbitmq | median) | $(cpu_values 1 "$sc" warrenmq | median) | $(cpu_values 2 "$sc" warrenmq | median) |"
    done
}

main "$@"
