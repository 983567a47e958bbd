#!/usr/bin/env python3
"""QUIC passthrough benchmark: one bulk HTTP/3 download from ngtcp2's gtlsserver to gtlsclient,
through soth-mitm in transparent mode (tproxy, docs/http3.md) against the same download routed
straight through the router, in the same run, interleaved and repeated. The namespaces are the
ones of tests/integration/test_http3.py (client, router, origin; the router forwards in both
cases, soth-mitm only relays when the tproxy rule is in place).

    /usr/bin/python3 bench/quic/run.py [--build build] [--reps 3] [--mib 64] [--out FILE]

Run as root (it creates network namespaces; it re-executes itself under unshare -n). Prints a
markdown table: median MB/s and datagrams/s of each path (datagrams counted where the client
sends and receives them, by nftables counters), soth-mitm as a ratio to direct, and soth-mitm's
CPU time per relayed datagram (utime+stime of the proxy over the proxied runs / datagrams it
relayed both ways).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def run(args):
    import test_http3 as t  # noqa: E402 (needs SOTH_BUILD_DIR set first)
    from harness import Proxy

    topo = t.Topology()
    try:
        # The origin sends with UDP GSO; one datagram per packet on its link, so the client's
        # counters count datagrams on the direct path too.
        t.sh("ip", "-n", t.NS_O, "link", "set", "sqo1", "gso_max_segs", "1")
        size = args.mib << 20
        body = topo.file("bulk.bin", size)
        proxy = Proxy(mode="transparent", workers=1,
                      config={"policy": {"default": "tunnel"}, "quic": {"idle_ms": 2000}},
                      extra_args=["--listen", "0.0.0.0:0"])
        res = {"direct": [], "soth-mitm": []}
        cpu = dgrams = 0.0
        try:
            for _ in range(args.reps):
                for name in ("direct", "soth-mitm"):
                    if name == "soth-mitm":
                        topo.divert(proxy.port)
                    else:
                        t.sh("nft", "delete", "table", "ip", "soth_quic", check=False)
                    c0 = t.counters(t.NS_C)
                    cpu0 = cpu_seconds(proxy.proc.pid)
                    start = time.monotonic()
                    rc, got, err = topo.get("/bulk.bin", timeout="30s")
                    secs = time.monotonic() - start
                    c1 = t.counters(t.NS_C)
                    if rc != 0 or got != body:
                        sys.exit(f"{name}: download failed: {err[-500:]!r}")
                    n = (c1["sent"][0] - c0["sent"][0]) + (c1["got"][0] - c0["got"][0])
                    res[name].append((size / secs / 1e6, n / secs))
                    if name == "soth-mitm":
                        cpu += cpu_seconds(proxy.proc.pid) - cpu0
                        dgrams += n
                    time.sleep(2.5)  # the flow ends (quic.idle_ms) before the next run
        finally:
            proxy.stop()
            proxy.__exit__(None, None, None)
    finally:
        topo.close()
    lines = [f"QUIC passthrough benchmark ({args.reps} interleaved repetitions, medians; one "
             f"{args.mib} MiB HTTP/3 download, gtlsserver -> gtlsclient; soth-mitm 1 worker)", "",
             "| path | MB/s | datagrams/s | vs direct |", "| --- | --- | --- | --- |"]
    med = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs))
           for k, vs in res.items()}
    for k in ("direct", "soth-mitm"):
        lines.append(f"| {k} | {med[k][0]:.1f} | {med[k][1]:.0f} | "
                     f"{med[k][0] / med['direct'][0]:.2f} |")
    lines += ["", f"soth-mitm CPU per relayed datagram: {cpu / dgrams * 1e6:.2f} us "
              f"({dgrams:.0f} datagrams, {cpu:.2f} s CPU)"]
    out = "\n".join(lines) + "\n"
    print(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ["SOTH_BUILD_DIR"] = os.path.abspath(args.build)
    if os.environ.get("SOTH_QUIC_BENCH_INNER") != "1":
        env = dict(os.environ, SOTH_QUIC_BENCH_INNER="1")
        sys.exit(subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__)] +
                                sys.argv[1:], env=env).returncode)
    run(args)


if __name__ == "__main__":
    main()
