#!/usr/bin/env bash
# Latency of Meridian and gdnsd at 50 % and 80 % of the maximum rate, over UDP and TCP, on
# loopback (issue 18, item 3).
#
#   bench/latency.sh                          # 3 rounds
#   ROUNDS=1 LAT_DURATION=3 bench/latency.sh  # quicker
#
# First the maximum: per transport, each server at full speed (dnsperf, MAX_DURATION s, twice,
# order alternating); the rate both reach is the lower of the two servers' best figures. Then,
# per transport and load (50 %, 80 % of that rate), per round, each server in turn (order
# alternating per round) at that fixed rate (dnsperf -Q) for LAT_DURATION s with dnsperf -v,
# which prints one line per query with its latency; from those: p50, p99, p99.9 and the
# maximum, plus lost queries and the server's CPU seconds (utime+stime from /proc/PID/stat).
# Medians and spreads over the rounds are printed per server, transport and load.
#
# dnsperf 2.10 has no latency histogram: -v is the only per-query figure, and printing a line
# per query costs dnsperf CPU (on the same cores as the servers), so the percentiles include
# the client's own delays. Both servers pay the same.
#
# Knobs (environment): ROUNDS (3), MAX_DURATION (5), LAT_DURATION (5), CLIENTS (8), THREADS
# (2), OUTSTANDING (dnsperf -q, 200), LOADS ("50 80"), TRANSPORTS ("udp tcp"), and those of
# bench/servers.sh: QUERIES, VERIFY, MERIDIAN_BIN, GDNSD_TCP_THREADS.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
MAX_DURATION=${MAX_DURATION:-5}
LAT_DURATION=${LAT_DURATION:-5}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
OUTSTANDING=${OUTSTANDING:-200}
LOADS=${LOADS:-50 80}
TRANSPORTS=${TRANSPORTS:-udp tcp}

# shellcheck source=bench/servers.sh
. "$(dirname "$0")/servers.sh"

perf() { # transport port [extra dnsperf args...]
    local transport=$1 port=$2
    shift 2
    dnsperf -m "$transport" -B -d "$TMP/queries.blob" -s 127.0.0.1 -p "$port" \
        -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" "$@" 2>&1
}

# maximum TRANSPORT PORT -> queries/s at full speed
maximum() {
    perf "$1" "$2" -l "$MAX_DURATION" | awk '/Queries per second:/ {printf "%.0f\n", $4}'
}

# latency TRANSPORT LOAD RATE NAME PID PORT ROUND -> appends a result line
latency() {
    local transport=$1 load=$2 rate=$3 name=$4 pid=$5 port=$6 round=$7 before after
    before=$(cpu_ticks "$pid")
    perf "$transport" "$port" -l "$LAT_DURATION" -Q "$rate" -v >"$TMP/out"
    after=$(cpu_ticks "$pid")
    # "> NOERROR name type <latency s>" per answered query; lost ones say "T".
    awk '$1 == ">" && $2 != "T" {print $NF * 1000}' "$TMP/out" | sort -g >"$TMP/lat"
    local lost
    lost=$(awk '/Queries lost:/ {print $3}' "$TMP/out")
    awk -v t="$transport" -v l="$load" -v n="$name" -v r="$round" -v lost="${lost:-0}" \
        -v cpu="$(((after - before)))" -v hz="$HZ" '{v[NR] = $1} END {
        if (NR == 0) {print t, l, n, r, 0, "-", "-", "-", "-", lost, 0; exit}
        i50 = int(NR * 0.50) + 1; i99 = int(NR * 0.99) + 1; i999 = int(NR * 0.999) + 1
        if (i99 > NR) i99 = NR; if (i999 > NR) i999 = NR
        printf "%s %s %s %d %d %.3f %.3f %.3f %.3f %d %.2f\n", t, l, n, r, NR,
            v[i50], v[i99], v[i999], v[NR], lost, cpu / hz}' "$TMP/lat" >>"$TMP/results"
}

: >"$TMP/results"
declare -A RATE
for transport in $TRANSPORTS; do
    m=0 g=0
    for i in 1 2; do
        if ((i % 2)); then
            a=$(maximum "$transport" "$M_PORT"); b=$(maximum "$transport" "$G_PORT")
        else
            b=$(maximum "$transport" "$G_PORT"); a=$(maximum "$transport" "$M_PORT")
        fi
        ((a > m)) && m=$a
        ((b > g)) && g=$b
    done
    RATE[$transport]=$((m < g ? m : g))
    echo "$transport maximum: meridian $m q/s, gdnsd $g q/s; rate used: ${RATE[$transport]} q/s"
done

for r in $(seq "$ROUNDS"); do
    for transport in $TRANSPORTS; do
        for load in $LOADS; do
            rate=$((RATE[$transport] * load / 100))
            if ((r % 2)); then
                latency "$transport" "$load" "$rate" meridian "$M_PID" "$M_PORT" "$r"
                latency "$transport" "$load" "$rate" gdnsd "$G_PID" "$G_PORT" "$r"
            else
                latency "$transport" "$load" "$rate" gdnsd "$G_PID" "$G_PORT" "$r"
                latency "$transport" "$load" "$rate" meridian "$M_PID" "$M_PORT" "$r"
            fi
        done
    done
    echo "round $r done; $(uptime | sed 's/.*load average/load average/')"
done

echo
echo "per run: transport load server round answered p50 p99 p99.9 max (ms) lost cpu_s"
cat "$TMP/results"
echo
echo "medians over $ROUNDS rounds (min-max), ms; rate = load % of the lower maximum"
printf "%-9s %-4s %-8s %-7s | %-20s | %-20s | %-20s\n" transport load server rate p50 p99 p99.9
for transport in $TRANSPORTS; do
    for load in $LOADS; do
        for name in meridian gdnsd; do
            sel() { awk -v t="$transport" -v l="$load" -v n="$name" -v c="$1" \
                '$1 == t && $2 == l && $3 == n && $c != "-" {print $c}' "$TMP/results" | median_spread; }
            printf "%-9s %-4s %-8s %-7s | %-20s | %-20s | %-20s\n" "$transport" "$load%" "$name" \
                "$((RATE[$transport] * load / 100))" "$(sel 6)" "$(sel 7)" "$(sel 8)"
        done
    done
done

for p in "$M_PID" "$G_PID"; do
    kill -0 "$p" 2>/dev/null || { echo "server pid $p died during the bench" >&2; exit 1; }
done
