#!/usr/bin/env python3
"""CPU cost of identities and budgets per request (docs/soth.md, docs/performance.md).

    /usr/bin/python3 bench/identity/run.py [--build build] [--seconds 4] [--reps 3]

One run, targets interleaved per repetition: the nginx origin of bench/peers (TLS, /small is
100 bytes) and two soth-mitm instances in reverse mode (1 worker, pinned like bench/peers):

  plain        no identities, no budget
  identities   identities.networks (127.0.0.0/8 after 3 CIDRs that miss), the rule limited
               to that identity, with a budget far above the load (requests 1e9 per 60 s):
               every request runs the budget admission (all workers' counters summed)

Workload: wrk -t1 -c50 keep-alive GET /small (h1 small). Per target: req/s and proxy CPU us
per request (utime+stime of the proxy / requests), medians over --reps; the ratio
identities / plain is the cost of the checks.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peers"))
import run as peers  # noqa: E402  (bench/peers/run.py: origin, spawn, wrk, accounting)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    d = tempfile.mkdtemp(prefix="soth-bench-ident-")
    peers.make_certs(d)
    os.makedirs(f"{d}/www", exist_ok=True)
    os.makedirs(f"{d}/origin-tmp", exist_ok=True)
    with open(f"{d}/www/small", "wb") as f:
        f.write(peers.SMALL_BODY)
    origin_port = peers.free_port()
    with open(f"{d}/origin.conf", "w") as f:
        f.write(peers.nginx_origin_conf(d, origin_port))
    origin = peers.spawn([peers.NGINX, "-c", f"{d}/origin.conf", "-p", d], peers.LOAD_CPU,
                         f"{d}/origin.out")
    if not peers.wait_port(origin_port, proc=origin):
        sys.exit("origin nginx did not start")
    mode = f"reverse:https://127.0.0.1:{origin_port}"
    ident_cfg = {
        "identities": {"networks": [
            {"id": "n1", "cidrs": ["10.0.0.0/8"]}, {"id": "n2", "cidrs": ["fd00::/8"]},
            {"id": "n3", "cidrs": ["192.168.0.0/16"]}, {"id": "lo", "cidrs": ["127.0.0.0/8"]}]},
        "policy": {"default": "intercept", "rules": [
            {"id": "bench", "host": "127.0.0.1", "action": "intercept", "identities": ["lo"],
             "budget": {"requests": 1000000000, "window_s": 60}}]}}
    targets = {"plain": peers.start_soth(a, d, "plain", mode, {"policy": {"default": "intercept"}}),
               "identities": peers.start_soth(a, d, "identities", mode, ident_cfg)}
    for t in targets.values():
        if t.error:
            sys.exit(f"{t.name}: {t.error}")
    a.seconds = max(a.seconds, 1)
    wl = peers.wl_wrk(50, "/small")
    ctx = {"origin_port": origin_port, "dir": d}
    res = {n: [] for n in targets}
    for rep in range(a.reps):
        for n, t in targets.items():
            r, err = wl(a, ctx, t)
            if r is None:
                sys.exit(f"{n}: {err}")
            if r["errors"]:
                sys.exit(f"{n}: {r['errors']} errors")
            res[n].append(r)
            peers.log(f"rep {rep} {n}: {r['rps']:.0f} req/s, {r['cpu_us']:.2f} us/req")
    med = {n: (statistics.median(x["rps"] for x in rs), statistics.median(x["cpu_us"] for x in rs))
           for n, rs in res.items()}
    print("| target | req/s | proxy CPU us/req |")
    print("| --- | --- | --- |")
    for n, (rps, us) in med.items():
        print(f"| {n} | {rps:.0f} | {us:.2f} |")
    print(f"\nidentities / plain: CPU us/req x{med['identities'][1] / med['plain'][1]:.3f}, "
          f"req/s x{med['identities'][0] / med['plain'][0]:.3f}")
    peers.kill_all()


if __name__ == "__main__":
    main()
