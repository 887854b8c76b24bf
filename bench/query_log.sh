#!/usr/bin/env bash
# The cost of the query log (issue 12): Meridian with [query_log] off, at sample 0.01 and at
# sample 1.0, in interleaved rounds, over UDP on loopback with dnsperf.
#
#   bench/query_log.sh                      # 5 rounds x 10 s per variant
#   ROUNDS=3 DURATION=5 bench/query_log.sh  # shorter
#
# Knobs (environment): ROUNDS (5), DURATION seconds per run (10), CLIENTS (dnsperf -c, 8),
# THREADS (dnsperf -T, 1), OUTSTANDING (dnsperf -q, 200), QUERIES (size of the query file,
# 20000), SAMPLES (the variants, "off 0.01 1.0"), MERIDIAN_BIN (a prebuilt binary; unset:
# build this tree, release).
#
# What it does: starts one Meridian per variant at once, each with bench/meridian.toml (the
# gdnsd comparison's config: same zone, GeoIP database and services) plus, for a sample, a
# [query_log] writing to a file in the temp dir with no rate cap (max_per_second = 100000000)
# and an admin port (to read the query-log counters). Each round drives every variant in turn
# at full speed for DURATION seconds (the order rotates per round, so no variant always goes
# first or last) and reports queries/s, lost queries and the server's CPU seconds
# (utime+stime from /proc/PID/stat, every thread: the log's writer thread included), then
# queries per CPU-second. At the end: per variant the median, min and max, the ratio of the
# medians to "off", the CPU seconds of each thread (by name: the UDP threads, tokio workers,
# the query log's writer), and the query-log counters (lines written, lines dropped by
# reason). It stops what it started, by pid.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-1}
OUTSTANDING=${OUTSTANDING:-200}
QUERIES=${QUERIES:-20000}
SAMPLES=${SAMPLES:-off 0.01 1.0}

source "$(dirname "$0")/lib.sh"

missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
install_missing "${missing[@]}"
build_meridian

bench_tmp meridian-qlog-bench

# --- one Meridian per variant ------------------------------------------------------------------
declare -A PID PORT ADMIN
for v in $SAMPLES; do
    conf="$TMP/meridian-$v.toml"
    # Relative paths made absolute for the copy.
    sed "s#\"\.\./#\"$ROOT/#" bench/meridian.toml >"$conf"
    if [ "$v" != off ]; then
        sed -i 's#^admin_listen = "".*#admin_listen = "127.0.0.1:0"#' "$conf"
        printf '\n[query_log]\nfile = "%s"\nsample = %s\nmax_per_second = 100000000\nmax_size_mb = 4096\nkeep = 1\n' \
            "$TMP/queries-$v.log" "$v" >>"$conf"
    fi
    MERIDIAN_LOG=warn,meridian::app=info,meridian::admin=info "$MERIDIAN_BIN" serve --config "$conf" \
        >"$TMP/meridian-$v.out" 2>&1 &
    PID[$v]=$!
    add_pid "$!"
    wait_for "$TMP/meridian-$v.out" "listening dns/udp" "meridian ($v)"
    PORT[$v]=$(sed -n 's/.*listening dns\/udp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/meridian-$v.out" | head -1)
    if [ "$v" != off ]; then
        wait_for "$TMP/meridian-$v.out" "listening admin/http" "meridian ($v) admin"
        ADMIN[$v]=$(sed -n 's/.*listening admin\/http \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$TMP/meridian-$v.out" | head -1)
    fi
    echo "query log $v: meridian pid ${PID[$v]} on 127.0.0.1:${PORT[$v]}"
done

python3 bench/queries.py "$TMP/queries.blob" "$TMP/queries.list" "$QUERIES"

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run VARIANT ROUND -> appends "variant round qps lost cpu_s" to $TMP/results
run() {
    local v=$1 round=$2 before after out
    before=$(cpu_ticks "${PID[$v]}")
    out=$(dnsperf -B -d "$TMP/queries.blob" -s 127.0.0.1 -p "${PORT[$v]}" -l "$DURATION" \
        -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" 2>&1)
    after=$(cpu_ticks "${PID[$v]}")
    echo "$out" | awk -v n="$v" -v r="$round" -v t=$((after - before)) -v hz="$HZ" '
        /Queries lost:/ {lost = $3}
        /Queries per second:/ {qps = $4}
        END {printf "%s %d %.0f %d %.2f\n", n, r, qps, lost, t / hz}' >>"$TMP/results"
}

read -r -a VARIANTS <<<"$SAMPLES"
N=${#VARIANTS[@]}
echo
echo "load before: $(uptime)"
echo "throughput: $ROUNDS rounds x ${DURATION}s per variant; dnsperf -B -c $CLIENTS -T $THREADS -q $OUTSTANDING; $(nproc) cores shared by the servers and dnsperf"
: >"$TMP/results"
for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((N - 1))); do
        run "${VARIANTS[$(((i + r - 1) % N))]}" "$r"
    done
done
echo "load after: $(uptime)"

echo
printf '%-6s | %-5s | %9s %8s %7s %11s\n' variant round qps lost cpu_s "q/cpu_s"
awk -v d="$DURATION" '{
        q = $5 > 0 ? $3 * d / $5 : 0
        printf "%-7s | %-5d | %9.0f %8d %7.2f %11.0f\n", $1, $2, $3, $4, $5, q
    }' "$TMP/results"

echo
echo "per variant: median (min..max) over $ROUNDS rounds; ratio of medians to off"
awk -v d="$DURATION" -v order="$SAMPLES" '
    function median(a, k,   i, j, t) {
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) {t = a[i]; a[i] = a[j]; a[j] = t}
        return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    {n[$1]++; qps[$1, n[$1]] = $3; eff[$1, n[$1]] = $5 > 0 ? $3 * d / $5 : 0}
    END {
        split(order, vs, " ")
        for (x = 1; x in vs; x++) {
            v = vs[x]; k = n[v]
            delete a; delete b
            lo = 1e18; hi = 0; elo = 1e18; ehi = 0
            for (i = 1; i <= k; i++) {
                a[i] = qps[v, i]; b[i] = eff[v, i]
                if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i]
                if (b[i] < elo) elo = b[i]; if (b[i] > ehi) ehi = b[i]
            }
            mq[v] = median(a, k); me[v] = median(b, k)
            printf "%-5s qps %8.0f (%.0f..%.0f)   q/cpu_s %8.0f (%.0f..%.0f)", v, mq[v], lo, hi, me[v], elo, ehi
            if (("off") in mq && mq["off"] > 0 && me["off"] > 0)
                printf "   vs off: qps %.3f, q/cpu_s %.3f", mq[v] / mq["off"], me[v] / me["off"]
            printf "\n"
        }
    }' "$TMP/results"

echo
echo "CPU seconds by thread over the whole bench (utime+stime of /proc/PID/task/*, by thread name):"
for v in $SAMPLES; do
    for t in /proc/"${PID[$v]}"/task/*; do
        # The name is in parentheses and may hold spaces; utime and stime follow it.
        sed -e 's/^[0-9]* (\(.*\)) \(.*\)$/\1|\2/' "$t/stat" |
            awk -F'|' '{split($2, f, " "); print $1 "|" f[12] + f[13]}'
    done | awk -F'|' -v v="$v" -v hz="$HZ" '
        {sub(/[-0-9]+$/, "", $1); cpu[$1] += $2}
        END {
            printf "%-5s", v
            for (n in cpu) if (cpu[n] > 0) printf "  %s %.2f", n, cpu[n] / hz
            printf "\n"
        }'
done

echo
for v in $SAMPLES; do
    kill -0 "${PID[$v]}" 2>/dev/null || { echo "meridian ($v) died during the bench" >&2; exit 1; }
    [ "$v" = off ] && continue
    lines=$(wc -l <"$TMP/queries-$v.log")
    counters=$(curl -fsS "http://${ADMIN[$v]}/metrics" |
        awk '/^meridian_query_log_(lines|dropped)_total/ {printf "%s ", $0}')
    echo "query log $v: $lines lines in the file ($(du -h "$TMP/queries-$v.log" | cut -f1)); $counters"
done
