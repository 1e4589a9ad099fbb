#!/usr/bin/env python3
"""Upgrading the binary under load (SIGUSR2), with figures (issue 14, item 6).

For `server.processes` 1 and 2: speedmimi (2 event loops per process) in
front of two `loadgen backend`s; for 12 s two loads at once, keep-alive
clients (`loadgen run -c 100`) and a new connection for every request
(`-c 10 -H 'Connection: close'`), and the admin API asked for its health
every 10 ms. SIGUSR2 at t=3 s, and again at t=8 s to the process that took
over. Per swap: how long until the new process served (SIGUSR2 to its
`upgraded:` line) and until the old one had drained and exited; per run:
failed requests by kind (connect = refused or reset at connect), admin
failures, and p99 of the seconds with a swap against the others.

Prints a table and writes results/bench-upgrade.txt (JSON beside it).
Usage: ci/bench_upgrade.py   (env SPEEDMIMI=... LOADGEN=... name the binaries)
Exit status: 0 when no request and no admin call failed, 1 otherwise.
"""

import csv
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_faults import ROOT, Rig, config, errors_of, machine, prepare  # noqa: E402

SWAPS_AT = (3.0, 8.0)
DURATION = 12


def admin_poller(admin, stop, tally):
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://{admin}/api/v1/health", timeout=2) as r:
                tally["ok" if r.status == 200 else "failed"] += 1
        except OSError:
            tally["failed"] += 1
        time.sleep(0.01)


def new_pid_line(rig, after_lines):
    """The pid in the first `upgraded: pid N` line of proxy.out past `after_lines`."""
    with open(os.path.join(rig.work, "proxy.out")) as f:
        lines = [l for l in f if l.startswith("upgraded: pid ")]
    if len(lines) > after_lines:
        return int(lines[after_lines].split()[2])
    return None


def p99_rows(rig, name):
    """(time_s, p99_us) of the whole seconds of loadgen's CSV."""
    with open(os.path.join(rig.work, f"{name}.csv")) as f:
        return [(float(r["time_s"]), float(r["p99_us"])) for r in csv.DictReader(f)
                if float(r["time_s"]) % 1 == 0]


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def run(rig, processes):
    (_, a), (_, b) = rig.backend("a"), rig.backend("b")
    text = config("127.0.0.1:0", [a, b], processes=processes).replace("workers: 1", "workers: 2")
    proxy_p, _, proxy, admin = rig.proxy(text)
    url = f"http://{proxy}/"
    keep = rig.load("keepalive", url, 100, DURATION)
    fresh = rig.spawn("fresh", [rig.loadgen, "run", url, "-c", "10", "-t", "1",
                                "-d", f"{DURATION}s", "--timeout", "2s", "--json", "-q",
                                "-H", "Connection: close",
                                "--csv", os.path.join(rig.work, "fresh.csv")])
    stop, tally = threading.Event(), {"ok": 0, "failed": 0}
    poller = threading.Thread(target=admin_poller, args=(admin, stop, tally))
    poller.start()
    swaps, current = [], proxy_p.pid
    for n, at in enumerate(SWAPS_AT):
        time.sleep(max(0, keep.t0 + at - time.monotonic()))
        t0 = time.monotonic()
        os.kill(current, signal.SIGUSR2)
        new = None
        while new is None and time.monotonic() - t0 < 20:
            new = new_pid_line(rig, n)
            time.sleep(0.005)
        served = time.monotonic() - t0 if new else None
        while new and not gone(current) and time.monotonic() - t0 < 40:
            time.sleep(0.005)
        exited = time.monotonic() - t0 if new and gone(current) else None
        swaps.append(dict(at_s=at, old_pid=current, new_pid=new, serving_after_s=served,
                          old_exited_after_s=exited))
        if new:
            current = new
    r_keep, r_fresh = rig.result(keep), rig.result(fresh)
    stop.set()
    poller.join()
    # p99 of the seconds a swap fell in, against the other seconds.
    rows = p99_rows(rig, "keepalive")
    swap_rows = [p99 for t, p99 in rows if any(t - 1 < s <= t for s in SWAPS_AT)]
    other = [p99 for t, p99 in rows if not any(t - 1 < s <= t for s in SWAPS_AT)]
    errors = {name: errors_of(r) for name, r in (("keepalive", r_keep), ("fresh", r_fresh))}
    failed = sum(total for total, _ in errors.values()) + tally["failed"]
    if current != proxy_p.pid:
        os.kill(current, signal.SIGTERM)
    return dict(processes=processes, swaps=swaps,
                requests=r_keep["requests"] + r_fresh["requests"],
                keepalive=dict(requests=r_keep["requests"], errors=errors["keepalive"][0],
                               kinds=errors["keepalive"][1],
                               reconnects=r_keep["connections"].get("reconnects")),
                fresh=dict(requests=r_fresh["requests"], errors=errors["fresh"][0],
                           kinds=errors["fresh"][1]),
                admin=tally, failed=failed,
                p99_swap_ms=max(swap_rows) / 1000 if swap_rows else None,
                p99_other_ms=statistics.median(other) / 1000 if other else None)


def render(results):
    out = [f"bench-upgrade: {machine()}", ""]
    for r in results:
        out.append(f"processes: {r['processes']} — {r['requests']} requests, "
                   f"{r['failed']} failed")
        for s in r["swaps"]:
            served = f"{s['serving_after_s'] * 1000:.0f} ms" if s["serving_after_s"] else "never"
            exited = f"{s['old_exited_after_s']:.2f} s" if s["old_exited_after_s"] else "not"
            out.append(f"  swap at t={s['at_s']:.0f}s: pid {s['old_pid']} -> {s['new_pid']}, "
                       f"new one serving after {served}, old one drained and exited after "
                       f"{exited}")
        k, f = r["keepalive"], r["fresh"]
        out.append(f"  keep-alive (100 conns): {k['requests']} requests, {k['errors']} errors "
                   f"{k['kinds']}, {k['reconnects']} reconnects")
        out.append(f"  new connection per request (10 conns): {f['requests']} requests, "
                   f"{f['errors']} errors {f['kinds']}")
        out.append(f"  admin health every 10 ms: {r['admin']['ok']} answered, "
                   f"{r['admin']['failed']} failed")
        if r["p99_swap_ms"] is not None:
            out.append(f"  keep-alive p99: {r['p99_swap_ms']:.2f} ms in the seconds of a swap, "
                       f"{r['p99_other_ms']:.2f} ms (median) in the others")
        out.append("")
    return "\n".join(out)


def main():
    binaries = prepare()
    results = []
    for processes in (1, 2):
        work = tempfile.mkdtemp(prefix=f"bench-upgrade-{processes}.")
        rig = Rig(work, binaries)
        try:
            results.append(run(rig, processes))
        finally:
            rig.stop()
    text = render(results)
    print(text)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "bench-upgrade.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(ROOT, "results", "bench-upgrade.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
