#!/usr/bin/env python3
"""Memory soak for TLS interception: --handshakes intercepted full handshakes (default 100,000)
through soth-mitm (regular mode, 1 worker on CPU 1; nginx origin and the OpenSSL load generator
on CPU 0), sampling the proxy's memory and descriptors every --every handshakes.

    /usr/bin/python3 bench/tls/soak.py [--build build] [--handshakes 100000] [--every 10000]
                                        [--names 6000] [--threads 16] [--max-seconds 900]

Each connection: CONNECT, TLS handshake with a leaf for h<i>.bench.test (i drawn by a hash of
the connection number from --names names: more than the default leaf cache of 4096, so the
cache keeps minting, evicting and hitting), one GET, close. The event ring is kept small (8 MiB) so that its file pages are
all resident after the warm-up and do not read as growth.

Reports VmRSS (and RssAnon) after the first sample (the warm-up) and at the end, the maximum,
and the open descriptors with no connection open. Exit status 1 when, after the warm-up, VmRSS
grows by more than max(8 MiB, 10 %), descriptors leak, any connection fails, or the proxy does
not exit 0 on SIGTERM. With an ASan build (--build build-asan --load-build build) the RSS is
reported but not bounded (ASan's quarantine grows by design) and any sanitizer report on the
proxy's stderr at exit (LeakSanitizer runs then) fails the soak.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/tls/run.py: origin, proxy and load helpers)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(run.REPO, "build"))
    ap.add_argument("--handshakes", type=int, default=100000)
    ap.add_argument("--every", type=int, default=10000)
    ap.add_argument("--names", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--load-build", help="where tls_load is (default: --build); lets a"
                    " sanitizer build of soth-mitm be driven by a Release load generator")
    ap.add_argument("--out")
    a = ap.parse_args()
    try:
        with open(os.path.join(a.build, "CMakeCache.txt")) as f:
            asan = "SOTH_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        asan = False
    for d, exe in ((a.build, "soth-mitm"), (a.load_build or a.build, "bench/tls/tls_load")):
        if not os.path.exists(os.path.join(d, exe)):
            sys.exit(f"{d}/{exe} missing: build with -DSOTH_BENCH=ON (tls_load needs libssl-dev)")
    tmp = tempfile.mkdtemp(prefix="soth-tlssoak-")
    origin = run.Origin(tmp, 0)
    mitm = run.Mitm(a.build, tmp, origin, extra_cfg={"events": {"ring_size_mb": 8}},
                    env={"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "detect_leaks=1")})
    pid = mitm.proc.pid
    args = ["hs", "-t", str(a.threads), "-u", "/hs", "-n", "h%u.bench.test", "-M", str(a.names),
            "-x", f"127.0.0.1:{origin.port}", "-c", f"127.0.0.1:{mitm.port}", "-a", mitm.ca]
    t_end = time.time() + a.max_seconds
    samples = []  # (handshakes, VmRSS KiB, RssAnon KiB, fds)
    done = errors = 0
    fd0 = len(os.listdir(f"/proc/{pid}/fd"))
    t0 = time.time()
    try:
        while done < a.handshakes and time.time() < t_end:
            n = min(a.every, a.handshakes - done)
            v = run.tls_load(a.load_build or a.build, args + ["-N", str(n), "-k", str(done),
                                              "-s", str(max(1, t_end - time.time()))],
                             timeout=a.max_seconds + 60)
            done += int(v["count"])
            errors += int(v["errors"])
            time.sleep(0.3)  # let the proxy finish closing the last connections
            s = (done, status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon"),
                 len(os.listdir(f"/proc/{pid}/fd")))
            samples.append(s)
            print(f"{s[0]:7d} handshakes  VmRSS {s[1] / 1024:7.1f} MiB  RssAnon"
                  f" {s[2] / 1024:7.1f} MiB  fds {s[3]}  ({time.time() - t0:.0f} s)",
                  file=sys.stderr)
        misses = mitm.metric("soth_leaf_cache_misses_total")
        hits = mitm.metric("soth_leaf_cache_hits_total")
    finally:
        rc, err = mitm.stop()
        origin.close()
    secs = time.time() - t0
    warm = samples[0]
    rss_max = max(s[1] for s in samples[1:] or samples)
    growth = samples[-1][1] - warm[1]
    peak_growth = rss_max - warm[1]
    bound = max(8 * 1024, warm[1] // 10)
    fails = []
    if done < a.handshakes:
        fails.append(f"only {done} handshakes in {a.max_seconds:g} s")
    if errors:
        fails.append(f"{errors} failed connections")
    if peak_growth > bound and not asan:
        fails.append(f"VmRSS grew by {peak_growth} KiB after the warm-up (bound {bound} KiB)")
    if samples[-1][3] > fd0:
        fails.append(f"descriptors: {fd0} at start, {samples[-1][3]} at the end")
    for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        if bad in err:
            fails.append(f"sanitizer report on the proxy's stderr: {bad}")
    if rc != 0:
        fails.append(f"proxy exit status {rc}: {err[-2000:]}")
    text = "\n".join([
        f"TLS soak: {done} intercepted handshakes in {secs:.0f} s ({done / secs:.0f}/s),"
        f" {errors} failed; names drawn at random from {a.names}, leaf cache of 4096"
        f" (leaf cache hits {hits:.0f}, misses {misses:.0f}); 1 worker"
        + ("; ASan build: RSS reported, not bounded (quarantine), leaks checked by LeakSanitizer"
           " at exit" if asan else ""),
        "",
        "| handshakes | VmRSS MiB | RssAnon MiB | open fds |",
        "| --- | --- | --- | --- |",
    ] + [f"| {s[0]} | {s[1] / 1024:.1f} | {s[2] / 1024:.1f} | {s[3]} |" for s in samples] + [
        "",
        f"VmRSS after warm-up ({warm[0]} handshakes) {warm[1] / 1024:.1f} MiB, at the end"
        f" {samples[-1][1] / 1024:.1f} MiB ({growth / 1024:+.1f} MiB), max"
        f" {rss_max / 1024:.1f} MiB; fds {fd0} before, {samples[-1][3]} after; proxy exit"
        f" status {rc}: " + ("PASS" if not fails else "FAIL: " + "; ".join(fails)),
    ])
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
