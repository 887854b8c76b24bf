#!/usr/bin/env bash
# DNS over TLS bench (issue 15): DoT answers per CPU-second of the server against plain TCP,
# same server, same queries (bench/queries.py: the run.sh mix of service names with and
# without ECS, static records, negative answers), with connection reuse: dnsperf keeps CLIENTS
# connections open for the whole run (-m dot and -m tcp), so the TLS handshake is paid once per
# connection and the figure is the cost of the record layer. Interleaved rounds (DoT first in
# odd rounds); reports queries/s, queries per CPU-second of the server (utime+stime from
# /proc/PID/stat) and the DoT/TCP ratio per round, with its median and spread.
# The certificate is a self-signed P-256 one made here with openssl (dnsperf does not verify).
# Knobs: ROUNDS (5), DURATION seconds per run (10), CLIENTS (dnsperf -c, 8), OUTSTANDING
# (dnsperf -q, 200), NO_BUILD=1 (use the existing target/release/meridian), BIN (another binary).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-200}
command -v dnsperf >/dev/null || { echo "dnsperf is needed (apt-get install dnsperf)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 1; }
[[ "$(dnsperf -h 2>&1)" == *dot* ]] || { echo "this dnsperf has no -m dot (2.9 or later has)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
    [ -n "${NO_BUILD:-}" ] || cargo build --release --locked -q
    BIN=$PWD/target/release/meridian
fi

TMP=$(mktemp -d -t meridian-dot.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -n "$PID" ] && wait "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=dot.bench -addext subjectAltName=IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TMP/dot.key" -out "$TMP/dot.crt" 2>/dev/null
# bench/meridian.toml plus a DoT listener; the TCP limits are the defaults for both.
sed -e "s|\.\./|$PWD/|g" \
    -e "s|^dns_listen .*|&\ntls_listen   = [\"127.0.0.1:0\"]\ntls_certificate = \"$TMP/dot.crt\"\ntls_key = \"$TMP/dot.key\"|" \
    bench/meridian.toml > "$TMP/meridian.toml"
python3 bench/queries.py "$TMP/queries.blob" "$TMP/queries.list" >/dev/null
MERIDIAN_LOG=warn,meridian=info "$BIN" serve --config "$TMP/meridian.toml" 2> "$TMP/log" &
PID=$!
for _ in $(seq 100); do grep -q "meridian started" "$TMP/log" && break; sleep 0.1; done
TCP=$(sed -n 's/.*listening dns\/tcp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/log" | head -1)
DOT=$(sed -n 's/.*listening dns\/tls 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/log" | head -1)
[ -n "$TCP" ] && [ -n "$DOT" ] || { cat "$TMP/log" >&2; echo "no dns/tcp or dns/tls port" >&2; exit 1; }
# The same answer on both transports before timing anything.
a=$(kdig +short +tcp @127.0.0.1 -p "$TCP" example.net SOA 2>/dev/null || dig +short +tcp @127.0.0.1 -p "$TCP" example.net SOA)
if command -v kdig >/dev/null; then
    b=$(kdig +short +tls @127.0.0.1 -p "$DOT" example.net SOA)
    [ -n "$a" ] && [ "$a" = "$b" ] || { echo "DoT and TCP answers differ: $a / $b" >&2; exit 1; }
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # mode port -> "qps cpu_ticks lost reconnections"
    local before after out
    before=$(cpu_ticks "$PID")
    out=$(dnsperf -m "$1" -B -d "$TMP/queries.blob" -s 127.0.0.1 -p "$2" -l "$DURATION" \
        -c "$CLIENTS" -T 1 -q "$OUTSTANDING" 2>&1)
    after=$(cpu_ticks "$PID")
    echo "$out" > "$TMP/last-$1.txt"
    echo "$(echo "$out" | awk '/Queries per second/ {print $4}') $(( after - before )) \
$(echo "$out" | awk '/Queries lost/ {print $3}') \
$(echo "$out" | awk '/Reconnections/ {print $2; f=1} END {if (!f) print "-"}')"
}
run dot "$DOT" >/dev/null  # warm up (untimed)
TICK=$(getconf CLK_TCK)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; $CLIENTS connections, $OUTSTANDING outstanding, ${DURATION}s runs"
echo "round | dot qps  q/cpu_s  lost reconn | tcp qps  q/cpu_s  lost reconn | ratio q/cpu_s"
ratios=()
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then d=$(run dot "$DOT"); t=$(run tcp "$TCP");
    else t=$(run tcp "$TCP"); d=$(run dot "$DOT"); fi
    line=$(awk -v d="$d" -v t="$t" -v s="$DURATION" -v k="$TICK" 'BEGIN {
        split(d, a, " "); split(t, b, " ");
        de = a[2] > 0 ? a[1] * s / (a[2] / k) : 0; te = b[2] > 0 ? b[1] * s / (b[2] / k) : 0;
        printf "%.0f %.0f %s %s %.0f %.0f %s %s %.3f", a[1], de, a[3], a[4], b[1], te, b[3], b[4], (te > 0 ? de / te : 0) }')
    read -r dq de dl dr tq te tl tr ratio <<<"$line"
    printf "%5d | %7s %8s %5s %6s | %7s %8s %5s %6s | %s\n" "$r" "$dq" "$de" "$dl" "$dr" "$tq" "$te" "$tl" "$tr" "$ratio"
    ratios+=("$ratio")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {
    printf "median ratio (DoT/TCP queries per CPU-second): %s (min %s, max %s, %d rounds)\n", a[int((NR+1)/2)], a[1], a[NR], NR }'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
