#!/usr/bin/env python3
"""What the NATS JetStream sink costs (docs/sinks.md): soth-mitm's CPU time per request with the
sink on and off, in the same run, interleaved and repeated.

    /usr/bin/python3 bench/nats/run.py [--build build] [--reps 3] [--seconds 5]
                                       [--connections 50] [--out FILE]

The workload is bench/http/run.py's small one: wrk -t 1 (keep-alive, over TLS) against
soth-mitm in reverse mode (`reverse:https://`, 1 worker, the whole process on CPU 1) in front of
nginx (`GET /100b`; wrk and nginx on CPU 0). Two proxies run side by side, identical but for
`events.sinks`: none, or one `nats` sink publishing to a nats-server -js (its own temp store,
a loopback port, CPU 0). The CPU per request is the proxy process's utime+stime over a point
(every thread: worker, telemetry, the sink's and the client library's) divided by the requests
wrk completed. Prints a markdown table with medians and the sink's share:
(on - off) / on of the proxy's CPU per request. Needs nginx, wrk, nats-server (ci/setup.sh).
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
        cfg = {"policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": origin.ca},
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
    cfg = {"policy": {"default": "intercept"}, "tls": {"upstream_ca_file": origin.ca},
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
    try:
        for m in (off, on):  # warm-up: leaf minted, connections and caches warm
            wrk(m.port, "100b", 1, a.connections)
        for rep in range(a.reps):
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
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    if a.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
