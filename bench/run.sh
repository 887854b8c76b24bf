#!/usr/bin/env bash
# Meridian vs gdnsd over UDP on loopback, with dnsperf, in interleaved rounds.
#
#   bench/run.sh                      # 5 rounds x 10 s per server, then latency runs
#   ROUNDS=3 DURATION=5 bench/run.sh  # shorter
#   VERIFY=warn bench/run.sh          # print answer mismatches but time anyway
#   RATE_LIMIT=100000000 bench/run.sh # Meridian with [rate_limit] on (a rate nothing reaches):
#                                     # the cost of the shared rate-limit table
#   QUERY_LOG=0.01 bench/run.sh       # Meridian with [query_log] at this sample (to a file in the
#                                     # temp dir, no rate cap): the cost of the query log
#                                     # (off, 0.01 and 1.0 interleaved, per CPU-second: bench/query_log.sh)
#
# Knobs (environment): ROUNDS (5), DURATION seconds per throughput run (10), CLIENTS (dnsperf -c,
# 8), THREADS (dnsperf -T, 1), OUTSTANDING (dnsperf -q, 200), LAT_QPS (rate of the latency run,
# 20000), LAT_DURATION (3), QUERIES (size of the query file, 20000), VERIFY (strict|warn),
# RATE_LIMIT (responses_per_second of a [rate_limit] added to Meridian's config; unset: none),
# QUERY_LOG (sample of a [query_log] added to Meridian's config; unset: none),
# MERIDIAN_BIN (a prebuilt binary to time; unset: build this tree).
#
# What it does: installs dnsperf, gdnsd and dig if missing; builds Meridian (release, --locked);
# writes the gdnsd config (bench/gdnsd/config.in) and zone (zones/example.net.zone plus DYNA
# records) into a temp dir; starts Meridian (bench/meridian.toml) and gdnsd on free loopback
# ports; writes one query file (bench/queries.py); checks that both servers give the same
# answers (bench/compare.py); then, per round, drives each server in turn (the order alternates
# per round) at full speed for DURATION seconds and reports queries/s, lost queries, average
# latency and the server's CPU seconds (utime+stime from /proc/PID/stat); then a fixed-rate run
# per server with dnsperf -v for p50/p99 latency. It stops what it started, by pid.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-1}
OUTSTANDING=${OUTSTANDING:-200}
LAT_QPS=${LAT_QPS:-20000}
LAT_DURATION=${LAT_DURATION:-3}
QUERIES=${QUERIES:-20000}
VERIFY=${VERIFY:-strict}

source "$(dirname "$0")/lib.sh"
own_session "$@"

# --- tools -------------------------------------------------------------------------------------
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v gdnsd >/dev/null || missing+=(gdnsd)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v python3 >/dev/null || missing+=(python3)
install_missing "${missing[@]}"
# MERIDIAN_BIN: time a prebuilt binary (e.g. an older commit's) instead of building this tree.
build_meridian

# --- processes we start, stopped by pid on exit ---------------------------------------------------
bench_tmp meridian-bench

# --- gdnsd -------------------------------------------------------------------------------------
G_PORT=$(free_port)
mkdir -p "$TMP/gdnsd/zones"
sed -e "s|@PORT@|$G_PORT|" -e "s|@GEOIP@|$ROOT/geodata/sample.mmdb|" \
    bench/gdnsd/config.in >"$TMP/gdnsd/config"
{
    cat zones/example.net.zone
    echo "api 30 DYNA geoip!api"
    echo "geo 60 DYNA geoip!geo"
} >"$TMP/gdnsd/zones/example.net"
gdnsd -c "$TMP/gdnsd" start >"$TMP/gdnsd.log" 2>&1 &
G_PID=$!
add_pid "$G_PID"
wait_for "$TMP/gdnsd.log" "DNS listeners started" gdnsd

# --- Meridian ----------------------------------------------------------------------------------
M_CONFIG=bench/meridian.toml
if [ -n "${RATE_LIMIT:-}" ]; then
    # The same config with [rate_limit]; its relative paths made absolute for the copy.
    M_CONFIG="$TMP/meridian.toml"
    sed "s#\"\.\./#\"$ROOT/#" bench/meridian.toml >"$M_CONFIG"
    printf '\n[rate_limit]\nresponses_per_second = %s\n' "$RATE_LIMIT" >>"$M_CONFIG"
    echo "meridian with [rate_limit] responses_per_second = $RATE_LIMIT"
fi
if [ -n "${QUERY_LOG:-}" ]; then
    # The same config (or the one above) with [query_log] writing every sampled answer.
    if [ "$M_CONFIG" = bench/meridian.toml ]; then
        M_CONFIG="$TMP/meridian.toml"
        sed "s#\"\.\./#\"$ROOT/#" bench/meridian.toml >"$M_CONFIG"
    fi
    printf '\n[query_log]\nfile = "%s"\nsample = %s\nmax_per_second = 100000000\nmax_size_mb = 1024\nkeep = 1\n' \
        "$TMP/queries.log" "$QUERY_LOG" >>"$M_CONFIG"
    echo "meridian with [query_log] sample = $QUERY_LOG"
fi
MERIDIAN_LOG=warn,meridian::app=info "$MERIDIAN_BIN" serve --config "$M_CONFIG" \
    >"$TMP/meridian.log" 2>&1 &
M_PID=$!
add_pid "$M_PID"
wait_for "$TMP/meridian.log" "listening dns/udp" meridian
M_PORT=$(sed -n 's/.*listening dns\/udp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/meridian.log" | head -1)

echo "meridian pid $M_PID on 127.0.0.1:$M_PORT; gdnsd $(gdnsd -V 2>&1 | sed -n 's/.*version \([^ ]*\).*/\1/p') pid $G_PID on 127.0.0.1:$G_PORT"

# --- queries and the answer check ---------------------------------------------------------------
python3 bench/queries.py "$TMP/queries.blob" "$TMP/queries.list" "$QUERIES"
if ! python3 bench/compare.py "$TMP/queries.list" "$M_PORT" meridian "$G_PORT" gdnsd; then
    if [ "$VERIFY" != warn ]; then
        echo "answers differ: not timing (VERIFY=warn to time anyway)" >&2
        exit 1
    fi
    echo "answers differ; VERIFY=warn: timing anyway"
fi

# --- timing --------------------------------------------------------------------------------------
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PID PORT ROUND -> appends "name round qps lost avg_ms cpu_s" to $TMP/results
run() {
    local name=$1 pid=$2 port=$3 round=$4 before after out
    before=$(cpu_ticks "$pid")
    out=$(dnsperf -B -d "$TMP/queries.blob" -s 127.0.0.1 -p "$port" -l "$DURATION" \
        -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" 2>&1)
    after=$(cpu_ticks "$pid")
    echo "$out" | awk -v n="$name" -v r="$round" -v t=$((after - before)) -v hz="$HZ" '
        /Queries sent:/ {sent = $3}
        /Queries lost:/ {lost = $3}
        /Queries per second:/ {qps = $4}
        /Average Latency/ {avg = $4 * 1000}
        END {printf "%s %d %.0f %d %.3f %.2f %d\n", n, r, qps, lost, avg, t / hz, sent}' \
        >>"$TMP/results"
}

# latency NAME PORT -> "name p50_ms p99_ms lost" from a fixed-rate run (dnsperf -v: one line per query)
latency() {
    local name=$1 port=$2
    dnsperf -B -d "$TMP/queries.blob" -s 127.0.0.1 -p "$port" -l "$LAT_DURATION" \
        -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" -Q "$LAT_QPS" -v 2>&1 |
        awk '$1 == ">" && $2 != "T" {print $NF * 1000}' | sort -n >"$TMP/lat.$name"
    awk -v n="$name" '{v[NR] = $1} END {
        if (NR == 0) {print n, "-", "-", 0; exit}
        p50 = v[int(NR * 0.50) + 1]; i = int(NR * 0.99) + 1; if (i > NR) i = NR
        printf "%s %.3f %.3f %d\n", n, p50, v[i], NR}' "$TMP/lat.$name"
}

echo
echo "throughput: $ROUNDS rounds x ${DURATION}s per server; dnsperf -B -c $CLIENTS -T $THREADS -q $OUTSTANDING; $(nproc) cores shared by both servers and dnsperf"
: >"$TMP/results"
for r in $(seq "$ROUNDS"); do
    if ((r % 2)); then
        run meridian "$M_PID" "$M_PORT" "$r"
        run gdnsd "$G_PID" "$G_PORT" "$r"
    else
        run gdnsd "$G_PID" "$G_PORT" "$r"
        run meridian "$M_PID" "$M_PORT" "$r"
    fi
done

awk '
    {qps[$1, $2] = $3; lost[$1, $2] = $4; avg[$1, $2] = $5; cpu[$1, $2] = $6; n = ($2 > n ? $2 : n)}
    function median(a, k,   i, j, t) {
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) {t = a[i]; a[i] = a[j]; a[j] = t}
        return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    END {
        printf "%-5s | %-44s | %-44s | %-7s %-9s\n", "round", "meridian: qps lost avg_ms cpu_s q/cpu_s", "gdnsd: qps lost avg_ms cpu_s q/cpu_s", "qps M/G", "q/cpu M/G"
        for (r = 1; r <= n; r++) {
            mq = qps["meridian", r]; gq = qps["gdnsd", r]
            me = cpu["meridian", r] > 0 ? mq * '"$DURATION"' / cpu["meridian", r] : 0
            ge = cpu["gdnsd", r] > 0 ? gq * '"$DURATION"' / cpu["gdnsd", r] : 0
            ratio[r] = gq > 0 ? mq / gq : 0; eff[r] = ge > 0 ? me / ge : 0
            mqs[r] = mq; gqs[r] = gq; mes[r] = me; ges[r] = ge
            printf "%-5d | %8.0f %6d %7.3f %6.2f %10.0f    | %8.0f %6d %7.3f %6.2f %10.0f    | %7.3f %9.3f\n", r,
                mq, lost["meridian", r], avg["meridian", r], cpu["meridian", r], me,
                gq, lost["gdnsd", r], avg["gdnsd", r], cpu["gdnsd", r], ge, ratio[r], eff[r]
        }
        printf "median| %8.0f %25.0f    | %8.0f %25.0f    | %7.3f %9.3f\n",
            median(mqs, n), median(mes, n), median(gqs, n), median(ges, n), median(ratio, n), median(eff, n)
    }' "$TMP/results"

echo
echo "latency at a fixed $LAT_QPS queries/s for ${LAT_DURATION}s (dnsperf -v), ms:"
echo "server   p50    p99    answered"
latency meridian "$M_PORT"
latency gdnsd "$G_PORT"

for p in "$M_PID" "$G_PID"; do
    kill -0 "$p" 2>/dev/null || { echo "server pid $p died during the bench" >&2; exit 1; }
done
if [ -n "${QUERY_LOG:-}" ]; then
    echo
    echo "query log: $(wc -l <"$TMP/queries.log") lines written ($(du -h "$TMP/queries.log" | cut -f1))"
fi
