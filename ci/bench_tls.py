#!/usr/bin/env python3
"""HTTPS figures (issue 12): loadgen against wrk as the client of one TLS
target, Debian's nginx (one worker) with an ECDSA P-256 certificate this
script makes (openssl, a CA and a leaf for 127.0.0.1; nothing kept).

Per round, interleaved (loadgen, wrk, loadgen, wrk, ...), medians of ROUNDS:
- keep-alive HTTPS at 100 and 5,000 connections, 6 s each: requests/s and
  the client's CPU per request (utime + stime from /proc, sampled until it
  exits);
- full handshakes: a new connection for every request at 20 connections
  (loadgen offers X25519 only, as wrk with OpenSSL 3.0 does), loadgen
  checking the certificate chain and, as wrk does, not checking it
  (--insecure);
  (loadgen --new-conn-per-request, wrk -H 'Connection: close'):
  handshakes/s and the client's CPU per handshake;
- resumed handshakes (loadgen --tls-resume; wrk does not resume);
- memory of held TLS connections: loadgen's RSS in hold mode at 100 and
  5,000 connections, over TLS and in plaintext, per connection.

The proxy's own TLS rows join this when it terminates TLS. Prints a table
and writes results/bench-tls.txt (JSON beside it).
Usage: ci/bench_tls.py [--rounds 3]   (env LOADGEN=... names the binary)
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_faults import ROOT, TICK, cpu_ticks, free_port, machine  # noqa: E402


def make_certs(d):
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, cwd=d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=speedmimi bench CA")
    ssl("req", *ec, "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")


def start_nginx(d, tls_port, plain_port):
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ return 200 "ok"; }}
  }}
  server {{
    listen 127.0.0.1:{plain_port};
    location / {{ return 200 "ok"; }}
  }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", tls_port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("nginx did not start (is Debian's nginx installed?)")


def measure(argv):
    """Runs a client to its end; returns (stdout, CPU seconds, wall seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last = 0
    while p.poll() is None:
        try:
            last = cpu_ticks(p.pid)
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    return p.stdout.read(), last / TICK, time.monotonic() - t0


def loadgen_run(lg, url, ca, conns, extra):
    # X25519, as wrk (OpenSSL 3.0, no ML-KEM) offers: by default rustls
    # also makes an X25519MLKEM768 key share, which nginx here ignores.
    out, cpu, _ = measure([lg, "run", url, "-c", str(conns), "-t", "1", "-d", "6s", "--json",
                           "-q", "--cacert", ca, "--connect-rate", "5000", "--tls-kx", "x25519",
                           *extra])
    d = json.loads(out)
    return dict(requests=d["requests"], rps=d["rps"], errors=d["errors"]["total"], cpu=cpu,
                tls=d.get("tls", {}))


def wrk_run(url, conns, extra, duration="-d6s"):
    out, cpu, wall = measure(["wrk", "-t1", f"-c{conns}", duration, *extra, url])
    n = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = (sum(int(x) for x in errs.groups()) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return dict(requests=n, rps=rps, errors=errors, cpu=cpu)


def held_rss(lg, url, conns, extra):
    """loadgen's RSS (KiB) holding `conns` connections (one request each every 20 s)."""
    p = subprocess.Popen([lg, "run", url, "-c", str(conns), "-t", "1", "--hold", "--interval",
                          "20s", "--connect-rate", "2000", "-d", "9s", "-q", "--json", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(7.5)
    with open(f"/proc/{p.pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    d = json.loads(p.communicate(timeout=30)[0])
    return rss, d["connections"]["peak_open"], d["errors"]["total"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    for tool in ("nginx", "wrk", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install nginx wrk openssl")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    lg = os.environ.get("LOADGEN") or os.path.join(target, "release", "loadgen")
    work = tempfile.mkdtemp(prefix="bench-tls.")
    make_certs(work)
    ca = os.path.join(work, "ca.pem")
    tls_port, plain_port = free_port(), free_port()
    nginx = start_nginx(work, tls_port, plain_port)
    url, plain = f"https://127.0.0.1:{tls_port}/", f"http://127.0.0.1:{plain_port}/"
    rows = {}

    def add(key, r):
        rows.setdefault(key, []).append(r)
        per = r["cpu"] / max(r["requests"], 1) * 1e6
        print(f"  {key[0]:<10} {key[1]:<9} {r['requests']:>8} req  {r['rps']:>9.0f}/s  "
              f"{per:>7.1f} us CPU/req  errors {r['errors']}", flush=True)

    try:
        for rnd in range(a.rounds):
            print(f"== round {rnd + 1}/{a.rounds}", flush=True)
            for conns in (100, 5000):
                add(("keepalive", f"c={conns}", "loadgen"), loadgen_run(lg, url, ca, conns, []))
                add(("keepalive", f"c={conns}", "wrk"), wrk_run(url, conns, []))
            add(("full-hs", "c=20", "loadgen"),
                loadgen_run(lg, url, ca, 20, ["--new-conn-per-request"]))
            add(("full-hs", "c=20", "wrk"), wrk_run(url, 20, ["-H", "Connection: close"]))
            # wrk never checks the certificate: the same work for loadgen.
            add(("full-hs-nocheck", "c=20", "loadgen"),
                loadgen_run(lg, url, ca, 20, ["--new-conn-per-request", "--insecure"]))
            add(("resumed-hs", "c=20", "loadgen"),
                loadgen_run(lg, url, ca, 20, ["--new-conn-per-request", "--tls-resume"]))
        held = {}
        for name, u, extra in (("tls", url, ["--cacert", ca]), ("plain", plain, [])):
            small = held_rss(lg, u, 100, extra)
            big = held_rss(lg, u, 5000, extra)
            held[name] = dict(rss_kib_100=small[0], rss_kib_5000=big[0], open_5000=big[1],
                              errors=small[2] + big[2],
                              bytes_per_conn=(big[0] - small[0]) * 1024 / 4900)
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    def summary(key):
        rs = rows.get(key, [])
        return dict(rps=med([r["rps"] for r in rs]),
                    cpu_us=med([r["cpu"] / max(r["requests"], 1) * 1e6 for r in rs]),
                    errors=sum(r["errors"] for r in rs),
                    resumed=sum(r.get("tls", {}).get("resumed", 0) for r in rs),
                    full=sum(r.get("tls", {}).get("full", 0) for r in rs))

    out = [f"HTTPS clients against nginx (1 worker, ECDSA P-256, TLS 1.3), {machine()}, "
           f"{a.rounds} interleaved rounds, medians", "",
           "figure                         loadgen      wrk          loadgen/wrk  errors (loadgen, wrk)"]
    result = dict(rounds=a.rounds, machine=machine(), figures={})
    for what, conns, label, unit in (("keepalive", "c=100", "keep-alive req/s, c=100", "rps"),
                                     ("keepalive", "c=100", "  CPU us/request", "cpu_us"),
                                     ("keepalive", "c=5000", "keep-alive req/s, c=5000", "rps"),
                                     ("keepalive", "c=5000", "  CPU us/request", "cpu_us"),
                                     ("full-hs", "c=20", "full handshakes/s, c=20", "rps"),
                                     ("full-hs", "c=20", "  CPU us/handshake", "cpu_us")):
        l, w = summary((what, conns, "loadgen")), summary((what, conns, "wrk"))
        errs = f"{l['errors']}, {w['errors']}" if unit == "rps" else ""
        out.append(f"{label:<30} {l[unit]:<12.1f} {w[unit]:<12.1f} x{l[unit] / w[unit]:<11.2f} {errs}")
        result["figures"][f"{what} {conns} {unit}"] = dict(loadgen=l[unit], wrk=w[unit])
    n = summary(("full-hs-nocheck", "c=20", "loadgen"))
    w = summary(("full-hs", "c=20", "wrk"))
    out.append(f"{'full hs/s, no cert check':<30} {n['rps']:<12.1f} {w['rps']:<12.1f} "
               f"x{n['rps'] / w['rps']:<11.2f} {n['errors']}, {w['errors']}")
    out.append(f"{'  CPU us/handshake':<30} {n['cpu_us']:<12.1f} {w['cpu_us']:<12.1f} "
               f"x{n['cpu_us'] / w['cpu_us']:.2f}")
    result["figures"]["full-hs-nocheck c=20"] = dict(loadgen=n, wrk=w)
    r = summary(("resumed-hs", "c=20", "loadgen"))
    out.append(f"{'resumed handshakes/s, c=20':<30} {r['rps']:<12.1f} (wrk does not resume; "
               f"{r['resumed']} resumed, {r['full']} full)")
    out.append(f"{'  CPU us/handshake':<30} {r['cpu_us']:<12.1f}")
    result["figures"]["resumed-hs c=20"] = r
    errors = sum(summary(k)["errors"] for k in rows)
    for name, h in held.items():
        out.append(f"loadgen RSS per held {name} connection: {h['bytes_per_conn']:.0f} bytes "
                   f"({h['rss_kib_100']} KiB at 100, {h['rss_kib_5000']} KiB at 5,000; "
                   f"{h['open_5000']} open)")
    result["held"] = held
    out.append(f"errors over all runs: {errors + sum(h['errors'] for h in held.values())}")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "bench-tls.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(ROOT, "results", "bench-tls.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
