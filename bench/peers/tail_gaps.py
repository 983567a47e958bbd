#!/usr/bin/python3
"""Where a slow 1 MiB exchange loses its time (docs/performance.md, "Delayed ACKs of a
response"): the paced 1 MiB workload of run.py (hey -c8 -q50 against the TLS origin, one
target at a time, interleaved), and for soth-mitm the event ring read back: every
`response_body_chunk` is 16 KiB the worker took from the origin, with its time, so a pause of the
origin's stream shows as a gap between two chunks of one response, at its place in the body.
Also the kernel's TCP counters over each run (`nstat`: delayed ACKs, loss probes, ...).

With --workload h1-small, run.py's h1-small instead (wrk -c50 keep-alive, 100-byte body; also
"direct", wrk straight to the origin): beside wrk's p50/p99/p99.9 per target, soth-mitm's ring
gives each exchange's upstream window (request head in to response head in: the origin's
leg, both sends and the origin's queue) and what is left inside the proxy after it (response
head in to the exchange's completion), so a tail can be placed on the origin's side or ours
(docs/performance.md, "Waking the worker").

  /usr/bin/python3 bench/peers/tail_gaps.py --build B [--targets "soth-mitm rev,haproxy"]
      [--rounds 2] [--seconds 8] [--gap-ms 10] [--workload h1-1m-paced|h1-small]
      [--soth-config '{"busy_poll_us": 0}']

Loopback only, bounded: each run is one hey (or wrk) of --seconds."""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

NSTAT = ("TcpExtDelayedACKs", "TcpExtTCPLossProbes", "TcpRetransSegs", "TcpExtTCPDSACKRecv",
         "TcpExtTCPToZeroWindowAdv", "TcpExtTCPTimeouts")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else 0.0


def ring_exchanges(tail, ring, t0, t1):
    """Exchanges whose request head came in [t0, t1]: request time, response head time,
    [(body offset, time)] of each chunk, completion time."""
    out = subprocess.run([tail, "--from-start", "--once", "--type",
                          "request_headers,response_headers,response_body_chunk,"
                          "exchange_completed", ring], capture_output=True, text=True,
                         timeout=300).stdout
    ex, done = {}, []
    for line in out.splitlines():
        e = json.loads(line)
        ts = e["ts_ns"] / 1e9
        k = (e["flow_id"], e.get("stream_id"))
        if e["type"] == "request_headers":
            if t0 <= ts <= t1:
                ex[k] = {"req": ts, "resp": None, "chunks": []}
            continue
        x = ex.get(k)
        if x is None:
            continue
        if e["type"] == "response_headers":
            x["resp"] = ts
        elif e["type"] == "response_body_chunk":
            x["chunks"].append((e["offset"], ts))
        elif e["type"] == "exchange_completed" and x["resp"] is not None:
            x["done"] = ts
            done.append(ex.pop(k))
    return done


def report_ring(xs, gap_ms):
    lat = [(x["done"] - x["req"]) * 1e3 for x in xs]
    head = [(x["resp"] - x["req"]) * 1e3 for x in xs]
    by_chunk = collections.Counter()
    for x in xs:
        prev = x["resp"]
        for i, (_, ts) in enumerate(x["chunks"]):
            if (ts - prev) * 1e3 > gap_ms:
                by_chunk[i] += 1
            prev = ts
    print(f"   ring: {len(xs)} exchanges, request to completion p50 {pct(lat, .5):.1f} p99 "
          f"{pct(lat, .99):.1f} ms, request to response head p50 {pct(head, .5):.1f} p99 "
          f"{pct(head, .99):.1f} ms")
    print(f"   ring: gaps over {gap_ms:g} ms before chunk i of a body (16 KiB each): "
          f"{sum(by_chunk.values())} {sorted(by_chunk.items())}")


def cpu_ticks():
    """{cpu: busy USER_HZ ticks} from /proc/stat (busy: all but idle and iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                out[m.group(1)] = sum(v) - v[3] - v[4]
    return out


def thread_switches(pids):
    """{thread name: voluntary + involuntary context switches} over the target's threads."""
    out = collections.Counter()
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    st = f.read()
            except OSError:
                continue
            name = re.search(r"^Name:\s+(.*)$", st, re.M).group(1)
            out[name] += sum(int(x) for x in re.findall(r"ctxt_switches:\s+(\d+)", st))
    return out


def report_window(xs):
    """h1-small: the upstream window and the rest, p50 / p99 / p99.9, ms."""
    up = [(x["resp"] - x["req"]) * 1e3 for x in xs]
    rest = [(x["done"] - x["resp"]) * 1e3 for x in xs]
    q = (.5, .99, .999)
    print(f"   ring: {len(xs)} exchanges; request head to response head (upstream window) "
          + " / ".join(f"{pct(up, p):.2f}" for p in q)
          + " ms; response head to completion " + " / ".join(f"{pct(rest, p):.3f}" for p in q)
          + " ms (p50 / p99 / p99.9)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--targets", default="soth-mitm rev,haproxy")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--gap-ms", type=float, default=10)
    ap.add_argument("--workload", choices=("h1-1m-paced", "h1-small"), default="h1-1m-paced")
    ap.add_argument("--soth-config", default=None, metavar="JSON",
                    help="top-level config keys for soth-mitm, e.g. '{\"busy_poll_us\": 0}'")
    a = ap.parse_args()
    small = a.workload == "h1-small"
    a.no_upstream_pool = False
    d = tempfile.mkdtemp(prefix="soth-tail-")
    try:
        ctx, targets = R.setup(a, d, True)
        names = [n for n in a.targets.split(",") if n in targets and not targets[n].error]
        if small and "direct" not in names:
            names.insert(0, "direct")
        for rnd in range(a.rounds):
            for name in names:
                t = targets[name]
                if small:  # as run.py's h1-small
                    argv = R.wrk_argv(a, R.url_for(t, ctx["origin_port"], "/small"), 50)
                else:  # as run.py's h1-1m-paced
                    argv = R.hey_paced_argv(a, ctx, t, 8, 50, "/1m")
                subprocess.run(["nstat", "-n"], check=False)
                c0 = cpu_ticks()
                th0 = thread_switches(t.pids)
                if small:  # context switches on the load CPU and the proxy's
                    ps = subprocess.Popen(["perf", "stat", "-x", ",", "-A", "-C",
                                           f"{R.LOAD_CPU},{R.PROXY_CPU}", "-e",
                                           "context-switches", "--", "sleep",
                                           str(a.seconds + 1)], stderr=subprocess.PIPE,
                                          text=True)
                t0 = time.time()
                out, err = R.run_load(argv, a.seconds + 40)
                t1 = time.time()
                c1 = cpu_ticks()
                th1 = thread_switches(t.pids)
                cs = {}
                if small:
                    for m in re.finditer(r"^CPU(\d+),(\d+),", ps.communicate(timeout=60)[1],
                                         re.M):
                        cs[m.group(1)] = int(m.group(2))
                ns = dict(re.findall(r"^(\w+)\s+(\d+)", subprocess.run(
                    ["nstat", "-z"], capture_output=True, text=True).stdout, re.M))
                if out is not None:
                    r, err = R.parse_wrk(out) if small else R.parse_hey(out, t1 - t0)
                if err:
                    print(f"== {name} round {rnd}: {err}")
                    continue
                p999 = f", p99.9 {r['p999']:.2f} ms" if r.get("p999") else ""
                print(f"== {name} round {rnd}: {r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms, "
                      f"p99 {r['p99']:.2f} ms{p999}, errors {r['errors']}")
                if small and r.get("requests"):
                    hz = os.sysconf("SC_CLK_TCK")
                    print("   per request: " + ", ".join(
                        f"CPU {c} busy {(c1[c] - c0[c]) / hz / r['requests'] * 1e6:.1f} us"
                        + (f" {cs[c] / r['requests']:.2f} context switches" if c in cs else "")
                        for c in (R.LOAD_CPU, R.PROXY_CPU)))
                if small and r.get("requests") and th1:
                    print("   context switches per request, by thread: " + ", ".join(
                        f"{k} {(th1[k] - th0.get(k, 0)) / r['requests']:.3f}"
                        for k in sorted(th1)))
                print("   nstat: " + " ".join(f"{k.replace('TcpExt', '')}={ns.get(k, '0')}"
                                             for k in NSTAT))
                if t.kind == "soth":
                    tag = name.replace(" ", "-")
                    xs = ring_exchanges(os.path.join(a.build, "soth-mitm-tail"),
                                        f"{d}/{tag}.ring", t0, t1)
                    if small:
                        report_window(xs)
                    else:
                        report_ring(xs, a.gap_ms)
    finally:
        R.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
