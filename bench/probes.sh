#!/usr/bin/env bash
# The probe benchmark (issue #17): Meridian probing 10,000 loopback targets at a 1 s interval,
# HTTP and TCP separately, plus withdrawal time and flapping at random probe loss.
#
#   bench/probes.sh                          # everything (about 20 minutes)
#   TARGETS=2000 WINDOW=10 bench/probes.sh  # smaller
#   ONLY=load bench/probes.sh                # one part: load | floor | withdraw | flap | burst
#
# Knobs (environment): TARGETS (10000), WINDOW seconds of measuring (20), FLAP_TARGETS
# (1000), FLAP_SECONDS per variant (300), LOSS (0.2), WITHDRAW_TARGETS (200), ROUNDS of the
# load runs, HTTP and TCP interleaved (1), PROBE_THREADS (server.probe_threads; unset: the
# default), BIN (the meridian binary; default target/release/meridian).
#
# What it does: builds meridian and examples/probe_bench.rs in release mode; raises the
# open-file limit (10,000 kept connections need 10,000 descriptors on each side); then
# examples/probe_bench.rs starts a farm of backends on 127.1.x.y (one port, one listener per
# address, one tokio thread), writes a config of TARGETS/5 services x 5 regions (one address
# each, interval 1s, timeout 500ms, rise 2, fall 2), starts meridian and measures:
#   load: time to /ready and to the steady probe rate (95 % of TARGETS/s over the last second),
#         DNS-over-TCP latency during the start (a new connection per query every 10 ms), then
#         over WINDOW: CPU as a share of one core (utime+stime from /proc), RSS and peak RSS,
#         probes/s achieved (served by the farm, and counted by meridian_probes_total),
#         connections opened, false transitions to down, own probe errors;
#   floor: the same TCP checks done by a bare loop of system calls in one thread (socket,
#         connect, poll, close): the kernel's cost of a TCP check here, to compare with;
#   withdraw: every backend stops answering at once; time until each target is withdrawn;
#   flap: LOSS of HTTP probes fail at random (503); transitions to down per target per hour,
#         with fast_interval = interval (as before) and with the default interval/4;
#   burst: TARGETS healthy HTTP targets with a webhook, then every probe fails at once: the
#         transitions metric and the webhook receiver must each count every target exactly
#         once (up at the start, down in the burst).
# It stops what it started (the farm is in-process; meridian is killed by pid).
set -euo pipefail

TARGETS=${TARGETS:-10000}
WINDOW=${WINDOW:-20}
FLAP_TARGETS=${FLAP_TARGETS:-1000}
FLAP_SECONDS=${FLAP_SECONDS:-300}
LOSS=${LOSS:-0.2}
WITHDRAW_TARGETS=${WITHDRAW_TARGETS:-200}
ONLY=${ONLY:-all}
ROUNDS=${ROUNDS:-1}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

cargo build --release --locked --bin meridian --example probe_bench >&2
BIN=${BIN:-target/release/meridian}
BENCH=target/release/examples/probe_bench

# 10,000 targets: one listener and one kept connection per target in the farm, one
# connection per target in meridian. Raise the soft limit as far as the hard one allows
# (and the hard one too where we may).
ulimit -Hn 200000 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
echo "open-file limit: $(ulimit -n); cores: $(nproc)" >&2

uptime >&2
if [[ $ONLY == all || $ONLY == load ]]; then
    for _ in $(seq "$ROUNDS"); do
        "$BENCH" load "$BIN" http "$TARGETS" "$WINDOW"
        "$BENCH" load "$BIN" tcp "$TARGETS" "$WINDOW"
    done
fi
if [[ $ONLY == all || $ONLY == floor ]]; then
    "$BENCH" floor - "$TARGETS" "$WINDOW"
fi
if [[ $ONLY == all || $ONLY == withdraw ]]; then
    "$BENCH" withdraw "$BIN" "$WITHDRAW_TARGETS"
fi
if [[ $ONLY == all || $ONLY == flap ]]; then
    "$BENCH" flap "$BIN" "$FLAP_TARGETS" "$FLAP_SECONDS" "$LOSS"
fi
if [[ $ONLY == all || $ONLY == burst ]]; then
    "$BENCH" burst "$BIN" "$TARGETS"
fi
