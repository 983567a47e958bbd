#!/usr/bin/env python3
"""What a proxy costs the processes around it: the CPU of the load generator (wrk) and of the
origin (nginx) per request, direct and through soth-mitm, next to the proxy's own, in the same
run, interleaved and repeated (docs/performance.md "Records per response").

    /usr/bin/python3 bench/http/cpu0.py [--build build] [--base BUILD] [--reps 3]
                                        [--seconds 5] [--connections 50] [--path 100b]

bench/http/run.py's set-up: nginx over TLS on loopback and wrk -t1 -c N on CPU 0, soth-mitm
`reverse:https://` with 1 worker on CPU 1. With --base, a second soth-mitm built from another
tree runs in the same repetitions (an A/B of two builds). For each point: requests/s, and
utime+stime per request of wrk (this script's child), of the origin nginx and of the proxy.
Whatever the proxy makes its neighbours do (more TLS records to decrypt, more segments to
receive) shows in the wrk and origin columns, which direct gives the floor of.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import WRK, Mitm, Origin, cpu_seconds, wrk  # noqa: E402


def point(port, path, seconds, conns, origin, mitm):
    o0 = cpu_seconds(origin.proc.pid)
    m0 = cpu_seconds(mitm.proc.pid) if mitm else 0.0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    n, rps, errors, _, _ = wrk(port, path, seconds, conns)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    o1 = cpu_seconds(origin.proc.pid)
    m1 = cpu_seconds(mitm.proc.pid) if mitm else 0.0
    n = max(n, 1)
    w = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return {"rps": rps, "wrk": 1e6 * w / n, "origin": 1e6 * (o1 - o0) / n,
            "proxy": 1e6 * (m1 - m0) / n if mitm else None, "errors": errors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                    "build"))
    ap.add_argument("--base", help="a second build to run next to --build")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--path", default="100b", choices=("100b", "1m"))
    a = ap.parse_args()
    if not os.access(WRK, os.X_OK):
        sys.exit("needs wrk (ci/setup.sh)")
    tmp = tempfile.mkdtemp(prefix="soth-cpu0-")
    origin = Origin(tmp)
    targets = [("direct", None)]
    mitms = []
    try:
        for label, build in (("soth-mitm", a.build), ("soth-mitm base", a.base)):
            if build is None:
                continue
            d = os.path.join(tmp, label.replace(" ", "-"))
            os.makedirs(d)
            m = Mitm(os.path.abspath(build), d, origin)
            mitms.append(m)
            targets.append((label, m))
        res = {label: [] for label, _ in targets}
        for rep in range(a.reps):
            order = targets if rep % 2 == 0 else targets[:1] + targets[:0:-1]
            for label, m in order:
                r = point(m.port if m else origin.port, a.path, a.seconds, a.connections,
                          origin, m)
                res[label].append(r)
                print(f"rep {rep + 1} {label}: {r['rps']:.0f} req/s, wrk {r['wrk']:.1f}, "
                      f"origin {r['origin']:.1f}, proxy "
                      f"{'-' if r['proxy'] is None else format(r['proxy'], '.1f')} us/req, "
                      f"{r['errors']} errors", file=sys.stderr)
    finally:
        for m in mitms:
            m.stop()
        origin.close()
    print(f"wrk -t1 -c{a.connections} {a.seconds:g} s of /{a.path} ({a.reps} interleaved "
          "repetitions, medians; wrk and the origin nginx on CPU 0, soth-mitm reverse:https with "
          "1 worker on CPU 1); CPU us per request of each process\n")
    print("| target | req/s | wrk | origin | CPU 0 (wrk + origin) | proxy | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, _ in targets:
        rs = res[label]
        med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "wrk", "origin")}
        cpu0 = statistics.median(r["wrk"] + r["origin"] for r in rs)
        proxy = "-" if label == "direct" else f"{statistics.median(r['proxy'] for r in rs):.1f}"
        print(f"| {label} | {med['rps']:.0f} | {med['wrk']:.1f} | {med['origin']:.1f} | "
              f"{cpu0:.1f} | {proxy} | {sum(r['errors'] for r in rs)} |")


if __name__ == "__main__":
    main()
