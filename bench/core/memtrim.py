#!/usr/bin/env python3
"""Memory given back after bursts: soth-mitm's RssAnon idle -> under a burst -> after it.

    /usr/bin/python3 bench/core/memtrim.py [--build build] [--conns 5000] [--rounds 3]
                                           [--workers 1] [--loads h2,h1,flood] [--out FILE]
                                           [--env NAME=VALUE ...]

Starts an nginx origin over TLS (h2 and HTTP/1.1 by ALPN; the set-up of bench/peers/run.py) on
CPU 0 and soth-mitm in regular mode (CONNECT + intercept) pinned to CPU 1, then for each load,
--rounds times in a row on the same proxy:

  h2     --conns idle intercepted HTTP/2 connections (CONNECT, TLS with ALPN h2, one GET
         answered byte-exact, then held), then all closed by the client
  h1     the same over HTTP/1.1
  flood  curl --parallel: 256 GETs of a 1 MiB body through the proxy (64 at a time, bodies
         checked by size), so every provided receive buffer of the worker is used

and prints RssAnon (/proc/PID/status: heap, stacks, the provided buffers; not the event ring
file) at idle after start, with the load at its peak, 1 s after it ended, then every 10 s up to
60 s. The idle level is read twice: after start, and after a warm-up (32 HTTP/2 and 32
HTTP/1.1 connections, 8 GETs of 1 MiB, then 15 s idle: the level of a proxy that has served and
been left alone). --env passes variables to the proxy (e.g. GLIBC_TUNABLES=glibc.malloc.arena_max=1 or
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2) to compare allocators.
"""
import argparse
import asyncio
import hashlib
import importlib.util
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
_spec = importlib.util.spec_from_file_location("peers", os.path.join(REPO, "bench/peers/run.py"))
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)

FLOOD_GETS = 256
FLOOD_PARALLEL = 64
WARM_CONNS = 32
WARM_GETS = 8
WARM_WAIT_S = 15


def anon(pid):
    return peers.anon_kib([pid]) / 1024


def flood(proxy_port, origin_port, want_sha, n=FLOOD_GETS):
    """n GETs of /1m through the proxy, 64 at a time; returns the count of intact bodies."""
    d = tempfile.mkdtemp(prefix="memtrim-flood-")
    argv = ["curl", "-s", "-k", "--parallel", "--parallel-max", str(FLOOD_PARALLEL),
            "-x", f"http://127.0.0.1:{proxy_port}", "--http1.1"]
    for i in range(n):
        argv += [f"https://127.0.0.1:{origin_port}/1m", "-o", f"{d}/{i}"]
    subprocess.run(["taskset", "-c", peers.LOAD_CPU] + argv, timeout=300, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = 0
    for i in range(n):
        try:
            with open(f"{d}/{i}", "rb") as f:
                ok += hashlib.sha256(f.read()).hexdigest() == want_sha
            os.unlink(f"{d}/{i}")
        except OSError:
            pass
    os.rmdir(d)
    return ok


def one_round(a, pid, proxy_port, origin_port, load, want_sha):
    row = {"before": anon(pid)}
    t0 = time.time()
    if load == "flood":
        ok = flood(proxy_port, origin_port, want_sha)
        row["peak"] = anon(pid)
        row["what"] = f"{ok}/{FLOOD_GETS} bodies intact"
    else:
        loop = asyncio.new_event_loop()
        try:
            held, err = loop.run_until_complete(peers.idle_open(
                a.conns, proxy_port, origin_port, True, t0 + a.seconds, h2=load == "h2"))
            loop.run_until_complete(asyncio.sleep(1.0))
            row["peak"] = anon(pid)
            row["what"] = f"{len(held)}/{a.conns} held in {time.time() - t0:.0f} s" + (
                f" ({err})" if err else "")
            for w in held:
                w.transport.abort()
            loop.run_until_complete(asyncio.sleep(0.1))
        finally:
            loop.close()
    t_end = time.time()
    time.sleep(1.0)
    row["after"] = anon(pid)
    row["later"] = []
    for k in range(1, 7):
        time.sleep(max(0.0, t_end + 10 * k - time.time()))
        row["later"].append(anon(pid))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=240, help="set-up time limit per round")
    ap.add_argument("--loads", default="h2,h1,flood")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the proxy")
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--smaps", help="copy the proxy's /proc/PID/smaps here at the end (and to FILE.idle at idle)")
    a = ap.parse_args()
    need = 3 * a.conns + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, need)), hard))
    d = tempfile.mkdtemp(prefix="memtrim-")
    peers.make_certs(d)
    os.makedirs(f"{d}/www", exist_ok=True)
    os.makedirs(f"{d}/origin-tmp", exist_ok=True)
    with open(f"{d}/www/small", "wb") as f:
        f.write(peers.SMALL_BODY)
    body = os.urandom(1 << 20)
    with open(f"{d}/www/1m", "wb") as f:
        f.write(body)
    want_sha = hashlib.sha256(body).hexdigest()
    origin_port = peers.free_port()
    with open(f"{d}/origin.conf", "w") as f:
        f.write(peers.nginx_origin_conf(d, origin_port))
    origin = peers.spawn([peers.NGINX, "-c", f"{d}/origin.conf", "-p", d], peers.LOAD_CPU,
                         f"{d}/origin.out")
    if not peers.wait_port(origin_port, proc=origin):
        sys.exit("origin nginx did not start")
    env = dict(os.environ)
    for kv in a.env:
        k, v = kv.split("=", 1)
        env[k] = v
    orig_spawn = peers.spawn
    peers.spawn = lambda argv, cpu, log_path, env_=None: orig_spawn(
        ["info" if x == "warn" else x for x in argv], cpu, log_path, env)
    pa = argparse.Namespace(build=a.build)
    t = peers.start_soth(pa, d, "soth-mitm memtrim", "regular")
    peers.spawn = orig_spawn
    if t.error:
        sys.exit(t.error)
    if a.workers != 1:
        sys.exit("--workers: only 1 is wired (bench/peers/run.py starts one worker)")
    pid = t.proc.pid
    time.sleep(2.0)
    idle = anon(pid)
    if a.smaps:
        shutil.copy(f"/proc/{pid}/smaps", a.smaps + ".idle")
    peers.log(f"idle RssAnon {idle:.1f} MiB")
    # Warm: what a proxy holds once it has served at all (a leaf minted, TLS state, stacks
    # touched by handshakes), then left alone long enough for a trim (docs/performance.md).
    loop = asyncio.new_event_loop()
    for h2 in (True, False):
        held, err = loop.run_until_complete(peers.idle_open(
            WARM_CONNS, t.port, origin_port, True, time.time() + 60, h2=h2))
        if err:
            sys.exit(f"warm-up: {err}")
        for w in held:
            w.transport.abort()
        loop.run_until_complete(asyncio.sleep(0.1))
    loop.close()
    flood(t.port, origin_port, want_sha, WARM_GETS)
    time.sleep(WARM_WAIT_S)
    warm = anon(pid)
    peers.log(f"idle RssAnon after a warm-up: {warm:.1f} MiB")
    lines = [f"RssAnon (MiB) of soth-mitm (1 worker, regular mode, intercepting); idle after "
             f"start: {idle:.1f} MiB; idle after a warm-up ({WARM_CONNS} HTTP/2 and "
             f"{WARM_CONNS} HTTP/1.1 connections, {WARM_GETS} x 1 MiB, {WARM_WAIT_S} s): "
             f"{warm:.1f} MiB" + (f"; env {' '.join(a.env)}" if a.env else ""), "",
             "| load | round | what | before | peak | +1 s | +10 s | +20 s | +30 s | +40 s | "
             "+50 s | +60 s |", "|" + " --- |" * 12]
    cpu0 = peers.cpu_seconds([pid])
    for load in a.loads.split(","):
        for r in range(1, a.rounds + 1):
            row = one_round(a, pid, t.port, origin_port, load, want_sha)
            line = (f"| {load} | {r} | {row['what']} | {row['before']:.1f} | {row['peak']:.1f} "
                    f"| {row['after']:.1f} | " + " | ".join(f"{x:.1f}" for x in row["later"])
                    + " |")
            peers.log(line)
            lines.append(line)
            if t.proc.poll() is not None:
                sys.exit("soth-mitm exited")
    if a.smaps:
        shutil.copy(f"/proc/{pid}/smaps", a.smaps)
    lines.append("")
    lines.append(f"proxy CPU over the run: {peers.cpu_seconds([pid]) - cpu0:.1f} s")
    t.proc.log.seek(0)
    trims = re.findall(r"gave memory back \(trim (\d+): (\d+) KiB [^,]*, malloc_trim [^,]*, "
                       r"(\d+) us CPU, (\d+) us of it in malloc_trim\)", t.proc.log.read())
    if trims:
        lines.append(f"trims: {len(trims)}; each: KiB advised or freed before malloc_trim / "
                     "CPU us / of which malloc_trim: " + ", ".join(
                         f"{x[1]} / {x[2]} / {x[3]}" for x in trims))
    else:
        lines.append("trims: none logged")
    peers.stop_proc(t.proc)
    peers.kill_all()
    out = "\n".join(lines)
    print(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    main()
