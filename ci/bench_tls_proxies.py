#!/usr/bin/env python3
"""TLS termination figures (issue 12): speedmimi, nginx and HAProxy side by
side, each one worker (process and thread), each terminating TLS with the
same ECDSA P-256 certificate (a CA and a leaf this script makes with
openssl; nothing kept) in front of the same plaintext nginx backend (one
worker, `return 200`). speedmimi runs its defaults but for `workers: 1`;
nginx keeps 10,000 idle upstream connections, HAProxy `http-reuse always`.

Per round, interleaved (speedmimi, nginx, haproxy, ...), medians of ROUNDS,
the proxy's CPU (utime + stime of its processes from /proc) per unit:
- full handshakes: wrk, 20 connections, `Connection: close` (wrk never
  resumes): handshakes/s and CPU per handshake;
- resumed handshakes: loadgen --new-conn-per-request --tls-resume, 20
  connections: handshakes/s and CPU per handshake;
- keep-alive HTTPS: wrk at 100 and 5,000 connections: requests/s and CPU
  per request;
- memory per idle TLS keep-alive connection: the proxy's RSS with 10,000
  connections held by loadgen (one request each, then idle) less its RSS
  with 100, per connection.

Bars (the issue's): keep-alive CPU per request <= x0.85 nginx, full
handshakes/s >= x1.0 nginx, idle TLS memory <= x0.5 nginx. Prints a table
and writes results/bench-tls-proxies.txt (JSON beside it).
Usage: ci/bench_tls_proxies.py [--rounds 3] [--secs 6] [--proxies LIST]
       (env SPEEDMIMI=..., LOADGEN=... name the binaries; --proxies
       a=/path/speedmimi,b=/other/speedmimi compares two builds, A B A B)
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
from bench_faults import ROOT, TICK, children, cpu_ticks, free_port, machine  # noqa: E402
from bench_tls import make_certs  # noqa: E402

PROXIES = ("speedmimi", "nginx", "haproxy")
# Connections held for the memory figure: HAProxy asks two descriptors per
# connection, and RLIMIT_NOFILE is 20,000 here.
HELD = 9_000


def wait_port(port, what, proc):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not listen on {port}")


def start_backend(d, port, status_port):
    conf = os.path.join(d, "backend.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/backend.pid;
error_log {d}/backend-error.log warn;
daemon off;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "ok"; }} }}
  server {{ listen 127.0.0.1:{status_port}; location / {{ stub_status; }} }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port(port, "backend nginx", p)
    return p


def start_proxy(name, d, port, backend, binaries):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    if name in binaries:
        binary = binaries[name]
        conf = os.path.join(d, "speedmimi.yaml")
        with open(conf, "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:{port}"
  workers: 1
  max_conn: 11000
  tls:
    certificates:
      - {{ cert: "{cert}", key: "{key}" }}
admin:
  listen: "127.0.0.1:0"
upstreams:
  app:
    backends: [ {{ addr: "127.0.0.1:{backend}" }} ]
routing:
  default: {{ upstream: app }}
""")
        argv = [binary, "--config", conf]
    elif name == "nginx":
        conf = os.path.join(d, "proxy-nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/proxy-nginx.pid;
error_log {d}/proxy-nginx-error.log warn;
daemon off;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  upstream app {{ server 127.0.0.1:{backend}; keepalive 10000; }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
        argv = ["nginx", "-c", conf]
    else:
        pem = os.path.join(d, "haproxy.pem")
        with open(pem, "w") as f:
            f.write(open(cert).read() + open(key).read())
        conf = os.path.join(d, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  maxconn 9900
  ulimit-n 20000
  nbthread 1
  log stdout format raw local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend tls
  bind 127.0.0.1:{port} ssl crt {pem}
  default_backend app
backend app
  server s1 127.0.0.1:{backend}
""")
        argv = ["haproxy", "-f", conf]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, name, p)
    return p


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def tree_ticks(pid):
    total = 0
    for p in tree(pid):
        try:
            total += cpu_ticks(p)
        except (OSError, IndexError):
            pass
    return total


def tree_rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def backend_requests(status_port):
    with socket.create_connection(("127.0.0.1", status_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        text = b""
        while chunk := s.recv(4096):
            text += chunk
    # "Active connections: N\nserver accepts handled requests\n A H R\n..."
    return int(text.decode().split("requests")[1].split()[2])


def window(argv, proxy, status_port, warm, secs):
    """Runs a client for warm + secs seconds; counts only the last `secs`:
    requests the backend served and the proxy's CPU over that window, so
    connection ramp-up (5,000 handshakes) stays out of per-request costs."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(warm)
    t0, c0, r0 = time.monotonic(), tree_ticks(proxy.pid), backend_requests(status_port)
    time.sleep(secs)
    t1, c1, r1 = time.monotonic(), tree_ticks(proxy.pid), backend_requests(status_port)
    out = p.communicate(timeout=60)[0]
    return dict(requests=r1 - r0, rps=(r1 - r0) / (t1 - t0), proxy_cpu=(c1 - c0) / TICK,
                errors=client_errors(out))


def client_errors(out):
    if out.lstrip().startswith("{"):
        return json.loads(out)["errors"]["total"]
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return ((sum(int(x) for x in errs.groups()) if errs else 0)
            + (int(non2xx.group(1)) if non2xx else 0))


def held_rss(lg, url, ca, proxy, conns):
    """The proxy's RSS (KiB) while loadgen holds `conns` TLS connections."""
    p = subprocess.Popen([lg, "run", url, "-c", str(conns), "-t", "1", "--hold", "--interval",
                          "30s", "--connect-rate", "2500", "-d", "16s", "-q", "--json",
                          "--cacert", ca, "--tls-kx", "x25519"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(13)
    rss = tree_rss_kib(proxy.pid)
    d = json.loads(p.communicate(timeout=60)[0])
    return rss, d["connections"]["peak_open"], d["errors"]["total"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=6)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    a = ap.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install nginx haproxy wrk openssl")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binaries = {"speedmimi": os.environ.get("SPEEDMIMI")
                or os.path.join(target, "release", "speedmimi")}
    proxies = []
    for item in a.proxies.split(","):
        name, _, path = item.partition("=")
        if path:
            binaries[name] = path
        proxies.append(name)
    lg = os.environ.get("LOADGEN") or os.path.join(target, "release", "loadgen")
    work = tempfile.mkdtemp(prefix="bench-tls-proxies.")
    make_certs(work)
    ca = os.path.join(work, "ca.pem")
    backend_port, status_port = free_port(), free_port()
    backend = start_backend(work, backend_port, status_port)
    rows = {}
    held = {}

    def record(key, r):
        rows.setdefault(key, []).append(r)
        per = r["proxy_cpu"] / max(r["requests"], 1) * 1e6
        print(f"  {key[1]:<10} {key[0]:<14} {r['requests']:>8}  {r['rps']:>9.0f}/s  "
              f"{per:>7.1f} us proxy CPU each  errors {r['errors']}", flush=True)

    def with_each(fn):
        for name in proxies:
            port = free_port()
            proxy = start_proxy(name, work, port, backend_port, binaries)
            try:
                fn(name, proxy, f"https://127.0.0.1:{port}/")
            finally:
                proxy.terminate()
                try:
                    proxy.wait(10)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                    proxy.wait(10)

    try:
        for rnd in range(a.rounds):
            print(f"== round {rnd + 1}/{a.rounds}", flush=True)

            def one_round(name, proxy, url):
                warm = 3
                total = warm + a.secs + 1

                def wrk(conns, extra):
                    return ["wrk", "-t1", f"-c{conns}", f"-d{total}s", "--timeout", "10s",
                            *extra, url]
                record(("full-hs", name), window(
                    wrk(20, ["-H", "Connection: close"]), proxy, status_port, warm, a.secs))
                record(("resumed-hs", name), window(
                    [lg, "run", url, "-c", "20", "-t", "1", "-d", f"{total}s", "--json", "-q",
                     "--cacert", ca, "--tls-kx", "x25519", "--new-conn-per-request",
                     "--tls-resume"], proxy, status_port, warm, a.secs))
                for conns in (100, 5000):
                    record((f"keepalive c={conns}", name), window(
                        wrk(conns, []), proxy, status_port, warm, a.secs))
            with_each(one_round)

        def memory(name, proxy, url):
            small = held_rss(lg, url, ca, proxy, 100)
            big = held_rss(lg, url, ca, proxy, HELD)
            held[name] = dict(rss_kib_100=small[0], rss_kib_held=big[0], open=big[1],
                              errors=small[2] + big[2],
                              bytes_per_conn=(big[0] - small[0]) * 1024 / (HELD - 100))
            print(f"  {name:<10} idle TLS: {held[name]['bytes_per_conn']:.0f} bytes/conn "
                  f"({small[0]} KiB at 100, {big[0]} KiB at {big[1]} open)", flush=True)
        with_each(memory)
    finally:
        backend.terminate()
        backend.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    def summary(what, name):
        rs = rows.get((what, name), [])
        return dict(rps=med([r["rps"] for r in rs]),
                    cpu_us=med([r["proxy_cpu"] / max(r["requests"], 1) * 1e6 for r in rs]),
                    errors=sum(r["errors"] for r in rs))

    out = [f"TLS termination: {', '.join(proxies)} (1 worker each, ECDSA P-256, plaintext nginx "
           f"backend), {machine()}, {a.rounds} interleaved rounds of {a.secs} s, medians; "
           "CPU is the proxy's", ""]
    first, others = proxies[0], proxies[1:]
    header = f"{'figure':<36}" + "".join(f"{n:>11}" for n in proxies)
    header += "".join(f"{first[:6] + '/' + n[:7]:>16}" for n in others)
    out.append(header + "  errors")
    result = dict(rounds=a.rounds, secs=a.secs, machine=machine(), figures={}, held=held)
    for what, label in (("full-hs", "full handshakes/s (wrk, c=20)"),
                        ("resumed-hs", "resumed handshakes/s (loadgen, c=20)"),
                        ("keepalive c=100", "keep-alive HTTPS req/s, c=100"),
                        ("keepalive c=5000", "keep-alive HTTPS req/s, c=5000")):
        s = {n: summary(what, n) for n in proxies}
        errs = ", ".join(str(s[n]["errors"]) for n in proxies)
        for unit, text in (("rps", label), ("cpu_us", "  proxy CPU us each")):
            v = {n: s[n][unit] for n in proxies}
            line = f"{text:<36}" + "".join(f"{v[n]:>11.1f}" for n in proxies)
            line += "".join(f"{'x%.2f' % (v[first] / v[n]):>16}" for n in others)
            out.append(line + (f"  {errs}" if unit == "rps" else ""))
        result["figures"][what] = s
    b = {n: held[n]["bytes_per_conn"] for n in proxies}
    line = f"{'memory per idle TLS conn (bytes)':<36}" + "".join(f"{b[n]:>11.0f}" for n in proxies)
    line += "".join(f"{'x%.2f' % (b[first] / b[n]):>16}" for n in others)
    out.append(line + "  " + ", ".join(f"{held[n]['open']} open" for n in proxies))
    f = result["figures"]
    bars = []
    if "speedmimi" in proxies and "nginx" in proxies:
        def ratio(what, unit):
            return f[what]["speedmimi"][unit] / f[what]["nginx"][unit]
        bars = [
            ("keep-alive CPU/request <= x0.85 nginx (c=100)", ratio("keepalive c=100", "cpu_us"),
             lambda r: r <= 0.85),
            ("keep-alive CPU/request <= x0.85 nginx (c=5000)", ratio("keepalive c=5000", "cpu_us"),
             lambda r: r <= 0.85),
            ("full handshakes/s >= x1.0 nginx", ratio("full-hs", "rps"), lambda r: r >= 1.0),
            ("idle TLS memory <= x0.5 nginx", b["speedmimi"] / b["nginx"], lambda r: r <= 0.5),
        ]
        out.append("")
    for text, r, ok in bars:
        out.append(f"bar: {text:<48} x{r:.2f}  {'met' if ok(r) else 'MISSED'}")
    result["bars"] = {text: dict(ratio=r, met=ok(r)) for text, r, ok in bars}
    errors = sum(r["errors"] for rs in rows.values() for r in rs)
    errors += sum(h["errors"] for h in held.values())
    out.append(f"errors over all runs: {errors}")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    name = "bench-tls-proxies" if bars else "bench-tls-compare"
    with open(os.path.join(ROOT, "results", f"{name}.txt"), "w") as fh:
        fh.write(text)
    with open(os.path.join(ROOT, "results", f"{name}.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
