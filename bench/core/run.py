#!/usr/bin/env python3
"""Tunnel benchmark: soth-mitm (regular mode, CONNECT tunnel, 1 worker pinned to CPU 1)
against a direct connection, in the same run, interleaved and repeated.

    /usr/bin/python3 bench/core/run.py [--build build] [--reps 3] [--bytes 1073741824]
                                        [--churn-seconds 5] [--churn-threads 8] [--out FILE]

Prints a markdown table: median throughput (MB/s) and churn (connections/s) for each target,
soth-mitm as a ratio to direct, and soth-mitm's CPU time per connection / per GiB.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--churn-seconds", type=float, default=5)
    ap.add_argument("--churn-threads", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args()
    tb = os.path.join(a.build, "bench", "core", "tunnel_bench")
    tmp = tempfile.mkdtemp(prefix="soth-bench-")
    cfg = os.path.join(tmp, "cfg.json")
    with open(cfg, "w") as f:
        f.write('{"policy": {"default": "tunnel"}}')
    errlog = open(os.path.join(tmp, "proxy.err"), "w+")
    proxy = subprocess.Popen(
        ["taskset", "-c", "1", os.path.join(a.build, "soth-mitm"), "--listen", "127.0.0.1:0",
         "--workers", "1", "--config", cfg, "--event-ring", os.path.join(tmp, "ev.ring"),
         "--ca-dir", os.path.join(tmp, "ca")], stderr=errlog)
    port = None
    for _ in range(200):
        errlog.seek(0)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", errlog.read())
        if m:
            port = m.group(1)
            break
        time.sleep(0.05)
    if port is None:
        sys.exit("proxy did not start")

    def run(args):
        out = subprocess.run(["taskset", "-c", "0", tb] + args, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            sys.exit(f"tunnel_bench {args} failed: {out.stderr}")
        vals = {}
        for line in out.stdout.splitlines():
            k1, k2, v = line.split()
            vals[(k1, k2)] = float(v)
        return vals

    res = {"direct": {"tp": [], "churn": []}, "soth-mitm": {"tp": [], "churn": [],
                                                            "cpu_gib": [], "cpu_conn": []}}
    for rep in range(a.reps):
        res["direct"]["tp"].append(run(["throughput", str(a.bytes)])[("throughput", "MB/s")])
        c0 = cpu_seconds(proxy.pid)
        v = run(["throughput", str(a.bytes), "127.0.0.1", port])
        res["soth-mitm"]["cpu_gib"].append((cpu_seconds(proxy.pid) - c0) / (a.bytes / (1 << 30)))
        res["soth-mitm"]["tp"].append(v[("throughput", "MB/s")])
        res["direct"]["churn"].append(
            run(["churn", str(a.churn_seconds), str(a.churn_threads)])[("churn", "conn/s")])
        c0 = cpu_seconds(proxy.pid)
        v = run(["churn", str(a.churn_seconds), str(a.churn_threads), "127.0.0.1", port])
        res["soth-mitm"]["cpu_conn"].append(
            (cpu_seconds(proxy.pid) - c0) / max(1, v[("churn", "count")]) * 1e6)
        res["soth-mitm"]["churn"].append(v[("churn", "conn/s")])
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(30)

    md = statistics.median
    d_tp, s_tp = md(res["direct"]["tp"]), md(res["soth-mitm"]["tp"])
    d_ch, s_ch = md(res["direct"]["churn"]), md(res["soth-mitm"]["churn"])
    lines = [
        f"Tunnel benchmark ({a.reps} interleaved repetitions, medians; proxy: 1 worker on CPU 1,"
        f" load and origin on CPU 0; {a.bytes >> 20} MiB stream; churn {a.churn_threads}"
        f" threads x {a.churn_seconds:g} s)",
        "",
        "| target | 1 stream MB/s | x direct | churn conn/s | x direct | proxy CPU s/GiB |"
        " proxy CPU us/conn |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| direct | {d_tp:.0f} | 1.00 | {d_ch:.0f} | 1.00 | - | - |",
        f"| soth-mitm tunnel | {s_tp:.0f} | {s_tp / d_tp:.2f} | {s_ch:.0f} | {s_ch / d_ch:.2f} |"
        f" {md(res['soth-mitm']['cpu_gib']):.2f} | {md(res['soth-mitm']['cpu_conn']):.1f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
