#!/usr/bin/env python3
"""Faults under load (issue 11, item 10). Each scenario starts its own
speedmimi and `loadgen backend`s, drives steady well-behaved load (`loadgen
run`, keep-alive GETs, closed loop) and injects one fault:

  backend-kill   kill -9 one of two backends, restart it 2 s later (bar: 0 errors)
  worker-kill    kill -9 one of two worker processes (server.processes: 2)
  sighup         SIGHUP every second for 10 s, the balancer toggled each time (bar: 0 errors)
  slowloris      10,000 slowloris connections (ci/slowloris.py, its own process)
                 beside normal clients at a fixed rate; their p99 vs a baseline run (bar: <= x2)
  slowloris-control  the same slow clients at a backend the proxy does not use
  slowloris-decoy    the same slow clients at a second speedmimi (same churn)
                 In the three, the slow clients (and the decoy) run on the last
                 CPU and everything measured on the others, as if on two hosts.
  emfile         the proxy under `RLIMIT_NOFILE` 256 and 400 clients, then 20
                 (bar: it serves again once the load drops)
  logfull        server.access_log on a 64 KiB tmpfs (bar: 0 errors, dropped lines counted)

Per scenario: errors the clients saw, requests served and the time to
recover, from the fault until requests succeed again (from loadgen's
one-second CSV rows: the end of the last row after the fault with errors or
below 10% of the rate before it, so a resolution of 1 s; emfile: a probe
request every 100 ms after the load drops). Prints a table and writes it to
results/bench-faults.txt (JSON beside it). Every wait is bounded; the whole
run takes about 3 minutes.

Usage: ci/bench_faults.py [--only NAME,...] [--conns 50]
  env SPEEDMIMI=... LOADGEN=... name the binaries (else $CARGO_TARGET_DIR/release).
Exit status: 0 when every bar was met, 1 otherwise. Run as root (tmpfs mount).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


class Rig:
    """What one scenario started; stop() ends all of it (process groups)."""

    def __init__(self, work, binaries):
        self.work, self.speedmimi, self.loadgen = work, *binaries
        self.procs = []
        self.mounts = []

    def spawn(self, name, argv, **kw):
        out = open(os.path.join(self.work, f"{name}.out"), "w")
        err = open(os.path.join(self.work, f"{name}.err"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True, **kw)
        p.name = name
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        for m in self.mounts:
            subprocess.run(["umount", "-l", m], check=False)

    def line_in(self, name, prefix, timeout=10):
        """The rest of the first line of NAME.out starting with PREFIX."""
        path = os.path.join(self.work, f"{name}.out")
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(path) as f:
                for line in f:
                    if line.startswith(prefix):
                        return line[len(prefix):].split()[0]
            time.sleep(0.05)
        raise RuntimeError(f"no '{prefix}' line from {name}: {open(path[:-4] + '.err').read()}")

    def backend(self, name, port=0):
        deadline = time.time() + 10
        while True:
            p = self.spawn(name, [self.loadgen, "backend", "--listen", f"127.0.0.1:{port}",
                                  "--workers", "1"])
            try:
                return p, self.line_in(name, "listening on ", timeout=2)
            except RuntimeError:
                p.kill()  # port not free yet (restart on the same port): try again
                if time.time() > deadline:
                    raise

    def proxy(self, yaml, nofile=None, name="proxy"):
        path = os.path.join(self.work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(yaml)
        limit = None
        if nofile:
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        p = self.spawn(name, [self.speedmimi, "--config", path], preexec_fn=limit,
                       env={**os.environ, "RUST_LOG": "warn"})
        return p, path, self.line_in(name, "listening on "), self.line_in(name, "admin on ")

    def load(self, name, url, conns, secs, rate=None, timeout="2s", cpus=None):
        argv = [self.loadgen, "run", url, "-c", str(conns), "-t", "1", "-d", f"{secs}s",
                "--timeout", timeout, "--json", "-q",
                "--csv", os.path.join(self.work, f"{name}.csv")]
        if rate:
            argv += ["-R", str(rate)]
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        p = self.spawn(name, argv, preexec_fn=pin)
        p.t0 = time.monotonic()
        return p

    def result(self, p, timeout=60):
        p.wait(timeout)
        with open(os.path.join(self.work, f"{p.name}.out")) as f:
            return json.load(f)

    def rows(self, name):
        with open(os.path.join(self.work, f"{name}.csv")) as f:
            return [(float(r["time_s"]), float(r["rps"]), int(r["errors"]))
                    for r in csv.DictReader(f)]


def config(listen, backends, processes=1, balancer="round_robin", extra=""):
    lines = "\n".join(f'      - {{ addr: "{b}" }}' for b in backends)
    return f"""server:
  listen: "{listen}"
  workers: 1
  processes: {processes}
  max_conn: 15000
{extra}admin:
  listen: "127.0.0.1:0"
upstreams:
  app:
    backends:
{lines}
routing:
  default: {{ upstream: app, load_balancer: {balancer} }}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def recovery(rows, fault_s):
    """Seconds from the fault to the end of the last affected CSV row (one
    that overlaps the fault or comes after it, with errors or, after it, under
    10% of the median rate before the fault); 0 when none was."""
    before = [rps for t, rps, _ in rows if t <= fault_s] or [0]
    floor = 0.1 * statistics.median(before)
    last_full = rows[-1][0] if rows and rows[-1][0] % 1 < 0.9 else None
    hit = [t for t, rps, err in rows
           if (t > fault_s - 1 and err > 0)
           or (t > fault_s and rps < floor and t != last_full)]
    return max(0.01, max(hit) - fault_s) if hit else 0.0


def errors_of(r):
    e = r["errors"]
    kinds = ("connect", "read", "write", "timeout", "status_4xx", "status_5xx", "parse")
    return e["total"], " ".join(f"{k}={e[k]}" for k in kinds if e[k])


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def accept_queue(addr):
    """Connections waiting in ADDR's listen queue (and its limit), from ss."""
    port = addr.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    fields = out.stdout.split()
    return f"{fields[1]}/{fields[2]}" if len(fields) > 2 else "?"


def backends_health(admin):
    b = json.loads(get(f"http://{admin}/api/v1/backends?upstream=app"))["backends"]
    return " ".join(str(x.get('health', x.get('state', '?'))) for x in b)


def pin(pid, cpus):
    """Every thread of `pid` onto `cpus` (sched_setaffinity takes one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def proxy_stats(admin):
    return json.loads(get(f"http://{admin}/api/v1/stats/server"))


def proxy_errors(stats):
    return " ".join(f"{k}={v['count']}" for k, v in stats.get("errors", {}).items() if v["count"])


# --- scenarios: each returns a row dict ---------------------------------

def backend_kill(rig, conns):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    _, _, proxy, admin = rig.proxy(config("127.0.0.1:0", [a, b]))
    load = rig.load("load", f"http://{proxy}/", conns, 15)
    time.sleep(max(0, load.t0 + 5 - time.monotonic()))
    fault = time.monotonic() - load.t0
    victim = rig.procs[0]
    victim.send_signal(signal.SIGKILL)
    time.sleep(2)
    rig.backend("a-again", port=int(a.rsplit(":", 1)[1]))
    r = rig.result(load)
    stats = proxy_stats(admin)
    total, kinds = errors_of(r)
    return dict(errors=total, error_kinds=kinds, served=r["requests"],
                recovery_s=recovery(rig.rows("load"), fault), bar="0 errors", met=total == 0,
                notes=f"proxy retries={stats['upstream']['retries']}; proxy errors: "
                      f"{proxy_errors(stats) or 'none'}")


def worker_kill(rig, conns):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    master, _, proxy, admin = rig.proxy(
        config(f"127.0.0.1:{free_port()}", [a, b], processes=2))
    deadline = time.time() + 10
    while len(children(master.pid)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    load = rig.load("load", f"http://{proxy}/", conns, 15)
    time.sleep(max(0, load.t0 + 5 - time.monotonic()))
    workers = children(master.pid)
    victim = workers[0]
    fault = time.monotonic() - load.t0
    os.kill(victim, signal.SIGKILL)
    respawn = None
    while time.monotonic() - load.t0 < fault + 8:
        now = children(master.pid)
        if len(now) == 2 and victim not in now:
            respawn = time.monotonic() - load.t0 - fault
            break
        time.sleep(0.02)
    r = rig.result(load)
    stats = proxy_stats(admin)
    total, kinds = errors_of(r)
    back = f"{respawn:.2f} s" if respawn is not None else "not within 8 s"
    return dict(errors=total, error_kinds=kinds, served=r["requests"],
                recovery_s=recovery(rig.rows("load"), fault), bar="(measured)", met=None,
                notes=f"worker restarted by the master after {back}; "
                      f"processes={stats.get('processes')}; reconnects="
                      f"{r['connections']['reconnects']}")


def sighup(rig, conns):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    master, path, proxy, admin = rig.proxy(config("127.0.0.1:0", [a, b]))
    load = rig.load("load", f"http://{proxy}/", conns, 14)
    time.sleep(max(0, load.t0 + 2 - time.monotonic()))
    fault = time.monotonic() - load.t0
    for i in range(10):
        # A real change each time: the balancer, round_robin <-> least_conn.
        text = config("127.0.0.1:0", [a, b], balancer=("least_conn", "round_robin")[i % 2])
        with open(path + ".new", "w") as f:
            f.write(text)
        os.rename(path + ".new", path)
        master.send_signal(signal.SIGHUP)
        time.sleep(1)
    last_fault = time.monotonic() - load.t0 - 1
    r = rig.result(load)
    stats = proxy_stats(admin)
    total, kinds = errors_of(r)
    with open(os.path.join(rig.work, "proxy.err")) as f:
        refused = sum("reload refused" in line for line in f)
    alive = master.poll() is None
    return dict(errors=total, error_kinds=kinds, served=r["requests"],
                recovery_s=recovery(rig.rows("load"), fault), bar="0 errors",
                met=total == 0 and alive,
                notes=f"10 reloads from t={fault:.1f}s to {last_fault:.1f}s, {refused} refused; "
                      f"proxy alive={alive}; proxy errors: {proxy_errors(stats) or 'none'}")


def slowloris(rig, conns, count=10000, rate=5000, aim="proxy"):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    _, _, proxy, admin = rig.proxy(config("127.0.0.1:0", [a, b]))
    url = f"http://{proxy}/"
    # The controls aim the same slow clients elsewhere, so the measured proxy
    # sees none of them: "sink" at a backend it does not use (the same extra
    # process and sockets on these 2 cores, no churn: a backend never closes
    # them), "decoy" at a second speedmimi with the same config (the same
    # churn too: it closes them at header_timeout and they reconnect). What
    # the p99 grows by under a control is the machine, not the proxy.
    control = aim != "proxy"
    # An attacker has hosts of its own: the slow clients (and the decoy) get
    # the last CPU, everything measured the others, so what the p99 shows is
    # the proxy's work for the slow connections, not their client's.
    cpus = sorted(os.sched_getaffinity(0))
    ours, theirs = (set(cpus[:-1]), {cpus[-1]}) if len(cpus) > 1 else (set(cpus), set(cpus))
    for p in rig.procs:
        pin(p.pid, ours)
    if aim == "sink":
        sink, target = rig.backend("sink")
        pin(sink.pid, theirs)
    elif aim == "decoy":
        decoy = rig.proxy(config("127.0.0.1:0", [a, b]), name="decoy")
        pin(decoy[0].pid, theirs)
        target = decoy[2]
    else:
        target = proxy
    base = rig.result(rig.load("baseline", url, conns, 10, rate=rate, cpus=ours))
    attack = rig.spawn("slowloris", [sys.executable, os.path.join(ROOT, "ci", "slowloris.py"),
                                     target, "--count", str(count), "--connect-rate", "5000",
                                     "--byte-interval", "2", "--duration", "40"],
                       preexec_fn=lambda: os.sched_setaffinity(0, theirs))
    # Wait (at most 20 s) until the slow connections are open.
    opened, deadline = 0, time.time() + 20
    while opened < count and time.time() < deadline:
        time.sleep(0.5)
        with open(os.path.join(rig.work, "slowloris.out")) as f:
            counts = [int(line.split()[1]) for line in f if line.startswith("open ")]
        opened = counts[-1] if counts else 0
    # The attacker's count is of connects the kernel completed; the proxy
    # holds them once it has accepted them from the backlog. Measuring from
    # then on (at most 20 s more) is the attack held, not the connect flood.
    held_at, since = None, time.monotonic()
    watched = {"proxy": admin, "decoy": decoy[3] if aim == "decoy" else None}.get(aim)
    while watched and time.time() < deadline + 20:
        if proxy_stats(watched)["connections"]["current"] >= count:
            held_at = time.monotonic() - since
            break
        time.sleep(0.1)
    c0, t0 = cpu_ticks(attack.pid), time.monotonic()
    during = rig.result(rig.load("under-attack", url, conns, 10, rate=rate, cpus=ours))
    attack_cpu = (cpu_ticks(attack.pid) - c0) / TICK / (time.monotonic() - t0) * 100
    held = proxy_stats(admin)
    attack.send_signal(signal.SIGTERM)
    attack.wait(10)
    with open(os.path.join(rig.work, "slowloris.out")) as f:
        lines = f.read().splitlines()
    sl = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    p99_base = base["latency_us"]["p99"] / 1000
    p99_att = during["latency_us"]["p99"] / 1000
    ratio = p99_att / p99_base if p99_base else float("inf")
    total, kinds = errors_of(during)
    btotal, _ = errors_of(base)
    return dict(errors=total, error_kinds=kinds, served=during["requests"], recovery_s=None,
                bar="(measured)" if control else "p99 <= 2x baseline",
                met=None if control else ratio <= 2.0 and total == 0,
                notes=f"p99 {p99_att:.2f} ms vs baseline {p99_base:.2f} ms (x{ratio:.2f}) at "
                      f"{rate} req/s over {conns} conns; baseline errors {btotal}, served "
                      f"{base['requests']}; slowloris open when measuring {opened} (held by "
                      f"the proxy {'after %.1f s more' % held_at if held_at is not None else 'not checked'}), peak "
                      f"{sl.get('peak_open')}, closed by proxy {sl.get('closed_by_server')}, "
                      f"connect errors {sl.get('connect_errors')}; slowloris process CPU "
                      f"{attack_cpu:.0f}% of a core (same 2 cores); proxy requests "
                      f"{held['requests']}")


def emfile(rig, conns, nofile=256, heavy=400):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    proxy_p, _, proxy, admin = rig.proxy(config("127.0.0.1:0", [a, b]), nofile=nofile)
    url = f"http://{proxy}/"
    c0 = cpu_ticks(proxy_p.pid)
    t0 = time.monotonic()
    over = rig.result(rig.load("over-limit", url, heavy, 8))
    cpu = (cpu_ticks(proxy_p.pid) - c0) / TICK / (time.monotonic() - t0) * 100
    # The load has dropped: how long until a new connection is served?
    dropped_at, served_at = time.monotonic(), None
    fds_at_drop = len(os.listdir(f"/proc/{proxy_p.pid}/fd"))
    probe_fails = {}
    queue_at_drop = accept_queue(proxy)
    while time.monotonic() - dropped_at < 20:
        try:
            get(url, timeout=1)
            served_at = time.monotonic()
            break
        except OSError as e:  # HTTPError (a 5xx answer) is one too
            what = str(getattr(e, "code", None) or type(e).__name__)
            probe_fails[what] = probe_fails.get(what, 0) + 1
            time.sleep(0.1)
    fds_at_served = len(os.listdir(f"/proc/{proxy_p.pid}/fd"))
    after = rig.result(rig.load("after", url, 20, 5))
    total, kinds = errors_of(over)
    atotal, akinds = errors_of(after)
    alive = proxy_p.poll() is None
    rec = served_at - dropped_at if served_at else None
    return dict(errors=total, error_kinds=kinds, served=over["requests"], recovery_s=rec,
                bar="serves again", met=alive and rec is not None and atotal == 0
                and after["requests"] > 0,
                notes=f"nofile {nofile}, {heavy} clients for 8 s: peak open "
                      f"{over['connections']['peak_open']}, proxy CPU {cpu:.0f}% of a core; proxy fds {fds_at_drop} when "
                      f"the load dropped, {fds_at_served} when served again; accept queue when "
                      f"the load dropped {queue_at_drop}; probe answers before that "
                      f"{probe_fails or 'none'}; backends after "
                      f"{backends_health(admin)}; then 20 "
                      f"clients for 5 s: {after['requests']} served, {atotal} errors "
                      f"{akinds}; proxy alive={alive}")


def logfull(rig, conns):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    fs = os.path.join(rig.work, "logfs")
    os.mkdir(fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", fs], check=True)
    rig.mounts.append(fs)
    log = os.path.join(fs, "access.log")
    _, _, proxy, admin = rig.proxy(config("127.0.0.1:0", [a, b],
                                          extra=f'  access_log: "{log}"\n'))
    load = rig.load("load", f"http://{proxy}/", conns, 10)
    r = rig.result(load)
    time.sleep(0.5)  # the last batch (200 ms old at most) reaches the writer
    stats = proxy_stats(admin)
    metrics = get(f"http://{admin}/metrics")
    counter = [line for line in metrics.splitlines()
               if not line.startswith("#") and ("access_log" in line or "dropped" in line)]
    with open(log, "rb") as f:
        written = f.read().count(b"\n")
    total, kinds = errors_of(r)
    inferred = stats["requests"] - written
    seen = "; proxy counter: " + (" ".join(counter) if counter else
                                  "none on /metrics or /api/v1/stats/server")
    return dict(errors=total, error_kinds=kinds, served=r["requests"],
                recovery_s=recovery(rig.rows("load"), 0.0), bar="0 errors, drops counted",
                met=total == 0 and bool(counter),
                notes=f"{written} lines written (64 KiB), {inferred} of {stats['requests']} "
                      f"proxy requests not logged{seen}")


SCENARIOS = [("backend-kill", backend_kill), ("worker-kill", worker_kill), ("sighup", sighup),
             ("slowloris", slowloris),
             ("slowloris-control", lambda rig, conns: slowloris(rig, conns, aim="sink")),
             ("slowloris-decoy", lambda rig, conns: slowloris(rig, conns, aim="decoy")),
             ("emfile", emfile), ("logfull", logfull)]


def machine():
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return (f"{os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB, Linux {platform.release()}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def table(rows):
    head = ("scenario", "errors", "served", "recovery", "bar", "met")
    body = []
    for r in rows:
        rec = r.get("recovery_s")
        body.append((r["name"], str(r["errors"]), str(r["served"]),
                     "—" if rec is None else ("0 s" if rec == 0 else
                                              "< 1 s" if rec < 1 else f"{rec:.1f} s"),
                     r["bar"], {True: "yes", False: "NO", None: "—"}[r["met"]]))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    out.append("")
    for r in rows:
        kinds = f" [{r['error_kinds']}]" if r.get("error_kinds") else ""
        out.append(f"{r['name']}: {r['notes']}{kinds}")
    return "\n".join(out)


def prepare():
    """What every bench script does first: SIGTERM (a timeout, Ctrl-C's
    cousin) unwinds through Rig.stop like an error, the descriptor limit is
    raised to the hard one, and the binaries are found (env SPEEDMIMI,
    LOADGEN, else $CARGO_TARGET_DIR/release)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binaries = (os.environ.get("SPEEDMIMI") or os.path.join(target, "release", "speedmimi"),
                os.environ.get("LOADGEN") or os.path.join(target, "release", "loadgen"))
    return binaries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--conns", type=int, default=50)
    a = ap.parse_args()
    binaries = prepare()
    only = [n for n in a.only.split(",") if n]
    rows = []
    for name, run in SCENARIOS:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        work = tempfile.mkdtemp(prefix=f"bench-faults-{name}.")
        rig = Rig(work, binaries)
        start = time.monotonic()
        try:
            row = run(rig, a.conns)
        except Exception as e:  # a scenario that breaks is a row, not the end
            row = dict(errors="?", served="?", recovery_s=None, bar="(did not run)", met=False,
                       notes=f"failed: {e!r} (files in {work})")
        finally:
            rig.stop()
        if row["met"] is not False:
            shutil.rmtree(work, ignore_errors=True)
        row["name"] = name
        row["seconds"] = round(time.monotonic() - start, 1)
        print(f"   {row['notes']} ({row['seconds']} s)", flush=True)
        rows.append(row)
    text = f"Faults under load, {machine()}, {a.conns} keep-alive GET clients\n\n{table(rows)}\n"
    print("\n" + text)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "bench-faults.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(ROOT, "results", "bench-faults.json"), "w") as f:
        json.dump({"machine": machine(), "scenarios": rows}, f, indent=1)
    return 0 if all(r["met"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
