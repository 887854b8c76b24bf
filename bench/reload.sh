#!/usr/bin/env bash
# Reloads at full load (issue 18 item 4): 10 reloads (SIGHUP and POST /reload) per run while
# dnsperf runs at full speed and a checker compares answers. Knobs: see bench/reload.py.
#
#   bench/reload.sh                     # 4 rounds (steady, reload) x 20 s, bench/meridian.toml
#   SIZE=large bench/reload.sh          # the 10,000-service / 100,000-record config of scale.py
#
# Installs what is missing, builds Meridian (release, --locked; MERIDIAN_BIN: a prebuilt binary
# instead), runs bench/reload.py, which stops what it started (by pid) and removes its temp dir.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
own_session "$@"
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
install_missing "${missing[@]}"
need_dnspython
build_meridian --bin meridian
exec python3 bench/reload.py "$MERIDIAN_BIN"
