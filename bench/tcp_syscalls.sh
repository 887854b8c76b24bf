#!/usr/bin/env bash
# Where a one-query TCP connection's cost goes, Meridian against gdnsd (issue 18, item 1): the
# paced one-shot client of bench/tcp.sh (ONESHOT_RATE connections per second) against each
# server in turn under `perf stat`, counting the server's system calls (every
# syscalls:sys_enter_* tracepoint that fired), context switches and CPU, per connection; and
# before that, the same run without perf for the server's CPU per thread (utime+stime from
# /proc/PID/task/*/stat), as perf's counting slows every system call.
#
#   bench/tcp_syscalls.sh                         # 10,000 connections/s, 5 s per server
#   ONESHOT_RATE=5000 DURATION=4 bench/tcp_syscalls.sh
#
# Knobs (environment): DURATION (5), ONESHOT_THREADS (16), ONESHOT_RATE (10000), and those of
# bench/servers.sh (MERIDIAN_BIN, GDNSD_TCP_THREADS, ...). Needs perf (linux-perf) and root
# (tracepoints).
set -euo pipefail
DURATION=${DURATION:-5}
ONESHOT_THREADS=${ONESHOT_THREADS:-16}
ONESHOT_RATE=${ONESHOT_RATE:-10000}
source "$(dirname "$0")/lib.sh"
own_session "$@"
command -v perf >/dev/null || install_missing linux-perf
# shellcheck source=bench/servers.sh
. "$(dirname "$0")/servers.sh"
cc -O2 -pthread -o "$TMP/tcp_oneshot" bench/tcp_oneshot.c

# thread_ticks PID: "name ticks" per thread.
thread_ticks() {
    for t in /proc/"$1"/task/*; do
        awk '{sub(/^[0-9]+ \(/, ""); sub(/\) /, " "); print $1, $13 + $14}' "$t/stat"
    done | awk '{t[$1] += $2} END {for (n in t) print n, t[n]}' | sort
}

for which in meridian gdnsd; do
    if [ "$which" = meridian ]; then pid=$M_PID port=$M_PORT; else pid=$G_PID port=$G_PORT; fi
    # First without perf (which slows every system call it counts): CPU per thread.
    thread_ticks "$pid" >"$TMP/threads.before"
    out=$("$TMP/tcp_oneshot" 127.0.0.1 "$port" "$TMP/queries.blob" "$ONESHOT_THREADS" \
        "$DURATION" "$ONESHOT_RATE" 2>&1)
    thread_ticks "$pid" >"$TMP/threads.after"
    plain_done=$(echo "$out" | awk '/Queries completed:/ {print $3}')
    perf stat -x, -e 'syscalls:sys_enter_*,context-switches' -p "$pid" \
        -o "$TMP/perf.$which" -- sleep $((DURATION + 1)) &
    perf_pid=$!
    sleep 0.5
    out=$("$TMP/tcp_oneshot" 127.0.0.1 "$port" "$TMP/queries.blob" "$ONESHOT_THREADS" \
        "$DURATION" "$ONESHOT_RATE" 2>&1)
    wait "$perf_pid"
    done_=$(echo "$out" | awk '/Queries completed:/ {print $3}')
    lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
    echo
    echo "== $which: $done_ connections answered, $lost lost, $ONESHOT_RATE/s for ${DURATION}s; per connection:"
    awk -F, -v n="$done_" '$1 ~ /^[0-9.]+$/ && $1 > 0 {
        name = $3; sub(/syscalls:sys_enter_/, "", name)
        if (name == "task-clock") next
        printf "  %-16s %8.3f\n", name, $1 / n
        if ($3 ~ /sys_enter/) total += $1
    } END {printf "  %-16s %8.3f\n", "syscalls in all", total / n}' "$TMP/perf.$which" | sort -k2 -g -r
    echo "  without perf: $plain_done answered; CPU per connection by thread (us): $(join "$TMP/threads.before" "$TMP/threads.after" | awk -v n="$plain_done" -v hz="$HZ" '$3 > $2 {printf "%s %.1f; ", $1, ($3 - $2) * 1e6 / hz / n; t += $3 - $2} END {printf "all %.1f", t * 1e6 / hz / n}')"
done
echo "load: $(uptime | sed 's/.*load average/load average/')"
