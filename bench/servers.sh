# Shared set-up of bench/tcp.sh and bench/latency.sh (sourced, not run): Meridian and gdnsd on
# free loopback ports with the configs of bench/run.sh (bench/meridian.toml, bench/gdnsd/config.in:
# the same zone, services and GeoIP database), the query file (bench/queries.py), the answer
# check (bench/compare.py) and CPU accounting. Everything started is stopped by pid on exit.
#
# Sets: ROOT, TMP, M_PID, M_PORT, G_PID, G_PORT, HZ; defines cpu_ticks, add_pid.
# Knobs (environment): QUERIES (size of the query file, 20000), VERIFY (strict|warn),
# MERIDIAN_BIN (a prebuilt binary to time; unset: build this tree, release),
# GDNSD_TCP_THREADS (gdnsd tcp_threads; default: nproc, "as many TCP threads as cores").
# UDP_THREADS: both servers' UDP threads (udp_workers, udp_threads; default 2, as the configs).

QUERIES=${QUERIES:-20000}
VERIFY=${VERIFY:-strict}
GDNSD_TCP_THREADS=${GDNSD_TCP_THREADS:-$(nproc)}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- tools -------------------------------------------------------------------------------------
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v gdnsd >/dev/null || missing+=(gdnsd)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v python3 >/dev/null || missing+=(python3)
install_missing "${missing[@]}"
build_meridian

# --- processes we start, stopped by pid on exit ---------------------------------------------------
bench_tmp meridian-bench

# --- gdnsd: the config of bench/run.sh, with tcp_threads = GDNSD_TCP_THREADS ----------------------
G_PORT=$(free_port)
mkdir -p "$TMP/gdnsd/zones"
sed -e "s|@PORT@|$G_PORT|" -e "s|@GEOIP@|$ROOT/geodata/sample.mmdb|" \
    -e "s|tcp_threads => [0-9]*|tcp_threads => $GDNSD_TCP_THREADS|" \
    -e "s|udp_threads => [0-9]*|udp_threads => ${UDP_THREADS:-2}|" \
    bench/gdnsd/config.in >"$TMP/gdnsd/config"
{
    cat zones/example.net.zone
    echo "api 30 DYNA geoip!api"
    echo "geo 60 DYNA geoip!geo"
} >"$TMP/gdnsd/zones/example.net"
gdnsd -c "$TMP/gdnsd" start >"$TMP/gdnsd.log" 2>&1 &
G_PID=$!
add_pid "$G_PID"
wait_for "$TMP/gdnsd.log" "DNS listeners started" gdnsd 300

# --- Meridian: bench/meridian.toml (TCP on the main runtime: one worker thread per core) -------
M_CONFIG=bench/meridian.toml
if [ -n "${UDP_THREADS:-}" ]; then
    M_CONFIG=$TMP/meridian.toml
    sed -e "s|\.\./|$ROOT/|g" -e "s|^udp_workers .*|udp_workers = $UDP_THREADS|" bench/meridian.toml >"$M_CONFIG"
fi
MERIDIAN_LOG=warn,meridian::app=info "$MERIDIAN_BIN" serve --config "$M_CONFIG" \
    >"$TMP/meridian.log" 2>&1 &
M_PID=$!
add_pid "$M_PID"
wait_for "$TMP/meridian.log" "listening dns/tcp" meridian 300
M_PORT=$(sed -n 's/.*listening dns\/tcp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/meridian.log" | head -1)

echo "meridian pid $M_PID on 127.0.0.1:$M_PORT; gdnsd $(gdnsd -V 2>&1 | sed -n 's/.*version \([^ ]*\).*/\1/p') pid $G_PID on 127.0.0.1:$G_PORT (tcp_threads $GDNSD_TCP_THREADS)"
echo "load before: $(uptime | sed 's/.*load average/load average/'); $(nproc) cores"

# --- queries and the answer check (over TCP and UDP) ----------------------------------------------
python3 bench/queries.py "$TMP/queries.blob" "$TMP/queries.list" "$QUERIES"
for over in tcp udp; do
    if ! python3 bench/compare.py "$TMP/queries.list" "$M_PORT" meridian "$G_PORT" gdnsd $over; then
        if [ "$VERIFY" != warn ]; then
            echo "answers differ: not timing (VERIFY=warn to time anyway)" >&2
            exit 1
        fi
        echo "answers differ; VERIFY=warn: timing anyway"
    fi
done

HZ=$(getconf CLK_TCK)
# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# median_spread: reads numbers on stdin, prints "median min-max".
median_spread() {
    sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) {print "- -"; exit}
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%s %s-%s\n", m, v[1], v[NR]}'
}
