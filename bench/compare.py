#!/usr/bin/env python3
"""Checks that two DNS servers give the same answers to every query of a list (queries.py).

Usage: compare.py LIST PORT_A NAME_A PORT_B NAME_B [tcp]

Each query is sent with dig to 127.0.0.1 on both ports, with the same options (no RD, EDNS with
a 1232-byte buffer and the ECS option of the line, or no EDNS). Compared: the RCODE, the AA
flag, and the answer and authority sections as sorted sets of (owner name lowercased, type,
RDATA, with domain names inside RDATA lowercased; TXT kept as is). Not compared: TTLs (gdnsd
clamps the SOA TTL to the SOA MINIMUM and both may differ on negative TTLs), the additional
section (servers differ on which glue/addresses they add), the ECS scope, EDNS buffer sizes,
cookies and the order of records. Exits 1 on any difference and prints each one. With `tcp`
last, dig asks over TCP.
"""

import subprocess
import sys


def ask(port, name, qtype, ecs, edns, tcp=False):
    cmd = ["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+norec", "+nocookie",
           "+noall", "+comments", "+answer", "+authority", "+tries=2", "+time=2"]
    if tcp:
        cmd.append("+tcp")
    if edns == "0":
        cmd.append("+noedns")
    else:
        cmd.append("+bufsize=1232")
        if ecs != "-":
            cmd.append(f"+subnet={ecs}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rcode, aa, section = None, None, None
    sections = {"ANSWER": set(), "AUTHORITY": set()}
    for line in out.splitlines():
        if "status:" in line:
            rcode = line.split("status:")[1].split(",")[0].strip()
        elif line.startswith(";; flags:"):
            aa = " aa" in line.split(";")[2]
        elif line.startswith(";; ") and line.rstrip().endswith("SECTION:"):
            section = line[3:].split()[0]
        elif line and not line.startswith(";") and section in sections:
            f = line.split(None, 4)
            if len(f) < 5:
                continue
            owner, _ttl, _class, rtype, rdata = f
            if rtype != "TXT":
                rdata = rdata.lower()
            sections[section].add((owner.lower(), rtype, rdata))
    return rcode, aa, sections["ANSWER"], sections["AUTHORITY"]


def main():
    path, port_a, name_a, port_b, name_b = sys.argv[1:6]
    tcp = sys.argv[6:7] == ["tcp"]
    bad = 0
    total = 0
    for line in open(path):
        name, qtype, ecs, edns = line.split()
        total += 1
        a = ask(port_a, name, qtype, ecs, edns, tcp)
        b = ask(port_b, name, qtype, ecs, edns, tcp)
        if a[0] is None or b[0] is None or a != b:
            bad += 1
            q = f"{name} {qtype} ecs={ecs} edns={edns}"
            print(f"MISMATCH {q}")
            for label, r in ((name_a, a), (name_b, b)):
                print(f"  {label:8} rcode={r[0]} aa={r[1]}")
                for rr in sorted(r[2]):
                    print(f"  {label:8}   answer    {' '.join(rr)}")
                for rr in sorted(r[3]):
                    print(f"  {label:8}   authority {' '.join(rr)}")
    over = " over TCP" if tcp else ""
    print(f"answers compared{over}: {total} distinct queries, {bad} mismatches")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
