#!/usr/bin/env python3
"""Size benchmark (issue 18 item 2): a generated configuration of SERVICES dynamic names over
REGIONS regions and a zone of RECORDS static records, against a small one of the same shape.

Usage:
  scale.py gen DIR [SERVICES REGIONS RECORDS]   # only write the files (config, zone, peers)
  scale.py run MERIDIAN_BIN                     # the whole benchmark (bench/scale.sh runs this)

Generated per size into a temp dir (nothing is committed):
  meridian.toml  SERVICES services `sN.example.net.`, each with 4 endpoint regions (one of
                 GROUPS region sets; IPv4 and IPv6 address each), 70 % `nearest` and 30 % `geo`
                 (a continent map per region set with a DE override), no checks (as bench/run.sh)
  example.net.zone  SOA, NS and RECORDS static records (A, AAAA, TXT, MX, CNAME to hosts, SRV)
  gdnsd/         the same zone plus `DYNA geoip!sN` per service; one geoip map per region set
                 and policy (auto_dc_coords for nearest, the same continent map for geo)
  knot.conf      knotd serving the static zone alone (it has no dynamic names)
  mixed.blob     dnsperf -B: 77 % A/AAAA of service names chosen uniformly (60 % with ECS from
                 14 subnets, 10 % without EDNS), 23 % static (records chosen uniformly, 10 %
                 NXDOMAIN, 5 % NODATA)
  static.blob    the static part alone (what knot can answer)
  zipf.blob      the mix of mixed.blob with names drawn Zipf-like (weight 1/k^ZIPF_S, s = 1.0,
                 for the k-th of the names in a shuffled order): skewed as real traffic is
  *.list         a sample of distinct queries for compare.py

Run measures, for the small and the large configuration: `meridian check` time, spawn to first
answer (a service name over UDP; knot: a static name), RSS at first answer and once the ECS scope
maps are built, reload time (POST /reload round trip, and SIGHUP to the "configuration
reloaded" log line), then interleaved rounds of dnsperf at full speed against each server and
size (the order alternates per round), reporting queries per server CPU-second and the ratio
large/small per round. Knobs (environment): ROUNDS (5), DURATION (8), SERVICES (10000),
REGIONS (20), RECORDS (100000), RELOADS (5 of each kind), PEERS (1: also gdnsd and knot).
"""

import bisect
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMDB = os.path.join(ROOT, "geodata", "sample.mmdb")

# Twenty regions with the coordinates of a city near a cloud region.
REGIONS = [
    ("us-east", 39.0, -77.5), ("us-west", 45.6, -121.2), ("us-central", 41.3, -95.9),
    ("us-south", 32.8, -96.8), ("ca-central", 45.5, -73.6), ("sa-east", -23.5, -46.6),
    ("sa-west", -33.4, -70.6), ("eu-west", 53.3, -6.3), ("eu-central", 50.1, 8.7),
    ("eu-north", 59.3, 18.1), ("eu-south", 45.5, 9.2), ("uk-south", 51.5, -0.1),
    ("me-central", 25.3, 55.3), ("af-south", -33.9, 18.4), ("ap-south", 19.1, 72.9),
    ("ap-southeast", 1.35, 103.8), ("ap-northeast", 35.7, 139.7), ("ap-east", 22.3, 114.2),
    ("au-southeast", -33.9, 151.2), ("nz-north", -36.8, 174.8),
]
# Where each continent's clients are, for the `geo` maps (regions sorted by distance from here).
CONTINENTS = {"EU": (50.0, 10.0), "NA": (40.0, -95.0), "SA": (-15.0, -55.0),
              "AS": (30.0, 100.0), "AF": (0.0, 20.0), "OC": (-30.0, 145.0)}
GROUPS = 40
# The exponent of the skewed query file (zipf.blob): weight 1/k^s for the k-th name.
ZIPF_S = 1.0
ECS = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "90.12.0.0/16", "177.40.0.0/16",
       "41.0.0.0/16", "1.120.0.0/13", "126.10.0.0/16", "116.14.0.0/16", "24.200.0.0/16",
       "10.99.0.0/16", "2001:db8:1::/48", "2400:4000::/32", "2804:14c::/32"]


def km(a, b):
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 6371 * 2 * math.asin(min(1, math.sqrt(h)))


def gen(out, services, nregions, records, seed=18):
    """Writes one configuration and its peers' equivalents into `out`. Meridian listens on port 0
    (DNS and admin: the ports are read from its log); the peers' configs say @PORT@."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "gdnsd", "zones"), exist_ok=True)
    regions = REGIONS[:nregions]
    coords = {r: (la, lo) for r, la, lo in regions}
    per = min(4, nregions)
    groups = []
    for _ in range(min(GROUPS, max(1, services))):
        g = rng.sample([r for r, _, _ in regions], per)
        groups.append(sorted(g, key=[r for r, _, _ in regions].index))

    def geo_order(group, continent):
        return sorted(group, key=lambda r: km(coords[r], CONTINENTS[continent]))[:2]

    svc = []  # (name, group index, policy, [(region, v4, v6)])
    for i in range(services):
        gi = i % len(groups)
        policy = "geo" if i % 10 >= 7 else "nearest"
        eps = []
        for k, region in enumerate(groups[gi]):
            idx = i * 4 + k
            eps.append((region, f"100.{64 + idx // 65536}.{idx // 256 % 256}.{idx % 256}",
                        f"2001:db8:{i:x}::{k + 1}"))
        svc.append((f"s{i}", gi, policy, eps))

    # --- Meridian
    token = os.path.join(out, "admin.token")
    with open(token, "w") as f:
        f.write("scale-bench-token\n")
    m = ["# Generated by bench/scale.py: do not edit.", "[server]",
         'dns_listen = ["127.0.0.1:0"]', 'admin_listen = "127.0.0.1:0"',
         'admin_token_file = "admin.token"', f'geoip = "{MMDB}"', 'nsid = "meridian-bench"',
         "udp_workers = 2", 'watch_interval = "0s"', "",
         "[[zone]]", 'origin = "example.net."', 'file = "example.net.zone"', ""]
    for r, la, lo in regions:
        m += [f"[region.{r}]", f"latitude = {la}", f"longitude = {lo}"]
    for name, gi, policy, eps in svc:
        m += ["", "[[service]]", f'name = "{name}.example.net."', f'policy = "{policy}"', "ttl = 30"]
        if policy == "geo":
            g = groups[gi]
            entries = [f'"DE" = {json.dumps(geo_order(g, "EU")[::-1])}']
            entries += [f'"continent:{c}" = {json.dumps(geo_order(g, c))}' for c in CONTINENTS]
            entries.append(f'default = {json.dumps(g[:2])}')
            m.append("geo = { " + ", ".join(entries) + " }")
        m.append("endpoints = [")
        for region, v4, v6 in eps:
            m.append(f'  {{ region = "{region}", addresses = ["{v4}", "{v6}"] }},')
        m.append("]")
    with open(os.path.join(out, "meridian.toml"), "w") as f:
        f.write("\n".join(m) + "\n")

    # --- the static zone (Meridian and knot; gdnsd adds the DYNA records)
    zone = ["$ORIGIN example.net.", "$TTL 3600",
            "@ IN SOA ns1.example.net. hostmaster.example.net. 2026120101 7200 3600 1209600 300",
            "@ IN NS ns1.example.net.", "@ IN NS ns2.example.net.",
            "ns1 IN A 192.0.2.53", "ns2 IN A 198.51.100.53"]
    static = []  # (name, type) that exist
    nodata = []  # (name, type) that do not
    n = 0
    i = 0
    while n < records:
        h = f"h{i}"
        rows = [(h, "A", f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")]
        if i % 5 < 2:
            rows.append((h, "AAAA", f"2001:db8:ffff:{i // 65536:x}::{i % 65536:x}"))
        if i % 10 == 3:
            rows.append((h, "TXT", f'"host {i} v=spf1 -all"'))
        if i % 20 == 7:
            rows.append((h, "MX", f"10 h{i // 2}.example.net."))
        if i % 10 == 5:
            rows.append((f"c{i}", "CNAME", f"h{i // 2}.example.net."))
        if i % 50 == 9:
            rows.append((f"_sip._udp.h{i}", "SRV", f"10 5 5060 h{i}.example.net."))
        for owner, t, rdata in rows:
            if n >= records:
                break
            zone.append(f"{owner} IN {t} {rdata}")
            static.append((owner, "A" if t == "CNAME" else t))
            n += 1
        nodata.append((h, "TXT" if i % 10 != 3 else "SRV"))
        i += 1
    with open(os.path.join(out, "example.net.zone"), "w") as f:
        f.write("\n".join(zone) + "\n")

    # --- gdnsd: zone + DYNA, one map per (region set, policy)
    with open(os.path.join(out, "gdnsd", "zones", "example.net"), "w") as f:
        f.write("\n".join(zone) + "\n")
        for name, _, _, _ in svc:
            f.write(f"{name} 30 DYNA geoip!{name}\n")
    os.makedirs(os.path.join(out, "gdnsd", "run"), exist_ok=True)
    # Our own run_dir and state_dir: the default /run/gdnsd holds one instance's control socket.
    g = ["options => {", '  listen => [ "127.0.0.1:@PORT@" ]', "  udp_threads => 2",
         f'  run_dir => "{out}/gdnsd/run"', f'  state_dir => "{out}/gdnsd/run"',
         "  tcp_threads => 1", "  nsid_ascii => meridian-bench", "  experimental_no_chain => false",
         "}", "plugins => { geoip => {", "  maps => {"]
    for gi, grp in enumerate(groups):
        dcs = ", ".join(grp)
        g += [f"    near{gi} => {{", f'      geoip2_db => "{MMDB}"', f"      datacenters => [{dcs}]",
              "      auto_dc_coords => {"]
        g += [f"        {r} => [{coords[r][0]}, {coords[r][1]}]" for r in grp]
        g += ["      }", f"      auto_dc_limit => {len(grp)}", "    }"]
        g += [f"    geo{gi} => {{", f'      geoip2_db => "{MMDB}"', f"      datacenters => [{dcs}]",
              "      map => {"]
        for c in CONTINENTS:
            order = ", ".join(geo_order(grp, c))
            if c == "EU":
                de = ", ".join(geo_order(grp, "EU")[::-1])
                g.append(f"        EU => {{ DE => [{de}], default => [{order}] }}")
            else:
                g.append(f"        {c} => [{order}]")
        g += [f"        default => [{', '.join(grp[:2])}]", "      }", "    }"]
    g += ["  }", "  resources => {"]
    for name, gi, policy, eps in svc:
        mp = f"geo{gi}" if policy == "geo" else f"near{gi}"
        g.append(f"    {name} => {{ map => {mp}, dcmap => {{")
        for region, v4, v6 in eps:
            g.append(f'      {region} => {{ addrs_v4 => {v4}, addrs_v6 => "{v6}" }}')
        g.append("    }}")
    g += ["  }", "}}"]
    with open(os.path.join(out, "gdnsd", "config.in"), "w") as f:
        f.write("\n".join(g) + "\n")

    # --- knot: the static zone alone
    os.makedirs(os.path.join(out, "knot"), exist_ok=True)
    with open(os.path.join(out, "knot.conf.in"), "w") as f:
        f.write(f"""server:
    rundir: "{out}/knot"
    listen: 127.0.0.1@@PORT@
    udp-workers: 2
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{out}/knot"
template:
  - id: default
    storage: "{out}"
    journal-content: none
    zonefile-sync: -1
    zonefile-load: whole
    semantic-checks: off
zone:
  - domain: example.net
    file: "{out}/example.net.zone"
""")

    # --- queries
    def dyn_query():
        name, _, _, _ = rng.choice(svc)
        qtype = "A" if rng.random() < 0.6 else "AAAA"
        x = rng.random()
        if x < 0.6:
            return (f"{name}.example.net", qtype, rng.choice(ECS), True)
        if x < 0.7:
            return (f"{name}.example.net", qtype, None, False)
        return (f"{name}.example.net", qtype, None, True)

    def static_query():
        x = rng.random()
        if x < 0.10:
            return (f"nx{rng.randrange(10**9)}.example.net", "A", None, True)
        if x < 0.15:
            owner, t = rng.choice(nodata)
            return (f"{owner}.example.net", t, None, True)
        owner, t = rng.choice(static)
        return (f"{owner}.example.net", t, None, rng.random() < 0.9)

    def write(path, queries):
        with open(path + ".blob", "wb") as f:
            for q in queries:
                m = bl.query_wire(q[0], q[1], qid=0, edns=q[3], ecs=q[2])
                f.write(len(m).to_bytes(2, "big") + m)
        sample = list(dict.fromkeys(queries))[:200]
        with open(path + ".list", "w") as f:
            for name, qtype, ecs, edns in sample:
                f.write(f"{name} {qtype} {ecs or '-'} {int(edns)}\n")

    count = 100000
    write(os.path.join(out, "mixed"),
          [dyn_query() if rng.random() < 0.77 else static_query() for _ in range(count)])
    write(os.path.join(out, "static"), [static_query() for _ in range(count)])

    # The same mix with names drawn Zipf-like (the k-th most popular name with weight
    # 1/k^ZIPF_S, ranks shuffled): real traffic is skewed towards a few names, and the uniform
    # files above are the worst case for every server's caches.
    def zipf_choice(items):
        order = items[:]
        rng.shuffle(order)
        cum, total = [], 0.0
        for k in range(1, len(order) + 1):
            total += 1.0 / k ** ZIPF_S
            cum.append(total)
        return lambda: order[min(bisect.bisect(cum, rng.random() * total), len(order) - 1)]

    pick_svc, pick_static = zipf_choice(svc), zipf_choice(static)
    pick_nodata = zipf_choice(nodata)

    def zipf_query():
        if rng.random() < 0.77:
            name = pick_svc()[0]
            qtype = "A" if rng.random() < 0.6 else "AAAA"
            x = rng.random()
            if x < 0.6:
                return (f"{name}.example.net", qtype, rng.choice(ECS), True)
            return (f"{name}.example.net", qtype, None, x >= 0.7)
        x = rng.random()
        if x < 0.10:
            return (f"nx{rng.randrange(10**9)}.example.net", "A", None, True)
        if x < 0.15:
            owner, t = pick_nodata()
            return (f"{owner}.example.net", t, None, True)
        owner, t = pick_static()
        return (f"{owner}.example.net", t, None, rng.random() < 0.9)

    write(os.path.join(out, "zipf"), [zipf_query() for _ in range(count)])
    return {"services": services, "regions": nregions, "records": n, "groups": len(groups)}


# --- the run --------------------------------------------------------------------------------


def wait_log(path, text, timeout=300.0, count=1):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with open(path, errors="replace") as f:
            if f.read().count(text) >= count:
                return time.monotonic() - start
        time.sleep(0.005)
    raise RuntimeError(f"{path}: no {text!r} within {timeout} s")


def post_reload(admin_port, log=None):
    """Seconds until POST /reload answers; when the connection closes without an answer
    (the admin port closes a connection without progress for 30 s, even while a reload runs
    on a starved machine), until the reload's log line, and says so."""
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/reload", method="POST",
                                 headers={"Authorization": "Bearer scale-bench-token"})
    before = open(log).read().count("configuration reloaded") if log else 0
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            body = json.load(r)
        assert body.get("reloaded"), body
    except (ConnectionError, OSError) as e:
        if not log:
            raise
        print(f"     POST /reload: {e!r} after {time.monotonic() - t:.1f} s; waiting for the log line")
        wait_log(log, "configuration reloaded", count=before + 1)
    return time.monotonic() - t


def run(meridian):
    rounds = int(os.environ.get("ROUNDS", 5))
    duration = int(os.environ.get("DURATION", 8))
    reloads = int(os.environ.get("RELOADS", 5))
    peers = os.environ.get("PEERS", "1") == "1"
    sizes = {
        "small": (2, 4, 25),
        "large": (int(os.environ.get("SERVICES", 10000)), int(os.environ.get("REGIONS", 20)),
                  int(os.environ.get("RECORDS", 100000))),
    }
    tmp = tempfile.mkdtemp(prefix="meridian-scale.")
    print(f"uptime at start: {bl.uptime()}")
    servers = {}  # (server, size) -> (pid, port)
    figures = {}
    try:
        for size, (s, r, n) in sizes.items():
            d = os.path.join(tmp, size)
            os.makedirs(d)
            t = time.monotonic()
            info = gen(d, s, r, n)
            info["gen_s"] = time.monotonic() - t
            info["dir"] = d
            figures[size] = info
            print(f"{size}: {info['services']} services, {info['regions']} regions, "
                  f"{info['records']} static records, {info['groups']} region sets "
                  f"(generated in {info['gen_s']:.1f} s)")

        print("\n`meridian check` (3 runs each; wall seconds, and CPU seconds: user+sys):")
        for size, info in figures.items():
            ts, cs = [], []
            for _ in range(3):
                t = time.monotonic()
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run([meridian, "check", "--config", os.path.join(info["dir"], "meridian.toml")],
                               check=True, capture_output=True)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                ts.append(time.monotonic() - t)
                cs.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
            info["check_s"], info["check_cpu"] = bl.median(ts), bl.median(cs)
            print(f"  {size}: wall median {info['check_s']:.3f} s ({', '.join(f'{x:.3f}' for x in ts)}); "
                  f"CPU median {info['check_cpu']:.3f} s ({', '.join(f'{x:.3f}' for x in cs)})")

        print("\nstart-up (spawn to the first UDP answer for a service name; knot: a static name):")
        for size, info in figures.items():
            d = info["dir"]
            log = os.path.join(d, "meridian.log")
            q = bl.query_wire("s1.example.net", "A")
            t = time.monotonic()
            p, info["port"], info["admin"] = bl.start_meridian(meridian, os.path.join(d, "meridian.toml"), log)
            bl.time_to_answer(info["port"], q, proc=p)
            first = time.monotonic() - t
            first_cpu = bl.cpu_seconds(p.pid)
            rss_first = bl.memory_kib(p.pid)[0]
            wait_log(log, "ecs scope maps ready")
            maps_s = time.monotonic() - t
            time.sleep(0.5)
            rss, hwm = bl.memory_kib(p.pid)
            servers[("meridian", size)] = (p.pid, info["port"])
            info.update(first_s=first, rss_first=rss_first, maps_s=maps_s, rss=rss, hwm=hwm)
            print(f"  meridian {size}: first answer {first * 1000:.0f} ms ({first_cpu:.2f} CPU s), "
                  f"RSS {rss_first / 1024:.1f} MiB; "
                  f"scope maps ready at {maps_s:.2f} s; RSS then {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f})")
        if peers:
            for size, info in figures.items():
                d = info["dir"]

                def gdnsd_cmd(port, d=d):
                    with open(os.path.join(d, "gdnsd", "config.in")) as f:
                        text = f.read().replace("@PORT@", str(port))
                    with open(os.path.join(d, "gdnsd", "config"), "w") as f:
                        f.write(text)
                    return ["gdnsd", "-c", os.path.join(d, "gdnsd"), "start"]

                p, gport, first = bl.start_peer(gdnsd_cmd, os.path.join(d, "gdnsd.log"),
                                                bl.query_wire("s1.example.net", "A"))
                rss, hwm = bl.memory_kib(p.pid)
                servers[("gdnsd", size)] = (p.pid, gport)
                info.update(g_first_s=first, g_rss=rss)
                print(f"  gdnsd {size}: first answer {first * 1000:.0f} ms ({bl.cpu_seconds(p.pid):.2f} CPU s), "
                      f"RSS {rss / 1024:.1f} MiB")
            for size, info in figures.items():
                d = info["dir"]

                def knot_cmd(port, d=d):
                    with open(os.path.join(d, "knot.conf.in")) as f:
                        text = f.read().replace("@PORT@", str(port))
                    with open(os.path.join(d, "knot.conf"), "w") as f:
                        f.write(text)
                    return ["knotd", "-c", os.path.join(d, "knot.conf")]

                p, kport, first = bl.start_peer(knot_cmd, os.path.join(d, "knot.log"),
                                                bl.query_wire("h1.example.net", "A"))
                rss, hwm = bl.memory_kib(p.pid)
                servers[("knot", size)] = (p.pid, kport)
                info.update(k_first_s=first, k_rss=rss)
                print(f"  knot {size}: first answer {first * 1000:.0f} ms ({bl.cpu_seconds(p.pid):.2f} CPU s), "
                      f"RSS {rss / 1024:.1f} MiB")

        print("\nanswer check (bench/compare.py on a sample of distinct queries):")
        ok = True
        for size, info in figures.items():
            d = info["dir"]
            pairs = []
            if peers:
                pairs = [("mixed", "gdnsd"), ("zipf", "gdnsd"), ("static", "knot")]
            for qs, peer in pairs:
                r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"),
                                    os.path.join(d, qs + ".list"), str(servers[("meridian", size)][1]),
                                    "meridian", str(servers[(peer, size)][1]), peer],
                                   capture_output=True, text=True)
                lines = r.stdout.strip().splitlines()
                print(f"  {size} {qs} vs {peer}: {'same' if r.returncode == 0 else 'DIFFERENT'}"
                      f" ({lines[-1] if lines else ''})")
                if r.returncode != 0:
                    ok = False
                    print("\n".join(lines[:20]))
        if not ok and os.environ.get("VERIFY", "strict") != "warn":
            raise SystemExit("answers differ (VERIFY=warn to time anyway)")

        print(f"\nreload (Meridian; {reloads} x POST /reload, then {reloads} x SIGHUP), wall seconds:")
        for size, info in figures.items():
            d = info["dir"]
            pid = servers[("meridian", size)][0]
            log = os.path.join(d, "meridian.log")
            cpu0 = bl.cpu_seconds(pid)
            posts = [post_reload(info["admin"], log) for _ in range(reloads)]
            done = open(log).read().count("configuration reloaded")
            hups = []
            for k in range(reloads):
                t = time.monotonic()
                os.kill(pid, signal.SIGHUP)
                wait_log(log, "configuration reloaded", count=done + k + 1)
                hups.append(time.monotonic() - t)
            wait_log(log, "ecs scope maps ready", count=1 + 2 * reloads)
            reload_cpu = (bl.cpu_seconds(pid) - cpu0) / (2 * reloads)
            info.update(post_s=bl.median(posts), hup_s=bl.median(hups))
            print(f"  {size}: POST /reload median {info['post_s'] * 1000:.0f} ms "
                  f"({min(posts) * 1000:.0f}–{max(posts) * 1000:.0f}); SIGHUP median "
                  f"{info['hup_s'] * 1000:.0f} ms ({min(hups) * 1000:.0f}–{max(hups) * 1000:.0f}); "
                  f"{reload_cpu:.2f} CPU s per reload")
            time.sleep(1)
            rss, hwm = bl.memory_kib(pid)
            print(f"     RSS after the reloads {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f})")

        print("\nstatic answer tables (built on the first query after start or reload):")
        for size, info in figures.items():
            log = os.path.join(info["dir"], "meridian.log")
            before = open(log).read().count("static answers prebuilt")
            bl.time_to_answer(info["port"], bl.query_wire("h1.example.net", "A"))
            wait_log(log, "static answers prebuilt", count=before + 1)
            line = [x for x in open(log) if "static answers prebuilt" in x][-1]
            pid = servers[("meridian", size)][0]
            time.sleep(0.5)
            rss, hwm = bl.memory_kib(pid)
            print(f"  {size}: {line.split('INFO', 1)[1].strip()}; RSS then {rss / 1024:.1f} MiB")

        runs = [("meridian", "mixed"), ("meridian", "static"), ("meridian", "zipf")]
        if peers:
            runs += [("gdnsd", "mixed"), ("gdnsd", "static"), ("gdnsd", "zipf"), ("knot", "static")]
        print(f"\nthroughput: {rounds} rounds x {duration} s per (server, queries, size); "
              f"dnsperf -B -c 8 -T 1 -q 200; {bl.uptime()}")
        res = {}  # (server, queries, size) -> [(qps, lost, cpu, qpc)]
        for rnd in range(rounds):
            for server, qs in (runs if rnd % 2 == 0 else runs[::-1]):
                order = ["small", "large"] if rnd % 2 == 0 else ["large", "small"]
                for size in order:
                    pid, port = servers[(server, size)]
                    blob = os.path.join(figures[size]["dir"], qs + ".blob")
                    res.setdefault((server, qs, size), []).append(bl.timed_run(pid, blob, port, duration))
            print(f"  round {rnd + 1} done ({bl.uptime()})")
        print(f"\n{'server':9} {'queries':7} | {'small qps':>9} {'q/CPU-s':>8} | {'large qps':>9} "
              f"{'q/CPU-s':>8} | {'lost s/l':>9} | large/small q/CPU-s: median (spread) per round")
        for server, qs in runs:
            sm, lg = res[(server, qs, "small")], res[(server, qs, "large")]
            ratios = [b[3] / a[3] for a, b in zip(sm, lg) if a[3] > 0]
            print(f"{server:9} {qs:7} | {bl.median([x[0] for x in sm]):9.0f} {bl.median([x[3] for x in sm]):8.0f} | "
                  f"{bl.median([x[0] for x in lg]):9.0f} {bl.median([x[3] for x in lg]):8.0f} | "
                  f"{sum(x[1] for x in sm):4d}/{sum(x[1] for x in lg):<4d} | "
                  f"{bl.median(ratios):.3f} ({bl.spread(ratios)}): {' '.join(f'{x:.3f}' for x in ratios)}")
        for key, pid_port in servers.items():
            if os.waitpid(pid_port[0], os.WNOHANG) != (0, 0):
                raise SystemExit(f"{key} died during the bench")
        print(f"\nuptime at the end: {bl.uptime()}")
    finally:
        bl.stop_all()
        subprocess.run(["rm", "-rf", tmp])


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "gen":
        args = [int(x) for x in sys.argv[3:6]] or [10000, 20, 100000]
        print(gen(sys.argv[2], *args))
    elif len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
