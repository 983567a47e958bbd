#!/usr/bin/env python3
"""TLS interception benchmark: soth-mitm (regular mode, CONNECT + intercept, 1 worker pinned to
CPU 1) against a direct TLS connection to the same origin (nginx, pinned with the load generator
to CPU 0), in the same run, interleaved and repeated.

    /usr/bin/python3 bench/tls/run.py [--build build] [--reps 3] [--seconds 4] [--threads 16]
                                       [--bytes 1073741824] [--out FILE]

Builds nothing: it needs <build>/soth-mitm and <build>/bench/tls/tls_load (SOTH_BENCH=ON).
Points, per repetition:
  - full TLS handshakes/s direct to nginx (no resumption; one GET of 3 bytes; close);
  - the same through soth-mitm with a warm leaf cache (every connection names bench.test);
  - the same on a cold cache: every connection's SNI is a new name h<N>.bench.test (CONNECT to
    127.0.0.1:port; the origin's wildcard certificate covers them), so every handshake mints a
    leaf (checked against soth_leaf_cache_misses_total);
  - one connection downloading --bytes (AES-128-GCM, TLS 1.3) direct and through soth-mitm.
Prints a markdown table with medians, ratios to direct, and soth-mitm's CPU time (utime+stime of
the process over the point) per handshake and per GiB.
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


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def sched_ns(pid):
    """(ns on a CPU, ns runnable but waiting for one) summed over the process's threads."""
    run_ns = wait_ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                r, w, _ = f.read().split()
        except (OSError, ValueError):
            continue
        run_ns += int(r)
        wait_ns += int(w)
    return run_ns, wait_ns


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Origin:
    """nginx on 127.0.0.1 (CPU 0) with a test CA and a P-256 certificate for bench.test and
    *.bench.test: /hs answers "ok\\n", /big is a sparse file of `size` bytes."""

    def __init__(self, tmp, size=0, cpu="0"):
        d = os.path.join(tmp, "origin")
        os.makedirs(d)
        # The big file is a hole on tmpfs: reads copy the zero page (on a disk file system the
        # kernel clears every page it returns, which costs nginx more than its TLS does).
        self.www = tempfile.mkdtemp(prefix="soth-tlsbench-www-",
                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else tmp)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench origin CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=bench.test", cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:bench.test,DNS:*.bench.test\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
        self.ca = os.path.join(d, "ca.pem")
        with open(os.path.join(self.www, "big"), "wb") as f:
            f.truncate(size)
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
    keepalive_timeout 0;
    output_buffers 2 256k;
    server {{
        listen 127.0.0.1:{self.port} ssl backlog=4096;
        ssl_certificate {d}/o.pem;
        ssl_certificate_key {d}/o.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        root {self.www};
        location = /hs {{ return 200 "ok\\n"; }}
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


class Mitm:
    """soth-mitm, regular mode, intercept, 1 worker on `cpu`, trusting the origin's CA."""

    def __init__(self, build, tmp, origin, cpu="1", extra_cfg=None, env=None):
        self.tmp = tmp
        self.metrics_port = free_port()
        cfg = {"policy": {"default": "intercept"}, "resolve": {"bench.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": origin.ca},
               "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"}}
        cfg.update(extra_cfg or {})
        path = os.path.join(tmp, "mitm.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.errpath = os.path.join(tmp, "proxy.err")
        self.errlog = open(self.errpath, "w+")
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu, os.path.join(build, "soth-mitm"), "--listen", "127.0.0.1:0",
             "--workers", "1", "--config", path, "--event-ring", os.path.join(tmp, "ev.ring"),
             "--ca-dir", os.path.join(tmp, "ca")], stderr=self.errlog,
            env=dict(os.environ, **(env or {})))
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
        self.ca = os.path.join(tmp, "ca", "soth-mitm-ca.pem")

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
        """SIGTERM; returns (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.seek(0)
        return self.proc.returncode, self.errlog.read()


def tls_load(build, args, timeout=600, cpu="0"):
    exe = os.path.join(build, "bench", "tls", "tls_load")
    out = subprocess.run(["taskset", "-c", cpu, exe] + args, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"tls_load {args} failed ({out.returncode}): {out.stderr}")
    vals = {}
    for line in out.stdout.splitlines():
        mode, key, v = line.split(None, 2)
        try:
            vals[key] = float(v)
        except ValueError:
            vals[key] = v
    vals["stderr"] = out.stderr
    return vals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4, help="per handshake point")
    ap.add_argument("--threads", type=int, default=16, help="concurrent handshake connections")
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--out")
    a = ap.parse_args()
    for exe in ("soth-mitm", "bench/tls/tls_load"):
        if not os.path.exists(os.path.join(a.build, exe)):
            sys.exit(f"{a.build}/{exe} missing: build with -DSOTH_BENCH=ON (tls_load needs"
                     " libssl-dev)")
    tmp = tempfile.mkdtemp(prefix="soth-tlsbench-")
    origin = Origin(tmp, a.bytes)
    mitm = Mitm(a.build, tmp, origin)
    op = origin.port
    direct = ["-c", f"127.0.0.1:{op}", "-a", origin.ca]
    via = ["-c", f"127.0.0.1:{mitm.port}", "-a", mitm.ca]
    hs = ["hs", "-t", str(a.threads), "-s", str(a.seconds), "-u", "/hs"]
    keys = ["d_hs", "d_hs_ocpu", "w_hs", "w_cpu", "w_mint", "c_hs", "c_cpu", "c_mint",
            "d_tp", "d_ocpu_gib", "m_tp", "m_cpu_gib"]
    res = {k: [] for k in keys}
    cipher = {}
    errors = 0
    name_base = 0
    try:
        # Warm the leaf cache for bench.test (and the proxy's lazily allocated pools).
        tls_load(a.build, hs[:1] + ["-t", "4", "-N", "200", "-u", "/hs", "-n", "bench.test",
                                    "-x", f"bench.test:{op}"] + via)

        def point(args, pid=None):
            c0 = cpu_seconds(pid) if pid else 0
            m0 = mitm.metric("soth_leaf_cache_misses_total")
            v = tls_load(a.build, args)
            c1 = cpu_seconds(pid) if pid else 0
            m1 = mitm.metric("soth_leaf_cache_misses_total")
            return v, c1 - c0, m1 - m0

        sched0 = sched_ns(mitm.proc.pid)
        for rep in range(a.reps):
            v, oc, _ = point(hs + ["-n", "bench.test"] + direct, origin.proc.pid)
            res["d_hs"].append(v["per_s"])
            res["d_hs_ocpu"].append(oc / v["count"] * 1e6)
            cipher["direct"] = v["cipher"]
            errors += v["errors"]

            v, pc, mint = point(hs + ["-n", "bench.test", "-x", f"bench.test:{op}"] + via,
                                mitm.proc.pid)
            res["w_hs"].append(v["per_s"])
            res["w_cpu"].append(pc / v["count"] * 1e6)
            res["w_mint"].append(mint / v["count"])
            cipher["mitm"] = v["cipher"]
            errors += v["errors"]

            # Cold: a new SNI per connection; names never repeat within the run.
            v, pc, mint = point(hs + ["-n", "h%u.bench.test", "-k", str(name_base),
                                      "-x", f"127.0.0.1:{op}"] + via, mitm.proc.pid)
            name_base += int(v["count"] + v["errors"]) + a.threads + 1
            res["c_hs"].append(v["per_s"])
            res["c_cpu"].append(pc / v["count"] * 1e6)
            res["c_mint"].append(mint / v["count"])
            errors += v["errors"]

            c0 = cpu_seconds(origin.proc.pid)
            v = tls_load(a.build, ["get", "-n", "bench.test", "-u", "/big"] + direct)
            res["d_ocpu_gib"].append((cpu_seconds(origin.proc.pid) - c0) / (a.bytes / (1 << 30)))
            res["d_tp"].append(v["MB/s"])
            cipher["bulk"] = v["cipher"]
            c0 = cpu_seconds(mitm.proc.pid)
            v = tls_load(a.build, ["get", "-n", "bench.test", "-u", "/big",
                                   "-x", f"bench.test:{op}"] + via)
            res["m_cpu_gib"].append((cpu_seconds(mitm.proc.pid) - c0) / (a.bytes / (1 << 30)))
            res["m_tp"].append(v["MB/s"])
            print(f"rep {rep + 1}/{a.reps}: " +
                  ", ".join(f"{k} {res[k][-1]:.3g}" for k in keys), file=sys.stderr)
        sched1 = sched_ns(mitm.proc.pid)
    finally:
        rc, err = mitm.stop()
        origin.close()
    if rc != 0:
        sys.exit(f"soth-mitm exit status {rc}: {err}")
    shutil.rmtree(tmp, ignore_errors=True)

    m = {k: statistics.median(v) for k, v in res.items()}
    mint_us = m["c_cpu"] - m["w_cpu"]
    lines = [
        f"TLS interception benchmark ({a.reps} interleaved repetitions, medians; soth-mitm:"
        f" regular mode, CONNECT + intercept, 1 worker on CPU 1; OpenSSL load generator"
        f" ({a.threads} connections) and nginx origin on CPU 0; {a.seconds:g} s per handshake"
        f" point; handshakes: {cipher.get('mitm')} to the client, ECDSA P-256 certificates,"
        f" no resumption; {a.bytes >> 20} MiB download: {cipher.get('bulk')})",
        "",
        "| case | handshakes/s | x direct | proxy CPU us/handshake (direct: nginx CPU) | leaves minted/handshake |",
        "| --- | --- | --- | --- | --- |",
        f"| direct to nginx (full handshake + GET) | {m['d_hs']:.0f} | 1.00 |"
        f" ({m['d_hs_ocpu']:.0f}) | - |",
        f"| soth-mitm intercept, warm leaf cache | {m['w_hs']:.0f} |"
        f" {m['w_hs'] / m['d_hs']:.2f} | {m['w_cpu']:.0f} | {m['w_mint']:.2f} |",
        f"| soth-mitm intercept, cold cache (new SNI each) | {m['c_hs']:.0f} |"
        f" {m['c_hs'] / m['d_hs']:.2f} | {m['c_cpu']:.0f} | {m['c_mint']:.2f} |",
        "",
        "| case | 1 connection MB/s | x direct | proxy CPU s/GiB (direct: nginx CPU) |",
        "| --- | --- | --- | --- |",
        f"| direct to nginx | {m['d_tp']:.0f} | 1.00 | ({m['d_ocpu_gib']:.2f}) |",
        f"| soth-mitm intercept | {m['m_tp']:.0f} | {m['m_tp'] / m['d_tp']:.2f} |"
        f" {m['m_cpu_gib']:.2f} |",
        "",
        f"Leaf issuance on a cold cache: {m['c_hs']:.0f} leaves/s end to end"
        f" ({m['c_hs'] / m['w_hs']:.2f}x the warm-cache handshake rate); minting adds"
        f" {mint_us:.0f} us of proxy CPU per handshake"
        + (f" (about {1e6 / mint_us / 1000:.0f}k leaves/s per core)." if mint_us > 0 else ".")
        + (f" Failed connections: {errors:.0f}." if errors else ""),
        "",
        f"CPU cost as capacity of one proxy core (steadier than the rates on a shared machine):"
        f" {1e6 / m['w_cpu']:.0f} intercepted handshakes/s warm, {1e6 / m['c_cpu']:.0f}/s cold,"
        f" {(1 << 30) / m['m_cpu_gib'] / 1e6:.0f} MB/s relayed (decrypt + re-encrypt); nginx,"
        f" terminating one side: {1e6 / m['d_hs_ocpu']:.0f} handshakes/s,"
        f" {(1 << 30) / m['d_ocpu_gib'] / 1e6:.0f} MB/s (encrypt only). Over the run soth-mitm"
        f" ran {(sched1[0] - sched0[0]) / 1e9:.1f} s and waited {(sched1[1] - sched0[1]) / 1e9:.1f}"
        f" s for its CPU while runnable (other load on the machine; with no other load the wait"
        f" is near 0 and the rates above are the machine's).",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
