#!/usr/bin/env python3
"""What the NATS JetStream sink costs (docs/sinks.md): soth-mitm's CPU time per request with the
sink on and off, in the same run, interleaved and repeated. Two modes:

    /usr/bin/python3 bench/nats/run.py [--build build] [--reps 3] [--seconds 5]
                                       [--connections 50] [--callgrind 4000] [--out FILE]
    /usr/bin/python3 bench/nats/run.py --rate 5000,7000 [--reps 5] [--seconds 5]
                                       [--connections 50] [--callgrind 0] [--out FILE]

The workload is bench/http/run.py's small one: keep-alive HTTP/1.1 over TLS against soth-mitm in
reverse mode (`reverse:https://`, 1 worker, the whole process on CPU 1, TLS learning off) in
front of nginx (`GET /100b`; the load tool and nginx on CPU 0). Two proxies run side by side,
identical but for `events.sinks`: none, or one `nats` sink publishing to a nats-server -js (its
own temp store, a loopback port, CPU 0).

Full load (the default): wrk -t 1 -c CONNECTIONS, as fast as it goes. The CPU per request is the
proxy process's utime+stime over a point (every thread: worker, telemetry, the sink's and the
client library's) divided by the requests wrk completed. The proxy is not the bottleneck here
(CPU 0, with nats-server on it when the sink is on, is), so the two proxies run at different
rates, and a proxy at a lower rate batches less per loop pass: part of the difference is the
rate, not the sink.

Equal rate (--rate R1,R2,...): hey -c CONNECTIONS -q R/CONNECTIONS -z SECONDS (hey's workers,
one keep-alive connection each, each at most R/CONNECTIONS requests a second), each rate for
both proxies in turn, the order of the two swapped every other repetition. Choose rates that
both proxies (and CPU 0) sustain: the table shows the rate hey reached. The CPU per request is
split by thread (the scheduler's run time, /proc/PID/task/TID/schedstat): worker, telemetry
(event ring, the events' JSON, the sink's queue), the sink thread (soth-nats), libnats' threads,
other (main, metrics); requests are the proxy's soth_requests_total (checked against hey's).

Either mode prints a markdown table with medians and the sink's share, (on - off) / on of the
proxy's CPU per request, and can add user-space instructions per request under callgrind
(--callgrind N, h2load). Needs nginx, wrk, hey, nats-server, and for callgrind valgrind and
h2load (ci/setup.sh, bench/setup.sh).
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "http"))
from run import Origin, cpu_seconds, free_port, wait_port, wrk  # noqa: E402

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
PERF = shutil.which("perf")
HEY = shutil.which("hey") or "/usr/bin/hey"
# Thread groups of the equal-rate table, in its column order.
GROUPS = ("worker", "telemetry", "sink", "libnats", "other")


def thread_cpu(pid):
    """{tid: (comm, CPU seconds)} of every thread of pid: the scheduler's run time in ns
    (/proc/PID/task/TID/schedstat, user + kernel) where the kernel has it, else utime+stime
    in clock ticks."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/comm") as f:
                comm = f.read().strip()
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    sec = int(f.read().split()[0]) / 1e9
            except OSError:
                with open(f"{base}/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                sec = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        out[int(tid)] = (comm, sec)
    return out


def group_cpu(pid, before, after):
    """CPU seconds between two thread_cpu() readings of process pid, by group: worker
    (`soth-worker-*` and their io_uring helpers `iou-wrk-*`), telemetry (`soth-telemetry`: reads
    the workers' rings into the event ring, encodes the JSON, queues for the sinks), sink
    (`soth-nats`), libnats (its threads: unnamed, so named like the main thread that started
    the library, `soth-mitm`, but not the main thread itself), other (main, `soth-metrics`). A
    thread that ended between the readings is lost."""
    g = dict.fromkeys(GROUPS, 0.0)
    for tid, (comm, sec) in after.items():
        d = sec - before.get(tid, (comm, 0.0))[1]
        if comm.startswith(("soth-worker", "iou-wrk")):
            g["worker"] += d
        elif comm == "soth-telemetry":
            g["telemetry"] += d
        elif comm == "soth-nats":
            g["sink"] += d
        elif comm == "soth-mitm" and tid != pid:
            g["libnats"] += d
        else:
            g["other"] += d
    return g


def hey(port, path, seconds, conns, rate):
    """(responses, responses/s, errors) of one hey run on CPU 0 at `rate` requests/s in all:
    `conns` workers (keep-alive connections, HTTP/1.1 over TLS), each at most rate/conns a
    second."""
    out = subprocess.run(["taskset", "-c", "0", HEY, "-z", f"{seconds:g}s", "-c", str(conns),
                          "-q", f"{rate / conns:g}", "-t", "10", "-cpus", "1",
                          f"https://127.0.0.1:{port}/{path}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    txt = out.stdout
    if out.returncode != 0:
        sys.exit(f"hey failed: {out.stderr}{txt}")
    codes = [(int(c), int(n)) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", txt)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", txt)
    if not codes or not rps:
        sys.exit("cannot parse hey output:\n" + txt)
    ok = sum(n for c, n in codes if 200 <= c < 300)
    errors = sum(n for c, n in codes if not 200 <= c < 300)
    e = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", txt)
    if e:
        errors += sum(int(x) for x in re.findall(r"\[(\d+)\]", e.group(1)))
    return ok, float(rps.group(1)), errors


class Instructions:
    """Instructions the process retires (user + kernel, every thread) while alive: `perf stat`
    attached to it. A count that does not depend on how busy the machine is, unlike CPU time
    (the host this runs on is often shared). None when perf is not there or not allowed."""

    def __init__(self, pid):
        self.proc = None
        if PERF:
            self.proc = subprocess.Popen([PERF, "stat", "-x,", "-e", "instructions", "-p",
                                          str(pid)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
            time.sleep(0.2)

    def stop(self):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        for line in err.splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2].startswith("instructions") and f[0].isdigit():
                return int(f[0])
        return None


class Mitm:
    """soth-mitm reverse:https to the origin, 1 worker, the process on `cpu`."""

    def __init__(self, build, tmp, name, origin, sinks, cpu="1"):
        self.metrics_port = free_port()
        # TLS learning off: the bench measures interception. hey closes a few connections right
        # after the certificate flight (docs/tls.md: unknown_ca), which would pin the origin to
        # tunnel.
        cfg = {"policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": origin.ca, "learning": {"enabled": False}},
               "events": {"sinks": sinks},
               "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"}}
        path = os.path.join(tmp, f"{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.errlog = open(os.path.join(tmp, f"{name}.err"), "w+")
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu, os.path.join(build, "soth-mitm"),
             "--mode", f"reverse:https://127.0.0.1:{origin.port}", "--listen", "127.0.0.1:0",
             "--workers", "1", "--config", path, "--event-ring",
             os.path.join(tmp, f"{name}.ring"), "--ca-dir", os.path.join(tmp, "ca")],
            stderr=self.errlog)
        self.port = None
        for _ in range(400):
            self.errlog.seek(0)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.errlog.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.port is None:
            self.errlog.seek(0)
            sys.exit(f"proxy {name} did not start: " + self.errlog.read())

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                         if line and not line.startswith("#"))}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.seek(0)
        return self.proc.returncode, self.errlog.read()


def callgrind_ir(build, tmp, name, origin, sinks, n):
    """User-space instructions per request of soth-mitm (every thread) under valgrind callgrind:
    h2load --h1 over 2 connections, n/4 then n requests with the counters zeroed before each;
    the difference cancels start-up and handshakes. None when valgrind or h2load is missing."""
    if not (shutil.which("valgrind") and shutil.which("h2load")):
        return None
    d = os.path.join(tmp, f"cg-{name}")
    os.makedirs(d)
    port = free_port()
    cfg = {"policy": {"default": "intercept"},
           "tls": {"upstream_ca_file": origin.ca, "learning": {"enabled": False}},
           "events": {"sinks": sinks}}
    with open(os.path.join(d, "cfg.json"), "w") as f:
        json.dump(cfg, f)
    out = os.path.join(d, "callgrind")
    log = open(os.path.join(d, "log"), "w")
    p = subprocess.Popen(["taskset", "-c", "1", "valgrind", "--tool=callgrind",
                          f"--callgrind-out-file={out}.%p", "--dump-instr=no",
                          os.path.join(build, "soth-mitm"), "--listen", f"127.0.0.1:{port}",
                          "--workers", "1", "--mode", f"reverse:https://127.0.0.1:{origin.port}",
                          "--config", os.path.join(d, "cfg.json"), "--ca-dir",
                          os.path.join(tmp, "ca"), "--event-ring", os.path.join(d, "ev.ring")],
                         stdout=log, stderr=log, start_new_session=True)
    try:
        wait_port(port, p, f"soth-mitm {name} under valgrind")
        load = ["taskset", "-c", "0", "h2load", "--h1", "-t1", "-c", "2", "-T", "120"]
        url = f"https://127.0.0.1:{port}/100b"
        subprocess.run(load + ["-n", "200", url], capture_output=True, timeout=600)
        counts = []
        for nreq in (n // 4, n):
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True,
                           timeout=60)
            o = subprocess.run(load + ["-n", str(nreq), url], capture_output=True, text=True,
                               timeout=1200)
            m = re.search(r"(\d+) succeeded", o.stdout)
            ok = int(m.group(1)) if m else 0
            time.sleep(2)  # the sink publishes what those requests produced
            for f in os.listdir(d):
                if f.startswith("callgrind."):
                    os.unlink(os.path.join(d, f))
            subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True,
                           timeout=60)
            total = 0
            for f in os.listdir(d):
                if f.startswith("callgrind."):
                    with open(os.path.join(d, f)) as fh:
                        for line in fh:
                            if line.startswith(("summary:", "totals:")):
                                total += int(line.split()[1])
                                break
            counts.append((ok, total))
        (ok1, ir1), (ok2, ir2) = counts
        return (ir2 - ir1) / max(1, ok2 - ok1)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--callgrind", type=int, default=4000,
                    help="requests for the instruction count under callgrind (0: skip)")
    ap.add_argument("--rate", help="equal-rate mode: comma-separated request rates (req/s), "
                    "each held by hey for both proxies, instead of wrk at full load")
    ap.add_argument("--out")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (callgrind profiles in cg-on, cg-off)")
    a = ap.parse_args()
    if not os.path.exists(NATS_SERVER):
        sys.exit("nats-server is missing (Debian package nats-server)")
    tmp = tempfile.mkdtemp(prefix="soth-natsbench-")
    nport = free_port()
    nats_log = open(os.path.join(tmp, "nats.log"), "w")
    nats = subprocess.Popen(["taskset", "-c", "0", NATS_SERVER, "-js", "-a", "127.0.0.1", "-p",
                             str(nport), "-sd", os.path.join(tmp, "store")],
                            stdout=nats_log, stderr=nats_log)
    wait_port(nport, nats, "nats-server")
    origin = Origin(tmp)
    off = Mitm(a.build, tmp, "off", origin, [])
    on = Mitm(a.build, tmp, "on", origin,
              [{"type": "nats", "url": f"nats://127.0.0.1:{nport}", "subject": "bench",
                "stream": "BENCH", "max_pending_mb": 64}])
    res = {k: {"rps": [], "cpu_us": [], "ins": [], "n": 0, "err": 0} for k in ("off", "on")}
    rates = [float(r) for r in a.rate.split(",")] if a.rate else []
    try:
        for m in (off, on):  # warm-up: leaf minted, connections and caches warm
            if rates:
                hey(m.port, "100b", 1, a.connections, min(rates))
            else:
                wrk(m.port, "100b", 1, a.connections)
        if rates:
            rate_res = equal_rate(a, rates, off, on)
        for rep in range(a.reps if not rates else 0):
            for name, m in (("off", off), ("on", on)):
                c0 = cpu_seconds(m.proc.pid)
                ins = Instructions(m.proc.pid)
                n, rps, err, _, _ = wrk(m.port, "100b", a.seconds, a.connections)
                cpu = cpu_seconds(m.proc.pid) - c0
                icount = ins.stop()
                r = res[name]
                if icount is not None:
                    r["ins"].append(icount / max(1, n))
                r["rps"].append(rps)
                r["cpu_us"].append(cpu / max(1, n) * 1e6)
                r["n"] += n
                r["err"] += err
                print(f"rep {rep + 1} sink {name}: {rps:.0f} req/s, "
                      f"{r['cpu_us'][-1]:.1f} us CPU/request", file=sys.stderr)
        # Let the sink catch up, then read what it says.
        deadline = time.time() + 120
        while time.time() < deadline:
            mm = on.metrics()
            if mm.get('soth_sink_pending{sink="nats:0"}', 0) == 0:
                break
            time.sleep(0.5)
        mm = on.metrics()
        events = mm["soth_events_written_total"]
        requests = mm['soth_requests_total{protocol="http1"}']
        dropped = mm['soth_sink_dropped_total{sink="nats:0"}']
    finally:
        rc_on, err_on = on.stop()
        rc_off, err_off = off.stop()
        origin.close()
        nats.terminate()
        nats.wait(30)
    ir = {}
    if a.callgrind > 0:
        nats = subprocess.Popen(["taskset", "-c", "0", NATS_SERVER, "-js", "-a", "127.0.0.1",
                                 "-p", str(nport), "-sd", os.path.join(tmp, "store")],
                                stdout=nats_log, stderr=nats_log)
        wait_port(nport, nats, "nats-server")
        cg = os.path.join(tmp, "cg")
        os.makedirs(cg)
        origin = Origin(cg)
        try:
            ir["off"] = callgrind_ir(a.build, tmp, "off", origin, [], a.callgrind)
            ir["on"] = callgrind_ir(a.build, tmp, "on", origin,
                                    [{"type": "nats", "url": f"nats://127.0.0.1:{nport}",
                                      "subject": "cg", "stream": "CG"}], a.callgrind)
        finally:
            origin.close()
            nats.terminate()
            nats.wait(30)
    if rc_on != 0 or rc_off != 0:
        sys.exit(f"proxy exit status {rc_on}/{rc_off}: {err_on}{err_off}")
    if rates:
        lines = rate_report(a, rates, rate_res, events, requests, dropped, ir)
    else:
        lines = full_report(a, res, events, requests, dropped, ir)
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    if a.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def full_report(a, res, events, requests, dropped, ir):
    md = statistics.median
    c_off, c_on = md(res["off"]["cpu_us"]), md(res["on"]["cpu_us"])
    lines = [
        f"NATS sink cost, HTTP/1.1 over TLS 100 B, keep-alive: wrk -t 1 -c {a.connections} "
        f"-d {a.seconds:g}s ({a.reps} interleaved repetitions, medians; soth-mitm reverse:https, "
        "1 worker, the process on CPU 1; wrk, nginx and nats-server on CPU 0)",
        "",
        "| sink | req/s | proxy CPU us/req | proxy instructions/req | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, label in (("off", "none"), ("on", "nats")):
        i = f"{md(res[k]['ins']):.0f}" if res[k]["ins"] else "-"
        lines.append(f"| {label} | {md(res[k]['rps']):.0f} | {md(res[k]['cpu_us']):.1f} | {i} |"
                     f" {res[k]['err']} |")
    share_i = ""
    if res["off"]["ins"] and res["on"]["ins"]:
        i_off, i_on = md(res["off"]["ins"]), md(res["on"]["ins"])
        share_i = (f"; by instructions: {(i_on - i_off) / i_on * 100:.1f}% "
                   f"(on/off {i_on / i_off:.2f}x)")
    if ir.get("off") and ir.get("on"):
        share_i += (f"; by user-space instructions under callgrind ({a.callgrind} requests, "
                    f"{ir['off']:.0f} off, {ir['on']:.0f} on per request): "
                    f"{(ir['on'] - ir['off']) / ir['on'] * 100:.1f}% "
                    f"(on/off {ir['on'] / ir['off']:.2f}x)")
    lines += [
        "",
        f"The sink's share of the proxy's CPU per request: (on - off) / on = "
        f"{(c_on - c_off) / c_on * 100:.1f}% by CPU time (on/off {c_on / c_off:.2f}x){share_i} "
        "(goal: on/off at most 1.10x). "
        f"{events / max(1, requests):.2f} events per request; the sink dropped {dropped:.0f} of "
        f"{events:.0f} events; load average at the end {os.getloadavg()[0]:.1f}.",
    ]
    return lines


def served(m):
    """HTTP/1.1 requests the proxy intercepted (read outside a point: the metrics thread's
    CPU is not counted)."""
    return m.metrics()['soth_requests_total{protocol="http1"}']


def equal_rate(a, rates, off, on):
    """Both proxies at each of `rates` in turn, interleaved (rep by rep, the order of off and
    on swapped every other rep), each point a hey run of a.seconds and `settle` s after it so the
    sink publishes the last events. Per point: hey's rate and errors, the requests the proxy
    intercepted (soth_requests_total, checked against hey's count), the proxy's CPU by thread
    group."""
    settle = 0.3
    out = {(r, k): {"rps": [], "cpu_us": [], "groups": [], "util": [], "n": 0, "err": 0}
           for r in rates for k in ("off", "on")}
    load = []
    for rep in range(a.reps):
        for rate in rates:
            order = (("off", off), ("on", on)) if rep % 2 == 0 else (("on", on), ("off", off))
            for name, m in order:
                n0 = served(m)
                t0 = time.monotonic()
                c0 = thread_cpu(m.proc.pid)
                ok, rps, err = hey(m.port, "100b", a.seconds, a.connections, rate)
                time.sleep(settle)
                c1 = thread_cpu(m.proc.pid)
                wall = time.monotonic() - t0
                n = served(m) - n0
                if abs(n - ok - err) > max(100, (ok + err) // 100):
                    sys.exit(f"sink {name}: the proxy served {n:.0f} requests, hey counted "
                             f"{ok + err}: not every request intercepted")
                g = group_cpu(m.proc.pid, c0, c1)
                r = out[(rate, name)]
                r["rps"].append(rps)
                r["n"] += n
                r["err"] += err
                r["groups"].append({k: v / max(1, n) * 1e6 for k, v in g.items()})
                r["cpu_us"].append(sum(g.values()) / max(1, n) * 1e6)
                r["util"].append(sum(g.values()) / wall * 100)
                load.append(os.getloadavg()[0])
                print(f"rep {rep + 1} rate {rate:.0f} sink {name}: {rps:.0f} req/s (hey), "
                      f"{n:.0f} requests, {r['cpu_us'][-1]:.1f} us CPU/request ("
                      + ", ".join(f"{k} {v:.1f}" for k, v in r["groups"][-1].items())
                      + f"), proxy at {r['util'][-1]:.0f}% of a CPU, hey {ok} ok {err} errors",
                      file=sys.stderr)
    out["load"] = load
    return out


def rate_report(a, rates, res, events, requests, dropped, ir):
    md = statistics.median
    lines = [
        f"NATS sink cost at equal request rates, HTTP/1.1 over TLS 100 B, keep-alive: hey "
        f"-c {a.connections} -q RATE/{a.connections} -z {a.seconds:g}s ({a.reps} interleaved "
        "repetitions, medians; soth-mitm reverse:https, 1 worker, the process on CPU 1; hey, "
        "nginx and nats-server on CPU 0). CPU us per request of the proxy by thread: worker "
        "(soth-worker-0), telemetry (soth-telemetry: ring, JSON, queue), sink (soth-nats), "
        "libnats (its threads), other (main, metrics).",
        "",
        "| rate | sink | req/s | proxy CPU us/req | worker | telemetry | sink | libnats | other "
        "| proxy CPU % | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    summary = []
    for rate in rates:
        med = {}
        for k, label in (("off", "none"), ("on", "nats")):
            r = res[(rate, k)]
            med[k] = {g: md([x[g] for x in r["groups"]]) for g in GROUPS}
            med[k]["all"] = md(r["cpu_us"])
            lines.append(f"| {rate:.0f} | {label} | {md(r['rps']):.0f} | {med[k]['all']:.1f} | "
                         + " | ".join(f"{med[k][g]:.1f}" for g in GROUPS)
                         + f" | {md(r['util']):.0f} | {r['err']} |")
        c_off, c_on = med["off"]["all"], med["on"]["all"]
        diff = ", ".join(f"{g} {med['on'][g] - med['off'][g]:+.1f}" for g in GROUPS)
        ratios = sorted(on / off for on, off in zip(res[(rate, "on")]["cpu_us"],
                                                    res[(rate, "off")]["cpu_us"]))
        summary.append(f"At {rate:.0f} req/s: on/off {c_on / c_off:.2f}x (the sink's share "
                       f"(on - off) / on {(c_on - c_off) / c_on * 100:.1f}%; per rep "
                       + ", ".join(f"{x:.2f}x" for x in ratios)
                       + f"); the difference in us/request by thread: {diff}.")
    if ir.get("off") and ir.get("on"):
        summary.append(f"User-space instructions under callgrind ({a.callgrind} requests): "
                       f"{ir['off']:.0f} off, {ir['on']:.0f} on per request "
                       f"(on/off {ir['on'] / ir['off']:.2f}x).")
    lo = res["load"]
    lines += ["", *summary, "",
              f"Goal: on/off at most 1.10x. {events / max(1, requests):.2f} events per request; "
              f"the sink dropped {dropped:.0f} of {events:.0f} events; load average (1 min) "
              f"{min(lo):.1f}-{max(lo):.1f} during the points, {os.getloadavg()[0]:.1f} at the "
              "end."]
    return lines


if __name__ == "__main__":
    main()
