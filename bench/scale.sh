#!/usr/bin/env bash
# Size: 10,000 services over 20 regions and 100,000 static records against a small config
# of the same shape (issue 18 item 2); gdnsd and knot with the same data. Knobs: see bench/scale.py.
#
#   bench/scale.sh                      # 5 rounds x 8 s per (server, queries, size)
#   ROUNDS=3 DURATION=5 PEERS=0 bench/scale.sh   # quicker, Meridian only
#
# Installs what is missing, builds Meridian (release, --locked; MERIDIAN_BIN: a prebuilt binary
# instead), runs bench/scale.py, which stops what it started (by pid) and removes its temp dir.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
own_session "$@"
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v gdnsd >/dev/null || missing+=(gdnsd)
command -v knotd >/dev/null || missing+=(knot)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
install_missing "${missing[@]}"
need_dnspython
build_meridian --bin meridian
exec python3 bench/scale.py run "$MERIDIAN_BIN"
