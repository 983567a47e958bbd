#!/usr/bin/env python3
"""HTTP/2 benchmark: h2load through soth-mitm in reverse mode (HTTP/2 + TLS on both legs,
1 worker pinned to CPU 1) against h2load straight to the origin, in the same run, interleaved
and repeated. The origin is Debian's nginx (http2 + TLS on loopback, private prefix and
config in a temp dir) pinned with h2load to CPU 0, as bench/core/run.py does.

    /usr/bin/python3 bench/h2/run.py [--build build] [--reps 3] [--clients 50] [--streams 10]
                                     [--small-requests 50000] [--large-requests 1000]
                                     [--out FILE]

Each point is a fixed number of requests (h2load -n: req/s = requests / time to finish them
all; a duration-based run would count few 1 MiB completions, since 500 streams share the
bandwidth and finish together). Prints a markdown table per response size (about 100 B and
1 MiB): median req/s of each target, soth-mitm as a ratio to direct, and soth-mitm's CPU time
per request (utime+stime of the proxy process over the run / requests done).
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLK = os.sysconf("SC_CLK_TCK")
SMALL = "x" * 99 + "\n"  # 100 bytes


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def pki(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=origin.test", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:origin.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what):
    import socket
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen")


def start_nginx(tmp):
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    os.chmod(tmp, 0o755)  # nginx workers may run as nobody
    with open(os.path.join(www, "small"), "w") as f:
        f.write(SMALL)
    with open(os.path.join(www, "1m"), "wb") as f:
        f.write(os.urandom(1 << 20))
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/cbt;
    proxy_temp_path {tmp}/pt;
    fastcgi_temp_path {tmp}/ft;
    uwsgi_temp_path {tmp}/ut;
    scgi_temp_path {tmp}/st;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    http2_max_concurrent_streams 128;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {tmp}/o.pem;
        ssl_certificate_key {tmp}/o.key;
        ssl_protocols TLSv1.3;
        root {www};
        default_type application/octet-stream;
    }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", tmp, "-c", conf, "-e",
                             os.path.join(tmp, "nginx.err")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "nginx")
    return proc, port


def start_proxy(build, tmp, nginx_port):
    cfg = os.path.join(tmp, "mitm.json")
    with open(cfg, "w") as f:
        f.write('{"resolve": {"origin.test": "127.0.0.1"}, "tls": {"upstream_ca_file": "%s"}}'
                % os.path.join(tmp, "ca.pem"))
    errlog = open(os.path.join(tmp, "proxy.err"), "w+")
    proxy = subprocess.Popen(
        ["taskset", "-c", "1", os.path.join(build, "soth-mitm"), "--listen", "127.0.0.1:0",
         "--workers", "1", "--mode", f"reverse:https://origin.test:{nginx_port}", "--config",
         cfg, "--event-ring", os.path.join(tmp, "ev.ring"), "--ca-dir",
         os.path.join(tmp, "ca")], stderr=errlog)
    for _ in range(200):
        errlog.seek(0)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", errlog.read())
        if m:
            return proxy, int(m.group(1))
        if proxy.poll() is not None:
            break
        time.sleep(0.05)
    errlog.seek(0)
    sys.exit("proxy did not start: " + errlog.read())


def h2load(url, n, a):
    cmd = ["taskset", "-c", "0", "h2load", "-c", str(a.clients), "-m", str(a.streams), "-t", "1",
           "-n", str(n), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out.stdout)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed", out.stdout)
    if out.returncode != 0 or m is None or r is None:
        sys.exit(f"h2load failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    st = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out.stdout)
    if int(r.group(5)) != 0 or st is None or st.groups() != ("0", "0", "0"):
        sys.exit(f"h2load saw failures: {out.stdout}")
    return float(m.group(3)), int(r.group(3)), " ".join(cmd[3:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small-requests", type=int, default=50000)
    ap.add_argument("--large-requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="soth-h2bench-")
    nginx = proxy = None
    try:
        pki(tmp)
        nginx, nport = start_nginx(tmp)
        proxy, pport = start_proxy(a.build, tmp, nport)
        sizes = [("small", "~100 B", a.small_requests), ("1m", "1 MiB", a.large_requests)]
        res = {s: {"direct": [], "proxy": [], "cpu": []} for s, _, _ in sizes}
        cmd_shown = None
        for _ in range(a.reps):
            for s, _, n in sizes:
                rps, _, cmd = h2load(f"https://127.0.0.1:{nport}/{s}", n, a)
                res[s]["direct"].append(rps)
                c0 = cpu_seconds(proxy.pid)
                rps, done, cmd_shown = h2load(f"https://127.0.0.1:{pport}/{s}", n, a)
                res[s]["cpu"].append((cpu_seconds(proxy.pid) - c0) / max(1, done) * 1e6)
                res[s]["proxy"].append(rps)
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        md = statistics.median
        lines = [
            f"HTTP/2 benchmark ({a.reps} interleaved repetitions, medians; h2load -c "
            f"{a.clients} -m {a.streams}, {a.small_requests} small / {a.large_requests} 1 MiB "
            f"requests per point; soth-mitm reverse mode, 1 worker on CPU 1; h2load and nginx on"
            f" CPU 0; TLS 1.3 both legs)",
            "",
            "| response | direct req/s | soth-mitm req/s | x direct | proxy CPU us/request |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s, label, _ in sizes:
            d, p = md(res[s]["direct"]), md(res[s]["proxy"])
            lines.append(f"| {label} | {d:.0f} | {p:.0f} | {p / d:.2f} |"
                         f" {md(res[s]['cpu']):.1f} |")
        lines += ["", "command (proxy run): `" + cmd_shown + "`"]
        text = "\n".join(lines)
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
    finally:
        for p in (proxy, nginx):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
