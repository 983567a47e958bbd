#!/usr/bin/python3
"""Where a slow 1 MiB exchange loses its time (docs/performance.md, "Delayed ACKs of a
response"): the paced 1 MiB workload of run.py (hey -c8 -q50 against the TLS origin, one
target at a time, interleaved), and for soth-mitm the event ring read back: every
`response_body_chunk` is 16 KiB the worker took from the origin, with its time, so a pause of the
origin's stream shows as a gap between two chunks of one response, at its place in the body.
Also the kernel's TCP counters over each run (`nstat`: delayed ACKs, loss probes, ...).

  /usr/bin/python3 bench/peers/tail_gaps.py --build B [--targets "soth-mitm rev,haproxy"]
      [--rounds 2] [--seconds 8] [--gap-ms 10]

Loopback only, bounded: each run is one hey of --seconds."""
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--targets", default="soth-mitm rev,haproxy")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--gap-ms", type=float, default=10)
    a = ap.parse_args()
    a.no_upstream_pool = False
    d = tempfile.mkdtemp(prefix="soth-tail-")
    try:
        ctx, targets = R.setup(a, d, True)
        names = [n for n in a.targets.split(",") if n in targets and not targets[n].error]
        for rnd in range(a.rounds):
            for name in names:
                t = targets[name]
                argv = R.hey_paced_argv(a, ctx, t, 8, 50, "/1m")  # as run.py's h1-1m-paced
                subprocess.run(["nstat", "-n"], check=False)
                t0 = time.time()
                out, err = R.run_load(argv, a.seconds + 40)
                t1 = time.time()
                ns = dict(re.findall(r"^(\w+)\s+(\d+)", subprocess.run(
                    ["nstat", "-z"], capture_output=True, text=True).stdout, re.M))
                if out is not None:
                    r, err = R.parse_hey(out, t1 - t0)
                if err:
                    print(f"== {name} round {rnd}: {err}")
                    continue
                print(f"== {name} round {rnd}: {r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, "
                      f"p99 {r['p99']:.1f} ms, errors {r['errors']}")
                print("   nstat: " + " ".join(f"{k.replace('TcpExt', '')}={ns.get(k, '0')}"
                                             for k in NSTAT))
                if t.kind == "soth":
                    tag = name.replace(" ", "-")
                    report_ring(ring_exchanges(os.path.join(a.build, "soth-mitm-tail"),
                                               f"{d}/{tag}.ring", t0, t1), a.gap_ms)
    finally:
        R.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
