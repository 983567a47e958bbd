"""The origins and client scripts that tests/corpus/*.json names (docs/migration.md).

Origins are the integration tests' own (tests/integration: harness.py, h2_origin.py,
test_http1.py, test_ws_sse.py, test_grpc_payload.py, test_faults.py), imported, plus the few
TLS misbehaviours a fixture needs that no test served yet (an origin that hangs up, resets or
stalls during the handshake, one that speaks only TLS 1.1, one that demands a client
certificate). A client script is one of the kinds in CLIENTS, run against a proxy; it returns
what the client saw (a short value the runner compares across engines).
"""
import asyncio
import datetime
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import grpc  # noqa: E402
import websockets  # noqa: E402

from h2_origin import H2Client, H2Origin  # noqa: E402
from harness import EchoServer, close_listener, free_port, read_head  # noqa: E402
from test_faults import FaultOrigin, make_pki as make_fault_pki  # noqa: E402
from test_grpc_payload import (GrpcOrigin, H2PayloadOrigin, PayloadOrigin,  # noqa: E402
                               make_pki as make_grpc_pki, msg)
from test_http1 import Conn, Origin as H1Origin, make_origin_ca, read_response  # noqa: E402
from test_ws_sse import SSEOrigin, WSOrigin  # noqa: E402

TIMEOUT = 20
HOST = "origin.test"


def _rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def make_nochain_pki(d):
    """A root and an intermediate of their own (names no other fixture's CA has: wolfSSL
    finds an issuer by its name) and a leaf for origin.test under the intermediate, served
    alone. Returns (leaf, key, root) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.mkdir(d)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def cert(cn, key, issuer_cn, issuer_key, ca):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - day).not_valid_after(now + 2 * day)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    rk, ik, lk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root_cn, inter_cn = "differential nochain root CA", "differential nochain intermediate CA"
    root = cert(root_cn, rk, root_cn, rk, True)
    # the intermediate (inter_cn, key ik, under the root) is never served: only its key signs
    leaf = cert(HOST, lk, inter_cn, ik, False)
    out = []
    for name, data in (("leaf.pem", leaf.public_bytes(serialization.Encoding.PEM)),
                       ("leaf.key", lk.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())),
                       ("root.pem", root.public_bytes(serialization.Encoding.PEM))):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        out.append(path)
    return tuple(out)


class HandshakeFaultOrigin:
    """A TCP origin that misbehaves during the TLS handshake: `eof` reads the ClientHello and
    closes, `reset` reads it and resets, `stall` reads it and says nothing until the peer
    leaves."""

    def __init__(self, how):
        self.how = how
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(15)  # past the native handshake timeout (10 s), then the origin leaves
        try:
            c.recv(65536)
            if self.how == "reset":
                _rst(c)
                return
            if self.how == "stall":
                while c.recv(65536):
                    pass
        except OSError:
            pass
        c.close()

    def close(self):
        close_listener(self.sock)


class TLSServerOrigin:
    """An HTTPS/1.1 origin with a given server context: answers every request 200 "ok"."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(TIMEOUT)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            read_head(s)
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            s.close()
        except (OSError, ssl.SSLError):
            pass
        raw.close()

    def close(self):
        close_listener(self.sock)


class Origins:
    """Every origin of the corpus, started once for a run; `port(role)`, `bundle` (the CAs of
    all of them, the proxies' tls.upstream_ca_file)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soth-diff-")
        h1dir = os.path.join(self.dir, "h1")
        os.mkdir(h1dir)
        make_origin_ca(h1dir, "differential h1 origin CA")
        gdir = os.path.join(self.dir, "grpc")
        os.mkdir(gdir)
        gca, gcert, gkey = make_grpc_pki(gdir)
        fdir = os.path.join(self.dir, "faults")
        os.mkdir(fdir)
        certs, froot = make_fault_pki(fdir)
        # The chain without its intermediate has a PKI of its own: the native engine's
        # wolfSSL keeps intermediates it verified in earlier chains (docs/migration.md).
        nleaf, nkey, nroot = make_nochain_pki(os.path.join(self.dir, "nochain"))
        self.h2 = H2Origin()
        self.sse = SSEOrigin(tls_dir=h1dir)

        def fault_ctx(which):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*certs[which])
            return ctx

        nochain_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        nochain_ctx.load_cert_chain(nleaf, nkey)
        tls11 = fault_ctx("good")
        tls11.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # TLS 1.1 is the point of this origin
            warnings.simplefilter("ignore", DeprecationWarning)
            tls11.minimum_version = ssl.TLSVersion.TLSv1
            tls11.maximum_version = ssl.TLSVersion.TLSv1_1
        ccert = fault_ctx("good")
        ccert.verify_mode = ssl.CERT_REQUIRED
        ccert.load_verify_locations(froot)
        ccert.maximum_version = ssl.TLSVersion.TLSv1_2  # the demand fails the handshake itself
        self.roles = {
            "h1": H1Origin(tls_dir=h1dir),
            "h2": self.h2,
            "ws": WSOrigin(tls_dir=h1dir),
            "sse": self.sse,
            "grpc": GrpcOrigin(gcert, gkey),
            "payload": PayloadOrigin(),
            "h2payload": H2PayloadOrigin(gcert, gkey),
            "echo": EchoServer(),
            "faults": FaultOrigin(tls=fault_ctx("good")),
            "tls_expired": FaultOrigin(tls=fault_ctx("expired")),
            "tls_wronghost": FaultOrigin(tls=fault_ctx("wronghost")),
            "tls_selfsigned": FaultOrigin(tls=fault_ctx("selfsigned")),
            "tls_nochain": FaultOrigin(tls=nochain_ctx),
            "tls11_only": TLSServerOrigin(tls11),
            "tls_client_cert": TLSServerOrigin(ccert),
            "hs_eof": HandshakeFaultOrigin("eof"),
            "hs_reset": HandshakeFaultOrigin("reset"),
            "hs_stall": HandshakeFaultOrigin("stall"),
        }
        self.refused_port = free_port()  # nothing listens there
        self.bundle = os.path.join(self.dir, "origins.pem")
        with open(self.bundle, "w") as out:
            for ca in (os.path.join(h1dir, "ca.pem"), self.h2.ca, gca, froot, nroot):
                with open(ca) as f:
                    out.write(f.read())

    def port(self, role):
        if role == "refused":
            return self.refused_port
        return self.roles[role].port

    def role_of_port(self):
        m = {o.port: r for r, o in self.roles.items()}
        m[self.refused_port] = "refused"
        return m

    def close(self):
        for o in self.roles.values():
            try:
                o.close()
            except Exception:  # one origin failing to stop must not keep the others up
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def config(origins):
    """The one config both engines run (docs/migration.md): interception by default, a block
    rule, a tunnel rule, an ignore_hosts pattern, every name on loopback."""
    names = ["origin.test", "tunnel.test", "ignored.test", "ads.blocked.test"]
    return {
        "resolve": {n: "127.0.0.1" for n in names},
        "ignore_hosts": ["^ignored\\.test:[0-9]+$"],
        "policy": {"default": "intercept", "rules": [
            {"host": "*.blocked.test", "action": "block"},
            {"host": "tunnel.test", "action": "tunnel"}]},
        "tls": {"upstream_ca_file": origins.bundle},
    }


# ---------------------------------------------------------------- client scripts

def proxy_ca(p):
    return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")


def body_of(n, seed=1):
    """n deterministic bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


def tunnel(p, host, port):
    s = socket.create_connection(p.addr(), timeout=TIMEOUT)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    return s, read_head(s)


def c_curl(p, o, fx):
    """curl through the proxy: `origin`, `path`, `args`, `upload` bytes; returns the status
    curl saw (0: none) and the body's length and sha256 prefix."""
    c = fx["client"]
    host = c.get("host", HOST)
    url = f"https://{host}:{o.port(c['origin'])}{c.get('path', '/')}"
    if c.get("scheme") == "http":
        url = "http" + url[5:]
    inp = None
    args = list(c.get("args", []))
    if "upload" in c:
        inp = body_of(c["upload"])
        args += ["--data-binary", "@-"]
    out = subprocess.run(["curl", "-sS", "--max-time", str(c.get("max_time", TIMEOUT)),
                          "--cacert", proxy_ca(p), "-x", f"http://127.0.0.1:{p.port}",
                          "-o", "-", "-w", "\n%{http_connect} %{http_code}", *args, url],
                         input=inp, capture_output=True, timeout=c.get("max_time", TIMEOUT) + 10)
    body, _, codes = out.stdout.rpartition(b"\n")
    connect, code = (codes.split() + [b"0", b"0"])[:2]
    res = {"connect_status": int(connect), "status": int(code)}
    if c.get("report_body", True) and res["status"] not in (0, 502, 504):
        res["body_len"] = len(body)
        res["body_sha"] = hashlib.sha256(body).hexdigest()[:16]
    return res


def c_h1(p, o, fx):
    """HTTP/1.1 requests on one intercepted connection: `requests` [[method, path, upload?]];
    `pipelined` sends them all before reading."""
    c = fx["client"]
    s, head = tunnel(p, HOST, o.port(c["origin"]))
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=proxy_ca(p))
    t = ctx.wrap_socket(s, server_hostname=HOST)
    t.settimeout(c.get("timeout", TIMEOUT))
    conn = Conn(t)
    reqs = []
    for r in c["requests"]:
        method, path = r[0], r[1]
        body = body_of(r[2]) if len(r) > 2 else b""
        hd = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        if body or method in ("POST", "PUT"):
            hd += f"Content-Length: {len(body)}\r\n"
        reqs.append((method, (hd + "\r\n").encode() + body))
    out = []
    if c.get("pipelined"):
        t.sendall(b"".join(r[1] for r in reqs))
        for method, _ in reqs:
            r = read_response(conn, method)
            out.append([r["status"], len(r["body"]), len(r["trailers"])])
    else:
        for method, raw in reqs:
            t.sendall(raw)
            r = read_response(conn, method)
            out.append([r["status"], len(r["body"]), len(r["trailers"])])
    t.close()
    return {"responses": out}


def c_h2(p, o, fx):
    """python h2 through a CONNECT: `requests` [{method, path, upload?, headers_bytes?}] opened
    at once (parallel streams); `reset_after_head`: paths the client resets (CANCEL) once
    their response head arrived."""
    c = fx["client"]
    cl = H2Client(p.addr(), proxy_ca(p), HOST, o.port(c["origin"]), timeout=TIMEOUT)
    sids = {}
    for r in c["requests"]:
        hdrs = []
        if r.get("headers_bytes"):
            n = r["headers_bytes"]
            hdrs = [(f"x-big-{i}", "v" * 1000) for i in range(n // 1000)]
        sids[cl.request(r.get("method", "GET"), r["path"], body=body_of(r.get("upload", 0)),
                        headers=hdrs)] = r["path"]
    resets = set(c.get("reset_after_head", []))
    for sid, path in sids.items():
        if path in resets:
            try:  # reset once the head came; a proxy holding the head back gets it after 2 s
                cl.run_until(lambda: cl.r[sid]["status"] is not None or cl.done(sid), 2)
            except TimeoutError:
                pass
            cl.reset(sid, 8)
    cl.run_until(lambda: all(cl.done(s) or sids[s] in resets for s in sids), TIMEOUT)
    res = [[sids[s], cl.r[s]["status"], len(cl.r[s]["body"]), cl.r[s]["reset"]]
           for s in sorted(sids) if sids[s] not in resets]
    time.sleep(0.2)
    cl.close()
    return {"alpn": cl.alpn, "streams": res}


def c_ws(p, o, fx):
    """websockets through a CONNECT: `path` /echo with `messages` (text, or {"hex": ...}
    binary) each echoed back, or /push: the origin speaks first, the client answers twice."""
    c = fx["client"]
    port = o.port("ws")
    msgs = [bytes.fromhex(m["hex"]) if isinstance(m, dict) else m
            for m in c.get("messages", [])]
    got = []

    async def run():
        s, head = tunnel(p, HOST, port)
        assert head.startswith(b"HTTP/1.1 200"), head
        s.setblocking(False)
        ctx = ssl.create_default_context(cafile=proxy_ca(p))
        async with websockets.connect(f"wss://{HOST}:{port}{c['path']}", ssl=ctx, sock=s,
                                      server_hostname=HOST, open_timeout=TIMEOUT,
                                      ping_interval=None, compression=None,
                                      max_size=None) as ws:
            if c["path"] == "/push":
                for answer in ("answer-1", "answer-2"):
                    got.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    await ws.send(answer)
            else:
                for m in msgs:
                    await ws.send(m)
                    r = await asyncio.wait_for(ws.recv(), TIMEOUT)
                    got.append(r if isinstance(r, str) else r.hex())
    asyncio.run(asyncio.wait_for(run(), 60))
    return {"received": [g if len(g) < 64 else f"{len(g)} chars" for g in got]}


def c_sse(p, o, fx):
    """GET an event stream over an intercepted HTTP/1.1 connection, reading it as it comes:
    the origin holds events 2 and 3 until the client has event 1 (SSEOrigin)."""
    c = fx["client"]
    o.sse.seen1.clear()
    s, head = tunnel(p, HOST, o.port("sse"))
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=proxy_ca(p))
    t = ctx.wrap_socket(s, server_hostname=HOST)
    t.settimeout(TIMEOUT)
    t.sendall(f"GET {c['path']} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    buf = b""
    while b"data: first" not in buf:
        d = t.recv(65536)
        if not d:
            break
        buf += d
    streamed = b"data: first" in buf and b"line one" not in buf
    o.sse.seen1.set()
    while not buf.endswith(b"0\r\n\r\n"):
        d = t.recv(65536)
        if not d:
            break
        buf += d
    t.close()
    return {"event1_before_rest": streamed, "events": buf.count(b"data: ")}


def c_grpc(p, o, fx):
    """grpcio through the proxy (grpc.http_proxy): `calls` among unary, server_stream,
    client_stream, bidi."""
    c = fx["client"]
    with open(proxy_ca(p), "rb") as f:
        ca = f.read()
    ch = grpc.secure_channel(f"{HOST}:{o.port('grpc')}", grpc.ssl_channel_credentials(ca),
                             options=[("grpc.http_proxy", f"http://127.0.0.1:{p.port}"),
                                      ("grpc.enable_retries", 0)])
    out = []
    try:
        for call in c["calls"]:
            if call == "unary":
                r = ch.unary_unary("/test.Echo/Unary")(msg("unary", 7), timeout=TIMEOUT)
                out.append([call, json.loads(r)["i"]])
            elif call == "server_stream":
                r = ch.unary_stream("/test.Echo/ServerStream")(json.dumps({"n": 3}).encode(),
                                                               timeout=TIMEOUT)
                out.append([call, [json.loads(x)["i"] for x in r]])
            elif call == "client_stream":
                r = ch.stream_unary("/test.Echo/ClientStream")(
                    iter([msg("cs", i) for i in range(3)]), timeout=TIMEOUT)
                out.append([call, json.loads(r)["i"]])
            elif call == "bidi":
                r = ch.stream_stream("/test.Echo/Bidi")(
                    iter([msg("bidi", i) for i in range(3)]), timeout=TIMEOUT)
                out.append([call, [json.loads(x)["i"] for x in r]])
    finally:
        ch.close()
    return {"calls": out}


def c_plain(p, o, fx):
    """Plain HTTP through the proxy, absolute-form, one keep-alive connection: `paths`."""
    c = fx["client"]
    port = o.port(c["origin"])
    h = http.client.HTTPConnection("127.0.0.1", p.port, timeout=TIMEOUT)
    out = []
    for path in c["paths"]:
        h.request("GET", f"http://{HOST}:{port}{path}",
                  headers={"Accept-Encoding": "gzip, br, zstd"})
        r = h.getresponse()
        out.append([path, r.status, len(r.read())])
    h.close()
    return {"responses": out}


def c_tunnel(p, o, fx):
    """CONNECT `host` to the echo origin, `bytes` through it and back."""
    c = fx["client"]
    s, head = tunnel(p, c["host"], o.port("echo"))
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
    payload = body_of(c["bytes"], seed=3)
    got = b""
    if status == 200:
        s.sendall(payload)
        while len(got) < len(payload):
            d = s.recv(65536)
            if not d:
                break
            got += d
    s.close()
    return {"status": status, "echoed": got == payload}


def c_block(p, o, fx):
    """CONNECT to a blocked host: the status and whether the body names the rule."""
    c = fx["client"]
    s, head = tunnel(p, c["host"], 443)
    s.settimeout(TIMEOUT)
    n = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")), b"0"))
    rest = b""
    try:
        while len(rest) < n:
            d = s.recv(65536)
            if not d:
                break
            rest += d
    except OSError:
        pass
    s.close()
    return {"status": int(head.split(b" ")[1]) if head else 0,
            "names_rule": b'"*.blocked.test"' in rest}


def c_tls_client(p, o, fx):
    """A client-side TLS failure after a successful CONNECT to the h1 origin: `variant`
    no_ca (the client does not trust the proxy's CA), tls11 (offers only TLS 1.1), garbage
    (not a ClientHello), eof_mid_hello / rst_mid_hello (half a ClientHello, then FIN / RST),
    eof_after_hello / rst_after_hello (a whole ClientHello, the proxy's answer, then FIN / RST),
    stall (nothing after the CONNECT until `seconds`)."""
    c = fx["client"]
    v = c["variant"]
    s, head = tunnel(p, HOST, o.port("h1"))
    assert head.startswith(b"HTTP/1.1 200"), head
    s.settimeout(TIMEOUT)
    res = {"variant": v}
    if v in ("no_ca", "tls11"):
        if v == "no_ca":
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(proxy_ca(p))
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            t = ctx.wrap_socket(s, server_hostname=HOST)
            res["handshake"] = "ok"
            t.close()
        except ssl.SSLError:
            res["handshake"] = "failed"  # the alert's name is the engine's business
            s.close()
        except OSError:
            res["handshake"] = "failed"
            s.close()
        return res
    if v == "garbage":
        s.sendall(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        try:
            res["answer_bytes"] = len(s.recv(65536)) > 0
        except OSError:
            res["answer_bytes"] = False
        s.close()
        return res
    if v in ("eof_after_hello", "rst_after_hello"):
        # a whole ClientHello; once the proxy's first flight (its certificate) arrived, leave
        ctx = ssl.create_default_context()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname=HOST)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(out.read())
        try:
            res["answer_bytes"] = len(s.recv(65536)) > 0
        except OSError:
            res["answer_bytes"] = False
        if v == "rst_after_hello":
            _rst(s)
        else:
            s.close()
        return res
    if v in ("eof_mid_hello", "rst_mid_hello"):
        # the first half of a real ClientHello (made by a memory BIO)
        ctx = ssl.create_default_context()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname=HOST)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        s.sendall(hello[:len(hello) // 2])
        time.sleep(0.3)
        if v == "rst_mid_hello":
            _rst(s)
        else:
            s.close()
        return res
    if v == "stall":
        s.settimeout(c["seconds"])
        try:
            res["closed_by_proxy"] = s.recv(1) == b""
        except OSError:
            res["closed_by_proxy"] = False
        s.close()
        return res
    raise ValueError("unknown tls_client variant " + v)


CLIENTS = {"curl": c_curl, "h1": c_h1, "h2": c_h2, "ws": c_ws, "sse": c_sse, "grpc": c_grpc,
           "plain": c_plain, "tunnel": c_tunnel, "block": c_block, "tls_client": c_tls_client}
