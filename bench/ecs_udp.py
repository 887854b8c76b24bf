#!/usr/bin/env python3
"""UDP throughput with ECS on every query: this Meridian against an older build; run by
bench/geo.sh when BASE is set (issue 13: the widest-scope lookup must cost no queries per
CPU-second).

Usage: ecs_udp.py OLD_MERIDIAN NEW_MERIDIAN DB CLIENTS TMPDIR ROUNDS DURATION

Both servers get the same config (geo.py's: 8 regions, two `nearest` services, one `geo`) on the
same database, 2 UDP workers each. The query file asks A (IPv4 subnets) or AAAA (IPv6 subnets)
for api, cdn or geo, every query with an ECS option for one of the client subnets. The new
server is timed only once its scope maps are built. Each round drives both servers in turn
(the order alternates) with dnsperf for DURATION seconds and reads their CPU time from
/proc/PID/stat.

Data: IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0.
"""

import ipaddress
import os
import random
import statistics
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import geo  # noqa: E402


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dnsperf(blob, port, duration):
    out = subprocess.run(
        ["dnsperf", "-B", "-d", blob, "-s", "127.0.0.1", "-p", str(port), "-l", str(duration),
         "-c", "8", "-T", "1", "-q", "200"],
        capture_output=True, text=True, check=True,
    ).stdout
    qps = float(next(l.split()[3] for l in out.splitlines() if "Queries per second:" in l))
    lost = int(next(l.split()[2] for l in out.splitlines() if "Queries lost:" in l))
    sent = int(next(l.split()[2] for l in out.splitlines() if "Queries sent:" in l))
    return qps, lost, sent


def main():
    old, new, db, clients_path, tmp, rounds, duration = sys.argv[1:8]
    rounds, duration = int(rounds), int(duration)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clients = [l.strip() for l in open(clients_path) if l.strip()]
    rng = random.Random(13)
    blob = os.path.join(tmp, "ecs.blob")
    with open(blob, "wb") as f:
        for _ in range(20000):
            c = rng.choice(clients)
            name = rng.choice(["api.example.net", "cdn.example.net", "geo.example.net"])
            qtype = 1 if ipaddress.ip_network(c).version == 4 else 28
            m = geo.query(name, qtype, c)
            f.write(struct.pack(">H", len(m)) + m)
    os.environ["MERIDIAN_LOG"] = "warn,meridian=info"
    servers = {}
    for label, binary in (("old", old), ("new", new)):
        port = geo.free_port()
        cfg = os.path.join(tmp, f"ecs-{label}.toml")
        text = geo.meridian_config(root, db, port, 0).replace('admin_listen = "127.0.0.1:0"', 'admin_listen = ""')
        with open(cfg, "w") as f:
            f.write(text)
        log_path = os.path.join(tmp, f"ecs-{label}.log")
        with open(log_path, "w") as log:
            p, _ = geo.first_answer([binary, "serve", "--config", cfg], port, log=log)
        if label == "new":
            geo.wait_log(log_path, r"ecs scope maps ready", 600)
        servers[label] = (p, port)
    print(f"UDP, ECS on every query: {rounds} rounds x {duration} s per server")
    print("| round | old qps | old q/CPU-s | new qps | new q/CPU-s | q/CPU-s new/old |")
    print("|------:|--------:|------------:|--------:|------------:|----------------:|")
    ratios, lost_total = [], {"old": 0, "new": 0}
    per = {"old": [], "new": []}
    for r in range(rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        got = {}
        for label in order:
            p, port = servers[label]
            c0 = cpu_seconds(p.pid)
            qps, lost, sent = dnsperf(blob, port, duration)
            cpu = cpu_seconds(p.pid) - c0
            got[label] = (qps, (sent - lost) / cpu if cpu else float("nan"))
            lost_total[label] += lost
            per[label].append(got[label])
        ratio = got["new"][1] / got["old"][1]
        ratios.append(ratio)
        print(
            f"| {r + 1} | {got['old'][0]:,.0f} | {got['old'][1]:,.0f} | {got['new'][0]:,.0f} | "
            f"{got['new'][1]:,.0f} | {ratio:.3f} |"
        )
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in per.items()}
    print(
        f"| median | {med['old'][0]:,.0f} | {med['old'][1]:,.0f} | {med['new'][0]:,.0f} | "
        f"{med['new'][1]:,.0f} | **{statistics.median(ratios):.3f}** |"
    )
    print(f"lost queries: old {lost_total['old']}, new {lost_total['new']}")
    for p, _ in servers.values():
        geo.stop(p)


if __name__ == "__main__":
    main()
