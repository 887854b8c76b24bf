#!/usr/bin/env bash
# UDP cost of [rate_limit] (nobody limited) and of ECS on every query against the plain figure,
# interleaved rounds (issue 18 item 5). Knobs: see bench/overhead.py.
#
#   bench/overhead.sh                   # 7 rounds x 8 s per run (plain, rrl, ecs)
#
# Installs what is missing, builds Meridian (release, --locked; MERIDIAN_BIN: a prebuilt binary
# instead), runs bench/overhead.py, which stops what it started (by pid) and removes its temp dir.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
own_session "$@"
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
install_missing "${missing[@]}"
need_dnspython
build_meridian --bin meridian
exec python3 bench/overhead.py "$MERIDIAN_BIN"
