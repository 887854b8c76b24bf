#!/usr/bin/env python3
"""Reloads at full load (issue 18 item 4): no query lost or answered wrongly while Meridian
reloads, and the rate during reloads against the rate without.

Usage: reload.py MERIDIAN_BIN          (bench/reload.sh builds and runs this)

Meridian serves bench/meridian.toml (SIZE=large: the configuration of bench/scale.py, 10,000
services and 100,000 static records). dnsperf runs at full speed (-c 8 -T 1 -q 200, the query
mix of bench/queries.py; SIZE=large: scale.py's mixed queries) for DURATION seconds, while a
checker thread asks a fixed set of queries with known answers, one after the other, and compares
each response with the answer the server gave before the load began (RCODE, AA, TC, and the
answer and authority sections as sets; not TTLs, the additional section or the ECS scope, which
is the matched network's until the new snapshot's scope map is built). Rounds alternate:

  steady:  dnsperf + checker, no reload
  reload:  dnsperf + checker, RELOADS reloads spread over the run, SIGHUP and POST /reload
           alternating; before each one the config file changes (a comment line), so every
           reload reads a file that differs from the last

Reported per run: dnsperf's queries/s, sent and lost; its lowest one-second rate (-S 1); the
checker's queries, wrong answers and timeouts; reloads done (meridian_config_reloads_total
before and after). Then the medians and the ratio reload/steady of queries/s and of queries per
server CPU-second. Knobs (environment): ROUNDS (4), DURATION (20), RELOADS (10), SIZE
(small|large).
"""

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import queries as qmix  # noqa: E402
import scale  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_query(name, qtype, ecs, edns):
    if not edns:
        return dns.message.make_query(name, qtype, use_edns=False, want_dnssec=False)
    options = []
    if ecs:
        addr, plen = ecs.split("/")
        options.append(dns.edns.ECSOption(addr, int(plen)))
    return dns.message.make_query(name, qtype, use_edns=0, payload=1232, options=options)


def digest(r):
    """What must not change: RCODE, AA, TC, answer and authority sections (TTLs dropped)."""
    def section(rrsets):
        return frozenset((str(rr.name).lower(), rr.rdtype, rd.to_text().lower())
                         for rr in rrsets for rd in rr)
    return (r.rcode(), bool(r.flags & dns.flags.AA), bool(r.flags & dns.flags.TC),
            section(r.answer), section(r.authority))


class Checker(threading.Thread):
    def __init__(self, port, cases):
        super().__init__(daemon=True)
        self.port, self.cases = port, cases
        self.stop = threading.Event()
        self.sent = self.wrong = self.timeouts = 0
        self.examples = []

    def run(self):
        i = 0
        while not self.stop.is_set():
            q, want = self.cases[i % len(self.cases)]
            i += 1
            q.id = random.randrange(65536)
            self.sent += 1
            try:
                r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=2.0)
            except dns.exception.Timeout:
                self.timeouts += 1
                continue
            got = digest(r)
            if got != want:
                self.wrong += 1
                if len(self.examples) < 5:
                    self.examples.append((q.question[0].to_text(), want, got))


def reloads_total(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30).read().decode()
    m = re.search(r'^meridian_config_reloads_total\{result="ok"\} (\S+)', text, re.M)
    return float(m.group(1)) if m else 0.0


def post_reload(admin):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200, r.status


def main():
    meridian = sys.argv[1]
    rounds = int(os.environ.get("ROUNDS", 4))
    duration = int(os.environ.get("DURATION", 20))
    nreloads = int(os.environ.get("RELOADS", 10))
    size = os.environ.get("SIZE", "small")
    tmp = tempfile.mkdtemp(prefix="meridian-reload.")
    try:
        specs = qmix.DYNAMIC + qmix.STATIC
        if size == "large":
            scale.gen(tmp, 10000, 20, 100000)
            cfg = os.path.join(tmp, "meridian.toml")
            text = open(cfg).read().replace('admin_token_file = "admin.token"\n', "")
            blob = os.path.join(tmp, "mixed.blob")
            specs = []
            for line in open(os.path.join(tmp, "mixed.list")):
                name, qtype, ecs, edns = line.split()
                specs.append((name, qtype, None if ecs == "-" else ecs, edns == "1", 1))
        else:
            text = open(os.path.join(ROOT, "bench", "meridian.toml")).read().replace('"../', f'"{ROOT}/')
            text = text.replace('admin_listen = ""', 'admin_listen = "127.0.0.1:0"')
            # Only our reloads: the file watcher would reload on each edit as well.
            text = text.replace("[server]\n", '[server]\nwatch_interval = "0s"\n', 1)
            blob = os.path.join(tmp, "queries.blob")
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "queries.py"), blob,
                            os.path.join(tmp, "queries.list"), "20000"], check=True, capture_output=True)
        cfg = os.path.join(tmp, "reload.toml")
        with open(cfg, "w") as f:
            f.write(text)
        log = os.path.join(tmp, "meridian.log")
        p, port, admin = bl.start_meridian(meridian, cfg, log)
        bl.time_to_answer(port, bl.query_wire(specs[0][0], specs[0][1]), proc=p)
        scale.wait_log(log, "ecs scope maps ready")

        # The expected answers: what the server says before any load or reload.
        cases = []
        for name, qtype, ecs, edns, _ in specs:
            q = make_query(name, qtype, ecs, edns)
            cases.append((q, digest(dns.query.udp(q, "127.0.0.1", port=port, timeout=5.0))))
        print(f"SIZE={size}: {len(cases)} checker queries with known answers; "
              f"{rounds} rounds x {duration} s per run; {nreloads} reloads per reload run; {bl.uptime()}")

        results = {"steady": [], "reload": []}
        edits = 0
        for r in range(rounds):
            for kind in (["steady", "reload"] if r % 2 == 0 else ["reload", "steady"]):
                checker = Checker(port, cases)
                before_cpu = bl.cpu_seconds(p.pid)
                before_reloads = reloads_total(admin)
                perf = subprocess.Popen(["dnsperf", "-B", "-d", blob, "-s", "127.0.0.1", "-p", str(port),
                                         "-l", str(duration), "-c", "8", "-T", "1", "-q", "200", "-S", "1"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                checker.start()
                start = time.monotonic()
                took = []
                if kind == "reload":
                    for k in range(nreloads):
                        at = start + 1.0 + k * (duration - 3.0) / nreloads
                        time.sleep(max(0.0, at - time.monotonic()))
                        edits += 1
                        with open(cfg, "a") as f:
                            f.write(f"# edit {edits}\n")
                        t = time.monotonic()
                        if k % 2 == 0:
                            os.kill(p.pid, signal.SIGHUP)
                            scale.wait_log(log, "configuration reloaded",
                                           count=int(before_reloads) + k + 1, timeout=120)
                        else:
                            post_reload(admin)
                        took.append(time.monotonic() - t)
                out, _ = perf.communicate()
                checker.stop.set()
                checker.join()
                cpu = bl.cpu_seconds(p.pid) - before_cpu
                done = reloads_total(admin) - before_reloads
                qps = lost = sent = 0
                per_second = []
                for line in out.splitlines():
                    f = line.split()
                    if "Queries sent:" in line:
                        sent = int(f[2])
                    elif "Queries lost:" in line:
                        lost = int(f[2])
                    elif "Queries per second:" in line:
                        qps = float(f[3])
                    m = re.match(r"^[0-9]+\.[0-9]+: ([0-9.]+)$", line.strip())
                    if m:
                        per_second.append(float(m.group(1)))
                low = min(per_second[1:-1]) if len(per_second) > 2 else 0.0
                results[kind].append((qps, lost, sent, cpu, low, checker.sent, checker.wrong,
                                      checker.timeouts, done))
                extra = f", {done:.0f} reloads (median {bl.median(took) * 1000:.0f} ms)" if kind == "reload" else ""
                print(f"round {r + 1} {kind:6}: {qps:9.0f} q/s, sent {sent}, lost {lost}, lowest 1-s rate "
                      f"{low:.0f}, {qps * duration / cpu if cpu else 0:.0f} q/CPU-s; checker {checker.sent} "
                      f"queries, {checker.wrong} wrong, {checker.timeouts} timeouts{extra}; {bl.uptime()}")
                for ex in checker.examples:
                    print(f"    WRONG {ex[0]}: expected {ex[1]}, got {ex[2]}")
        print()
        s, rl = results["steady"], results["reload"]
        qr = [b[0] / a[0] for a, b in zip(s, rl)]
        cr = [(b[0] / b[3]) / (a[0] / a[3]) for a, b in zip(s, rl) if a[3] and b[3]]
        for kind, rs in results.items():
            print(f"{kind:6}: median {bl.median([x[0] for x in rs]):.0f} q/s, lowest 1-s rate "
                  f"{min(x[4] for x in rs):.0f}, lost {sum(x[1] for x in rs)} of {sum(x[2] for x in rs)}, "
                  f"checker wrong {sum(x[6] for x in rs)} and timeouts {sum(x[7] for x in rs)} of "
                  f"{sum(x[5] for x in rs)}, reloads {sum(x[8] for x in rs):.0f}")
        print(f"reload/steady: queries/s median {bl.median(qr):.3f} ({bl.spread(qr)}), "
              f"per CPU-second median {bl.median(cr):.3f} ({bl.spread(cr)})")
        print(f"uptime at the end: {bl.uptime()}")
        bad = sum(x[1] + x[6] + x[7] for x in rl)
        if bad or sum(x[8] for x in rl) != rounds * nreloads:
            raise SystemExit("FAILED: queries lost or answered wrongly, or reloads missing")
    finally:
        bl.stop_all()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
