#!/usr/bin/env python3
"""CI performance gate (`make gate`).

(a) peers: `loadgen bench --scenario ci/gate-peers.yaml` runs speedmimi and
    nginx interleaved; the medians of the per-round ratios (requests/s, CPU per
    request) must stay above the floors in ci/gates.yaml.
(b) callgrind: instructions the proxy executes per request, counted by
    valgrind --tool=callgrind over two sequential runs (-c 1, N and M requests:
    the difference cancels start-up and shutdown), compared with
    ci/callgrind-baseline.json at the tolerance in ci/gates.yaml.

Usage: ci/gate.py [--only peers|callgrind] [--update-baseline] [--bin DIR]
Exit 0 when every check passes, 1 on a regression, 2 when a check could not run.
Everything it starts it stops (loadgen bench does for (a); (b) kills by pid).
"""

import argparse
import datetime
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_peers(cfg, bin_dir, out_dir):
    scenario = os.path.join(ROOT, cfg["scenario"])
    run_dir = os.path.join(out_dir, "peers")
    cmd = [os.path.join(bin_dir, "loadgen"), "bench", "--scenario", scenario, "--out", run_dir]
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code not in (0, 3):
        raise RuntimeError(f"loadgen bench exited {code}")
    res = json.load(open(os.path.join(run_dir, "results.json")))
    by = {}
    for s in res["steps"]:
        by.setdefault(s["round"], {})[s["target"]] = s
    other = cfg["against"]
    rps, cpu, errors = [], [], 0
    for rnd in sorted(by):
        a, b = by[rnd].get("speedmimi"), by[rnd].get(other)
        if not a or not b:
            continue
        errors += sum(a["errors"].values()) + sum(b["errors"].values())
        rps.append(a["rps"] / b["rps"])
        cpu.append(b["proxy"]["cpu_us_per_request"] / a["proxy"]["cpu_us_per_request"])
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    def side(name, key):
        return med([by[r][name][key] if key == "rps" else by[r][name]["proxy"][key]
                    for r in by if name in by[r]])
    rows = [
        ("peers: requests/s ratio vs " + other, med(rps), cfg["rps_ratio_min"], ">=",
         f"speedmimi {side('speedmimi', 'rps'):,.0f}/s, {other} {side(other, 'rps'):,.0f}/s, {len(rps)} rounds"),
        ("peers: CPU/request efficiency vs " + other, med(cpu), cfg["cpu_efficiency_min"], ">=",
         f"speedmimi {side('speedmimi', 'cpu_us_per_request'):.1f} us, {other} {side(other, 'cpu_us_per_request'):.1f} us"),
        ("peers: errors", errors, 0, "==", "all rounds, both targets"),
    ]
    return rows


def wait_line(proc, needle, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        if needle in line:
            return line
    raise RuntimeError(f"no '{needle}' from {proc.args[0]} within {timeout}s")


def callgrind_total(bin_dir, work, requests, tag):
    """Instructions (Ir) speedmimi executes to start, serve `requests` sequential requests, stop."""
    procs = []
    try:
        backend = subprocess.Popen([os.path.join(bin_dir, "loadgen"), "backend", "--listen",
                                    "127.0.0.1:0", "--workers", "1"],
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(backend)
        baddr = wait_line(backend, "listening on", 10).split("listening on ")[1].split()[0]
        conf = os.path.join(work, f"proxy-{tag}.yaml")
        with open(conf, "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:0"
  workers: 1
  processes: 1
  graceful_timeout: 0s
admin:
  listen: "127.0.0.1:0"
upstreams:
  default:
    backends: [{{ addr: "{baddr}" }}]
    keepalive: 4
routing:
  default: {{ upstream: default, load_balancer: round_robin }}
""")
        out = os.path.join(work, f"callgrind-{tag}.out")
        for old in glob.glob(out + "*"):
            os.remove(old)
        proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                  os.path.join(bin_dir, "speedmimi"), "--config", conf],
                                 stdout=subprocess.PIPE, stderr=open(out + ".log", "w"),
                                 text=True, start_new_session=True)
        procs.append(proxy)
        paddr = wait_line(proxy, "listening on", 120).split("listening on ")[1].split()[0]
        r = subprocess.run([os.path.join(bin_dir, "loadgen"), "run", f"http://{paddr}/", "-c", "1",
                            "-t", "1", "-n", str(requests), "--timeout", "30s", "--json", "-q"],
                           capture_output=True, text=True, timeout=600)
        summary = json.loads(r.stdout)
        if summary["requests"] != requests or summary["errors"]["total"]:
            raise RuntimeError(f"callgrind run: {summary['requests']} of {requests} requests, "
                               f"{summary['errors']['total']} errors")
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=120)
        total = 0
        for path in glob.glob(out + "*"):
            if path.endswith(".log"):
                continue
            for line in open(path):
                if line.startswith("totals:") or line.startswith("summary:"):
                    total += int(line.split()[1])
                    break
        if not total:
            raise RuntimeError(f"no callgrind totals in {out}*")
        return total
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run_callgrind(cfg, bin_dir, out_dir, update):
    lo, hi = cfg["requests_low"], cfg["requests_high"]
    ir_lo = callgrind_total(bin_dir, out_dir, lo, "low")
    ir_hi = callgrind_total(bin_dir, out_dir, hi, "high")
    per_req = (ir_hi - ir_lo) / (hi - lo)
    path = os.path.join(ROOT, cfg["baseline"])
    measured = {"instructions_per_request": round(per_req, 1), "requests_low": lo,
                "requests_high": hi, "ir_low": ir_lo, "ir_high": ir_hi,
                "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True,
                                           text=True).stdout.strip(),
                "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if update or not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(measured, f, indent=2)
            f.write("\n")
        print(f"callgrind baseline written: {path} ({per_req:,.0f} instructions/request)")
    base = json.load(open(path))["instructions_per_request"]
    tol = cfg["tolerance_percent"]
    change = (per_req - base) / base * 100
    detail = f"baseline {base:,.0f}, change {change:+.2f}% (tolerance {tol}%)"
    if change < -tol:
        # Not a failure, but the baseline no longer guards this level: say so.
        detail += "; faster than the baseline: update it deliberately (docs/bench.md)"
    return [("callgrind: instructions/request", per_req, base * (1 + tol / 100), "<=", detail)]


def fmt(v):
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["peers", "callgrind"])
    ap.add_argument("--update-baseline", action="store_true",
                    help="measure and overwrite ci/callgrind-baseline.json (commit it deliberately)")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release"))
    args = ap.parse_args()
    cfg = yaml.safe_load(open(os.path.join(ROOT, "ci", "gates.yaml")))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = os.path.join(ROOT, "results", f"gate-{stamp}")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    try:
        if args.only in (None, "peers"):
            rows += run_peers(cfg["peers"], args.bin, out_dir)
        if args.only in (None, "callgrind"):
            rows += run_callgrind(cfg["callgrind"], args.bin, out_dir, args.update_baseline)
    except Exception as e:  # a check that cannot run is not a pass
        print(f"gate: could not run: {e}", file=sys.stderr)
        return 2
    ok_all = True
    print()
    print(f"{'check':<42} {'measured':>14} {'limit':>14}  {'result':<6}  detail")
    for name, value, limit, op, detail in rows:
        ok = {">=": value >= limit, "<=": value <= limit, "==": value == limit}[op]
        ok_all &= ok
        print(f"{name:<42} {fmt(value):>14} {op + ' ' + fmt(limit):>14}  {'ok' if ok else 'FAIL':<6}  {detail}")
    with open(os.path.join(out_dir, "gate.json"), "w") as f:
        json.dump([{"check": r[0], "value": r[1], "limit": r[2], "op": r[3], "detail": r[4]} for r in rows], f, indent=2)
    print(f"\ngate: {'passed' if ok_all else 'REGRESSION'} (details in {out_dir})")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
