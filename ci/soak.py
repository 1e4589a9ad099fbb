#!/usr/bin/env python3
"""Soak: the proxy under a steady mix for a long time (issue 14, item 7).

speedmimi (2 event loops, defaults otherwise) in front of two `loadgen
backend`s, for --duration (default 1 h, as the product document's
`-duration=1h`), in windows of --window (default 5 min). In every window, at
once: keep-alive clients (`loadgen run -c 50 -R RATE`, open loop), a new
connection for every request (`-c 10 -R RATE/10 -H 'Connection: close'`),
and all along 200 slow clients (ci/slowloris.py: a head that never ends,
closed at header_timeout and reopened). Every --reload seconds (60) the
configuration changes (balancer round_robin <-> least_conn) and SIGHUP; every
--restart seconds (180) one backend is killed -9 and restarted on its port
2 s later (requests are GETs: retried on the other backend).

Per window: requests/s, p99 (exact: one loadgen run per window), errors,
proxy RSS (and its anonymous part), open descriptors and backend connections
open (the upstream pool with the requests in flight), each the mean of the window's one-second samples.
The verdict compares the second window (after warm-up) with the last:
anonymous RSS (RssAnon: RSS less the binary's pages, which grow as code paths
are first taken) and descriptors less pooled backend connections (the
window's lowest count; the pool rises and falls with the requests in flight)
grown by at most 1 %, p99 by at most 10 %; 0 errors; and, once the load has
stopped, the descriptors beyond pooled backend connections back at their
count before the load (exact, polled for up to 20 s while closes settle). Writes DIR/soak.txt, soak.json
and, for `loadgen report`, results.json + intervals.csv (one step per window,
and the whole run as one time series), then renders DIR/report.html.

Usage: ci/soak.py [--duration 3600] [--window 300] [--rate 2000] [--out DIR]
                  [--bars leaks|all]
  --bars all (default) fails on every bar; `leaks` fails only on errors and
  descriptors left behind, for short runs (CI) where RSS and p99 are still
  settling.
Exit status: 0 when the bars asked for were met, 1 otherwise.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_faults import ROOT, TICK, Rig, config, cpu_ticks, errors_of, machine, prepare  # noqa: E402


def rss_bytes(pid, field="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def backend_conns(ports):
    """ESTABLISHED TCP connections to any of `ports` (the proxy's backend side)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) in ports:
                n += 1
    return n


class Sampler(threading.Thread):
    """Once a second: proxy CPU %, RSS, descriptors, backend connections."""

    def __init__(self, pid, ports):
        super().__init__(daemon=True)
        self.pid, self.ports = pid, ports
        self.rows, self.stop = [], threading.Event()

    def run(self):
        t0, c0 = time.monotonic(), cpu_ticks(self.pid)
        while not self.stop.wait(1.0):
            t, c = time.monotonic(), cpu_ticks(self.pid)
            self.rows.append(dict(t=t, cpu_percent=(c - c0) / TICK / (t - t0) * 100,
                                  rss=rss_bytes(self.pid),
                                  rss_anon=rss_bytes(self.pid, "RssAnon:"), fds=fds(self.pid),
                                  backend_conns=backend_conns(self.ports)))
            t0, c0 = t, c


def faults(rig, stop, path, backends, proxy_p, a, reload_s, restart_s, log):
    """Reloads and backend restarts until `stop`."""
    start = time.monotonic()
    next_reload, next_restart, n = start + reload_s, start + restart_s, 0
    victim_name, victim_addr = "b", backends[1]
    while not stop.wait(0.2):
        now = time.monotonic()
        if now >= next_reload:
            n += 1
            text = config("127.0.0.1:0", backends,
                          balancer=("least_conn", "round_robin")[n % 2]).replace(
                "workers: 1", "workers: 2")
            with open(path + ".new", "w") as f:
                f.write(text)
            os.rename(path + ".new", path)
            proxy_p.send_signal(signal.SIGHUP)
            log.append((now - start, "reload"))
            next_reload += reload_s
        if now >= next_restart:
            victim = next(p for p in rig.procs if getattr(p, "name", "") == victim_name
                          and p.poll() is None)
            victim.kill()
            victim.wait(5)
            time.sleep(2)
            port = int(victim_addr.rsplit(":", 1)[1])
            rig.backend(victim_name, port)
            log.append((now - start, "backend restart"))
            next_restart += restart_s


def settled_fds(pid, ports, want, limit=20.0):
    """Descriptors the proxy holds beyond its pooled backend connections, once
    the load has stopped: polled until it equals `want` (the count before any
    load) or `limit` seconds pass. Client connections closing and pooled ones
    the backends drop settle within a few seconds; a descriptor still held
    after that is a leak. Returns the last count read."""
    deadline = time.monotonic() + limit
    while True:
        n = fds(pid) - backend_conns(ports)
        if n <= want or time.monotonic() >= deadline:
            return n
        time.sleep(0.25)


def window_mean(samples, since):
    """Means over the window's one-second samples: a count read at one instant
    moves with the connections opening and closing at that instant."""
    mine = [x for x in samples if x["t"] >= since]
    if not mine:
        return None
    means = {k: sum(x[k] for x in mine) / len(mine)
             for k in ("rss", "rss_anon", "fds", "backend_conns")}
    # Descriptors are judged on the window's lowest count: the slow clients
    # reconnect together every header_timeout, so the mean moves by a few
    # with where a window's edges fall; what leaks raises the floor.
    means["fds_min"] = min(x["fds"] for x in mine)
    # Less the pooled backend connections, which rise with the requests in
    # flight and fall back: what is left is clients and the proxy's own.
    means["fds_own_min"] = min(x["fds"] - x["backend_conns"] for x in mine)
    return means


def window_run(rig, i, url, secs, rate):
    keep = rig.load(f"keep-{i}", url, 50, secs, rate=rate)
    fresh = rig.spawn(f"fresh-{i}", [rig.loadgen, "run", url, "-c", "10", "-t", "1",
                                     "-d", f"{secs}s", "-R", str(max(1, rate // 10)),
                                     "--timeout", "2s", "--json", "-q",
                                     "-H", "Connection: close"])
    return keep, fresh


def pct(a, b):
    return (b - a) / a * 100 if a else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--window", type=float, default=300)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--reload", type=float, default=60)
    ap.add_argument("--restart", type=float, default=180)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--bars", choices=("all", "leaks"), default="all")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    binaries = prepare()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = a.out or os.path.join(ROOT, "results", f"soak-{stamp}")
    os.makedirs(out, exist_ok=True)
    windows = max(1, int(a.duration // a.window))
    rig = Rig(out, binaries)
    try:
        (_, ba), (_, bb) = rig.backend("a"), rig.backend("b")
        backends = [ba, bb]
        text = config("127.0.0.1:0", backends).replace("workers: 1", "workers: 2")
        proxy_p, path, proxy, admin = rig.proxy(text)
        url = f"http://{proxy}/"
        ports = {int(x.rsplit(":", 1)[1]) for x in backends}
        slow = rig.spawn("slow", [sys.executable, os.path.join(ROOT, "ci", "slowloris.py"),
                                  proxy, "--count", str(a.slow), "--connect-rate", "1000",
                                  "--byte-interval", "2", "--duration",
                                  str(a.duration + 120)])
        # Before any load: listeners, the loops' plumbing, the admin API.
        fds_idle = settled_fds(proxy_p.pid, ports, 0, limit=0)
        sampler = Sampler(proxy_p.pid, ports)
        sampler.start()
        stop, events = threading.Event(), []
        chaos = threading.Thread(target=faults, args=(rig, stop, path, backends, proxy_p, ba,
                                                       a.reload, a.restart, events), daemon=True)
        chaos.start()
        t_start = time.monotonic()
        rows = []
        for i in range(windows):
            w0 = time.monotonic()
            c0 = cpu_ticks(proxy_p.pid)
            keep, fresh = window_run(rig, i, url, int(a.window), a.rate)
            rk, rf = rig.result(keep, timeout=a.window + 60), rig.result(fresh, timeout=a.window + 60)
            c1 = cpu_ticks(proxy_p.pid)
            sample = window_mean(sampler.rows, w0) or dict(
                rss=rss_bytes(proxy_p.pid), rss_anon=rss_bytes(proxy_p.pid, "RssAnon:"),
                fds=fds(proxy_p.pid), fds_min=fds(proxy_p.pid), fds_own_min=fds(proxy_p.pid),
                backend_conns=0)
            ek, kinds_k = errors_of(rk)
            ef, kinds_f = errors_of(rf)
            rows.append(dict(window=i + 1, start_s=w0 - t_start,
                             end_s=time.monotonic() - t_start,
                             rps=rk["rps"] + rf["rps"], requests=rk["requests"] + rf["requests"],
                             p99_ms=rk["latency_us"]["p99"] / 1000,
                             p99_fresh_ms=rf["latency_us"]["p99"] / 1000,
                             errors=ek + ef, error_kinds=" ".join(x for x in (kinds_k, kinds_f) if x),
                             rss=sample["rss"], rss_anon=sample["rss_anon"], fds=sample["fds"],
                             fds_min=sample["fds_min"], fds_own_min=sample["fds_own_min"],
                             backend_conns=sample["backend_conns"],
                             cpu_s=(c1 - c0) / TICK, keep=rk, fresh=rf))
            print(f"window {i + 1}/{windows}: {rows[-1]['rps']:.0f} req/s, p99 "
                  f"{rows[-1]['p99_ms']:.2f} ms, {rows[-1]['errors']} errors, RSS "
                  f"{sample['rss'] / 2**20:.1f} MiB, {sample['fds']:.0f} fds", flush=True)
        stop.set()
        sampler.stop.set()
        chaos.join(10)
        alive = proxy_p.poll() is None
        slow_alive = slow.poll() is None
        slow.kill()
        slow.wait(10)
        fds_after = settled_fds(proxy_p.pid, ports, fds_idle) if alive else -1
    finally:
        rig.stop()
    verdict = judge(rows, alive, a.bars, fds_idle, fds_after)
    text = render_text(rows, events, verdict, a, slow_alive)
    print(text)
    with open(os.path.join(out, "soak.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(dict(windows=[{k: v for k, v in r.items() if k not in ("keep", "fresh")}
                                for r in rows], events=events, verdict=verdict), f, indent=1)
    write_report(out, rows, sampler.rows, t_start, a)
    rendered = subprocess.run([binaries[1], "report", out], capture_output=True, text=True)
    print(rendered.stdout.strip() or rendered.stderr.strip())
    return 0 if verdict["met"] else 1


def judge(rows, alive, bars, fds_idle, fds_after):
    second = rows[1] if len(rows) > 1 else rows[0]
    last = rows[-1]
    v = dict(rss_growth_pct=pct(second["rss"], last["rss"]),
             rss_anon_growth_pct=pct(second["rss_anon"], last["rss_anon"]),
             fds_growth_pct=pct(second["fds_own_min"], last["fds_own_min"]),
             p99_drift_pct=pct(second["p99_ms"], last["p99_ms"]),
             errors=sum(r["errors"] for r in rows), proxy_alive=alive, bars=bars,
             fds_idle=fds_idle, fds_after=fds_after)
    # Descriptors are judged exactly, once the load has stopped: the count
    # beyond pooled backend connections is back where it was before the run.
    # In a window the floor moves with the pool, which grows with the
    # requests in flight (a high-water mark, not a leak).
    v["met_fds_after"] = alive and fds_after <= fds_idle
    v["met_fds"] = v["met_fds_after"] and (bars == "leaks" or v["fds_growth_pct"] <= 1)
    leaks_ok = v["errors"] == 0 and v["met_fds"]
    # The bar is on anonymous memory: RSS also counts pages of the binary
    # read in as code paths are first taken (a reload, a restart, the
    # admin API), which grows with coverage, not with a leak.
    v["met_rss"] = v["rss_anon_growth_pct"] <= 1
    v["met_p99"] = v["p99_drift_pct"] <= 10
    v["met"] = leaks_ok and (bars == "leaks" or (v["met_rss"] and v["met_p99"]))
    return v


def render_text(rows, events, v, a, slow_alive):
    out = [f"soak: {machine()}; {a.duration:.0f} s in windows of {a.window:.0f} s, "
           f"{a.rate} req/s keep-alive + {max(1, a.rate // 10)} req/s new connections, "
           f"{a.slow} slow clients, reload every {a.reload:.0f} s, backend restart every "
           f"{a.restart:.0f} s", "",
           "window  start_s  req/s    p99_ms  p99_new_conn_ms  errors  rss_MiB  anon_MiB  fds   fds_min  own_min  backend_conns",
           ]
    for r in rows:
        out.append(f"{r['window']:<7} {r['start_s']:<8.0f} {r['rps']:<8.0f} {r['p99_ms']:<7.2f} "
                   f"{r['p99_fresh_ms']:<16.2f} {r['errors']:<7} {r['rss'] / 2**20:<8.1f} "
                   f"{r['rss_anon'] / 2**20:<9.2f} "
                   f"{r['fds']:<5.0f} {r['fds_min']:<8} {r['fds_own_min']:<8} {r['backend_conns']:.0f}"
                   + (f"  ({r['error_kinds']})" if r["errors"] else ""))
    reloads = sum(1 for _, e in events if e == "reload")
    restarts = sum(1 for _, e in events if e == "backend restart")
    yes = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    out += ["", f"{reloads} reloads, {restarts} backend restarts; slow clients running at the "
            f"end: {slow_alive}; proxy alive: {v['proxy_alive']}",
            f"second window -> last: anonymous RSS {v['rss_anon_growth_pct']:+.2f} % (bar <= 1 %: "
            f"{yes(v['met_rss'])}; RSS with the binary's pages {v['rss_growth_pct']:+.2f} %), descriptors less pooled backend connections (window minimum) {v['fds_growth_pct']:+.2f} % (bar <= 1 %: "
            f"{yes(v['fds_growth_pct'] <= 1)}{'' if v['bars'] == 'all' else ', not judged'}), p99 {v['p99_drift_pct']:+.1f} % (bar <= 10 %: "
            f"{yes(v['met_p99'])}), errors {v['errors']} (bar 0: {yes(v['errors'] == 0)})",
            f"descriptors beyond pooled backend connections, before the load {v['fds_idle']}, "
            f"after it stopped {v['fds_after']} (bar: no more: {yes(v['met_fds_after'])})",
            f"verdict ({v['bars']} bars): {'PASS' if v['met'] else 'FAIL'}"]
    return "\n".join(out)


def write_report(out, rows, samples, t_start, a):
    """results.json + intervals.csv in the reports schema (docs/reports.md)."""
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    steps, intervals = [], []
    for r in rows:
        lat = r["keep"]["latency_us"]
        e = r["keep"]["errors"]
        steps.append(dict(
            target=f"window {r['window']}", round=0, step=r["window"], connections=60,
            peak_open=r["keep"]["connections"]["peak_open"], mode="open", rate=float(a.rate),
            duration_s=r["end_s"] - r["start_s"], requests=r["requests"], rps=r["rps"],
            latency_us={k: float(lat[k]) for k in ("p50", "p75", "p90", "p99", "p999", "max")},
            errors={k: e[k] + r["fresh"]["errors"][k] for k in
                    ("connect", "read", "write", "timeout", "status_4xx", "status_5xx")},
            proxy=dict(cpu_seconds=r["cpu_s"],
                       cpu_us_per_request=r["cpu_s"] * 1e6 / max(1, r["requests"]),
                       rss_peak_bytes=int(r["rss"]), rss_end_bytes=int(r["rss"])),
            kernel=dict(sock_mem_bytes_start=0, sock_mem_bytes_peak=0, sock_mem_bytes_end=0)))
        path = os.path.join(out, f"keep-{r['window'] - 1}.csv")
        with open(path) as f:
            for row in csv.DictReader(f):
                t = r["start_s"] + float(row["time_s"])
                s = min(samples, key=lambda x: abs(x["t"] - t_start - t)) if samples else {}
                intervals.append(dict(
                    target="whole soak", round=0, step=0, t_s=round(t, 3),
                    rps=float(row["rps"]), p50_us=float(row["p50_us"]),
                    p99_us=float(row["p99_us"]), open_connections=int(row["open_conns"]),
                    errors=int(row["errors"]), proxy_cpu_percent=round(s.get("cpu_percent", 0), 2),
                    proxy_rss_bytes=s.get("rss", 0), sock_mem_bytes=0))
    whole = dict(steps[-1], target="whole soak", step=0,
                 duration_s=rows[-1]["end_s"], requests=sum(r["requests"] for r in rows),
                 rps=sum(r["requests"] for r in rows) / max(1e-9, rows[-1]["end_s"]))
    run = dict(schema="speedmimi.bench/v1", scenario="soak",
               started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
               note=f"soak: {a.duration:.0f} s, windows of {a.window:.0f} s (ci/soak.py)",
               env=dict(cpu_model=cpu_model, cores=os.cpu_count(), memory_bytes=mem,
                        kernel=platform.release()),
               targets=[dict(name="whole soak", kind="speedmimi")]
               + [dict(name=s["target"], kind="speedmimi") for s in steps],
               steps=[whole] + steps)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(run, f, indent=1)
    fields = ["target", "round", "step", "t_s", "rps", "p50_us", "p99_us", "open_connections",
              "errors", "proxy_cpu_percent", "proxy_rss_bytes", "sock_mem_bytes"]
    with open(os.path.join(out, "intervals.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(intervals)


if __name__ == "__main__":
    sys.exit(main())
