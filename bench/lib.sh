# Pieces every bench/*.sh script shares (sourced, not run): the repository root as the working
# directory, installing missing Debian packages, building Meridian, a temp dir and the processes
# a script starts (stopped by pid and removed on exit), a free loopback port, waiting for a log
# line.
#
# Sets: ROOT (and cds there). Defines: own_session, install_missing, need_dnspython,
# build_meridian, bench_tmp, add_pid, free_port, wait_for.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# own_session "$@" (first thing after sourcing, before any server starts): with
# kernel.sched_autogroup_enabled=1 the CPU is shared between sessions first and nice only orders
# the threads inside one session, so `nice -n -5` alone does not put a bench ahead of a build
# started in another session (measured: a niced rustc in another session kept a core from the
# bench; bench/README.md, latency wave 5). With AUTOGROUP_NICE (default -20 as root, else unset;
# "" to leave alone) the calling script re-runs itself in a session of its own (setsid) and gives
# that session's autogroup this niceness; the servers and the clients are all in it, so it
# favours neither.
own_session() {
    if [ "$(id -u)" -eq 0 ]; then AUTOGROUP_NICE=${AUTOGROUP_NICE--20}; fi
    if [ -n "${AUTOGROUP_NICE:-}" ] && [ -z "${BENCH_SESSION:-}" ] &&
        [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ]; then
        BENCH_SESSION=1 exec setsid -w "$ROOT/bench/$(basename "$0")" "$@"
    fi
    if [ -n "${BENCH_SESSION:-}" ] && [ -n "${AUTOGROUP_NICE:-}" ]; then
        echo "$AUTOGROUP_NICE" >/proc/self/autogroup
    fi
}

# install_missing PACKAGE...: installs the packages named (none: does nothing).
install_missing() {
    (($#)) || return 0
    echo "installing: $*"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$@"
}

# need_dnspython: makes `import dns` work for the `python3` on PATH. Debian's package serves
# Debian's python3 only; where PATH has another (pyenv's, a venv's), dnspython comes from PyPI.
need_dnspython() {
    python3 -c 'import dns.message' 2>/dev/null && return 0
    if [ "$(command -v python3)" = /usr/bin/python3 ]; then
        install_missing python3-dnspython
    else
        echo "installing: dnspython (PyPI, for $(command -v python3))"
        python3 -m pip install --quiet dnspython
    fi
    python3 -c 'import dns.message' || { echo "dnspython cannot be imported by python3" >&2; return 1; }
}

# build_meridian [CARGO ARGS...]: sets MERIDIAN_BIN to this tree's release build, unless it is
# already set (a prebuilt binary to time, e.g. an older commit's).
build_meridian() {
    if [ -z "${MERIDIAN_BIN:-}" ]; then
        cargo build --release --locked --quiet "$@"
        MERIDIAN_BIN=./target/release/meridian
    fi
}

# bench_tmp PREFIX: makes TMP and arranges that on exit every pid given to add_pid is stopped
# and TMP is removed.
PIDS=()
bench_tmp() {
    TMP=$(mktemp -d -t "$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
add_pid() { PIDS+=("$1"); }
bench_cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}

free_port() {
    # A port free for both UDP and TCP on 127.0.0.1.
    python3 - <<'EOF'
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
EOF
}

# wait_for FILE PATTERN WHAT [TRIES]: waits (TRIES x 0.1 s, 100 by default) for PATTERN in FILE;
# otherwise prints FILE and exits.
wait_for() {
    for _ in $(seq "${4:-100}"); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$3 did not start:" >&2
    cat "$1" >&2
    exit 1
}
