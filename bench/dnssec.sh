#!/usr/bin/env bash
# DNSSEC bench (issue 14): signed answers (DO=1 on every query) against unsigned ones (DO=0),
# same server, same queries: dynamic names (api A, geo AAAA) with ECS from 512 client subnets.
# Interleaved rounds; reports queries/s and queries per CPU-second of the server (utime+stime
# from /proc/PID/stat), and the signed/unsigned ratio per round and its median. The signature
# cache is warmed by one untimed DO=1 pass first. Then the divan bench of raw signing speed.
# Knobs: ROUNDS (5), DURATION seconds per run (10), ALGORITHM (ecdsap256sha256), NO_BUILD=1 (use
# the existing target/release/meridian).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
ALGORITHM=${ALGORITHM:-ecdsap256sha256}
command -v dnsperf >/dev/null || { apt-get install -y -q dnsperf; }
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -q
BIN=$PWD/target/release/meridian

TMP=$(mktemp -d -t meridian-dnssec.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -n "$PID" ] && wait "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN" dnssec keygen --zone example.net. --algorithm "$ALGORITHM" --out "$TMP/k.pem" >/dev/null
sed -e "s|\.\./|$PWD/|g" \
    -e "s|^file   = \(.*\)$|file   = \1\ndnssec = { keys = [\"$TMP/k.pem\"], algorithm = \"$ALGORITHM\" }|" \
    bench/meridian.toml > "$TMP/meridian.toml"
python3 bench/dnssec.py "$TMP/signed.blob" "$TMP/plain.blob"
MERIDIAN_LOG=warn,meridian=info "$BIN" serve --config "$TMP/meridian.toml" 2> "$TMP/log" &
PID=$!
for _ in $(seq 100); do grep -q "meridian started" "$TMP/log" && break; sleep 0.1; done
PORT=$(sed -n 's/.*listening dns\/udp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/log" | head -1)
dig +dnssec +noall +answer @127.0.0.1 -p "$PORT" api.example.net A | grep -q RRSIG || { echo "no RRSIG in a DO=1 answer" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # blob -> "qps cpu_s"
    local before after out
    before=$(cpu_ticks "$PID")
    out=$(dnsperf -B -d "$1" -s 127.0.0.1 -p "$PORT" -l "$DURATION" -c 8 -T 1 -q 200 2>&1)
    after=$(cpu_ticks "$PID")
    echo "$(echo "$out" | awk '/Queries per second/ {print $4}') $(( after - before ))"
}
run "$TMP/signed.blob" >/dev/null  # warm the signature cache (untimed)
TICK=$(getconf CLK_TCK)
echo "round | signed qps  q/cpu_s | unsigned qps  q/cpu_s | ratio q/cpu_s"
ratios=()
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then s=$(run "$TMP/signed.blob"); u=$(run "$TMP/plain.blob");
    else u=$(run "$TMP/plain.blob"); s=$(run "$TMP/signed.blob"); fi
    line=$(awk -v s="$s" -v u="$u" -v d="$DURATION" -v t="$TICK" 'BEGIN {
        split(s, a, " "); split(u, b, " ");
        se = a[2] > 0 ? a[1] * d / (a[2] / t) : 0; ue = b[2] > 0 ? b[1] * d / (b[2] / t) : 0;
        printf "%.0f %.0f %.0f %.0f %.3f", a[1], se, b[1], ue, (ue > 0 ? se / ue : 0) }')
    read -r sq se uq ue ratio <<<"$line"
    printf "%5d | %11s %8s | %12s %8s | %s\n" "$r" "$sq" "$se" "$uq" "$ue" "$ratio"
    ratios+=("$ratio")
done
printf "median ratio (signed/unsigned queries per CPU-second): %s\n" \
    "$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
echo "signatures per second per core: cargo bench --bench dnssec (sign = one signature)"
