"""Helpers shared by the Python benchmark drivers (scale.py, reload.py, overhead.py).

Processes started here are recorded in PROCS and stopped by pid (stop_all), never by name.
CPU is utime+stime of the server's pid from /proc/PID/stat (all its threads); memory is
VmRSS/VmHWM from /proc/PID/status.
"""

import os
import signal
import socket
import statistics
import subprocess
import time

HZ = os.sysconf("SC_CLK_TCK")
PROCS = []


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        return port


def spawn(cmd, log, env=None):
    """Starts cmd with stdout and stderr to the file `log`; returns the Popen."""
    f = open(log, "w")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def memory_kib(pid):
    """(VmRSS, VmHWM) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def query_wire(name, qtype, qid=0x1234, edns=True, ecs=None):
    """A DNS query without RD, optionally with EDNS (1232) and an ECS option ("addr/len")."""
    import ipaddress
    import struct

    types = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
    msg = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 1 if edns else 0)
    for label in name.rstrip(".").split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\x00" + struct.pack(">HH", types[qtype], 1)
    if edns:
        options = b""
        if ecs:
            net = ipaddress.ip_network(ecs)
            family = 1 if net.version == 4 else 2
            addr = net.network_address.packed[: (net.prefixlen + 7) // 8]
            body = struct.pack(">HBB", family, net.prefixlen, 0) + addr
            options = struct.pack(">HH", 8, len(body)) + body
        msg += b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(options)) + options
    return msg


LOG_ENV = dict(os.environ, MERIDIAN_LOG="warn,meridian::app=info,meridian::admin=info,"
               "meridian::snapshot=info,meridian::dns::cache=info")


def start_meridian(meridian, config, log, timeout=300.0):
    """Starts `meridian serve` on `config` (which listens on port 0 for DNS, and for the admin
    port if it has one) and returns (Popen, dns port, admin port or None), read from its log."""
    import re

    p = spawn([meridian, "serve", "--config", config], log, LOG_ENV)
    start = time.monotonic()
    dns = admin = None
    has_admin = 'admin_listen = ""' not in open(config).read()
    while time.monotonic() - start < timeout:
        text = open(log, errors="replace").read()
        m = re.search(r"listening dns/udp 127\.0\.0\.1:(\d+)", text)
        dns = int(m.group(1)) if m else None
        m = re.search(r"listening admin/http 127\.0\.0\.1:(\d+)", text)
        admin = int(m.group(1)) if m else None
        if dns and (admin or not has_admin):
            return p, dns, admin
        if p.poll() is not None:
            raise RuntimeError(f"meridian exited: {text[-2000:]}")
        time.sleep(0.002)
    raise RuntimeError(f"meridian did not listen within {timeout} s")


def start_peer(cmd_for_port, log, query, attempts=3):
    """Starts a peer server (gdnsd, knotd) on a free port, `cmd_for_port(port)` writing its
    config; another port when it dies (the port was taken meanwhile). Returns (Popen, port,
    seconds from spawn to the first answer to `query`)."""
    for _ in range(attempts):
        port = free_port()
        cmd = cmd_for_port(port)
        t = time.monotonic()
        p = spawn(cmd, log)
        try:
            time_to_answer(port, query, proc=p)
            return p, port, time.monotonic() - t
        except RuntimeError:
            if p.poll() is None:
                raise
    raise RuntimeError(f"{cmd[0]} did not start; see {log}")


def time_to_answer(port, query, deadline_s=300.0, interval=0.002, proc=None):
    """Seconds until 127.0.0.1:port answers `query` over UDP with NOERROR and an answer record
    (polled every `interval`), from now; gives up when `proc` exits."""
    start = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(interval)
    try:
        while time.monotonic() - start < deadline_s:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server on port {port} exited")
            try:
                s.sendto(query, ("127.0.0.1", port))
                r = s.recv(65535)
                # An answer with data: a server still loading may answer REFUSED or SERVFAIL.
                if len(r) >= 12 and r[3] & 0x0F == 0 and r[6:8] != b"\0\0":
                    return time.monotonic() - start
                time.sleep(interval)
            except (socket.timeout, ConnectionRefusedError):
                time.sleep(interval)
        raise RuntimeError(f"no answer on port {port} within {deadline_s} s")
    finally:
        s.close()


def dnsperf(blob, port, duration, clients=8, threads=1, outstanding=200, extra=()):
    """Runs dnsperf -B at full speed; returns (qps, lost, sent, output)."""
    cmd = ["dnsperf", "-B", "-d", blob, "-s", "127.0.0.1", "-p", str(port), "-l", str(duration),
           "-c", str(clients), "-T", str(threads), "-q", str(outstanding), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    qps = lost = sent = 0
    for line in out.splitlines():
        f = line.split()
        if "Queries sent:" in line:
            sent = int(f[2])
        elif "Queries lost:" in line:
            lost = int(f[2])
        elif "Queries per second:" in line:
            qps = float(f[3])
    return qps, lost, sent, out


def timed_run(pid, blob, port, duration, **kw):
    """dnsperf against the server `pid`: (qps, lost, cpu_s, queries per CPU-second)."""
    before = cpu_seconds(pid)
    qps, lost, sent, _ = dnsperf(blob, port, duration, **kw)
    cpu = cpu_seconds(pid) - before
    return qps, lost, cpu, (qps * duration / cpu if cpu > 0 else 0.0)


def median(xs):
    return statistics.median(xs) if xs else 0.0


def spread(xs):
    """'min–max' of a list of ratios."""
    return f"{min(xs):.3f}–{max(xs):.3f}" if xs else "-"


def uptime():
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])
