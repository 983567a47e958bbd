#!/usr/bin/python3
"""What each idle intercepted connection holds, by allocation site (docs/performance.md, "Idle
connections"): soth-mitm (regular mode, one worker) under valgrind massif, N connections opened
through it as run.py's idle workload opens them (CONNECT, TLS, one request; 32 opened and closed
first), then the heap tree at the peak divided by N, per site of its callers. Per-worker memory (the
leaf cache, free lists of lent buffers) is listed too: only sites under a connection's set-up
(client_leg_start, upstream_leg_start, relay_start, the handshake) are per connection.

  /usr/bin/python3 bench/peers/massif_idle.py --build build --conns 300 [--h2] [--hold S] [--out DIR]
      [--heaptrack [--upstream-idle-ms MS]]

--heaptrack runs it under heaptrack (Debian's heaptrack) instead: no lock of valgrind's, so the
held state is the real one (idle HTTP/2 upstreams closed after --upstream-idle-ms, the trim
done); the proxy is killed with SIGKILL at the end, so what heaptrack reports as leaked is what
was live then, by allocation site (sites called at least once per connection are the
connection's).

valgrind 3.19 keeps its thread lock across io_uring_enter, so an idle worker starves the other
threads: the proxy gets a fixed port (its "listening" line may come late), and it is stopped with
SIGABRT followed by connection attempts that wake the worker (massif writes its file on the
way out). The CA is made by one start outside valgrind first."""
import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402


def heap_tree(path, last=False):
    """The peak snapshot's tree (last: the last detailed one's): nodes {"b": bytes, "name":
    function, "kids": [...]}."""
    lines = open(path).read().split("\n")
    start = None
    for i, l in enumerate(lines):
        if l == "heap_tree=peak" or (last and l == "heap_tree=detailed"):
            start = i + 1
    if start is None:
        sys.exit(f"{path}: no {'detailed' if last else 'peak'} snapshot")
    pat = re.compile(r"^( *)n\d+: (\d+) (.*)$")
    stack, root = [], None
    for l in lines[start:]:
        m = pat.match(l)
        if not m:
            break
        fn = re.match(r"0x[0-9A-F]+: (\S+)", m.group(3))
        node = {"b": int(m.group(2)), "name": fn.group(1) if fn else m.group(3)[:50], "kids": []}
        while stack and stack[-1][0] >= len(m.group(1)):
            stack.pop()
        if stack:
            stack[-1][1]["kids"].append(node)
        else:
            root = node
        stack.append((len(m.group(1)), node))
    return root


def report(root, n, what, min_bytes_per_conn=20):
    def chain(k):
        out = [k["name"]]
        while k["kids"] and len(out) < 7:
            k = max(k["kids"], key=lambda x: x["b"])
            out.append(k["name"])
        return " < ".join(out)
    print(f"{what} heap {root['b']:,} bytes; per connection (/ {n}), by allocation site:")
    for k in sorted(root["kids"], key=lambda x: -x["b"]):
        if k["b"] >= n * min_bytes_per_conn:
            print(f"{k['b'] / n:9.1f}  {chain(k)}")


def leaks(path):
    """heaptrack_print's leak list as (bytes, calls, [frames]) per call stack."""
    out = subprocess.run(["heaptrack_print", "-f", path, "-l", "1", "-p", "0", "-a", "0", "-T",
                          "0", "-n", "400", "-s", "60"], capture_output=True, text=True).stdout
    unit = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
    res, top, cur = [], None, None
    for l in out.split("\n"):
        m = re.match(r"^(\S+) leaked over (\d+) calls from(:?)$", l.strip())
        if m:
            v = re.match(r"([\d.]+)([KMG]?)", m.group(1))
            b = float(v.group(1)) * unit[v.group(2)]
            if m.group(3):  # one call stack under the site named after the site's header
                cur = [b, int(m.group(2)), [top]]
                res.append(cur)
            else:
                top, cur = None, None
            continue
        if top is None and l and not l.startswith(" "):
            top = l.strip()
        elif cur is not None and re.match(r"^    \S", l) and not l.strip().startswith(("at ", "in ")):
            cur[2].append(l.strip())
    return res


def heaptrack_report(path, n):
    per, worker = 0.0, 0.0
    print(f"live at the end, by allocation site, bytes per connection (/ {n}); * = called at "
          "least once per connection:")
    for b, calls, fr in sorted(leaks(path), key=lambda x: -x[0]):
        mine = calls >= n
        if mine:
            per += b
        else:
            worker += b
        if b / n >= 8:
            print(f"{b / n:9.1f} {'*' if mine else ' '} {' < '.join(fr[:7])}")
    print(f"per connection {per / n:,.0f} bytes (page blocks included: address space, given "
          f"back while idle); per worker {worker / 1e6:.1f} MB")


def open_and_hold(a, port, op):
    """32 connections opened and closed, then a.conns opened and held a.hold seconds: the
    writers."""
    loop = asyncio.new_event_loop()
    held, err = loop.run_until_complete(
        R.idle_open(32, port, op, True, time.time() + 600, h2=a.h2))
    if err:
        sys.exit(f"warm-up: {err}")
    for w in held:
        w.transport.abort()
    loop.run_until_complete(asyncio.sleep(2))
    held, err = loop.run_until_complete(
        R.idle_open(a.conns, port, op, True, time.time() + 900, h2=a.h2))
    if err or len(held) != a.conns:
        sys.exit(f"{len(held)} of {a.conns} connections: {err}")
    loop.run_until_complete(asyncio.sleep(a.hold))
    return held


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--h2", action="store_true")
    ap.add_argument("--out", default=None, help="keep massif.out here")
    ap.add_argument("--hold", type=float, default=2.0,
                    help="seconds the connections are held before the heap is read (past "
                    "timeouts.upstream_idle_ms, 5 s, for HTTP/2 connections as they stay idle)")
    ap.add_argument("--last", action="store_true",
                    help="report the last detailed snapshot (every snapshot detailed), not the "
                    "peak, which can fall inside the burst of set-ups: what the held "
                    "connections keep")
    ap.add_argument("--heaptrack", action="store_true",
                    help="under heaptrack, killed at the end: what is live then, by site")
    ap.add_argument("--upstream-idle-ms", type=int, default=None,
                    help="timeouts.upstream_idle_ms for the run (default: the proxy's)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="soth-massif-")
    out = a.out or d
    os.makedirs(out, exist_ok=True)
    op = R.small_origin(d)
    with open(f"{d}/p.json", "w") as f:
        json.dump({"tls": {"upstream_ca_file": f"{d}/ca.pem", "learning": {"enabled": False}},
                   "resolve": {"origin.test": "127.0.0.1"},
                   "timeouts": {"idle_ms": 600000, **({} if a.upstream_idle_ms is None else
                                                      {"upstream_idle_ms": a.upstream_idle_ms})}},
                  f)
    port = R.free_port()
    argv = [os.path.join(a.build, "soth-mitm"), "--listen", f"127.0.0.1:{port}", "--workers", "1",
            "--mode", "regular", "--config", f"{d}/p.json", "--ca-dir", f"{d}/soth-ca",
            "--event-ring", f"{d}/p.ring", "--log-level", "warn"]
    pre = R.spawn(argv, R.PROXY_CPU, f"{d}/pre.log")  # makes the CA
    ok = R.wait_port(port, 30, pre)
    R.stop_proc(pre)
    if not ok:
        sys.exit("soth-mitm did not start: " + open(f"{d}/pre.log").read()[-500:])
    if a.heaptrack:
        return run_heaptrack(a, argv, port, op, d, out)
    p = R.spawn(["valgrind", "--tool=massif", "--pages-as-heap=no", "--threshold=0.01",
                 "--depth=40", f"--massif-out-file={out}/massif.out", "--vgdb=no",
                 "--peak-inaccuracy=0.5"] + (["--detailed-freq=1"] if a.last else []) + argv,
                R.PROXY_CPU, f"{d}/proxy.log")
    try:
        # Not the port alone: the first proxy's listening socket can outlive it for a moment
        # (its io_uring is torn down after the process exits), and valgrind starts slowly.
        deadline = time.time() + 300
        while "listening on" not in open(f"{d}/proxy.log").read():
            if p.poll() is not None or time.time() > deadline:
                sys.exit("soth-mitm did not start under valgrind")
            # A worker blocked in io_uring_enter holds valgrind's lock and starves the main
            # thread that prints the line; a connection wakes it.
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
            except OSError:
                pass
            time.sleep(0.2)
        if not R.wait_port(port, 60, p):
            sys.exit("soth-mitm did not start under valgrind")
        held = open_and_hold(a, port, op)
        os.kill(p.pid, signal.SIGABRT)
        for _ in range(240):  # massif writes every detailed snapshot on the way out (--last)
            if p.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
            except OSError:
                pass
            time.sleep(0.5)
        for w in held:
            w.transport.abort()
    finally:
        R.kill_all()
    report(heap_tree(f"{out}/massif.out", a.last), a.conns, "last detailed" if a.last else "peak")
    return 0


def run_heaptrack(a, argv, port, op, d, out):
    p = R.spawn(["heaptrack", "-o", f"{out}/heaptrack"] + argv, R.PROXY_CPU, f"{d}/proxy.log")
    try:
        deadline = time.time() + 60  # its line, not the port: the first proxy's may linger
        while "listening on" not in open(f"{d}/proxy.log").read():
            if p.poll() is not None or time.time() > deadline:
                sys.exit("soth-mitm did not start under heaptrack")
            time.sleep(0.1)
        held = open_and_hold(a, port, op)

        def exe(pid):
            try:
                return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                return ""
        proxy = [pid for pid in R.tree_pids(p.pid) if exe(pid) == "soth-mitm"]
        if len(proxy) != 1:
            sys.exit(f"soth-mitm under heaptrack: pids {proxy}")
        os.kill(proxy[0], signal.SIGKILL)
        p.wait(120)  # heaptrack writes its file once the process is gone
        for w in held:
            w.transport.abort()
    finally:
        R.kill_all()
    files = [f for f in os.listdir(out) if f.startswith("heaptrack")]
    if len(files) != 1:
        sys.exit(f"heaptrack's file: {files}")
    heaptrack_report(os.path.join(out, files[0]), a.conns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
