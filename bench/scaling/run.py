#!/usr/bin/env python3
"""soth-mitm with 1 and with 2 workers under the same load (docs/performance.md, "Scaling").

    /usr/bin/python3 bench/scaling/run.py [--build build] [--requests 4000] [--cpu-requests 60000]
        [--reps 3] [--conns 8] [--workers 1,2] [--h2] [--no-callgrind | --no-cpu]

Origin: the peer benchmark's nginx over TLS (bench/peers/run.py pieces), /small = 100 bytes.
soth-mitm runs --mode reverse:https://127.0.0.1:ORIGIN with --workers W for W in 1, 2; the load
is h2load --h1 -c 8 (--conns; HTTP/1.1 keep-alive, 8 connections, so both workers get some).

- instructions per request (1 worker; see main() for why not 2): soth-mitm under valgrind
  --tool=callgrind (every thread, user space,
  independent of the machine's load): after a warm-up, two runs of the same shape (8 new
  connections each) of N/4 and N requests, counters zeroed before and dumped after each; the
  difference over the difference in requests is the cost of one request, with the handshakes
  and start-up cancelled.
- CPU per request: soth-mitm natively, utime+stime of the process over a fixed number of
  requests, and of each thread by name (/proc/PID/task/TID/stat, comm), median of --reps.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "peers"))
import run as peers  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
CONNS = [8]  # h2load -c (--conns)
H2 = [False]  # --h2: HTTP/2, 10 streams per connection


def thread_cpu(pid):
    """{thread name: CPU seconds} of every thread of pid (names summed: soth-worker-N as one)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = "worker" if comm.startswith("soth-worker") else comm
        out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) / CLK
    return out


def worker_wakeups(pid):
    """Context switches of the worker threads (voluntary: each time a worker slept in
    io_uring_enter and was woken; a loop pass with more completions batches more requests)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith("soth-worker"):
                    continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
        except OSError:
            continue
    return n


def soth_argv(a, d, workers, port, origin_port):
    return [os.path.join(a.build, "soth-mitm"), "--listen", f"127.0.0.1:{port}",
            "--workers", str(workers), "--mode", f"reverse:https://127.0.0.1:{origin_port}",
            "--config", f"{d}/scaling.json", "--ca-dir", f"{d}/soth-ca",
            "--event-ring", f"{d}/scaling-{workers}.ring", "--log-level", "warn"]


def h2load(port, n, conns=8):
    conns = CONNS[0]
    proto = ["-m", "10"] if H2[0] else ["--h1"]
    out = subprocess.run(["h2load"] + proto + ["-t1", "-c", str(conns), "-T", "120", "-n",
                          str(n), f"https://127.0.0.1:{port}/small"], capture_output=True,
                         text=True, timeout=900)
    m = re.search(r"(\d+) succeeded", out.stdout)
    return int(m.group(1)) if m else 0


def callgrind(a, d, workers, origin_port):
    port = peers.free_port()
    out = f"{d}/cg-{workers}"
    p = peers.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                     "--dump-instr=no", "--collect-atstart=yes"] +
                    soth_argv(a, d, workers, port, origin_port), "0,1", f"{d}/cg-{workers}.log")
    try:
        if not peers.wait_port(port, 300, p):
            return None
        h2load(port, 200)
        counts = []
        for n in (a.requests // 4, a.requests):
            for f in os.listdir(d):
                if f.startswith(os.path.basename(out) + "."):
                    os.unlink(os.path.join(d, f))
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True,
                           timeout=120)
            ok = h2load(port, n)
            time.sleep(1)
            subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True,
                           timeout=120)
            total = 0
            for f in os.listdir(d):
                if f.startswith(os.path.basename(out) + "."):
                    with open(os.path.join(d, f)) as fh:
                        for line in fh:
                            if line.startswith(("summary:", "totals:")):
                                total += int(line.split()[1])
                                break
            counts.append((ok, total))
        (ok1, ir1), (ok2, ir2) = counts
        return (ir2 - ir1) / (ok2 - ok1), ok2 - ok1
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def cpu(a, d, workers, origin_port):
    port = peers.free_port()
    p = peers.spawn(soth_argv(a, d, workers, port, origin_port), "0,1", f"{d}/cpu-{workers}.log")
    try:
        if not peers.wait_port(port, 30, p):
            return None
        h2load(port, 2000)
        t0, th0, cs0 = peers.cpu_seconds([p.pid]), thread_cpu(p.pid), worker_wakeups(p.pid)
        ok = h2load(port, a.cpu_requests)
        t1, th1, cs1 = peers.cpu_seconds([p.pid]), thread_cpu(p.pid), worker_wakeups(p.pid)
        per = {k: (th1[k] - th0.get(k, 0)) / ok * 1e6 for k in th1}
        per["worker switches/req"] = (cs1 - cs0) / ok
        return (t1 - t0) / ok * 1e6, per, ok
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--cpu-requests", type=int, default=60000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--conns", type=int, default=8, help="h2load -c (connections)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 (h2load -m 10) instead of 1.1")
    ap.add_argument("--no-cpu", action="store_true", help="callgrind only")
    a = ap.parse_args()
    CONNS[0] = a.conns
    H2[0] = a.h2
    wl = [int(x) for x in a.workers.split(",")]
    d = tempfile.mkdtemp(prefix="soth-scaling-")
    peers.make_certs(d)
    os.makedirs(f"{d}/www", exist_ok=True)
    os.makedirs(f"{d}/origin-tmp", exist_ok=True)
    with open(f"{d}/www/small", "wb") as f:
        f.write(peers.SMALL_BODY)
    origin_port = peers.free_port()
    with open(f"{d}/origin.conf", "w") as f:
        f.write(peers.nginx_origin_conf(d, origin_port))
    origin = peers.spawn([peers.NGINX, "-c", f"{d}/origin.conf", "-p", d], "0,1",
                         f"{d}/origin.out")
    if not peers.wait_port(origin_port, proc=origin):
        sys.exit("origin nginx did not start")
    with open(f"{d}/scaling.json", "w") as f:
        f.write('{"tls": {"upstream_ca_file": "%s/ca.pem"}}' % d)
    # the CA is minted once, natively (RSA key generation under valgrind takes minutes)
    port = peers.free_port()
    p = peers.spawn(soth_argv(a, d, 1, port, origin_port), "0,1", f"{d}/ca.log")
    peers.wait_port(port, 30, p)
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(30)
    try:
        print(f"load: h2load {'-m 10' if a.h2 else '--h1'} -c {a.conns}, GET /small (100 B), reverse TLS both legs; "
              f"load average {os.getloadavg()[0]:.1f}")
        # 1 worker only: valgrind 3.19 (Debian 12) runs one thread at a time and does not let
        # go of it while a worker waits in io_uring_enter, so with 2 workers the second one
        # never runs and the load stalls (docs/performance.md, "Scaling").
        for w in [w for w in wl if w == 1]:
            if not a.no_callgrind:
                r = callgrind(a, d, w, origin_port)
                print(f"workers {w}: instructions/request "
                      f"{r[0]:,.0f} over {r[1]} requests" if r else f"workers {w}: callgrind "
                      "failed")
        res = {w: [] for w in wl}
        for _ in range(0 if a.no_cpu else a.reps):
            for w in wl:
                r = cpu(a, d, w, origin_port)
                if r:
                    res[w].append(r)
        for w in wl:
            if not res[w]:
                if not a.no_cpu:
                    print(f"workers {w}: no CPU result")
                continue
            med = statistics.median(r[0] for r in res[w])
            threads = {}
            for r in res[w]:
                for k, v in r[1].items():
                    threads.setdefault(k, []).append(v)
            th = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in sorted(threads.items())
                           if not k.startswith("iou-wrk"))
            print(f"workers {w}: CPU us/request median {med:.1f} "
                  f"(runs {', '.join(f'{r[0]:.1f}' for r in res[w])}; {res[w][0][2]} requests "
                  f"each); by thread: {th}")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        peers.kill_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
