#!/usr/bin/env bash
# etcd traffic of a fleet of 3 instances x 1,000 TCP-probed targets (issue 10, item 5):
# writes per second to etcd in steady state, when 500 targets fail and recover, and when etcd
# itself is restarted. Everything on loopback; needs etcd (Debian: etcd-server) and python3.
#   bench/fleet.sh [path/to/meridian]     (default: target/release/meridian)
set -euo pipefail
ulimit -n 8192 2>/dev/null || ulimit -n 4096 || true
cd "$(dirname "$0")/.."
M=${1:-target/release/meridian}
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EC=$(port); EP=$(port); TP=$(port)
start_etcd() {
  etcd --name b --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$EC" \
    --advertise-client-urls "http://127.0.0.1:$EC" --listen-peer-urls "http://127.0.0.1:$EP" \
    --initial-advertise-peer-urls "http://127.0.0.1:$EP" --initial-cluster "b=http://127.0.0.1:$EP" \
    --log-level error --logger zap >/dev/null 2>&1 &
  ETCD=$!; PIDS+=("$ETCD")
  until curl -sf -X POST "http://127.0.0.1:$EC/v3/kv/range" -d '{"key":"AA=="}' >/dev/null; do sleep 0.1; done
}
# etcd's own counters of writes: puts + deletes (mvcc), and lease keepalives are not writes.
etcd_writes() {
  curl -s "http://127.0.0.1:$EC/metrics" | awk '/^etcd_mvcc_(put|delete)_total /{s+=$2} END{print s+0}'
}
# 1,000 TCP listeners on 127.1.x.y:$TP; `fail N` in $W/fail makes the first N refuse.
cat > "$W/targets.py" <<'PY'
import os, resource, selectors, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, flag = int(sys.argv[1]), sys.argv[2]
addrs = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(1000)]
sel, socks = selectors.DefaultSelector(), {}
def up(a):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, port)); s.listen(256); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ); socks[a] = s
def down(a):
    s = socks.pop(a); sel.unregister(s); s.close()
for a in addrs: up(a)
failing, last = 0, 0.0
while True:
    for key, _ in sel.select(0.1):
        try:
            while True:
                c, _ = key.fileobj.accept(); c.close()
        except (BlockingIOError, OSError):
            pass
    if time.monotonic() - last > 0.2:
        last = time.monotonic()
        want = int(open(flag).read().strip() or 0) if os.path.exists(flag) else 0
        for i, a in enumerate(addrs):
            if i < want and a in socks: down(a)
            elif i >= want and a not in socks: up(a)
PY
python3 "$W/targets.py" "$TP" "$W/fail" & PIDS+=($!)
start_etcd
ADDRS=$(python3 -c 'print(", ".join(f"\"127.1.{i // 250}.{i % 250 + 1}\"" for i in range(1000)))')
for n in 1 2 3; do
  mkdir -p "$W/ns$n"
  cat > "$W/ns$n/m.toml" <<TOML
[server]
dns_listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
state_file = "state.json"
[[zone]]
origin = "example.net."
file = "$PWD/zones/example.net.zone"
[region.r]
latitude = 0
longitude = 0
[check.t]
kind = "tcp"
port = $TP
interval = "2s"
timeout = "1s"
rise = 2
fall = 3
[[service]]
name = "api.example.net."
policy = "all"
max_answers = 8
check = "t"
endpoints = [{ region = "r", addresses = [$ADDRS] }]
[cluster]
store = "etcd"
endpoints = ["http://127.0.0.1:$EC"]
prefix = "/meridian/bench"
instance = "ns$n"
lease_ttl = "10s"
TOML
  MERIDIAN_LOG=warn "$M" serve --config "$W/ns$n/m.toml" 2>"$W/ns$n/log" & PIDS+=($!)
done
sleep 15   # first probe round and its 1,000 first votes per instance
window() { # name seconds
  local a b; a=$(etcd_writes); sleep "$2"; b=$(etcd_writes)
  python3 -c "print(f'$1: {$b - $a} etcd writes in $2 s = {($b - $a) / $2:.2f} writes/s')"
}
echo "3 instances x 1000 targets, tcp checks every 2 s (fall 3, rise 2), lease_ttl 10 s"
window "steady state" 60
echo 500 > "$W/fail"; window "500 targets fail (60 s from the failure)" 60
echo 0 > "$W/fail"; window "500 targets recover (60 s)" 60
kill "$ETCD"; wait "$ETCD" 2>/dev/null || true; sleep 20; start_etcd
window "etcd back after 20 s down (60 s from its return)" 60
