#!/usr/bin/env python3
"""HTTP/1.1 benchmark: wrk (keep-alive, over TLS) through soth-mitm in reverse mode
(`--mode reverse:https://127.0.0.1:PORT`, 1 worker pinned to CPU 1) against wrk straight to the
same nginx origin (TLS on loopback, pinned with wrk to CPU 0), in the same run, interleaved and
repeated.

    /usr/bin/python3 bench/http/run.py [--build build] [--reps 3] [--seconds 5]
                                        [--connections 50] [--out FILE]

Needs <build>/soth-mitm, Debian's nginx and wrk. Points, per repetition and per response size
(100 bytes and 1 MiB, `GET /100b` and `GET /1m`): wrk -t 1 -c N -d S direct to nginx, then the
same through soth-mitm. The proxy intercepts every exchange: TLS terminated with a leaf for
127.0.0.1, llhttp on both directions, the HTTP events (request_headers, response_headers, body
chunks with up to events.body_capture_bytes = 4096 bytes captured, exchange_completed) written
to its event ring, TLS again to nginx (verified against the bench CA). wrk does not verify
certificates.

Prints a markdown table with medians: requests/s, MB/s of response bodies (requests/s x body
size, 10^6 bytes), both as a ratio to direct, wrk's median latency, and soth-mitm's CPU time
(utime+stime of the process over the point) per request; plus the proxy's
soth_events_dropped_total and the load average during the run (the rates mean little on a busy
machine: compare CPU per request).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLK = os.sysconf("SC_CLK_TCK")
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
SIZES = (("100b", 100), ("1m", 1 << 20))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def wait_port(port, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


class Origin:
    """nginx on 127.0.0.1 (CPU 0), TLS with a test CA and a P-256 certificate for 127.0.0.1,
    keep-alive without a request limit; /100b and /1m are random files on tmpfs."""

    def __init__(self, tmp, cpu="0"):
        d = os.path.join(tmp, "origin")
        os.makedirs(d)
        self.www = tempfile.mkdtemp(prefix="soth-httpbench-www-",
                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else tmp)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench origin CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=127.0.0.1", cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
        self.ca = os.path.join(d, "ca.pem")
        for name, size in SIZES:
            with open(os.path.join(self.www, name), "wb") as f:
                f.write(os.urandom(size))
        self.port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/t_body;
    proxy_temp_path {d}/t_proxy;
    fastcgi_temp_path {d}/t_fcgi;
    uwsgi_temp_path {d}/t_uwsgi;
    scgi_temp_path {d}/t_scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    output_buffers 2 256k;
    server {{
        listen 127.0.0.1:{self.port} ssl backlog=4096;
        ssl_certificate {d}/o.pem;
        ssl_certificate_key {d}/o.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {self.www};
    }}
}}
""")
        self.proc = subprocess.Popen(["taskset", "-c", cpu, NGINX, "-p", d, "-c", conf,
                                      "-e", os.path.join(d, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "nginx")

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.www, ignore_errors=True)


class Mitm:
    """soth-mitm in reverse mode over TLS to the origin, 1 worker on `cpu`."""

    def __init__(self, build, tmp, origin, cpu="1"):
        self.metrics_port = free_port()
        cfg = {"policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": origin.ca},
               "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"}}
        path = os.path.join(tmp, "mitm.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.errlog = open(os.path.join(tmp, "proxy.err"), "w+")
        self.cmd = ["taskset", "-c", cpu, os.path.join(build, "soth-mitm"),
                    "--mode", f"reverse:https://127.0.0.1:{origin.port}",
                    "--listen", "127.0.0.1:0", "--workers", "1", "--config", path,
                    "--event-ring", os.path.join(tmp, "ev.ring"), "--ca-dir",
                    os.path.join(tmp, "ca")]
        self.proc = subprocess.Popen(self.cmd, stderr=self.errlog)
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
            sys.exit("proxy did not start: " + self.errlog.read())

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.seek(0)
        return self.proc.returncode, self.errlog.read()


def wrk(port, path, seconds, conns):
    """(requests, requests/s, non-2xx + socket errors, median latency in us, output) of one wrk
    run on CPU 0."""
    out = subprocess.run(["taskset", "-c", "0", WRK, "-t", "1", "-c", str(conns), "-d",
                          f"{seconds:g}s", "--timeout", "10s", "--latency",
                          f"https://127.0.0.1:{port}/{path}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        sys.exit(f"wrk failed: {out.stderr}{out.stdout}")
    txt = out.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", txt)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", txt)
    if not m or not rps:
        sys.exit("cannot parse wrk output:\n" + txt)
    errors = 0
    e = re.search(r"Non-2xx or 3xx responses: (\d+)", txt)
    if e:
        errors += int(e.group(1))
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
    if e:
        errors += sum(int(x) for x in e.groups())
    lat = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", txt, re.M)
    p50 = float(lat.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[lat.group(2)] if lat else 0.0
    return int(m.group(1)), float(rps.group(1)), errors, p50, txt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out")
    a = ap.parse_args()
    for tool in (NGINX, WRK):
        if not os.path.exists(tool):
            sys.exit(f"{tool} is missing (Debian packages nginx, wrk)")
    tmp = tempfile.mkdtemp(prefix="soth-httpbench-")
    origin = Origin(tmp)
    mitm = Mitm(a.build, tmp, origin)
    res = {(t, name): {"rps": [], "cpu_us": [], "p50": [], "err": 0}
           for t in ("direct", "soth-mitm") for name, _ in SIZES}
    try:
        for name, _ in SIZES:  # warm-up: leaf minted, connections and caches warm
            wrk(mitm.port, name, 1, a.connections)
        for rep in range(a.reps):
            for name, _ in SIZES:
                n, rps, err, p50, _ = wrk(origin.port, name, a.seconds, a.connections)
                res[("direct", name)]["rps"].append(rps)
                res[("direct", name)]["p50"].append(p50)
                res[("direct", name)]["err"] += err
                c0 = cpu_seconds(mitm.proc.pid)
                n, rps, err, p50, txt = wrk(mitm.port, name, a.seconds, a.connections)
                cpu = cpu_seconds(mitm.proc.pid) - c0
                r = res[("soth-mitm", name)]
                r["rps"].append(rps)
                r["p50"].append(p50)
                r["cpu_us"].append(cpu / max(1, n) * 1e6)
                r["err"] += err
                print(f"rep {rep + 1} {name}: direct {res[('direct', name)]['rps'][-1]:.0f} "
                      f"req/s, soth-mitm {rps:.0f} req/s", file=sys.stderr)
        dropped = mitm.metric("soth_events_dropped_total")
        requests = mitm.metric("soth_requests_total")
    finally:
        rc, err = mitm.stop()
        origin.close()
    if rc != 0:
        sys.exit(f"proxy exit status {rc}: {err}")

    md = statistics.median
    lines = [
        f"HTTP/1.1 over TLS, keep-alive: wrk -t 1 -c {a.connections} -d {a.seconds:g}s "
        f"({a.reps} interleaved repetitions, medians; soth-mitm reverse:https, 1 worker on CPU 1;"
        " wrk and nginx on CPU 0)",
        "",
        "| response | target | req/s | x direct | body MB/s | x direct | p50 latency ms |"
        " proxy CPU us/req | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, size in SIZES:
        d = md(res[("direct", name)]["rps"])
        s = md(res[("soth-mitm", name)]["rps"])
        label = "100 B" if size == 100 else "1 MiB"
        lines.append(f"| {label} | direct | {d:.0f} | 1.00 | {d * size / 1e6:.1f} | 1.00 |"
                     f" {md(res[('direct', name)]['p50']) / 1e3:.2f} | - |"
                     f" {res[('direct', name)]['err']} |")
        lines.append(f"| {label} | soth-mitm | {s:.0f} | {s / d:.2f} | {s * size / 1e6:.1f} |"
                     f" {s / d:.2f} | {md(res[('soth-mitm', name)]['p50']) / 1e3:.2f} |"
                     f" {md(res[('soth-mitm', name)]['cpu_us']):.1f} |"
                     f" {res[('soth-mitm', name)]['err']} |")
    lines += ["", f"soth-mitm: soth_requests_total {requests:.0f}, soth_events_dropped_total "
              f"{dropped:.0f}; load average at the end {os.getloadavg()[0]:.1f}"]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
