#!/usr/bin/env python3
"""Soak: a mixed workload through soth-mitm for a set time, sampling its memory, descriptors,
client-visible errors and dropped events every --interval seconds (docs/migration.md, "Soak").

    /usr/bin/python3 bench/soak/run.py [--build build] --minutes N [--csv FILE]
                                       [--interval 10] [--rate 1] [--warmup-s S] [--keep]

Starts on loopback: soth-mitm (regular mode, --workers 2, policy intercept, a tunnel rule for
tunnel.test, TLS learning off, metrics endpoint on, an 8 MiB event ring); an nginx origin (TLS
with ALPN h2/http/1.1, plain HTTP, and a TLS port with a self-signed certificate the proxy does
not trust); a Python TLS origin (POST /echo, GET /sse); a websockets TLS origin (echo); a grpcio
TLS origin (unary, server-streaming, bidi); and soth-mitm-tail following the ring (a consumer that
checks gseq and per-flow seq continuity).

Workloads, each a thread doing one bounded round every PERIOD/--rate seconds:

  h1       curl --http1.1 via CONNECT, one keep-alive connection: GET /small, /64k, /1m, then
           POST 256 KiB to /echo; plus curl GET http://origin.test/64k (absolute-form, plain)
  h2       curl --http2 --parallel via CONNECT: 8 multiplexed streams (/small, /64k, /1m)
  ws       websockets client over a CONNECT tunnel: 12 messages echoed (text and binary,
           1 B .. 64 KiB, permessage-deflate), then a clean close
  sse      curl -N: an event stream of 20 events, 10 ms apart
  grpc     grpcio via grpc.http_proxy: 2 unary, 1 server-streaming (5 replies), 1 bidi (5 each way)
  tlsfail  client side: curl trusting only the origin CA (must fail: exit 60) and a client that
           closes right after CONNECT; upstream side: an origin with a self-signed certificate
           (the client must get 502 whose body names unknown_ca)
  tunnel   curl to tunnel.test (policy tunnel) trusting only the origin CA: 200 and /64k exact

Every body is compared byte for byte with what the origin sent; a wrong status,
wrong bytes, an unexpected close or a timeout is an error. Every sample is taken at rest: the
workloads pause at a round boundary, the proxy's soth_active_connections reaches 0, then VmRSS,
RssAnon (/proc/PID/status), open fds (/proc/PID/fd) and the metrics are read.

Gate (exit status 1 when any fails): 0 client-visible errors; 0 events dropped
(soth_events_dropped_total, stream_closed events_dropped, per-flow seq gaps, ring overruns seen
by the consumer); VmRSS and fds after the warm-up never above the first post-warm-up sample by
more than --growth (10 %); every workload completed rounds; the proxy exits 0 on SIGTERM with
every flow closed. Warm-up: max(60 s, 10 % of the run), beginning with 64 MiB of downloads that
fill the workers' fixed buffers once. Exit status 2: bad usage or a missing
tool (never a pass).
"""
import argparse
import asyncio
import csv
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NGINX = "/usr/sbin/nginx"
CURL = "/usr/bin/curl"
CLK = os.sysconf("SC_CLK_TCK")
OP_TIMEOUT = 30  # seconds: any single client operation (curl --max-time, socket timeouts)

try:
    import grpc
    import websockets
except ImportError as e:  # a missing tool is a failure, never a skip
    sys.exit(f"soak: {e}: install python3-grpcio and python3-websockets (ci/setup.sh)")

PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(argv, **kw):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def clean_env():
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["LC_ALL"] = "C"
    return env


# ---------------------------------------------------------------- certificates and content

def make_certs(d):
    """origin CA; origin leaf for origin.test, tunnel.test, bad.test, 127.0.0.1; a self-signed
    leaf for bad.test (the upstream-side TLS failure)."""
    def openssl(*args):
        sh(["openssl", *args], cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=soth soak CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:origin.test,DNS:tunnel.test,DNS:bad.test,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=origin.test")
    openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "o.pem", "-days", "30", "-extfile", "ext.cnf")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "self.key", "-out", "self.pem", "-days", "30", "-subj", "/CN=bad.test",
            "-addext", "subjectAltName=DNS:bad.test")


def make_content(d):
    """Static files with deterministic bytes; returns {path: bytes}."""
    rnd = random.Random(20261204)
    small = b"soth-mitm soak: a small response body of exactly one hundred bytes.".ljust(99, b".")
    files = {"/small": small + b"\n", "/64k": rnd.randbytes(65536),
             "/1m": rnd.randbytes(1 << 20)}
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    for path, data in files.items():
        with open(os.path.join(d, "www", path.lstrip("/")), "wb") as f:
            f.write(data)
    return files


def nginx_conf(d, tls_port, plain_port, bad_port):
    return f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/nginx.error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
    default_type application/octet-stream;
    keepalive_timeout 30s;
    ssl_protocols TLSv1.2 TLSv1.3;
    root {d}/www;
    server {{
        listen 127.0.0.1:{tls_port} ssl http2;
        ssl_certificate {d}/o.pem;
        ssl_certificate_key {d}/o.key;
    }}
    server {{
        listen 127.0.0.1:{plain_port};
    }}
    server {{
        listen 127.0.0.1:{bad_port} ssl;
        ssl_certificate {d}/self.pem;
        ssl_certificate_key {d}/self.key;
    }}
}}
"""


# ---------------------------------------------------------------- Python origins

SSE_EVENTS = 20


def sse_body():
    return b"".join(b"id: %d\nevent: tick\ndata: {\"i\":%d,\"pad\":\"%s\"}\n\n"
                    % (i, i, b"x" * (i * 50)) for i in range(SSE_EVENTS))


class PyOrigin(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """TLS HTTP/1.1 origin: POST /echo answers the request body; GET /sse streams SSE_EVENTS
    events 10 ms apart, the body delimited by the close (HTTP/1.0 style, as many SSE servers)."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, d):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(d, "o.pem"), os.path.join(d, "o.key"))
        super().__init__(("127.0.0.1", 0), PyHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def finish_request(self, request, client_address):
        # The handshake in the request's own thread, bounded by a timeout.
        request.settimeout(OP_TIMEOUT)
        try:
            request = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(request, client_address)
        finally:
            try:
                request.close()
            except OSError:
                pass


class PyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        if self.path != "/echo":
            self.send_error(404)
            return
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/sse":
            self.send_error(404)
            return
        self.protocol_version = "HTTP/1.0"
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for i in range(SSE_EVENTS):
            self.wfile.write(b"id: %d\nevent: tick\ndata: {\"i\":%d,\"pad\":\"%s\"}\n\n"
                             % (i, i, b"x" * (i * 50)))
            self.wfile.flush()
            time.sleep(0.01)


class WSOrigin:
    """websockets TLS echo origin in its own thread and loop."""

    def __init__(self, d):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(d, "o.pem"), os.path.join(d, "o.key"))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        if not self.ready.wait(20):
            raise RuntimeError("websocket origin did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await websockets.serve(self._echo, "127.0.0.1", 0, ssl=self.ctx,
                                                 max_size=None, ping_interval=None)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    @staticmethod
    async def _echo(ws, path=None):
        try:
            async for m in ws:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass


def grpc_msg(kind, i, pad=20000):
    return json.dumps({"kind": kind, "i": i, "pad": "p" * pad}, separators=(",", ":")).encode()


class GrpcOrigin:
    def __init__(self, d):
        def unary(req, ctx):
            return grpc_msg("unary-reply", json.loads(req)["i"])

        def server_stream(req, ctx):
            for i in range(json.loads(req)["n"]):
                yield grpc_msg("ss-reply", i)

        def bidi(it, ctx):
            for r in it:
                yield grpc_msg("bidi-reply", json.loads(r)["i"])

        h = grpc.method_handlers_generic_handler("soak.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[h])
        with open(os.path.join(d, "o.key"), "rb") as f:
            k = f.read()
        with open(os.path.join(d, "o.pem"), "rb") as f:
            c = f.read()
        self.port = self.server.add_secure_port("127.0.0.1:0",
                                                grpc.ssl_server_credentials([(k, c)]))
        self.server.start()


# ---------------------------------------------------------------- shared state

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}       # workload -> client operations verified (requests, messages, calls)
        self.rounds = {}   # workload -> rounds completed
        self.errors = {}   # workload -> errors
        self.messages = []  # the first errors, verbatim

    def add_ok(self, w, n=1):
        with self.lock:
            self.ok[w] = self.ok.get(w, 0) + n

    def round_done(self, w):
        with self.lock:
            self.rounds[w] = self.rounds.get(w, 0) + 1

    def error(self, w, msg):
        with self.lock:
            self.errors[w] = self.errors.get(w, 0) + 1
            if len(self.messages) < 50:
                self.messages.append(f"{time.strftime('%H:%M:%S')} {w}: {msg}")
            log(f"soak: ERROR {w}: {msg}")

    def totals(self):
        with self.lock:
            return sum(self.ok.values()), sum(self.errors.values())


class Gate:
    """Lets the sampler stop the workloads at round boundaries (samples are taken at rest)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.paused = False
        self.active = 0
        self.stopped = False

    def enter(self):
        with self.cond:
            while self.paused and not self.stopped:
                self.cond.wait(1)
            if self.stopped:
                return False
            self.active += 1
            return True

    def leave(self):
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def pause(self, timeout):
        deadline = time.time() + timeout
        with self.cond:
            self.paused = True
            while self.active and time.time() < deadline:
                self.cond.wait(max(0.01, deadline - time.time()))
            return self.active == 0

    def resume(self):
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def stop(self):
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


# ---------------------------------------------------------------- workloads

class Ctx:
    """What the workloads need to reach the proxy and the origins."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def curl(ctx, args, timeout=OP_TIMEOUT * 2):
    argv = [CURL, "-sS", "--max-time", str(OP_TIMEOUT), "--proxy",
            f"http://127.0.0.1:{ctx.proxy_port}"] + args
    return subprocess.run(argv, capture_output=True, timeout=timeout, env=clean_env())


def check_files(st, w, outs, wlines, expect_version):
    """outs: [(file, expected bytes)]; wlines: curl -w lines 'code size version'. Counts each
    verified response."""
    if len(wlines) != len(outs):
        st.error(w, f"curl reported {len(wlines)} transfers, expected {len(outs)}: {wlines}")
        return
    for (path, exp), line in zip(outs, wlines):
        parts = line.split()
        if len(parts) != 3 or parts[0] != "200" or (expect_version and
                                                    parts[2] != expect_version):
            st.error(w, f"{path}: status/version {line!r}, expected 200 HTTP/{expect_version}")
            continue
        try:
            with open(path, "rb") as f:
                got = f.read()
        except OSError as e:
            st.error(w, f"{path}: no body ({e})")
            continue
        if got != exp:
            st.error(w, f"{path}: {len(got)} bytes differ from the {len(exp)} the origin sent")
            continue
        st.add_ok(w)


def clear(paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


WFMT = "%{http_code} %{size_download} %{http_version}\\n"


def wl_h1(ctx, st, tmp, n):
    w = "h1"
    base = f"https://origin.test:{ctx.tls_port}"
    gets = ["/small", "/64k", "/1m"]
    outs = [(os.path.join(tmp, f"h1-{i}"), ctx.files[p]) for i, p in enumerate(gets)]
    up = ctx.upload
    outs.append((os.path.join(tmp, "h1-echo"), up))
    clear(o for o, _ in outs)
    args = ["--http1.1", "--cacert", ctx.proxy_ca, "-w", WFMT]
    for (o, _), p in zip(outs, gets):
        args += ["-o", o, base + p]
    r = curl(ctx, args)
    # POST on a connection of its own (curl's -d applies to every URL of one invocation)
    r2 = curl(ctx, ["--http1.1", "--cacert", ctx.proxy_ca, "-w", WFMT, "-o", outs[3][0],
                    "-H", "Content-Type: application/octet-stream",
                    "--data-binary", "@" + ctx.upload_path, f"https://origin.test:{ctx.py_port}/echo"])
    if r.returncode != 0 or r2.returncode != 0:
        st.error(w, f"curl exit {r.returncode}/{r2.returncode}: "
                    f"{(r.stderr + r2.stderr).decode(errors='replace').strip()}")
    check_files(st, w, outs, (r.stdout + r2.stdout).decode().splitlines(), "1.1")
    # plain HTTP, absolute-form through the proxy
    o = os.path.join(tmp, "h1-plain")
    clear([o])
    r = curl(ctx, ["-w", WFMT, "-o", o, f"http://origin.test:{ctx.plain_port}/64k"])
    if r.returncode != 0:
        st.error(w, f"plain curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    check_files(st, w, [(o, ctx.files["/64k"])], r.stdout.decode().splitlines(), "1.1")


def wl_h2(ctx, st, tmp, n):
    w = "h2"
    base = f"https://origin.test:{ctx.tls_port}"
    paths = ["/small", "/64k", "/small", "/1m", "/small", "/64k", "/small", "/1m"]
    outs = [(os.path.join(tmp, f"h2-{i}"), ctx.files[p]) for i, p in enumerate(paths)]
    clear(o for o, _ in outs)
    args = ["--http2", "--parallel", "--parallel-immediate", "--parallel-max", "8",
            "--cacert", ctx.proxy_ca, "-w", WFMT]
    for (o, _), p in zip(outs, paths):
        args += ["-o", o, base + p]
    r = curl(ctx, args)
    if r.returncode != 0:
        st.error(w, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    # --parallel: -w lines come in completion order; match them by size
    lines = r.stdout.decode().splitlines()
    by_size = sorted(lines, key=lambda x: int(x.split()[1]) if len(x.split()) == 3 else -1)
    order = sorted(outs, key=lambda o: len(o[1]))
    check_files(st, w, order, by_size, "2")


def open_tunnel(ctx, host, port):
    s = socket.create_connection(("127.0.0.1", ctx.proxy_port), timeout=OP_TIMEOUT)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < 8192:
        d = s.recv(1)
        if not d:
            break
        head += d
    return s, head


WS_SIZES = [1, 100, 1000, 4000, 16384, 65536]


def wl_ws(ctx, st, tmp, n):
    w = "ws"

    async def run():
        s, head = open_tunnel(ctx, "origin.test", ctx.ws_port)
        if not head.startswith(b"HTTP/1.1 200"):
            s.close()
            st.error(w, f"CONNECT answered {head[:60]!r}")
            return
        s.setblocking(False)
        sslctx = ssl.create_default_context(cafile=ctx.proxy_ca)
        async with websockets.connect(f"wss://origin.test:{ctx.ws_port}/echo", ssl=sslctx,
                                      sock=s, server_hostname="origin.test",
                                      open_timeout=OP_TIMEOUT, close_timeout=OP_TIMEOUT,
                                      max_size=None, ping_interval=None) as ws:
            rnd = random.Random(n)
            for i, size in enumerate(WS_SIZES * 2):
                if i % 2:
                    m = rnd.randbytes(size)
                else:
                    m = "".join(rnd.choice("abcdefghij ") for _ in range(size))
                await ws.send(m)
                got = await asyncio.wait_for(ws.recv(), OP_TIMEOUT)
                if got != m:
                    st.error(w, f"message {i} ({size} {'bytes' if i % 2 else 'chars'}) "
                                f"came back as {len(got)} {type(got).__name__}")
                else:
                    st.add_ok(w)
        if ws.close_code != 1000:
            st.error(w, f"close code {ws.close_code}, expected 1000")

    try:
        asyncio.run(asyncio.wait_for(run(), OP_TIMEOUT * 2))
    except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
        st.error(w, f"{type(e).__name__}: {e}")


def wl_sse(ctx, st, tmp, n):
    w = "sse"
    o = os.path.join(tmp, "sse")
    clear([o])
    r = curl(ctx, ["-N", "--http1.1", "--cacert", ctx.proxy_ca, "-w", WFMT, "-o", o,
                   f"https://origin.test:{ctx.py_port}/sse"])
    if r.returncode != 0:
        st.error(w, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    # the origin answers HTTP/1.0 (body until close): any HTTP/1.x version line is right
    check_files(st, w, [(o, ctx.sse_body)], r.stdout.decode().splitlines(), None)


def wl_grpc(ctx, st, tmp, n):
    w = "grpc"
    creds = grpc.ssl_channel_credentials(root_certificates=ctx.proxy_ca_pem)
    ch = grpc.secure_channel(f"origin.test:{ctx.grpc_port}", creds,
                             options=[("grpc.http_proxy", f"http://127.0.0.1:{ctx.proxy_port}"),
                                      ("grpc.enable_retries", 0)])
    try:
        unary = ch.unary_unary("/soak.Echo/Unary")
        ss = ch.unary_stream("/soak.Echo/ServerStream")
        bidi = ch.stream_stream("/soak.Echo/Bidi")
        for i in (n, n + 1):
            r = json.loads(unary(grpc_msg("unary", i), timeout=OP_TIMEOUT))
            if (r["kind"], r["i"], len(r["pad"])) != ("unary-reply", i, 20000):
                st.error(w, f"unary {i}: reply {r['kind']} {r['i']}")
            else:
                st.add_ok(w)
        out = [json.loads(x) for x in ss(json.dumps({"n": 5}).encode(), timeout=OP_TIMEOUT)]
        if [(x["kind"], x["i"], len(x["pad"])) for x in out] != [("ss-reply", i, 20000)
                                                                   for i in range(5)]:
            st.error(w, f"server stream: {[(x['kind'], x['i']) for x in out]}")
        else:
            st.add_ok(w)
        out = [json.loads(x) for x in bidi(iter([grpc_msg("bidi", i) for i in range(5)]),
                                           timeout=OP_TIMEOUT)]
        if [(x["kind"], x["i"]) for x in out] != [("bidi-reply", i) for i in range(5)]:
            st.error(w, f"bidi: {[(x['kind'], x['i']) for x in out]}")
        else:
            st.add_ok(w)
    except grpc.RpcError as e:
        st.error(w, f"RpcError {e.code()}: {e.details()}")
    finally:
        ch.close()


def wl_tlsfail(ctx, st, tmp, n):
    w = "tlsfail"
    # client side: the client does not trust the proxy's CA
    r = curl(ctx, ["--cacert", ctx.origin_ca, "-o", "/dev/null",
                   f"https://origin.test:{ctx.tls_port}/small"])
    if r.returncode != 60:
        st.error(w, f"client distrusting the proxy: curl exit {r.returncode}, expected 60: "
                    f"{r.stderr.decode(errors='replace').strip()}")
    else:
        st.add_ok(w)
    # client side: the client goes away after CONNECT, before any ClientHello
    try:
        s, head = open_tunnel(ctx, "origin.test", ctx.tls_port)
        s.close()
        if not head.startswith(b"HTTP/1.1 200"):
            st.error(w, f"CONNECT answered {head[:60]!r}")
        else:
            st.add_ok(w)
    except OSError as e:
        st.error(w, f"CONNECT: {e}")
    # upstream side: the origin's certificate is self-signed
    o = os.path.join(tmp, "bad")
    clear([o])
    r = curl(ctx, ["--cacert", ctx.proxy_ca, "-w", "%{http_code}", "-o", o,
                   f"https://bad.test:{ctx.bad_port}/small"])
    try:
        with open(o, "rb") as f:
            body = f.read()
    except OSError:
        body = b""
    if r.returncode != 0 or r.stdout != b"502" or b"unknown_ca" not in body:
        st.error(w, f"self-signed upstream: curl exit {r.returncode}, status {r.stdout!r}, "
                    f"body {body[:120]!r}; expected 502 naming unknown_ca")
    else:
        st.add_ok(w)


def wl_tunnel(ctx, st, tmp, n):
    w = "tunnel"
    o = os.path.join(tmp, "tunnel")
    clear([o])
    # Only the origin's CA is trusted: this succeeds only if the proxy did not intercept.
    r = curl(ctx, ["--cacert", ctx.origin_ca, "-w", WFMT, "-o", o,
                   f"https://tunnel.test:{ctx.tls_port}/64k"])
    if r.returncode != 0:
        st.error(w, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    check_files(st, w, [(o, ctx.files["/64k"])], r.stdout.decode().splitlines(), "2")


def prime(ctx, st, tmp):
    """The start of the warm-up: 64 MiB of 1 MiB downloads over 16 keep-alive connections,
    4 at a time, so that every worker's fixed buffers (its provided-buffer ring: 2048 x 16 KiB,
    docs/migration.md, "Soak", "Warm-up") have been filled once: they are reserved at start and
    become resident as they are first used, which would otherwise read as growth."""
    w = "prime"
    d = os.path.join(tmp, "w-prime")
    os.makedirs(d, exist_ok=True)

    def one(c):
        outs = [(os.path.join(d, f"p{c}-{i}"), ctx.files["/1m"]) for i in range(4)]
        clear(o for o, _ in outs)
        args = ["--http1.1", "--cacert", ctx.proxy_ca, "-w", WFMT]
        for o, _ in outs:
            args += ["-o", o, f"https://origin.test:{ctx.tls_port}/1m"]
        r = curl(ctx, args)
        if r.returncode != 0:
            st.error(w, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        check_files(st, w, outs, r.stdout.decode().splitlines(), "1.1")
        clear(o for o, _ in outs)

    with futures.ThreadPoolExecutor(max_workers=4) as ex:
        for f in [ex.submit(one, c) for c in range(16)]:
            f.result(OP_TIMEOUT * 4)


# name, function, base period (s)
WORKLOADS = [("h1", wl_h1, 2.0), ("h2", wl_h2, 2.0), ("ws", wl_ws, 3.0), ("sse", wl_sse, 3.0),
             ("grpc", wl_grpc, 3.0), ("tlsfail", wl_tlsfail, 4.0), ("tunnel", wl_tunnel, 3.0)]


class Runner(threading.Thread):
    def __init__(self, name, fn, period, ctx, st, gate, t_end, tmp, halt):
        super().__init__(daemon=True, name=name)
        self.fn, self.period, self.ctx, self.st, self.gate = fn, period, ctx, st, gate
        self.halt = halt  # set: finish the round in progress and stop (an early end)
        self.t_end, self.tmp = t_end, os.path.join(tmp, "w-" + name)
        os.makedirs(self.tmp, exist_ok=True)
        # bounded in count as well as in time
        self.max_rounds = int((t_end - time.time()) / period) + 2

    def run(self):
        name = self.name
        nxt = time.time() + random.random() * self.period  # spread the starts
        for n in range(self.max_rounds):
            delay = nxt - time.time()
            if delay > 0 and self.halt.wait(delay):
                return
            if time.time() >= self.t_end or self.halt.is_set() or not self.gate.enter():
                return
            try:
                self.fn(self.ctx, self.st, self.tmp, n)
                self.st.round_done(name)
            except subprocess.TimeoutExpired as e:
                self.st.error(name, f"client hung: {e}")
            except Exception as e:  # a client-visible failure, never a crash of the soak
                self.st.error(name, f"{type(e).__name__}: {e}")
            finally:
                self.gate.leave()
            nxt = max(nxt + self.period, time.time())


# ---------------------------------------------------------------- event consumer

class Tail(threading.Thread):
    """soth-mitm-tail following the ring: counts events by type, checks that gseq increases by
    one and every flow's seq runs 0, 1, 2, ... with stream_closed events_dropped 0."""

    def __init__(self, tail_bin, ring, logf):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen([tail_bin, "--from-start", ring], stdout=subprocess.PIPE,
                                     stderr=logf, stdin=subprocess.DEVNULL)
        PROCS.append(self.proc)
        self.lock = threading.Lock()
        self.events = 0
        self.types = {}
        self.lost = 0          # ring_overrun: the consumer was lapped
        self.gaps = 0          # gseq or seq gaps, stream_closed events_dropped
        self.anomalies = []
        self.open = {}         # flow_id -> next seq
        self.last_gseq = 0
        self.start()

    def _bad(self, msg):
        self.gaps += 1
        if len(self.anomalies) < 20:
            self.anomalies.append(msg)

    def run(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                with self.lock:
                    self._bad(f"unparsable line {line[:80]!r}")
                continue
            with self.lock:
                t = ev.get("type")
                if t == "ring_overrun":
                    self.lost += int(ev.get("lost", 0))
                    continue
                self.events += 1
                self.types[t] = self.types.get(t, 0) + 1
                g = ev["gseq"]
                if g != self.last_gseq + 1:
                    self._bad(f"gseq {g} after {self.last_gseq}")
                self.last_gseq = g
                fid, seq = ev["flow_id"], ev["seq"]
                want = self.open.get(fid, 0)
                if seq != want:
                    self._bad(f"flow {fid}: seq {seq}, expected {want} ({t})")
                if t == "stream_closed":
                    if ev.get("events_dropped"):
                        self._bad(f"flow {fid}: stream_closed events_dropped "
                                  f"{ev['events_dropped']}")
                    self.open.pop(fid, None)
                else:
                    self.open[fid] = seq + 1

    def snapshot(self):
        with self.lock:
            return self.events, self.lost, self.gaps, len(self.open)


# ---------------------------------------------------------------- sampling

def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def fd_count(pid):
    """Open descriptors at rest: the least of three reads 100 ms apart. The socket of the
    metrics scrape just made (and of a connection whose close is still on its way through the
    worker's ring) may be open for an instant; a leaked descriptor stays in all three."""
    n = []
    for i in range(3):
        if i:
            time.sleep(0.1)
        n.append(len(os.listdir(f"/proc/{pid}/fd")))
    return min(n)


METRIC_RE = re.compile(r"^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$")


def scrape(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read().decode()
        if r.status != 200:
            raise RuntimeError(f"metrics: status {r.status}")
    finally:
        c.close()
    out = {}
    for line in body.splitlines():
        m = METRIC_RE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def msum(m, name):
    return int(sum(v for k, v in m.items() if k == name or k.startswith(name + "{")))


COLS = ["t_s", "phase", "rss_kib", "rss_anon_kib", "fds", "active_conns", "client_ok",
        "client_errors", "events_dropped", "tail_events", "tail_lost", "tail_gaps",
        "connections_total", "http_requests", "proxy_cpu_pct", "load1"]


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--minutes", type=float, required=True, help="duration (fractional allowed)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup-s", type=float, help="default: max(60, 10%% of the run)")
    ap.add_argument("--growth", type=float, default=0.10, help="allowed RSS/fd growth (fraction)")
    ap.add_argument("--rate", type=float, default=1.0, help="multiplies every workload's rate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--csv", help="write the samples to this CSV file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    if a.minutes <= 0 or a.interval <= 0 or a.rate <= 0 or not 0 < a.growth < 10:
        ap.error("--minutes, --interval, --rate and --growth must be positive")
    dur = a.minutes * 60
    warm = a.warmup_s if a.warmup_s is not None else max(60.0, 0.1 * dur)
    if warm >= dur:
        log(f"soak: warm-up {warm:.0f} s >= the run ({dur:.0f} s): no growth would be judged; "
            "use a longer --minutes or a shorter --warmup-s")
        return 2
    proxy_bin = os.path.join(a.build, "soth-mitm")
    tail_bin = os.path.join(a.build, "soth-mitm-tail")
    for exe in (proxy_bin, tail_bin, NGINX, CURL, shutil.which("openssl") or "openssl"):
        if not os.access(exe, os.X_OK):
            log(f"soak: {exe} missing (build soth-mitm; bash ci/setup.sh installs the tools)")
            return 2

    tmp = tempfile.mkdtemp(prefix="soth-soak-")
    os.makedirs(os.path.join(tmp, "nginx-tmp"), exist_ok=True)
    make_certs(tmp)
    files = make_content(tmp)
    upload = random.Random(7).randbytes(256 * 1024)
    with open(os.path.join(tmp, "upload.bin"), "wb") as f:
        f.write(upload)

    tls_port, plain_port, bad_port, metrics_port = (free_port() for _ in range(4))
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(nginx_conf(tmp, tls_port, plain_port, bad_port))
    nginx_log = open(os.path.join(tmp, "nginx.log"), "w")
    nginx = subprocess.Popen([NGINX, "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp],
                             stdout=nginx_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    PROCS.append(nginx)
    py = PyOrigin(tmp)
    wso = WSOrigin(tmp)
    gro = GrpcOrigin(tmp)

    cfg = {"workers": a.workers,
           "policy": {"default": "intercept",
                      "rules": [{"host": "tunnel.test", "action": "tunnel"}]},
           "resolve": {"origin.test": "127.0.0.1", "tunnel.test": "127.0.0.1",
                       "bad.test": "127.0.0.1"},
           "tls": {"upstream_ca_file": os.path.join(tmp, "ca.pem"),
                   "learning": {"enabled": False}},
           "events": {"ring_size_mb": 8},
           "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f)
    ring = os.path.join(tmp, "events.ring")
    proxy_log = open(os.path.join(tmp, "proxy.log"), "w+")
    proxy = subprocess.Popen([proxy_bin, "--config", os.path.join(tmp, "config.json"),
                              "--listen", "127.0.0.1:0", "--ca-dir", os.path.join(tmp, "ca"),
                              "--event-ring", ring, "--log-level", "warn"],
                             stdout=subprocess.DEVNULL, stderr=proxy_log,
                             stdin=subprocess.DEVNULL)
    PROCS.append(proxy)
    port = None
    for _ in range(400):
        proxy_log.seek(0)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", proxy_log.read())
        if m:
            port = int(m.group(1))
            break
        if proxy.poll() is not None:
            break
        time.sleep(0.05)
    ok_start = port is not None
    for p in (tls_port, plain_port, bad_port):
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            ok_start = False
    if not ok_start:
        proxy_log.seek(0)
        log("soak: could not start the proxy or nginx:", proxy_log.read()[-2000:])
        return 2
    proxy_ca = os.path.join(tmp, "ca", "soth-mitm-ca.pem")
    with open(proxy_ca, "rb") as f:
        proxy_ca_pem = f.read()
    tail = Tail(tail_bin, ring, open(os.path.join(tmp, "tail.log"), "w"))
    ctx = Ctx(proxy_port=port, tls_port=tls_port, plain_port=plain_port, bad_port=bad_port,
              py_port=py.port, ws_port=wso.port, grpc_port=gro.port, proxy_ca=proxy_ca,
              proxy_ca_pem=proxy_ca_pem, origin_ca=os.path.join(tmp, "ca.pem"), files=files,
              upload=upload, upload_path=os.path.join(tmp, "upload.bin"), sse_body=sse_body())
    pid = proxy.pid
    log(f"soak: proxy pid {pid} port {port} ({a.workers} workers), {a.minutes:g} min, "
        f"sample every {a.interval:g} s, warm-up {warm:.0f} s, dir {tmp}")

    st = Stats()
    gate = Gate()
    t0 = time.time()
    t_end = t0 + dur
    prime(ctx, st, tmp)
    log(f"soak: primed in {time.time() - t0:.1f} s")
    halt = threading.Event()
    runners = [Runner(n, fn, per / a.rate, ctx, st, gate, t_end, tmp, halt)
               for n, fn, per in WORKLOADS]
    for r in runners:
        r.start()

    samples = []
    failures = []
    csv_f = open(a.csv, "w", newline="") if a.csv else None  # a row per sample, as taken
    csv_w = csv.DictWriter(csv_f, fieldnames=COLS) if csv_f else None
    if csv_w:
        csv_w.writeheader()
        csv_f.flush()
    last_cpu, last_t = cpu_ticks(pid), time.time()

    def sample(final=False):
        nonlocal last_cpu, last_t
        if not gate.pause(OP_TIMEOUT * 3):
            failures.append("a workload round did not finish within "
                            f"{OP_TIMEOUT * 3} s for a sample")
        m, active = {}, -1
        deadline = time.time() + 10
        while True:  # at rest: every connection closed (bounded wait)
            try:
                m = scrape(metrics_port)
                active = msum(m, "soth_active_connections")
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                failures.append(f"metrics scrape failed: {e}")
                break
            if active == 0 or time.time() > deadline:
                break
            time.sleep(0.1)
        now = time.time()
        cpu = cpu_ticks(pid)
        ok, errs = st.totals()
        tev, tlost, tgaps, _ = tail.snapshot()
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        s = {"t_s": round(now - t0, 1), "phase": "warmup" if now - t0 < warm else "measure",
             "rss_kib": status_kib(pid, "VmRSS"), "rss_anon_kib": status_kib(pid, "RssAnon"),
             "fds": fd_count(pid), "active_conns": active,
             "client_ok": ok, "client_errors": errs,
             "events_dropped": msum(m, "soth_events_dropped_total"),
             "tail_events": tev, "tail_lost": tlost, "tail_gaps": tgaps,
             "connections_total": msum(m, "soth_connections_total"),
             "http_requests": int(m.get('soth_requests_total{protocol="http1"}', 0) +
                                  m.get('soth_requests_total{protocol="http2"}', 0)),
             "proxy_cpu_pct": round(100.0 * (cpu - last_cpu) / CLK / max(1e-3, now - last_t), 1),
             "load1": load1}
        last_cpu, last_t = cpu, now
        samples.append(s)
        if csv_w:
            csv_w.writerow(s)
            csv_f.flush()
        if not final:
            gate.resume()
        log("soak: " + " ".join(f"{k}={s[k]}" for k in COLS))

    stop = {"sig": None}

    def on_signal(signum, frame):
        stop["sig"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    next_sample = t0 + a.interval
    max_samples = int(dur / a.interval) + 2
    while time.time() < t_end and len(samples) < max_samples and stop["sig"] is None:
        if proxy.poll() is not None:
            failures.append(f"the proxy exited during the soak (status {proxy.returncode})")
            break
        if time.time() >= next_sample:
            sample()
            next_sample += a.interval
        time.sleep(min(0.2, max(0.01, min(next_sample, t_end) - time.time())))
    if stop["sig"] is not None:
        failures.append(f"interrupted by signal {stop['sig']}")
    halt.set()  # a normal end needs none (the runners stop at t_end); an early one does
    for r in runners:
        r.join(OP_TIMEOUT * 3)
        if r.is_alive():
            failures.append(f"workload {r.name} did not finish")
    if proxy.poll() is None:
        sample(final=True)
    gate.stop()

    # The proxy must exit 0 on SIGTERM; then the consumer must have seen every flow closed.
    rc = None
    if proxy.poll() is None:
        proxy.send_signal(signal.SIGTERM)
        try:
            rc = proxy.wait(30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
            failures.append("the proxy did not exit within 30 s of SIGTERM")
    else:
        rc = proxy.returncode
    if rc not in (0, None):
        failures.append(f"proxy exit status {rc}")
    # let the consumer read the last events, bounded
    deadline = time.time() + 10
    while time.time() < deadline:
        time.sleep(0.5)
        if tail.snapshot()[3] == 0:
            break
    tev, tlost, tgaps, topen = tail.snapshot()
    tail.proc.terminate()
    tail.proc.wait(10)
    nginx.terminate()
    nginx.wait(10)

    # ---------------------------------------------------------------- verdict
    if csv_f:
        csv_f.close()
    print(",".join(COLS))
    for s in samples:
        print(",".join(str(s[k]) for k in COLS))

    ok, errs = st.totals()
    if errs:
        failures.append(f"{errs} client-visible errors")
    dropped = max((s["events_dropped"] for s in samples), default=0)
    if dropped:
        failures.append(f"{dropped} events dropped (soth_events_dropped_total)")
    if tlost:
        failures.append(f"the consumer was lapped: {tlost} events lost (ring_overrun)")
    if tgaps:
        failures.append(f"{tgaps} event stream anomalies: {tail.anomalies[:5]}")
    if topen:
        failures.append(f"{topen} flows without stream_closed after the proxy exited")
    for n, _, _ in WORKLOADS:
        if not st.rounds.get(n):
            failures.append(f"workload {n} completed no round")
    measure = [s for s in samples if s["phase"] == "measure"]
    summ = {}
    for key in ("rss_kib", "fds"):
        vals = [s[key] for s in samples]
        if not vals:
            continue
        summ[key] = (vals[0], max(vals), vals[-1])
        if len(measure) < 2:
            continue
        base = measure[0][key]
        peak = max(s[key] for s in measure)
        if peak > base * (1 + a.growth):
            failures.append(f"{key} grew after the warm-up: {base} -> peak {peak} "
                            f"(+{100.0 * (peak - base) / base:.1f} %, allowed {100 * a.growth:g} %)")
        summ[key] += (base,)
    if len(measure) < 2:
        failures.append("fewer than 2 samples after the warm-up: growth not judged")
    proxy_log.seek(0)
    plog = proxy_log.read()
    for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        if bad in plog:
            failures.append(f"sanitizer report in the proxy's log: {bad}")

    per = " ".join(f"{n}={st.ok.get(n, 0)}/{st.rounds.get(n, 0)}r" for n, _, _ in WORKLOADS)
    per += f" prime={st.ok.get('prime', 0)}"
    types = " ".join(f"{k}={v}" for k, v in sorted(tail.types.items()))
    last = samples[-1] if samples else {}
    print(f"soak: workloads (verified ops/rounds): {per}")
    print(f"soak: events by type: {types}")
    for msg in st.messages[:20]:
        print("soak: error: " + msg)

    def fmt(key):
        v = summ.get(key)
        if not v:
            return f"{key} n/a"
        return (f"{key} start {v[0]} peak {v[1]} end {v[2]}"
                + (f" (post-warm-up base {v[3]})" if len(v) > 3 else ""))

    verdict = "FAIL" if failures else "PASS"
    print(f"soak: {verdict} {a.minutes:g} min, {len(samples)} samples, warm-up {warm:.0f} s; "
          f"{fmt('rss_kib')}; {fmt('fds')}; client ok {ok}, errors {errs}; "
          f"events dropped {dropped}, consumer lost {tlost}, gaps {tgaps}; "
          f"events {tev}; proxy requests {last.get('http_requests', 0)}, connections "
          f"{last.get('connections_total', 0)}; proxy exit {rc}")
    for f_ in failures:
        print("soak: gate: " + f_)
    if a.keep or failures:
        print(f"soak: logs in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def kill_all():
    """SIGTERM (nginx's master then stops its worker), then SIGKILL what is left."""
    for p in reversed(PROCS):
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except OSError:
                pass


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all()
