#!/usr/bin/env bash
# Regenerates tests/fuzz/seeds.bin, the seed corpus of the DNS fuzz test (src/dns/fuzz.rs):
# real queries, in RFC 1035 §4.2.2 framing (a 2-byte length before each message).
#
#   tests/fuzz/seeds.sh
#
# Two sources, both deterministic enough to diff:
# - the benchmark's query mix (bench/queries.py: service names with and without EDNS, ECS from
#   many networks, 0x20 mixed case, static records, NXDOMAIN, NODATA, referrals, ANY), one copy
#   of each distinct message;
# - the queries dig and kdig actually send (cookies, NSID, padding, DO, +norec, TCP-style
#   options, CH class, IXFR with an SOA...), captured by a UDP listener on 127.0.0.1 that answers
#   nothing (the tools time out after one try).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/tests/fuzz/seeds.bin"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

python3 "$ROOT/bench/queries.py" "$TMP/bench.blob" "$TMP/bench.list" 2000 >/dev/null

python3 - "$TMP/capture.blob" <<'PY' &
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
open(sys.argv[1] + ".port", "w").write(str(s.getsockname()[1]))
s.settimeout(5)
with open(sys.argv[1], "wb") as f:
    while True:
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            break
        f.write(struct.pack("!H", len(data)) + data)
        f.flush()
PY
LISTENER=$!
while [ ! -s "$TMP/capture.blob.port" ]; do sleep 0.1; done
PORT=$(cat "$TMP/capture.blob.port")
DIG=(dig @127.0.0.1 -p "$PORT" +tries=1 +timeout=1)
KDIG=(kdig @127.0.0.1 -p "$PORT" +retry=0 +timeout=1)
{
  "${DIG[@]}" api.example.net A
  "${DIG[@]}" api.example.net AAAA +subnet=192.0.2.0/24
  "${DIG[@]}" geo.example.net A +subnet=2001:db8::/48 +nsid
  "${DIG[@]}" example.net SOA +norec +nocookie
  "${DIG[@]}" example.net ANY +dnssec
  "${DIG[@]}" example.net NS +noedns
  "${DIG[@]}" www.example.net CNAME +cookie=0123456789abcdef
  "${DIG[@]}" id.server CH TXT
  "${DIG[@]}" example.net IXFR=1
  "${DIG[@]}" example.net A +edns=1 +ednsflags=0x80 +ednsopt=65001:abcd
  "${DIG[@]}" sub.example.net DS +cd +ad
  "${DIG[@]}" _sip._udp.example.net SRV +bufsize=512
  "${DIG[@]}" nope.example.net AAAA +header-only
  "${DIG[@]}" example.net NOTIFY +opcode=4 || true
  "${DIG[@]}" example.net SOA +opcode=5 || true
  "${KDIG[@]}" api.example.net A +subnet=198.51.100.0/24 +nsid +padding=128
  "${KDIG[@]}" api.example.net AAAA +cookie +dnssec
  "${KDIG[@]}" example.net TXT +noedns
  "${KDIG[@]}" big.example.net TXT +bufsize=4096 +ednsopt=12:00
  "${KDIG[@]}" -y hmac-sha256:key:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= example.net SOA
} >/dev/null 2>&1 || true
wait "$LISTENER"

python3 - "$TMP/bench.blob" "$TMP/capture.blob" "$OUT" <<'PY'
import struct, sys
seen, out = set(), []
for path in sys.argv[1:3]:
    data = open(path, "rb").read()
    i = 0
    while i + 2 <= len(data):
        n = struct.unpack("!H", data[i:i + 2])[0]
        msg = data[i + 2:i + 2 + n]
        i += 2 + n
        key = msg[2:]  # the ID does not make a query different
        if key not in seen:
            seen.add(key)
            out.append(msg)
with open(sys.argv[3], "wb") as f:
    for m in out:
        f.write(struct.pack("!H", len(m)) + m)
print(f"{sys.argv[3]}: {len(out)} distinct queries")
PY
