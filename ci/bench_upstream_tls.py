#!/usr/bin/env python3
"""TLS to backends (issue 12, proxy item 3): speedmimi, nginx and HAProxy
side by side, each one worker, each taking plaintext HTTP from wrk and
speaking TLS to the same nginx backend (one worker, `return 200`, ECDSA
P-256 certificate from a CA this script makes with openssl; nothing kept).
Each proxy checks the backend's certificate against that CA and sends SNI.

Per round, interleaved, medians of ROUNDS, the proxy's CPU (utime + stime
from /proc) per request, counted over a window after warm-up from the
backend's stub_status:
- kept-alive backend connections: wrk at 100 and 1,000 connections
  (speedmimi's defaults; nginx keepalive 10000; HAProxy http-reuse always);
- a new backend connection per request (speedmimi keepalive: 0, nginx
  without upstream keepalive, HAProxy http-reuse never), each resuming the
  backend's session where the proxy can: wrk at 20 connections.

Prints a table and writes results/bench-upstream-tls.txt (JSON beside it).
Usage: ci/bench_upstream_tls.py [--rounds 3] [--secs 6] [--proxies LIST]
       (SPEEDMIMI=... names the binary)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_faults import ROOT, free_port, machine  # noqa: E402
from bench_tls import make_certs  # noqa: E402
from bench_tls_proxies import med, wait_port, window  # noqa: E402

PROXIES = ("speedmimi", "nginx", "haproxy")
MODES = (("keepalive c=100", 100, True), ("keepalive c=1000", 1000, True),
         ("new conn per request c=20", 20, False))


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
  ssl_session_cache shared:bench:10m;
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ return 200 "ok"; }}
  }}
  server {{ listen 127.0.0.1:{status_port}; location / {{ stub_status; }} }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port(port, "backend nginx", p)
    return p


def start_proxy(name, d, port, backend, binary, keepalive):
    ca = os.path.join(d, "ca.pem")
    if name == "speedmimi":
        conf = os.path.join(d, "speedmimi.yaml")
        ka = "" if keepalive else "\n    keepalive: 0"
        with open(conf, "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:{port}"
  workers: 1
  max_conn: 5000
admin:
  listen: "127.0.0.1:0"
upstreams:
  app:
    backends: [ {{ addr: "127.0.0.1:{backend}", tls: {{ sni: localhost, ca: "{ca}" }} }} ]{ka}
routing:
  default: {{ upstream: app }}
""")
        argv = [binary, "--config", conf]
    elif name == "nginx":
        conf = os.path.join(d, "proxy-nginx.conf")
        ka = "keepalive 10000;" if keepalive else ""
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
  upstream app {{ server 127.0.0.1:{backend}; {ka} }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass https://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_session_reuse on;
    }}
  }}
}}
""")
        argv = ["nginx", "-c", conf]
    else:
        conf = os.path.join(d, "haproxy.cfg")
        reuse = "always" if keepalive else "never"
        with open(conf, "w") as f:
            f.write(f"""global
  maxconn 4900
  ulimit-n 20000
  nbthread 1
  log stdout format raw local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse {reuse}
frontend plain
  bind 127.0.0.1:{port}
  default_backend app
backend app
  server s1 127.0.0.1:{backend} ssl verify required ca-file {ca} sni str(localhost) verifyhost localhost
""")
        argv = ["haproxy", "-f", conf]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, name, p)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=6)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    a = ap.parse_args()
    proxies = a.proxies.split(",")
    for tool in ["wrk", "openssl", "nginx"] + (["haproxy"] if "haproxy" in proxies else []):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install nginx haproxy wrk openssl")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.environ.get("SPEEDMIMI") or os.path.join(target, "release", "speedmimi")
    work = tempfile.mkdtemp(prefix="bench-upstream-tls.")
    make_certs(work)
    backend_port, status_port = free_port(), free_port()
    backend = start_backend(work, backend_port, status_port)
    rows = {}
    try:
        for rnd in range(a.rounds):
            print(f"== round {rnd + 1}/{a.rounds}", flush=True)
            for what, conns, keepalive in MODES:
                for name in proxies:
                    port = free_port()
                    proxy = start_proxy(name, work, port, backend_port, binary, keepalive)
                    try:
                        warm = 2
                        argv = ["wrk", "-t1", f"-c{conns}", f"-d{warm + a.secs + 1}s",
                                "--timeout", "10s", f"http://127.0.0.1:{port}/"]
                        r = window(argv, proxy, status_port, warm, a.secs)
                    finally:
                        proxy.terminate()
                        try:
                            proxy.wait(10)
                        except subprocess.TimeoutExpired:
                            proxy.kill()
                            proxy.wait(10)
                    rows.setdefault((what, name), []).append(r)
                    per = r["proxy_cpu"] / max(r["requests"], 1) * 1e6
                    print(f"  {name:<10} {what:<28} {r['rps']:>9.0f}/s  {per:>7.1f} us "
                          f"proxy CPU each  errors {r['errors']}", flush=True)
    finally:
        backend.terminate()
        backend.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    out = [f"TLS to the backend: {', '.join(proxies)} (1 worker each, plaintext clients, nginx "
           f"TLS backend, ECDSA P-256, chain and name checked), {machine()}, {a.rounds} "
           f"interleaved rounds of {a.secs} s, medians; CPU is the proxy's", ""]
    first, others = proxies[0], proxies[1:]
    header = f"{'figure':<40}" + "".join(f"{n:>11}" for n in proxies)
    out.append(header + "".join(f"{first[:6] + '/' + n[:7]:>16}" for n in others) + "  errors")
    result = dict(rounds=a.rounds, secs=a.secs, machine=machine(), figures={})
    for what, _, _ in MODES:
        rs = {n: rows.get((what, n), []) for n in proxies}
        s = {n: dict(rps=med([r["rps"] for r in rs[n]]),
                     cpu_us=med([r["proxy_cpu"] / max(r["requests"], 1) * 1e6 for r in rs[n]]),
                     errors=sum(r["errors"] for r in rs[n])) for n in proxies}
        for unit, text in (("rps", f"{what} req/s"), ("cpu_us", "  proxy CPU us each")):
            v = {n: s[n][unit] for n in proxies}
            line = f"{text:<40}" + "".join(f"{v[n]:>11.1f}" for n in proxies)
            line += "".join(f"{'x%.2f' % (v[first] / v[n]):>16}" for n in others)
            if unit == "rps":
                line += "  " + ", ".join(str(s[n]["errors"]) for n in proxies)
            out.append(line)
        result["figures"][what] = s
    text = "\n".join(out) + "\n"
    print("\n" + text)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "bench-upstream-tls.txt"), "w") as fh:
        fh.write(text)
    with open(os.path.join(ROOT, "results", "bench-upstream-tls.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
