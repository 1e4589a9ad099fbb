#!/usr/bin/env python3
"""SpeedMimi against nginx and HAProxy, side by side on this machine.

One backend (nginx, one worker, 12-byte body) and three proxies with one
worker each. wrk drives each proxy in turn (A B C A B C ...), so slow drift of
a shared machine hits all three alike; we report medians, the proxy's CPU per
request from /proc (utime+stime of the proxy and its children), and the RSS
each proxy spends per idle keep-alive connection.

Usage: ci/bench_peers.py [--rounds 3] [--duration 8] [--conns 100,5000]
                         [--idle 15000] [--json FILE] [--proxies speedmimi,nginx,haproxy]
--proxies also takes speedmimi-default (no upstream tuning), speedmimi-ka10000
and speedmimi-ka64 (the defaults with that fixed idle-pool cap), speedmimi-b
and forwarder.
Everything it starts it stops, on every exit path.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "ci", "peers")
TICK = os.sysconf("SC_CLK_TCK")
BACKEND_PORT = 18000
PORTS = {"speedmimi": 18001, "nginx": 18002, "haproxy": 18003, "speedmimi-b": 18004,
         "forwarder": 18005, "speedmimi-default": 18006, "speedmimi-ka10000": 18007,
         "speedmimi-ka64": 18008}
# speedmimi entries: the configuration each runs (tuned: max_conns 128 like
# HAProxy's maxconn; default: no upstream tuning at all; kaN: the defaults
# with a fixed idle-pool cap of N, 64 being the default before `auto`).
SPEEDMIMI_CONFIGS = {"speedmimi": ("speedmimi.yaml", {}), "speedmimi-b": ("speedmimi.yaml", {}),
                     "speedmimi-default": ("speedmimi-default.yaml", {}),
                     "speedmimi-ka10000": ("speedmimi-keepalive.yaml", {"__KEEPALIVE__": "10000"}),
                     "speedmimi-ka64": ("speedmimi-keepalive.yaml", {"__KEEPALIVE__": "64"})}
# Ratios printed at the end: (entry, the entries it is compared against).
COMPARISONS = [("speedmimi", ("nginx", "haproxy", "speedmimi-b", "forwarder")),
               ("speedmimi-default", ("speedmimi-ka10000", "speedmimi", "speedmimi-ka64"))]


def ensure_tools():
    missing = [t for t in ("nginx", "haproxy", "wrk") if not shutil.which(t)]
    if missing:
        print(f"installing {' '.join(missing)} from Debian ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def render(template, out_dir, name, port, extra=None):
    text = open(os.path.join(PEERS, template)).read()
    text = (text.replace("__DIR__", out_dir).replace("__PORT__", str(port))
            .replace("__BACKEND_PORT__", str(BACKEND_PORT)))
    for key, value in (extra or {}).items():
        text = text.replace(key, value)
    path = os.path.join(out_dir, name)
    open(path, "w").write(text)
    return path


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def tree_pids(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """(user, system) CPU seconds of pid and its descendants."""
    user = system = 0
    for p in tree_pids(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / TICK, system / TICK


def rss_bytes(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_wrk(port, conns, duration):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = parse_latency(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return requests, rps, p99, errors


def parse_latency(text):
    """wrk latency ('812.00us', '1.20ms', '2.01s') in microseconds."""
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1_000_000}[m.group(2)]


def idle_rss_per_conn(pid, port, count):
    """Open `count` keep-alive connections one at a time, one request each,
    keep them open, and return the RSS growth per connection in bytes."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    time.sleep(1.0)
    before = rss_bytes(pid)
    socks = []
    try:
        for i in range(count):
            s = socket.socket()
            s.bind((f"127.0.1.{1 + i % 200}", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"hello world\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"connection {i} closed by the proxy")
                got += chunk
            socks.append(s)
        time.sleep(1.5)
        after = rss_bytes(pid)
    finally:
        for s in socks:
            s.close()
    return (after - before) / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--conns", default="100,5000")
    ap.add_argument("--idle", type=int, default=15000)
    ap.add_argument("--proxies", default="speedmimi,nginx,haproxy")
    ap.add_argument("--speedmimi", default=os.path.join(ROOT, "target", "release", "speedmimi"))
    ap.add_argument("--speedmimi-b", help="a second speedmimi binary: add 'speedmimi-b' to "
                    "--proxies for an interleaved A/B comparison of two builds")
    ap.add_argument("--forwarder", default=os.path.join(ROOT, "target", "release", "examples", "tcp_forwarder"),
                    help="the zero-parsing TCP forwarder: add 'forwarder' to --proxies to measure the floor "
                    "(cargo build --release --example tcp_forwarder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    ensure_tools()
    work = tempfile.mkdtemp(prefix="speedmimi-peers-")
    procs = {}

    def stop_all(*_):
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        procs.clear()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        conf = render("nginx-backend.conf", work, "backend.conf", BACKEND_PORT)
        procs["backend"] = subprocess.Popen(["nginx", "-c", conf, "-p", work, "-g", "daemon off;"])
        wait_port(BACKEND_PORT)
        names = args.proxies.split(",")
        for name in names:
            port = PORTS[name]
            if name.startswith("speedmimi"):
                template, extra = SPEEDMIMI_CONFIGS[name]
                conf = render(template, work, f"{name}.yaml", port, extra)
                binary = args.speedmimi_b if name == "speedmimi-b" else args.speedmimi
                cmd = [binary, "--config", conf]
            elif name == "forwarder":
                # The zero-parsing TCP forwarder (proxy/examples): the floor.
                cmd = [args.forwarder, f"127.0.0.1:{port}", f"127.0.0.1:{BACKEND_PORT}"]
            elif name == "nginx":
                conf = render("nginx-proxy.conf", work, "nginx-proxy.conf", port)
                cmd = ["nginx", "-c", conf, "-p", work, "-g", "daemon off;"]
            else:
                conf = render("haproxy.cfg", work, "haproxy.cfg", port)
                cmd = ["haproxy", "-f", conf]
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            wait_port(port)

        # Idle memory first, on fresh processes: after a burst, freed memory
        # would be reused and hide the growth.
        idle = {}
        if args.idle:
            for name in names:
                if name == "forwarder":
                    continue  # two descriptors per client: 15,000 would pass the fd limit
                # HAProxy's maxconn is capped at 9900 by the descriptor limit.
                count = min(args.idle, 9000) if name == "haproxy" else args.idle
                idle[name] = idle_rss_per_conn(procs[name].pid, PORTS[name], count)
                print(f"idle  {name:17} {idle[name]:8.0f} B RSS per idle keep-alive connection "
                      f"({count} connections)", flush=True)
        results = {}
        for conns in [int(c) for c in args.conns.split(",")]:
            for name in names:  # warm-up: pools filled, caches hot
                run_wrk(PORTS[name], conns, 2)
            for r in range(args.rounds):
                for name in names:
                    pid = procs[name].pid
                    user0, sys0 = cpu_seconds(pid)
                    reqs, rps, p99, errors = run_wrk(PORTS[name], conns, args.duration)
                    user1, sys1 = cpu_seconds(pid)
                    per_1k = 1000 / (reqs / 1000)
                    user, system = (user1 - user0) * per_1k, (sys1 - sys0) * per_1k
                    row = results.setdefault(f"{name}@{conns}", {"rps": [], "p99_us": [], "cpu_ms_per_1k": [],
                                                                 "user_ms_per_1k": [], "sys_ms_per_1k": [],
                                                                 "errors": 0})
                    row["rps"].append(rps)
                    row["p99_us"].append(p99)
                    row["cpu_ms_per_1k"].append(user + system)
                    row["user_ms_per_1k"].append(user)
                    row["sys_ms_per_1k"].append(system)
                    row["errors"] += errors
                    print(f"round {r + 1} {name:17} c={conns:<5} {rps:>10.0f} req/s  p99 {p99 / 1000:7.2f} ms  "
                          f"cpu {user + system:6.1f} ms/1k req (user {user:4.1f} sys {system:5.1f})  "
                          f"errors {errors}", flush=True)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {cpu_model()}, Linux {platform.release()}")
    print(f"{'proxy':17} {'conns':>6} {'req/s (median)':>15} {'p99 ms':>8} {'CPU ms/1k req':>14} "
          f"{'user':>6} {'sys':>6} {'errors':>7} {'idle B/conn':>12}")
    summary = {}
    for key, row in results.items():
        name, conns = key.split("@")
        med = {k: statistics.median(row[k]) for k in ("rps", "p99_us", "cpu_ms_per_1k",
                                                       "user_ms_per_1k", "sys_ms_per_1k")}
        med["errors"] = row["errors"]
        summary[key] = med
        print(f"{name:17} {conns:>6} {med['rps']:>15.0f} {med['p99_us'] / 1000:>8.2f} "
              f"{med['cpu_ms_per_1k']:>14.1f} {med['user_ms_per_1k']:>6.1f} {med['sys_ms_per_1k']:>6.1f} "
              f"{row['errors']:>7} {idle.get(name, float('nan')):>12.0f}")
    print()
    for conns in args.conns.split(","):
        for entry, peers in COMPARISONS:
            me = summary.get(f"{entry}@{conns}")
            for peer in peers:
                other = summary.get(f"{peer}@{conns}")
                if not (me and other):
                    continue
                # Also the median of each round's own ratio: A and B of one
                # round ran back to back, so slow drift of the machine cancels.
                mine, theirs = results[f"{entry}@{conns}"], results[f"{peer}@{conns}"]
                paired = {k: statistics.median(a / b for a, b in zip(mine[k], theirs[k]))
                          for k in ("rps", "cpu_ms_per_1k")}
                print(f"{entry}/{peer:8} c={conns:<5} req/s x{me['rps'] / other['rps']:.2f}   "
                      f"CPU per request x{me['cpu_ms_per_1k'] / other['cpu_ms_per_1k']:.2f}   "
                      f"(per-round ratios, median: x{paired['rps']:.2f} / x{paired['cpu_ms_per_1k']:.2f})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        json.dump({"schema": "speedmimi.peers/v1", "machine": platform.node(), "cpu": cpu_model(),
                   "cores": os.cpu_count(), "rounds": args.rounds, "duration_s": args.duration,
                   "results": summary, "raw": results, "idle_rss_bytes_per_conn": idle},
                  open(args.json, "w"), indent=2)


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    main()
