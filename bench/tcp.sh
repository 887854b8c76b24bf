#!/usr/bin/env bash
# Meridian vs gdnsd over TCP on loopback, with dnsperf, in interleaved rounds (issue 18, item 1).
#
#   bench/tcp.sh                      # 5 rounds x 10 s per server and case
#   ROUNDS=3 DURATION=5 bench/tcp.sh  # shorter
#
# Two cases per round, each against both servers (the order of the servers alternates per round):
#   pipelined   dnsperf -m tcp -T 2 -c 8 -q 200: 8 connections kept open, up to 200 queries
#               outstanding on them (RFC 7766 pipelining)
#   per-conn    a new connection for every query: bench/tcp_oneshot.c (built here with cc),
#               ONESHOT_THREADS (16) blocking clients each connecting, asking, reading, closing.
#               Not dnsperf -O num-queries-per-conn=1: dnsperf 2.10 manages about 100 queries
#               per second that way against either server, so it would time dnsperf.
#   per-conn-paced  the same clients, paced to ONESHOT_RATE connections per second in all (a
#               rate both servers reach): each server's CPU per connection at the same load.
#               As fast as possible, a faster server also takes more of the cores from the
#               clients and is preempted more by their wake-ups, which its CPU-seconds count.
# Reported per run: queries/s, lost queries, the server's CPU seconds during the run
# (utime+stime from /proc/PID/stat) and queries per CPU-second; then per case the medians and the
# spread (min-max over rounds) and the ratio Meridian/gdnsd, per round and its median.
#
# Knobs (environment): ROUNDS (5), DURATION seconds per run (10), CLIENTS (dnsperf -c, 8),
# THREADS (dnsperf -T, 2), OUTSTANDING (dnsperf -q, 200), CASES ("pipelined per-conn
# per-conn-paced"), ONESHOT_THREADS (16), ONESHOT_RATE (10000), and those
# of bench/servers.sh: QUERIES, VERIFY, MERIDIAN_BIN, GDNSD_TCP_THREADS (default: nproc).
#
# Same set-up as bench/run.sh (bench/servers.sh): same zone, services and GeoIP database,
# answers compared over TCP and UDP before timing (bench/compare.py); gdnsd with as many TCP
# threads as cores, Meridian's TCP on its main runtime (one worker thread per core).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
OUTSTANDING=${OUTSTANDING:-200}
CASES=${CASES:-pipelined per-conn per-conn-paced}
ONESHOT_THREADS=${ONESHOT_THREADS:-16}
ONESHOT_RATE=${ONESHOT_RATE:-10000}

source "$(dirname "$0")/lib.sh"
own_session "$@"
command -v cc >/dev/null || NEED_CC=1
# shellcheck source=bench/servers.sh
. "$(dirname "$0")/servers.sh"
[ -z "${NEED_CC:-}" ] || install_missing gcc libc6-dev
cc -O2 -pthread -o "$TMP/tcp_oneshot" bench/tcp_oneshot.c

# run CASE NAME PID PORT ROUND -> appends "case name round qps lost cpu_s q_per_cpu_s" to results
run() {
    local case=$1 name=$2 pid=$3 port=$4 round=$5 before after out
    before=$(cpu_ticks "$pid")
    if [ "$case" = per-conn ]; then
        out=$("$TMP/tcp_oneshot" 127.0.0.1 "$port" "$TMP/queries.blob" "$ONESHOT_THREADS" \
            "$DURATION" 2>&1)
    elif [ "$case" = per-conn-paced ]; then
        out=$("$TMP/tcp_oneshot" 127.0.0.1 "$port" "$TMP/queries.blob" "$ONESHOT_THREADS" \
            "$DURATION" "$ONESHOT_RATE" 2>&1)
    else
        out=$(dnsperf -m tcp -B -d "$TMP/queries.blob" -s 127.0.0.1 -p "$port" -l "$DURATION" \
            -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" 2>&1)
    fi
    after=$(cpu_ticks "$pid")
    echo "$out" | awk -v c="$case" -v n="$name" -v r="$round" -v t=$((after - before)) -v hz="$HZ" '
        /Queries completed:/ {done = $3}
        /Queries lost:/ {lost = $3}
        /Run time \(s\):/ {secs = $4}
        /Queries per second:/ {qps = $4}
        END {cpu = t / hz; printf "%s %s %d %.0f %d %.2f %.0f\n", c, n, r, qps, lost, cpu,
            (cpu > 0 ? done / cpu : 0)}' >>"$TMP/results"
}

echo
echo "TCP: $ROUNDS rounds x ${DURATION}s per server and case; pipelined: dnsperf -m tcp -B -c $CLIENTS -T $THREADS -q $OUTSTANDING; per-conn: tcp_oneshot, $ONESHOT_THREADS threads; per-conn-paced: the same at $ONESHOT_RATE/s"
: >"$TMP/results"
for r in $(seq "$ROUNDS"); do
    for case in $CASES; do
        if ((r % 2)); then
            run "$case" meridian "$M_PID" "$M_PORT" "$r"
            run "$case" gdnsd "$G_PID" "$G_PORT" "$r"
        else
            run "$case" gdnsd "$G_PID" "$G_PORT" "$r"
            run "$case" meridian "$M_PID" "$M_PORT" "$r"
        fi
    done
    echo "round $r done; $(uptime | sed 's/.*load average/load average/')"
done

for case in $CASES; do
    echo
    echo "== $case"
    printf "%-6s | %-36s | %-36s | %-8s %-8s\n" round "meridian: qps lost cpu_s q/cpu_s" \
        "gdnsd: qps lost cpu_s q/cpu_s" "qps M/G" "q/cpu M/G"
    for r in $(seq "$ROUNDS"); do
        m=$(awk -v c="$case" -v r="$r" '$1 == c && $2 == "meridian" && $3 == r' "$TMP/results")
        g=$(awk -v c="$case" -v r="$r" '$1 == c && $2 == "gdnsd" && $3 == r' "$TMP/results")
        echo "$m $g" | awk '{
            printf "%-6d | %8d %6d %6.2f %10d   | %8d %6d %6.2f %10d   | %8.3f %8.3f\n",
                $3, $4, $5, $6, $7, $11, $12, $13, $14,
                ($11 > 0 ? $4 / $11 : 0), ($14 > 0 ? $7 / $14 : 0)}'
    done | tee "$TMP/table.$case"
    for name in meridian gdnsd; do
        q=$(awk -v c="$case" -v n="$name" '$1 == c && $2 == n {print $4}' "$TMP/results" | median_spread)
        e=$(awk -v c="$case" -v n="$name" '$1 == c && $2 == n {print $7}' "$TMP/results" | median_spread)
        echo "$name: qps median ${q% *} (${q#* }), q/cpu_s median ${e% *} (${e#* })"
    done
    q=$(awk '{print $(NF-1)}' "$TMP/table.$case" | median_spread)
    e=$(awk '{print $NF}' "$TMP/table.$case" | median_spread)
    echo "ratio M/G: qps median ${q% *} (${q#* }), q/cpu_s median ${e% *} (${e#* })"
done

for p in "$M_PID" "$G_PID"; do
    kill -0 "$p" 2>/dev/null || { echo "server pid $p died during the bench" >&2; exit 1; }
done
