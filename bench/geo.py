#!/usr/bin/env python3
"""ECS scope benchmark on a real city database (issue 13); run by bench/geo.sh.

Usage: geo.py MERIDIAN DB CLIENTS TMPDIR [GDNSD_CONFIG_IN]

Starts Meridian on DB (8 regions, two `nearest` services sharing one decision function and one
`geo` service) three times and measures the time from spawn to the first answer over UDP, the
scope-map build (time, size from the log line), and the memory (VmRSS, RssAnon, RssFile) at the
first answer and once the maps are built. Then, on the last server, asks for every client
subnet in CLIENTS (one CIDR a line) with ECS over UDP and through /explain, and reports how often
the scope widened beyond the matched database network and the median scopes. With
GDNSD_CONFIG_IN, gdnsd is started on the same database (same 8 regions, auto_dc_coords) and
asked the same questions, for its start-up time and scopes.

Data: IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0.
"""

import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

from benchlib import free_port

REGIONS = [
    ("us-east", 39.0, -77.5),
    ("us-west", 45.6, -121.2),
    ("eu-west", 53.3, -6.3),
    ("eu-central", 50.1, 8.7),
    ("ap-northeast", 35.7, 139.7),
    ("ap-southeast", 1.35, 103.8),
    ("sa-east", -23.5, -46.6),
    ("af-south", -33.9, 18.4),
]


def meridian_config(root, db, port, admin):
    endpoints = ",\n".join(
        f'  {{ region = "{r}", addresses = ["192.0.2.{i + 1}", "2001:db8:{i + 1}::1"] }}'
        for i, (r, _, _) in enumerate(REGIONS)
    )
    regions = "".join(f"[region.{r}]\nlatitude = {la}\nlongitude = {lo}\n" for r, la, lo in REGIONS)
    geo = (
        '{ "US" = ["us-east", "us-west"], "CA" = ["us-east"], "DE" = ["eu-central", "eu-west"], '
        '"FR" = ["eu-west", "eu-central"], "GB" = ["eu-west"], "JP" = ["ap-northeast"], '
        '"SG" = ["ap-southeast"], "BR" = ["sa-east"], "ZA" = ["af-south"], '
        'default = ["us-east", "eu-west"] }'
    )
    return f"""[server]
dns_listen = ["127.0.0.1:{port}"]
admin_listen = "127.0.0.1:{admin}"
geoip = "{db}"
udp_workers = 2

[[zone]]
origin = "example.net."
file = "{root}/zones/example.net.zone"

{regions}
[[service]]
name = "api.example.net."
policy = "nearest"
endpoints = [
{endpoints}
]

# Same regions and coordinates: shares api's scope map.
[[service]]
name = "cdn.example.net."
policy = "nearest"
endpoints = [
{endpoints}
]

[[service]]
name = "geo.example.net."
policy = "geo"
geo = {geo}
endpoints = [
{endpoints}
]
"""


def gdnsd_config(port, db):
    dcs = ", ".join(r for r, _, _ in REGIONS)
    coords = "\n".join(f"          {r} => [{la}, {lo}]" for r, la, lo in REGIONS)
    dcmap = "\n".join(
        f'          {r} => {{ addrs_v4 => 192.0.2.{i + 1}, addrs_v6 => "2001:db8:{i + 1}::1" }}'
        for i, (r, _, _) in enumerate(REGIONS)
    )
    return f"""options => {{
  listen => [ "127.0.0.1:{port}" ]
  udp_threads => 2
  tcp_threads => 1
}}
plugins => {{
  geoip => {{
    maps => {{
      nearest => {{
        geoip2_db => "{db}"
        datacenters => [{dcs}]
        auto_dc_coords => {{
{coords}
        }}
        auto_dc_limit => 8
      }}
    }}
    resources => {{
      api => {{
        map => nearest
        dcmap => {{
{dcmap}
        }}
      }}
    }}
  }}
}}
"""


def query(name, qtype, ecs=None):
    msg = struct.pack(">HHHHHH", 0x4D52, 0, 1, 0, 0, 1)
    for label in name.rstrip(".").split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\x00" + struct.pack(">HH", qtype, 1)
    options = b""
    if ecs:
        net = ipaddress.ip_network(ecs)
        family = 1 if net.version == 4 else 2
        addr = net.network_address.packed[: (net.prefixlen + 7) // 8]
        body = struct.pack(">HBB", family, net.prefixlen, 0) + addr
        options = struct.pack(">HH", 8, len(body)) + body
    return msg + b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(options)) + options


def skip_name(m, i):
    while True:
        n = m[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def parse(m):
    """Returns (rcode, answer addresses, ECS scope or None)."""
    _, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", m[:12])
    i = 12
    for _ in range(qd):
        i = skip_name(m, i) + 4
    addrs, scope = [], None
    for k in range(an + ns + ar):
        i = skip_name(m, i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", m[i : i + 10])
        i += 10
        rdata = m[i : i + rdlen]
        if k < an and rtype in (1, 28):
            addrs.append(str(ipaddress.ip_address(rdata)))
        if rtype == 41:
            j = 0
            while j + 4 <= len(rdata):
                code, olen = struct.unpack(">HH", rdata[j : j + 4])
                if code == 8:
                    scope = rdata[j + 7]
                j += 4 + olen
        i += rdlen
    return flags & 0xF, addrs, scope


def ask(sock, port, msg, timeout=1.0):
    sock.settimeout(timeout)
    for _ in range(3):
        sock.sendto(msg, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except socket.timeout:
            continue
    return None


def first_answer(argv, port, cwd=None, log=None):
    """Spawns argv; returns (process, seconds until the first answer over UDP)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    msg = query("api.example.net", 1, "8.8.8.0/24")
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    sock.settimeout(0.002)
    deadline = t0 + 60
    while time.monotonic() < deadline:
        try:
            sock.sendto(msg, ("127.0.0.1", port))
            if sock.recv(4096):
                return p, time.monotonic() - t0
        except (socket.timeout, ConnectionRefusedError):
            pass
        if p.poll() is not None:
            raise SystemExit(f"{argv[0]} exited with {p.returncode}")
    p.kill()
    raise SystemExit(f"{argv[0]}: no answer within 60 s")


def memory(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def wait_log(path, pattern, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            for line in f:
                if re.search(pattern, line):
                    return line
        time.sleep(0.05)
    raise SystemExit(f"no {pattern!r} in {path} within {timeout} s")


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def survey(port, clients, name, admin=None):
    """Asks `name` for every client with ECS; returns [(client, addrs, scope, narrow)]."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5) if admin else None
    out = []
    for c in clients:
        net = ipaddress.ip_network(c)
        qtype = 1 if net.version == 4 else 28
        r = ask(sock, port, query(name, qtype, c))
        if r is None:
            continue
        _, addrs, scope = parse(r)
        narrow = None
        if conn:
            t = "A" if net.version == 4 else "AAAA"
            conn.request("GET", f"/explain?name={name}&type={t}&client={net.network_address}")
            j = json.loads(conn.getresponse().read())
            narrow = j["client"]["prefix_len"]
            if j["client"]["located_by"] != "the address itself":
                narrow = None
        out.append((c, addrs, scope, narrow))
    return out


def report_scopes(label, rows):
    for fam, width in ((4, 32), (6, 128)):
        rs = [r for r in rows if ipaddress.ip_network(r[0]).version == fam and r[2] is not None]
        if not rs:
            continue
        line = f"  {label} IPv{fam}: {len(rs)} subnets, median scope /{median([r[2] for r in rs]):g}"
        nar = [r for r in rs if r[3] is not None]
        if nar:
            widened = sum(1 for r in nar if r[2] < r[3])
            wider = sum(1 for r in nar if r[2] > r[3])
            line += (
                f", matched network median /{median([r[3] for r in nar]):g}, "
                f"widened {100 * widened / len(nar):.1f}%"
            )
            if wider:
                line += f" (NARROWER than the network: {wider}!)"
        print(line)


def main():
    meridian, db, clients_path, tmp = sys.argv[1:5]
    gdnsd_in = sys.argv[5] if len(sys.argv) > 5 else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clients = [l.strip() for l in open(clients_path) if l.strip()]
    print(f"database: {db} ({os.path.getsize(db) / 1048576:.1f} MiB); {len(clients)} client subnets")

    port, admin = free_port(), free_port()
    cfg = os.path.join(tmp, "geo-bench.toml")
    with open(cfg, "w") as f:
        f.write(meridian_config(root, db, port, admin))
    env_log = os.path.join(tmp, "meridian-geo.log")
    os.environ["MERIDIAN_LOG"] = "warn,meridian=info"

    print("\nMeridian start-up (3 runs): time to first answer, scope maps, memory")
    server = None
    for run in range(3):
        with open(env_log, "w") as log:
            p, t = first_answer([meridian, "serve", "--config", cfg], port, log=log)
        m0 = memory(p.pid)
        line = wait_log(env_log, r"ecs scope maps ready", 600)
        m1 = memory(p.pid)
        fields = dict(re.findall(r"(\w+)=([\d.]+)", line))
        print(
            f"  run {run + 1}: first answer {t * 1000:.0f} ms (RSS {m0['VmRSS']:.0f} MiB, anon "
            f"{m0['RssAnon']:.0f}); maps {float(fields['seconds']):.2f} s for "
            f"{fields['maps']} maps, {int(fields['networks']) / 1e6:.2f} M networks, "
            f"{fields['records']} records, {fields['decisions']} decisions, runs v4 "
            f"{fields['runs_v4']} v6 {fields['runs_v6']}, {int(fields['bytes']) / 1048576:.1f} MiB; "
            f"after: RSS {m1['VmRSS']:.0f} MiB (anon {m1['RssAnon']:.0f}, file {m1['RssFile']:.0f}), "
            f"peak {m1['VmHWM']:.0f} MiB"
        )
        if run < 2:
            stop(p)
        else:
            server = p

    print("\nScopes over UDP with ECS (matched network from /explain)")
    for name in ["api.example.net", "geo.example.net"]:
        rows = survey(port, clients, name, admin)
        report_scopes(f"Meridian {name.split('.')[0]}", rows)
        if name == "api.example.net":
            meridian_api = {r[0]: r for r in rows}
    stop(server)

    if gdnsd_in:
        gport = free_port()
        gdir = os.path.join(tmp, "gdnsd-geo")
        os.makedirs(os.path.join(gdir, "zones"), exist_ok=True)
        with open(os.path.join(gdir, "config"), "w") as f:
            f.write(gdnsd_config(gport, db))
        with open(os.path.join(gdir, "zones", "example.net"), "w") as f:
            f.write(open(os.path.join(root, "zones", "example.net.zone")).read())
            f.write("api 30 DYNA geoip!api\n")
        with open(os.path.join(tmp, "gdnsd-geo.log"), "w") as log:
            g, t = first_answer(["gdnsd", "-c", gdir, "start"], gport, log=log)
        mg = memory(g.pid)
        print(f"\ngdnsd: first answer {t * 1000:.0f} ms, RSS {mg['VmRSS']:.0f} MiB (anon {mg['RssAnon']:.0f})")
        rows = survey(gport, clients, "api.example.net")
        report_scopes("gdnsd api", rows)
        same = sum(1 for r in rows if r[0] in meridian_api and meridian_api[r[0]][1] == r[1])
        print(f"  same answer as Meridian's api: {same} of {len(rows)}")
        both = [(meridian_api[r[0]][2], r[2]) for r in rows if r[0] in meridian_api and r[2] is not None]
        wider = sum(1 for m, g in both if m < g)
        narrower = sum(1 for m, g in both if m > g)
        print(
            f"  Meridian's scope vs gdnsd's: wider {100 * wider / len(both):.1f}%, "
            f"same {100 * (len(both) - wider - narrower) / len(both):.1f}%, "
            f"narrower {100 * narrower / len(both):.1f}%"
        )
        stop(g)


if __name__ == "__main__":
    main()
