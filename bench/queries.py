#!/usr/bin/env python3
"""Writes the benchmark's query set.

Usage: queries.py OUT_BLOB OUT_LIST [COUNT]

OUT_BLOB is a dnsperf `-B` datafile (RFC 1035 §4.2.2 framing: a 2-byte length before each
message); dnsperf overwrites only the message ID. Binary input is what lets one file mix queries
with and without EDNS and with different EDNS Client Subnet options (dnsperf's `-E` sets one
option for a whole run).

OUT_LIST has one line per distinct query, `name type ecs edns` (`ecs` is `-` or `addr/prefix`,
`edns` is 1 or 0), for run.sh to check both servers' answers with dig before timing.

The mix (weights below) is what a GTM sees: mostly A/AAAA for service names, half of them with
ECS from resolvers that send it, the rest static records and negative answers. The same seed
always gives the same file.
"""

import random
import struct
import sys

from benchlib import query_wire

# (name, type, ecs or None, edns, weight). Mixed case on some names: resolvers using 0x20
# randomisation send it, and both servers must echo it.
DYNAMIC = []
for name in ["api.example.net", "geo.example.net", "API.Example.NET", "gEo.eXample.net"]:
    for qtype in ["A", "AAAA"]:
        DYNAMIC.append((name, qtype, None, True, 3))  # the resolver's own address
        DYNAMIC.append((name, qtype, None, False, 1))  # no EDNS at all
        for ecs in [
            "192.0.2.0/24",  # US (New York)
            "198.51.100.0/24",  # DE (Berlin)
            "203.0.113.0/24",  # JP (Tokyo)
            "90.12.0.0/16",  # FR
            "177.40.0.0/16",  # BR
            "41.0.0.0/16",  # ZA
            "1.120.0.0/13",  # AU
            "10.20.1.0/24",  # [nets] override -> eu-west
            "10.99.0.0/16",  # private: no location
            "2001:db8:1::/48",  # DE
            "2400:4000::/32",  # JP
            "2804:14c::/32",  # BR
        ]:
            DYNAMIC.append((name, qtype, ecs, True, 1))

STATIC = [
    ("example.net", "SOA", None, True, 3),
    ("example.net", "NS", None, True, 3),
    ("example.net", "MX", None, True, 2),
    ("example.net", "TXT", None, True, 2),
    ("Example.Net", "A", None, True, 2),
    ("example.net", "AAAA", None, False, 2),
    ("ns1.example.net", "A", None, True, 3),
    ("ns1.example.net", "AAAA", None, True, 2),
    ("mail.example.net", "A", None, True, 2),
    ("_sip._udp.example.net", "SRV", None, True, 1),
    ("www.example.net", "A", None, True, 3),  # CNAME to a service, chased
    ("docs.example.net", "AAAA", "198.51.100.0/24", True, 1),  # two CNAMEs, then a service
    ("nope.example.net", "A", None, True, 3),  # NXDOMAIN
    ("b.example.net", "TXT", None, True, 1),  # empty non-terminal: NODATA
    ("mail.example.net", "TXT", None, True, 2),  # NODATA
    ("api.example.net", "TXT", None, True, 1),  # service name, other type: NODATA
    ("host.user.example.net", "TXT", None, True, 2),  # wildcard
    ("lab.example.net", "A", None, True, 1),  # referral
]

def main():
    blob_path, list_path = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    specs = DYNAMIC + STATIC
    rng = random.Random(6)
    picks = rng.choices(specs, weights=[s[4] for s in specs], k=count)
    with open(blob_path, "wb") as f:
        for name, qtype, ecs, edns, _ in picks:
            m = query_wire(name, qtype, qid=0, edns=edns, ecs=ecs)  # RD clear: authoritative
            f.write(struct.pack(">H", len(m)) + m)
    with open(list_path, "w") as f:
        for name, qtype, ecs, edns, _ in specs:
            f.write(f"{name} {qtype} {ecs or '-'} {int(edns)}\n")
    dynamic = sum(1 for p in picks if p in DYNAMIC)
    with_ecs = sum(1 for p in picks if p[2])
    print(
        f"queries: {count} ({len(specs)} distinct): {100 * dynamic // count}% service names, "
        f"{100 * with_ecs // count}% with ECS"
    )


if __name__ == "__main__":
    main()
