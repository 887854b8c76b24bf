#!/usr/bin/env python3
"""Cost of `[rate_limit]` (nobody limited) and of ECS on every query, over UDP (issue 18 item 5).

Usage: overhead.py MERIDIAN_BIN        (bench/overhead.sh builds and runs this)

Two Meridian processes on bench/meridian.toml: "plain" as it is, "rrl" with `[rate_limit]
responses_per_second = 100000000` (every response goes through the shared limiter; a rate
nothing reaches, so nobody is limited: checked afterwards in /metrics). Two query files drawn
from the query mix of bench/queries.py with one seed (the same names and types in the same
order): "plain" without any ECS option (EDNS as in the mix), "ecs" with an ECS option on every
query (EDNS added where the mix had none), subnets from the mix's list. Three runs per round, the
order rotating per round:

  plain: plain server, plain queries    rrl: rrl server, plain queries    ecs: plain server, ecs queries

Reported per round: queries/s, lost, server CPU seconds, queries per CPU-second, and the ratios
rrl/plain and ecs/plain of queries per CPU-second (the goal: both within 5 %, i.e. >= 0.95).
Knobs (environment): ROUNDS (7), DURATION (8).
"""

import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import queries as qmix  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNETS = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "90.12.0.0/16", "177.40.0.0/16",
           "41.0.0.0/16", "1.120.0.0/13", "10.20.1.0/24", "10.99.0.0/16", "2001:db8:1::/48",
           "2400:4000::/32", "2804:14c::/32"]


def write_blobs(tmp, count=20000):
    specs = qmix.DYNAMIC + qmix.STATIC
    rng = random.Random(18)
    picks = rng.choices(specs, weights=[s[4] for s in specs], k=count)
    with open(os.path.join(tmp, "plain.blob"), "wb") as p, open(os.path.join(tmp, "ecs.blob"), "wb") as e:
        for name, qtype, _ecs, edns, _ in picks:
            m = bl.query_wire(name, qtype, qid=0, edns=edns)
            p.write(len(m).to_bytes(2, "big") + m)
            m = bl.query_wire(name, qtype, qid=0, edns=True, ecs=rng.choice(SUBNETS))
            e.write(len(m).to_bytes(2, "big") + m)
    return os.path.join(tmp, "plain.blob"), os.path.join(tmp, "ecs.blob")


def start(meridian, tmp, label, extra):
    with open(os.path.join(ROOT, "bench", "meridian.toml")) as f:
        text = f.read().replace('"../', f'"{ROOT}/')
    text = text.replace('admin_listen = ""', 'admin_listen = "127.0.0.1:0"')
    cfg = os.path.join(tmp, f"{label}.toml")
    with open(cfg, "w") as f:
        f.write(text + extra)
    log = os.path.join(tmp, f"{label}.log")
    p, port, admin = bl.start_meridian(meridian, cfg, log)
    bl.time_to_answer(port, bl.query_wire("api.example.net", "A"), proc=p)
    deadline = time.monotonic() + 120
    while "ecs scope maps ready" not in open(log).read():
        if time.monotonic() > deadline:
            raise SystemExit(f"{label}: no scope maps after 120 s")
        time.sleep(0.05)
    return p.pid, port, admin


def limited(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^meridian_dns_rate_limited_total\{[^}]*\} (\S+)', text, re.M))


def main():
    meridian = sys.argv[1]
    rounds = int(os.environ.get("ROUNDS", 7))
    duration = int(os.environ.get("DURATION", 8))
    tmp = tempfile.mkdtemp(prefix="meridian-overhead.")
    try:
        plain_blob, ecs_blob = write_blobs(tmp)
        servers = {
            "plain": start(meridian, tmp, "plain", ""),
            "rrl": start(meridian, tmp, "rrl", "\n[rate_limit]\nresponses_per_second = 100000000\n"),
        }
        runs = {"plain": ("plain", plain_blob), "rrl": ("rrl", plain_blob), "ecs": ("plain", ecs_blob)}
        names = list(runs)
        print(f"{rounds} rounds x {duration} s per run; dnsperf -B -c 8 -T 1 -q 200; {bl.uptime()}")
        res = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % 3:] + names[:r % 3]
            for n in order:
                server, blob = runs[n]
                pid, port, _ = servers[server]
                res[n].append(bl.timed_run(pid, blob, port, duration))
            line = " | ".join(f"{n} {res[n][-1][0]:8.0f} q/s lost {res[n][-1][1]} {res[n][-1][3]:8.0f} q/CPU-s"
                              for n in names)
            print(f"round {r + 1} ({' '.join(order)}): {line}; {bl.uptime()}")
        print()
        print("| round | plain q/s | q/CPU-s | rrl q/s | q/CPU-s | ecs q/s | q/CPU-s | rrl/plain | ecs/plain |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        rr = [b[3] / a[3] for a, b in zip(res["plain"], res["rrl"])]
        er = [b[3] / a[3] for a, b in zip(res["plain"], res["ecs"])]
        for i in range(rounds):
            p, l, e = res["plain"][i], res["rrl"][i], res["ecs"][i]
            print(f"| {i + 1} | {p[0]:,.0f} | {p[3]:,.0f} | {l[0]:,.0f} | {l[3]:,.0f} | {e[0]:,.0f} | {e[3]:,.0f} "
                  f"| {rr[i]:.3f} | {er[i]:.3f} |")
        med = {n: (bl.median([x[0] for x in res[n]]), bl.median([x[3] for x in res[n]])) for n in names}
        print(f"| median | {med['plain'][0]:,.0f} | {med['plain'][1]:,.0f} | {med['rrl'][0]:,.0f} | "
              f"{med['rrl'][1]:,.0f} | {med['ecs'][0]:,.0f} | {med['ecs'][1]:,.0f} | **{bl.median(rr):.3f}** "
              f"| **{bl.median(er):.3f}** |")
        print(f"\nspread of the ratios: rrl/plain {bl.spread(rr)}, ecs/plain {bl.spread(er)}")
        print(f"lost: plain {sum(x[1] for x in res['plain'])}, rrl {sum(x[1] for x in res['rrl'])}, "
              f"ecs {sum(x[1] for x in res['ecs'])}")
        n = limited(servers["rrl"][2])
        print(f"responses held back by the rate limiter: {n:.0f}")
        if n:
            raise SystemExit("the rate limiter limited someone: raise responses_per_second")
        print(f"uptime at the end: {bl.uptime()}")
    finally:
        bl.stop_all()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
