#!/usr/bin/env bash
# Latency of Meridian and gdnsd at 50 % and 80 % of the maximum rate, over UDP and TCP, on
# loopback (issue 18, item 3).
#
#   bench/latency.sh                          # 3 rounds
#   ROUNDS=1 LAT_DURATION=3 bench/latency.sh  # quicker
#
# The client is bench/latclient.c (built here with cc): an open-loop sender at a fixed rate
# that matches answers by ID and keeps an in-memory histogram (1 µs buckets), over SOCKETS UDP
# sockets or kept-open pipelined TCP connections. dnsperf 2.10 has no latency histogram: its
# per-query lines (-v) cost CPU on the same two cores as the servers, and the p99 measured with
# it was about twice this client's (bench/README.md, "Wave 5").
#
# First the maxima: per transport, each server driven by latclient in closed loop (WINDOW
# queries in flight per socket, MAX_DURATION s, twice, order alternating); each server's maximum
# is its best of the two. Then ROUNDS rounds; per round, transport and load (LOADS, % of a
# maximum), each server (order alternating per round) for LAT_DURATION s at
#   own:    that % of its own maximum, and
#   common: that % of the lower of the two maxima (the same rate for both; for the server with
#           the lower maximum it is the "own" run, not repeated).
# Per run: p50, p99, p99.9 and maximum latency (send call to the kernel's receive time of the
# answer), p99 counting lost queries as slower than any answer ("inf" if over 1 % were), p99
# as the client process read the answers (what dnsperf -v reports), lost queries,
# how late the client sent (p99 lag), and the server's CPU seconds (utime+stime from
# /proc/PID/stat). Medians and spreads over the rounds per server, transport, load and basis.
#
# CLIENT_NICE: the client's niceness (default: the same as this script's, i.e. as the
# servers'). A higher value (e.g. 19, with the script at -5) lets the servers' threads preempt
# the client whenever they have work, an approximation of a server with its cores to itself.
#
# Knobs (environment): ROUNDS (3), MAX_DURATION (5), LAT_DURATION (5), SOCKETS (8), WINDOW
# (25), TICK_US (100), LOADS ("50 80"), TRANSPORTS ("udp tcp"), CLIENT_NICE, AUTOGROUP_NICE, PIN, and those of
# bench/servers.sh: QUERIES, VERIFY, MERIDIAN_BIN, GDNSD_TCP_THREADS, UDP_THREADS (with PIN=1: 1, one
# UDP thread each on the servers' core).
set -euo pipefail

# AUTOGROUP_NICE: see own_session in bench/lib.sh (a session of its own, autogroup niceness -20
# as root), as every bench that compares servers.
source "$(dirname "$0")/lib.sh"
own_session "$@"

ROUNDS=${ROUNDS:-3}
MAX_DURATION=${MAX_DURATION:-5}
LAT_DURATION=${LAT_DURATION:-5}
SOCKETS=${SOCKETS:-8}
WINDOW=${WINDOW:-25}
TICK_US=${TICK_US:-100}
LOADS=${LOADS:-50 80}
TRANSPORTS=${TRANSPORTS:-udp tcp}
CLIENT_NICE=${CLIENT_NICE:-$(nice)}

# shellcheck source=bench/servers.sh
. "$(dirname "$0")/servers.sh"

# PIN=1: the servers (every thread) on the last CPU, the client on the others: each server has
# a core the client never takes, as a server on its own machine would (with one core).
CLIENT_CPUS=""
if [ "${PIN:-0}" = 1 ]; then
    last=$(($(nproc) - 1))
    for p in "$M_PID" "$G_PID"; do taskset -a -p -c "$last" "$p" >/dev/null; done
    CLIENT_CPUS=0-$((last > 0 ? last - 1 : 0))
fi

command -v cc >/dev/null || install_missing gcc libc6-dev
cc -O2 -o "$TMP/latclient" bench/latclient.c

# client TRANSPORT PORT RATE SECONDS -> latclient's RESULT line (key=value ...)
client() {
    ${CLIENT_CPUS:+taskset -c "$CLIENT_CPUS"} nice -n $((CLIENT_NICE - $(nice))) "$TMP/latclient" "$1" 127.0.0.1 "$2" "$TMP/queries.blob" \
        "$3" "$4" "$SOCKETS" "$WINDOW" "$TICK_US" | sed -n 's/^RESULT //p'
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; } # field KEY < RESULT line

# latency TRANSPORT LOAD BASIS RATE NAME PID PORT ROUND -> appends a result line
latency() {
    local transport=$1 load=$2 basis=$3 rate=$4 name=$5 pid=$6 port=$7 round=$8 before after r
    before=$(cpu_ticks "$pid")
    r=$(client "$transport" "$port" "$rate" "$LAT_DURATION")
    after=$(cpu_ticks "$pid")
    echo "$transport $load $basis $name $round $rate $(for k in answered p50 p99 p999 max u99 lost lag99 cpu a99; do
        echo -n "$(field $k <<<"$r") "; done)$(awk -v c=$((after - before)) -v hz="$HZ" \
        'BEGIN {printf "%.2f", c / hz}')" >>"$TMP/results"
}

: >"$TMP/results"
declare -A MAX RATE_COMMON
for transport in $TRANSPORTS; do
    m=0 g=0
    for i in 1 2; do
        for s in $( ((i % 2)) && echo "meridian gdnsd" || echo "gdnsd meridian"); do
            port=$M_PORT && [ "$s" = gdnsd ] && port=$G_PORT
            q=$(client "$transport" "$port" 0 "$MAX_DURATION" | field qps)
            if [ "$s" = meridian ]; then ((q > m)) && m=$q; else ((q > g)) && g=$q; fi
        done
    done
    MAX[$transport/meridian]=$m MAX[$transport/gdnsd]=$g
    RATE_COMMON[$transport]=$((m < g ? m : g))
    echo "$transport maximum (closed loop, $SOCKETS sockets x $WINDOW in flight): meridian $m q/s, gdnsd $g q/s"
done

run_server() { # transport load round name
    local transport=$1 load=$2 round=$3 name=$4 pid=$M_PID port=$M_PORT own common
    [ "$name" = gdnsd ] && pid=$G_PID port=$G_PORT
    own=$((MAX[$transport/$name] * load / 100))
    common=$((RATE_COMMON[$transport] * load / 100))
    latency "$transport" "$load" own "$own" "$name" "$pid" "$port" "$round"
    if ((MAX[$transport/$name] > RATE_COMMON[$transport])); then
        latency "$transport" "$load" common "$common" "$name" "$pid" "$port" "$round"
    else
        tail -1 "$TMP/results" | awk '{$3 = "common"; print}' >>"$TMP/results"
    fi
}

echo "client: latclient, $SOCKETS sockets, tick ${TICK_US} µs, niceness $CLIENT_NICE (servers: $(nice)); autogroup: $(cat /proc/self/autogroup 2>/dev/null || echo -); pinned: ${CLIENT_CPUS:+client on CPU $CLIENT_CPUS, servers on $last}"
for r in $(seq "$ROUNDS"); do
    for transport in $TRANSPORTS; do
        for load in $LOADS; do
            if ((r % 2)); then
                run_server "$transport" "$load" "$r" meridian
                run_server "$transport" "$load" "$r" gdnsd
            else
                run_server "$transport" "$load" "$r" gdnsd
                run_server "$transport" "$load" "$r" meridian
            fi
        done
    done
    echo "round $r done; $(uptime | sed 's/.*load average/load average/')"
done

echo
echo "per run: transport load basis server round rate answered p50 p99 p99.9 max user-p99 (ms) lost lag-p99 (ms) client-cpu (s) p99-with-lost (ms) server-cpu (s)"
cat "$TMP/results"
echo
echo "medians over $ROUNDS rounds (min-max), ms; own: load % of the server's own maximum; common: of the lower maximum"
printf "%-4s %-4s %-7s %-8s %-8s | %-22s | %-22s | %-22s | %-22s | %-22s | %s\n" transport load basis server rate \
    p50 p99 p99.9 "p99 counting lost" "p99 as read" "lost, lag-p99, cpu client/server"
for transport in $TRANSPORTS; do
    for load in $LOADS; do
        for basis in own common; do
            for name in meridian gdnsd; do
                sel() { awk -v t="$transport" -v l="$load" -v b="$basis" -v n="$name" -v c="$1" \
                    '$1 == t && $2 == l && $3 == b && $4 == n && $c != "-" {print $c}' "$TMP/results" | median_spread; }
                printf "%-4s %-4s %-7s %-8s %-8s | %-22s | %-22s | %-22s | %-22s | %-22s | %s\n" "$transport" \
                    "$load%" "$basis" "$name" "$(sel 6 | cut -d' ' -f1)" "$(sel 8)" "$(sel 9)" "$(sel 10)" \
                    "$(sel 16)" "$(sel 12)" "$(sel 13 | cut -d' ' -f1), $(sel 14 | cut -d' ' -f1), $(sel 15 | cut -d' ' -f1)/$(sel 17 | cut -d' ' -f1)"
            done
        done
    done
done

for p in "$M_PID" "$G_PID"; do
    kill -0 "$p" 2>/dev/null || { echo "server pid $p died during the bench" >&2; exit 1; }
done
