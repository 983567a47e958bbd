"""HTTP/1.1 interception through the real binary (docs/http1.md): curl and raw-socket clients, a
python origin on loopback (plain and TLS), and the exact events each exchange produces.

Paths through the proxy ("legs"):
  plain      regular mode, absolute-form plain HTTP (curl -x http://proxy http://origin/...)
  intercept  regular mode, CONNECT + TLS interception (client trusts the proxy CA, the proxy
             trusts the origin's test CA through tls.upstream_ca_file)
  reverse    --mode reverse:http://127.0.0.1:PORT
  rtls       --mode reverse:https://origin.test:PORT (the listener speaks TLS)

Every test's events go through the shared checker (eventcheck.py, via the harness) and most
tests assert the exchange's events one by one: stream ids, offsets, captured bytes equal to
the first events.body_capture_bytes of the real body, outcomes and byte counts.
"""
import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from eventcheck import body_of, by_stream
from harness import Proxy, by_flow, close_listener, read_head

CAP = 4096  # events.body_capture_bytes (default, docs/config.md)
BLOB = os.urandom(3 << 20)  # bodies served by the origin are prefixes of this


def sha(b):
    return hashlib.sha256(b).hexdigest()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_origin_ca(d, name="h1 origin test CA"):
    """A test CA (named name: each fixture its own, so a failure names whose certificate it
    saw) and a leaf for origin.test / 127.0.0.1 in directory d."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=origin.test", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:origin.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)


# ---------------------------------------------------------------- HTTP/1.1 message reading

class Conn:
    """Buffered reader over a socket (plain or TLS), bounded by the socket timeout."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""
        self.eof = False

    def fill(self):
        if self.eof:
            return False
        try:
            d = self.s.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_until(self, sep, limit=1 << 20):
        while sep not in self.buf:
            if len(self.buf) > limit or not self.fill():
                raise EOFError(f"no {sep!r} before EOF; have {self.buf[:200]!r}")
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_n(self, n):
        while len(self.buf) < n:
            if not self.fill():
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self):
        while self.fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def sendall(self, b):
        self.s.sendall(b)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def parse_head(raw):
    lines = raw[:-4].split(b"\r\n")
    start = lines[0].decode("latin-1")
    hdrs = []
    for ln in lines[1:]:
        k, v = ln.split(b":", 1)
        hdrs.append((k.decode("latin-1"), v.strip().decode("latin-1")))
    return start, hdrs


def hget(hdrs, name, default=None):
    for k, v in hdrs:
        if k.lower() == name.lower():
            return v
    return default


def read_body(c, hdrs, allow_eof=False):
    """(body, trailers) framed by hdrs: chunked, Content-Length, or until EOF (allow_eof)."""
    te = hget(hdrs, "transfer-encoding")
    if te and te.lower() == "chunked":
        body = []
        while True:
            line = c.read_until(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            body.append(c.read_n(size))
            c.read_n(2)
        trailers = []
        while True:
            line = c.read_until(b"\r\n")
            if line == b"\r\n":
                break
            k, v = line[:-2].split(b":", 1)
            trailers.append((k.decode(), v.strip().decode()))
        return b"".join(body), trailers
    cl = hget(hdrs, "content-length")
    if cl is not None:
        return c.read_n(int(cl)), []
    if allow_eof:
        return c.read_to_eof(), []
    return b"", []


def read_response(c, method="GET"):
    """Next final response (interim 1xx are collected): dict status, headers, body, trailers,
    interim."""
    interim = []
    while True:
        start, hdrs = parse_head(c.read_until(b"\r\n\r\n"))
        status = int(start.split()[1])
        if 100 <= status < 200 and status != 101:
            interim.append(status)
            continue
        break
    if method == "HEAD" or status in (101, 204, 304):
        body, trailers = b"", []
    else:
        body, trailers = read_body(c, hdrs, allow_eof=True)
    return {"status": status, "headers": hdrs, "body": body, "trailers": trailers,
            "interim": interim, "start": start}


# ---------------------------------------------------------------- the origin

class Origin:
    """Threaded HTTP/1.1 origin with keep-alive. Routes:
      GET|HEAD /size/N      200, the first N bytes of BLOB, Content-Length
      GET /stream/N         200, N bytes (the first MiB of BLOB repeated), Content-Length
      GET /chunked/N        200, the first N bytes of BLOB in chunks, trailer X-Body-Sha256
      POST|PUT /echo        200, the request body back (Content-Length); X-Req-Sha256 and
                            X-Req-Trailers report what arrived
      POST /echo-chunked    the request body back chunked, request trailers echoed as trailers
      GET /status/N         status N, no body (204, 304) or an empty body
      GET /abort/N          Content-Length 2N, N bytes, then the connection closes
      GET /close/N          N bytes without length: read until close
      GET /ws               101 to a websocket upgrade, then echoes websocket frames
    Expect: 100-continue gets a 100 before the body is read. Every request received is
    recorded in self.log as a dict (method, target, headers, body, trailers).
    """

    strays = []  # (our port, local address) of connections accepted for another listener

    def __init__(self, tls_dir=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.ctx = None
        if tls_dir:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(os.path.join(tls_dir, "o.pem"), os.path.join(tls_dir, "o.key"))
            self.ctx.set_alpn_protocols(["http/1.1"])
        self.log = []
        self.accepts = 0
        self.lock = threading.Lock()
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts += 1
                if c.getsockname()[1] != self.port:
                    Origin.strays.append((self.port, c.getsockname()))
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def close(self):
        self.stop = True
        close_listener(self.sock)

    def _serve(self, raw):
        raw.settimeout(20)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True) if self.ctx else raw
        except (ssl.SSLError, OSError):
            raw.close()
            return
        c = Conn(s)
        try:
            for _ in range(1000):
                if not self._one(c):
                    break
        except (EOFError, OSError, ValueError, ssl.SSLError):
            pass
        finally:
            c.close()

    def _one(self, c):
        try:
            head = c.read_until(b"\r\n\r\n")
        except EOFError:
            return False
        start, hdrs = parse_head(head)
        method, target, version = start.split(" ")
        rec = {"method": method, "target": target, "version": version, "headers": hdrs,
               "body": None, "trailers": None}
        with self.lock:
            self.log.append(rec)
        if (hget(hdrs, "expect") or "").lower() == "100-continue":
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body, trailers = read_body(c, hdrs)
        rec["body"], rec["trailers"] = body, trailers
        path = target.split("?")[0]
        if path.startswith("http://") or path.startswith("https://"):
            path = "/" + path.split("/", 3)[3]
        close = (hget(hdrs, "connection") or "").lower() == "close"
        extra = [("X-Req-Sha256", sha(body)), ("X-Req-Len", str(len(body))),
                 ("X-Req-Trailers", ";".join(f"{k}={v}" for k, v in trailers))]
        xid = hget(hdrs, "x-id")
        if xid is not None:
            extra.append(("X-Id", xid))
        if close:
            extra.append(("Connection", "close"))
        parts = path.strip("/").split("/")
        if parts[0] == "size":
            n = int(parts[1])
            self._send(c, 200, extra + [("Content-Length", str(n))],
                       b"" if method == "HEAD" else BLOB[:n])
        elif parts[0] == "stream":
            n = int(parts[1])
            c.sendall(self._headline(200, extra + [("Content-Length", str(n))]))
            block = BLOB[:1 << 20]
            left = n
            while left > 0:
                k = min(left, len(block))
                c.sendall(block[:k])
                left -= k
        elif parts[0] == "chunked":
            n = int(parts[1])
            data = BLOB[:n]
            out = [self._headline(200, extra + [("Transfer-Encoding", "chunked"),
                                                ("Trailer", "X-Body-Sha256")])]
            step = 1000
            for i in range(0, n, step):
                piece = data[i:i + step]
                out.append(b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n")
            out.append(b"0\r\nX-Body-Sha256: " + sha(data).encode() + b"\r\n\r\n")
            c.sendall(b"".join(out))
        elif parts[0] == "echo":
            self._send(c, 200, extra + [("Content-Length", str(len(body)))], body)
        elif parts[0] == "echo-chunked":
            out = [self._headline(200, extra + [("Transfer-Encoding", "chunked")])]
            if body:
                out.append(b"%x\r\n" % len(body) + body + b"\r\n")
            out.append(b"0\r\n" + b"".join(f"X-Echo-{k}: {v}\r\n".encode()
                                            for k, v in trailers) + b"\r\n")
            c.sendall(b"".join(out))
        elif parts[0] == "status":
            st = int(parts[1])
            self._send(c, st, extra if st in (204, 304) else extra + [("Content-Length", "0")],
                       b"")
        elif parts[0] == "abort":
            n = int(parts[1])
            c.sendall(self._headline(200, extra + [("Content-Length", str(2 * n))]) + BLOB[:n])
            time.sleep(0.2)
            return False
        elif parts[0] == "close":
            n = int(parts[1])
            c.sendall(self._headline(200, extra + [("Connection", "close")]) + BLOB[:n])
            return False
        elif parts[0] == "ws":
            key = hget(hdrs, "sec-websocket-key", "")
            acc = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            c.sendall(self._headline(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                           ("Sec-WebSocket-Accept", acc)]))
            self._ws_echo(c)
            return False
        else:
            self._send(c, 404, extra + [("Content-Length", "0")], b"")
        return not close

    @staticmethod
    def _headline(status, hdrs):
        return (f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs) +
                "\r\n").encode()

    def _send(self, c, status, hdrs, body):
        c.sendall(self._headline(status, hdrs) + body)

    @staticmethod
    def _ws_echo(c):
        """Echo small masked client frames as unmasked server frames until a close frame."""
        for _ in range(100):
            b0, b1 = c.read_n(2)
            n = b1 & 0x7F
            mask = c.read_n(4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(c.read_n(n)))
            c.sendall(bytes([b0, len(payload)]) + payload)
            if b0 & 0x0F == 8:
                return


def ws_frame(opcode, payload):
    mask = os.urandom(4)
    return (bytes([0x80 | opcode, 0x80 | len(payload)]) + mask +
            bytes(x ^ mask[i % 4] for i, x in enumerate(payload)))


# ---------------------------------------------------------------- fixture

class H1Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-h1-")
        make_origin_ca(cls.dir, f"h1 origin test CA {cls.__name__} {os.getpid()}")
        cls.origin_ca = os.path.join(cls.dir, "ca.pem")
        cls.plain = Origin()
        cls.tls = Origin(tls_dir=cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls.plain.close()
        cls.tls.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.plain.log.clear()
        self.tls.log.clear()

    def tearDown(self):
        self.assertEqual(Origin.strays, [], "an origin accepted a connection meant for another")

    # -- proxies for each leg
    def proxy(self, leg, **cfg_extra):
        cfg = {"resolve": {"origin.test": "127.0.0.1"}, "policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": self.origin_ca}}
        cfg.update(cfg_extra)
        if leg in ("intercept", "plain"):
            return Proxy(config=cfg)
        if leg == "reverse":
            return Proxy(mode=f"reverse:http://127.0.0.1:{self.plain.port}", config=cfg)
        if leg == "rtls":
            return Proxy(mode=f"reverse:https://origin.test:{self.tls.port}", config=cfg)
        raise ValueError(leg)

    def origin_of(self, leg):
        return self.tls if leg in ("intercept", "rtls") else self.plain

    def proxy_ca(self, p):
        return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")

    def url(self, p, leg, path):
        """(curl args, url) reaching path on the origin through proxy p on this leg."""
        if leg == "plain":
            return (["-x", f"http://127.0.0.1:{p.port}"],
                    f"http://127.0.0.1:{self.plain.port}{path}")
        if leg == "intercept":
            return (["-x", f"http://127.0.0.1:{p.port}", "--cacert", self.proxy_ca(p)],
                    f"https://origin.test:{self.tls.port}{path}")
        if leg == "reverse":
            return [], f"http://127.0.0.1:{p.port}{path}"
        return (["--cacert", self.proxy_ca(p), "--resolve", f"origin.test:{p.port}:127.0.0.1"],
                f"https://origin.test:{p.port}{path}")

    def curl(self, p, leg, paths, *args, timeout=60):
        pre, _ = self.url(p, leg, "/")
        urls = [self.url(p, leg, x)[1] for x in paths]
        out = subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "30", *pre, *args,
                              *urls], capture_output=True, timeout=timeout)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def connect(self, p, leg):
        """A raw client connection through proxy p (TLS where the leg has it). Requests are
        written by the test in origin-form (absolute-form for the plain leg: see target())."""
        s = socket.create_connection(p.addr(), timeout=15)
        if leg == "intercept":
            s.sendall(f"CONNECT origin.test:{self.tls.port} HTTP/1.1\r\n"
                      f"Host: origin.test:{self.tls.port}\r\n\r\n".encode())
            head = read_head(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        if leg in ("intercept", "rtls"):
            ctx = ssl.create_default_context(cafile=self.proxy_ca(p))
            ctx.set_alpn_protocols(["http/1.1"])
            s = ctx.wrap_socket(s, server_hostname="origin.test")
        return Conn(s)

    def target(self, leg, path):
        return f"http://127.0.0.1:{self.plain.port}{path}" if leg == "plain" else path

    def host(self, leg):
        return {"plain": f"127.0.0.1:{self.plain.port}", "reverse": "127.0.0.1",
                "intercept": f"origin.test:{self.tls.port}", "rtls": "origin.test"}[leg]

    # -- events
    def http_flows(self, evs):
        """Flows that carried HTTP exchanges: {flow_id: {stream_id: [events]}}."""
        out = {}
        for fid, fl in by_flow(evs).items():
            st = by_stream(fl)
            if st:
                out[fid] = st
        return out

    def one_flow(self, evs):
        flows = self.http_flows(evs)
        self.assertEqual(len(flows), 1, f"expected one HTTP flow: {evs}")
        fid, streams = next(iter(flows.items()))
        return by_flow(evs)[fid], streams

    def types(self, stream_events):
        return [e["type"] for e in stream_events]

    def assert_capture(self, stream_events, direction, real, cap=CAP):
        captured, total = body_of(stream_events, direction)
        self.assertEqual(total, len(real), f"{direction} body length in events")
        self.assertEqual(captured, real[:cap], f"{direction} captured bytes")
        chunks = [e for e in stream_events if e["type"] == f"{direction}_body_chunk"]
        if len(real) > cap:
            self.assertTrue(chunks[-1]["truncated"])
        elif chunks:
            self.assertFalse(any(e["truncated"] for e in chunks))

    def completed(self, stream_events):
        ex = stream_events[-1]
        self.assertEqual(ex["type"], "exchange_completed", stream_events)
        return ex


# ---------------------------------------------------------------- curl

class CurlTests(H1Base):
    LEGS = ("intercept", "plain", "reverse", "rtls")

    def test_get_on_every_leg(self):
        for leg in self.LEGS:
            with self.subTest(leg=leg), self.proxy(leg) as p:
                body = self.curl(p, leg, ["/size/10000?q=1"])
                self.assertEqual(sha(body), sha(BLOB[:10000]))
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                self.assertEqual(list(streams), [1])
                s1 = streams[1]
                ty = self.types(s1)
                k = ty.count("response_body_chunk")
                self.assertEqual(ty, ["request_headers", "response_headers"] +
                                 ["response_body_chunk"] * k + ["exchange_completed"])
                self.assertGreaterEqual(k, 1)
                rq, rs = s1[0], s1[1]
                self.assertEqual((rq["method"], rq["path"], rq["http_version"]),
                                 ("GET", "/size/10000?q=1", "1.1"))
                self.assertEqual(rq["scheme"], "https" if leg in ("intercept", "rtls")
                                 else "http")
                self.assertEqual(rq["protocol"], "http1")
                self.assertEqual((rs["status"], rs["http_version"]), (200, "1.1"))
                self.assertIn(["Content-Length", "10000"], rs["headers"])
                self.assert_capture(s1, "response", BLOB[:10000])
                ex = self.completed(s1)
                self.assertEqual((ex["outcome"], ex["request_bytes"], ex["response_bytes"]),
                                 ("complete", 0, 10000))
                # What the origin received is what the event reported (re-serialised head).
                got = self.origin_of(leg).log[-1]
                if leg != "plain":
                    self.assertEqual([list(h) for h in got["headers"]], rq["headers"])
                self.assertEqual(got["target"], "/size/10000?q=1")
                self.assertEqual(fl[-1]["type"], "stream_closed")

    def test_post_1mib_random(self):
        data = os.urandom(1 << 20)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            for leg in ("intercept", "reverse"):
                with self.subTest(leg=leg), self.proxy(leg) as p:
                    body = self.curl(p, leg, ["/echo"], "--data-binary", "@" + f.name, "-H",
                                     "Content-Type: application/octet-stream")
                    self.assertEqual(sha(body), sha(data))
                    self.assertEqual(sha(self.origin_of(leg).log[-1]["body"]), sha(data))
                    evs = p.checked_events()
                    _, streams = self.one_flow(evs)
                    s1 = streams[1]
                    self.assertEqual(s1[0]["method"], "POST")
                    self.assert_capture(s1, "request", data)
                    self.assert_capture(s1, "response", data)
                    ex = self.completed(s1)
                    self.assertEqual((ex["outcome"], ex["request_bytes"], ex["response_bytes"]),
                                     ("complete", 1 << 20, 1 << 20))

    def test_chunked_upload(self):
        data = os.urandom(300000)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            for leg in ("intercept", "reverse", "plain"):
                with self.subTest(leg=leg), self.proxy(leg) as p:
                    body = self.curl(p, leg, ["/echo"], "--data-binary", "@" + f.name, "-H",
                                     "Transfer-Encoding: chunked")
                    self.assertEqual(sha(body), sha(data))
                    got = self.origin_of(leg).log[-1]
                    self.assertEqual(hget(got["headers"], "transfer-encoding"), "chunked")
                    self.assertEqual(sha(got["body"]), sha(data))
                    evs = p.checked_events()
                    _, streams = self.one_flow(evs)
                    self.assert_capture(streams[1], "request", data)
                    self.assertEqual(self.completed(streams[1])["request_bytes"], len(data))

    def test_keepalive_reuses_one_connection(self):
        for leg in self.LEGS:
            with self.subTest(leg=leg), self.proxy(leg) as p:
                o = self.origin_of(leg)
                before = o.accepts
                paths = ["/size/100", "/size/5000", "/chunked/7000", "/size/0"]
                body = self.curl(p, leg, paths)
                self.assertEqual(body, BLOB[:100] + BLOB[:5000] + BLOB[:7000])
                self.assertEqual(o.accepts - before, 1, "origin connections")
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                self.assertEqual(list(streams), [1, 2, 3, 4])
                self.assertEqual([s[0]["path"] for s in streams.values()], paths)
                for sid, n in ((1, 100), (2, 5000), (3, 7000), (4, 0)):
                    self.assert_capture(streams[sid], "response", BLOB[:n])
                    ex = self.completed(streams[sid])
                    self.assertEqual((ex["outcome"], ex["response_bytes"]), ("complete", n))
                tr = [e for e in streams[3] if e["type"] == "response_trailers"]
                self.assertEqual(tr[0]["headers"], [["X-Body-Sha256", sha(BLOB[:7000])]])
                self.assertEqual(sum(1 for e in fl if e["type"] == "stream_closed"), 1)

    # curl -x reusing its proxy connection for another authority: test_h1_refusals.py (421).

    def test_head_with_curl(self):
        with self.proxy("intercept") as p:
            out = self.curl(p, "intercept", ["/size/12345"], "-I")
            self.assertIn(b"Content-Length: 12345", out)
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            self.assertEqual(self.types(streams[1]),
                             ["request_headers", "response_headers", "exchange_completed"])
            self.assertEqual(streams[1][0]["method"], "HEAD")


# ---------------------------------------------------------------- raw sockets

class RawTests(H1Base):
    def req(self, leg, method, path, headers=(), body=b"", chunked=None, trailers=()):
        h = [f"{method} {self.target(leg, path)} HTTP/1.1", f"Host: {self.host(leg)}"]
        h += [f"{k}: {v}" for k, v in headers]
        if chunked is not None:
            h.append("Transfer-Encoding: chunked")
            b = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunked)
            b += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
        else:
            if body or method in ("POST", "PUT"):
                h.append(f"Content-Length: {len(body)}")
            b = body
        return ("\r\n".join(h) + "\r\n\r\n").encode() + b

    def test_pipelining_answered_in_order(self):
        for leg in ("reverse", "intercept", "rtls", "plain"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                c = self.connect(p, leg)
                post = os.urandom(20000)
                reqs = [("GET", "/size/10", {}), ("POST", "/echo", {"body": post}),
                        ("GET", "/chunked/2500", {}), ("HEAD", "/size/100", {}),
                        ("GET", "/status/204", {}), ("GET", "/size/3000", {})]
                wire = b"".join(self.req(leg, m, path, headers=[("X-Id", str(i))], **kw)
                                for i, (m, path, kw) in enumerate(reqs))
                c.sendall(wire)
                got = [read_response(c, m) for m, _, _ in reqs]
                c.close()
                self.assertEqual([hget(r["headers"], "x-id") for r in got],
                                 [str(i) for i in range(len(reqs))])
                self.assertEqual([r["status"] for r in got], [200, 200, 200, 200, 204, 200])
                self.assertEqual(got[0]["body"], BLOB[:10])
                self.assertEqual(got[1]["body"], post)
                self.assertEqual(got[2]["body"], BLOB[:2500])
                self.assertEqual(got[3]["body"], b"")
                self.assertEqual(got[5]["body"], BLOB[:3000])
                evs = p.checked_events()
                _, streams = self.one_flow(evs)
                self.assertEqual(list(streams), [1, 2, 3, 4, 5, 6])
                for sid, (m, path, _) in zip(streams, reqs):
                    self.assertEqual((streams[sid][0]["method"], streams[sid][0]["path"]),
                                     (m, path))
                    self.assertEqual(self.completed(streams[sid])["outcome"], "complete")
                self.assert_capture(streams[2], "request", post)
                self.assert_capture(streams[2], "response", post)
                self.assertEqual(self.types(streams[4]),
                                 ["request_headers", "response_headers", "exchange_completed"])
                self.assertEqual(self.types(streams[5]),
                                 ["request_headers", "response_headers", "exchange_completed"])

    # Smuggling shapes and malformed requests: 400 and a clean close; the origin never sees
    # the request (nor anything smuggled behind it).
    SMUGGLE = [
        ("cl_and_te", b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /size/1 HTTP/1.1\r\n"
                      b"Host: h\r\n\r\n"),
        ("te_and_cl", b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Length: 6\r\n\r\n0\r\n\r\nX"),
        ("duplicate_cl", b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                         b"Content-Length: 30\r\n\r\nabc"),
        ("obs_fold", b"GET /size/1 HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"),
        ("obs_fold_first", b"GET /size/1 HTTP/1.1\r\n Content-Length: 5\r\nHost: h\r\n\r\n"),
        ("bare_cr", b"POST /echo HTTP/1.1\r\nHost: h\r\nX: y\rTransfer-Encoding: chunked\r\n"
                    b"Content-Length: 3\r\n\r\nabc"),
        ("bare_lf", b"GET /size/1 HTTP/1.1\nHost: h\n\n"),
        ("te_gzip_chunked", b"POST /echo HTTP/1.1\r\nHost: h\r\n"
                            b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("space_before_colon", b"GET /size/1 HTTP/1.1\r\nHost : h\r\n\r\n"),
        ("no_host", b"GET /size/1 HTTP/1.1\r\nX: y\r\n\r\n"),
        ("http09", b"GET /size/1\r\n\r\n"),
        ("nul_in_head", b"GET /size/1 HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"),
    ]

    def expect_400(self, p, leg, wire, code=400):
        c = self.connect(p, leg)
        try:
            c.sendall(wire)
        except OSError:
            pass
        try:
            head = c.read_until(b"\r\n\r\n")
        except EOFError as e:
            self.fail(f"no answer: {e}")
        _, hdrs = parse_head(head)
        body = b""
        if hget(hdrs, "content-length"):
            body = c.read_n(int(hget(hdrs, "content-length")))
        if not head.startswith(b"HTTP/1.1 %d " % code):
            self.fail(f"{head + body!r}\n{p.diagnostics()}")
        self.assertEqual(c.read_to_eof(), b"", "the proxy must close after the error answer")
        c.close()

    def test_smuggling_shapes_get_400_and_close(self):
        for leg in ("reverse", "intercept"):
            with self.proxy(leg) as p:
                for name, wire in self.SMUGGLE:
                    if leg == "intercept":
                        wire = wire.replace(b"Host: h", f"Host: {self.host(leg)}".encode())
                    with self.subTest(leg=leg, case=name):
                        n = len(self.origin_of(leg).log)
                        self.expect_400(p, leg, wire)
                        time.sleep(0.05)
                        self.assertEqual(self.origin_of(leg).log[n:], [],
                                         "the origin must not see a rejected request")
                evs = p.checked_events()
            for fid, fl in by_flow(evs).items():
                if any(e["type"] == "tls_handshake_failed" for e in fl):
                    continue
                with self.subTest(leg=leg, flow=fid):
                    self.assertEqual(fl[-1]["reason_code"], "parse_failed", fl)
                    self.assertFalse(any(e["type"] == "request_headers" for e in fl), fl)

    def test_bad_chunk_size_after_head(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                wire = (f"POST /echo HTTP/1.1\r\nHost: {self.host(leg)}\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n").encode()
                self.expect_400(p, leg, wire)
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                s1 = streams[1]
                self.assertEqual(s1[0]["type"], "request_headers")
                self.assert_capture(s1, "request", b"hello")
                self.assertEqual(self.completed(s1)["outcome"], "client_aborted")
                self.assertEqual(fl[-1]["reason_code"], "parse_failed")

    def test_stray_bytes_after_chunk_data(self):
        # RFC 9112 7.1: chunk data is followed by CRLF. "helloXX" must not pass as "hello":
        # the client gets 400 and the origin never gets a complete request (docs/http1.md
        # bad_chunk). The head was relayed when it completed (bodies stream), so the origin
        # logs the head, but its body never completes (it stays None).
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                n = len(self.origin_of(leg).log)
                wire = (f"POST /echo HTTP/1.1\r\nHost: {self.host(leg)}\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n").encode()
                self.expect_400(p, leg, wire)
                time.sleep(0.05)
                got = self.origin_of(leg).log[n:]
                self.assertEqual([(r["target"], r["body"]) for r in got], [("/echo", None)],
                                 "the origin must not get a complete refused request")
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                s1 = streams[1]
                self.assertEqual(s1[0]["type"], "request_headers")
                self.assert_capture(s1, "request", b"hello")
                self.assertEqual(self.completed(s1)["outcome"], "client_aborted")
                self.assertEqual(fl[-1]["reason_code"], "parse_failed")

    def test_second_request_bad_first_answered(self):
        with self.proxy("reverse") as p:
            c = self.connect(p, "reverse")
            c.sendall(self.req("reverse", "GET", "/size/50"))
            r = read_response(c)
            self.assertEqual(r["body"], BLOB[:50])
            c.sendall(b"GET /size/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                      b"Content-Length: 2\r\n\r\nab")
            r = read_response(c)
            self.assertEqual(r["status"], 400)
            self.assertEqual(c.read_to_eof(), b"")
            c.close()
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            self.assertEqual(list(streams), [1])
            self.assertEqual(self.completed(streams[1])["outcome"], "complete")

    def test_oversized_head_gets_431(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                wire = (f"GET /size/1 HTTP/1.1\r\nHost: {self.host(leg)}\r\n".encode() +
                        b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70)) +
                        b"\r\n")
                self.expect_400(p, leg, wire, code=431)
                evs = p.checked_events()
                self.assertEqual(self.http_flows(evs), {})
                self.assertEqual(evs[-1]["reason_code"], "parse_failed")

    def test_too_many_fields_gets_431(self):
        with self.proxy("reverse") as p:
            wire = (b"GET /size/1 HTTP/1.1\r\nHost: h\r\n" +
                    b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n")
            self.expect_400(p, "reverse", wire, code=431)

    def test_client_abort_mid_body(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                part = os.urandom(50000)
                c = self.connect(p, leg)
                c.sendall(f"POST /echo HTTP/1.1\r\nHost: {self.host(leg)}\r\n"
                          "Content-Length: 200000\r\n\r\n".encode() + part)
                time.sleep(0.5)
                c.close()
                time.sleep(0.5)
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                s1 = streams[1]
                ex = self.completed(s1)
                self.assertEqual(ex["outcome"], "client_aborted", s1)
                self.assertEqual(ex["request_bytes"], len(part))
                self.assert_capture(s1, "request", part)
                self.assertFalse(any(e["type"] == "response_headers" for e in s1))
                self.assertIn(fl[-1]["reason_code"], ("client_eof", "relay_error"))

    def test_upstream_abort_mid_body(self):
        for leg in ("reverse", "intercept", "rtls"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                c = self.connect(p, leg)
                c.sendall(self.req(leg, "GET", "/abort/30000"))
                head = c.read_until(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                rest = c.read_to_eof()
                c.close()
                self.assertEqual(rest, BLOB[:30000], "bytes before the abort arrive intact")
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                s1 = streams[1]
                ex = self.completed(s1)
                self.assertEqual((ex["outcome"], ex["response_bytes"]),
                                 ("upstream_aborted", 30000), s1)
                self.assert_capture(s1, "response", BLOB[:30000])

    def test_read_until_close_response(self):
        with self.proxy("reverse") as p:
            c = self.connect(p, "reverse")
            c.sendall(self.req("reverse", "GET", "/close/20000"))
            r = read_response(c)
            c.close()
            self.assertEqual(r["body"], BLOB[:20000])
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            ex = self.completed(streams[1])
            self.assertEqual(ex["response_bytes"], 20000)
            self.assert_capture(streams[1], "response", BLOB[:20000])

    def test_head_204_304_have_no_body(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                c = self.connect(p, leg)
                for m, path, st in (("HEAD", "/size/5000", 200), ("GET", "/status/204", 204),
                                    ("GET", "/status/304", 304), ("GET", "/size/7", 200)):
                    c.sendall(self.req(leg, m, path))
                    r = read_response(c, m)
                    self.assertEqual(r["status"], st)
                    if m == "HEAD":
                        self.assertEqual(hget(r["headers"], "content-length"), "5000")
                self.assertEqual(r["body"], BLOB[:7])
                c.close()
                evs = p.checked_events()
                _, streams = self.one_flow(evs)
                self.assertEqual(list(streams), [1, 2, 3, 4])
                for sid in (1, 2, 3):
                    self.assertEqual(self.types(streams[sid]), ["request_headers",
                                                                "response_headers",
                                                                "exchange_completed"])
                    self.assertEqual(self.completed(streams[sid])["outcome"], "complete")
                self.assertEqual([streams[s][1]["status"] for s in (1, 2, 3, 4)],
                                 [200, 204, 304, 200])

    def test_expect_100_continue(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                c = self.connect(p, leg)
                body = os.urandom(5000)
                c.sendall(f"POST /echo HTTP/1.1\r\nHost: {self.host(leg)}\r\n"
                          f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                head = c.read_until(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 100"), head)
                c.sendall(body)
                r = read_response(c)
                c.close()
                self.assertEqual((r["status"], r["body"]), (200, body))
                evs = p.checked_events()
                _, streams = self.one_flow(evs)
                s1 = streams[1]
                finals = [e for e in s1 if e["type"] == "response_headers"
                          and e["status"] >= 200]
                self.assertEqual(len(finals), 1)
                self.assertEqual(finals[0]["status"], 200)
                self.assert_capture(s1, "request", body)
                self.assertEqual(self.completed(s1)["outcome"], "complete")

    def test_trailers_on_chunked_request_and_response(self):
        for leg in ("reverse", "intercept", "rtls", "plain"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                c = self.connect(p, leg)
                pieces = [os.urandom(3000), os.urandom(2000), b"x"]
                data = b"".join(pieces)
                xid = f"trailers-{leg}-{os.getpid()}"
                c.sendall(self.req(leg, "POST", "/echo-chunked", headers=[("X-Id", xid)],
                                   chunked=pieces,
                                   trailers=[("X-Check", "abc"), ("X-Sum", sha(data))]))
                r = read_response(c)
                c.close()
                self.assertEqual(r["body"], data)
                self.assertEqual(r["trailers"], [("X-Echo-X-Check", "abc"),
                                                 ("X-Echo-X-Sum", sha(data))])
                log = self.origin_of(leg).log
                mine = [x for x in log if hget(x["headers"], "x-id") == xid]
                self.assertEqual(len(mine), 1, f"the origin saw this request once: {log}")
                got = mine[0]
                self.assertEqual(got["trailers"], [("X-Check", "abc"), ("X-Sum", sha(data))])
                evs = p.checked_events()
                _, streams = self.one_flow(evs)
                s1 = streams[1]
                rt = [e for e in s1 if e["type"] == "request_trailers"]
                st = [e for e in s1 if e["type"] == "response_trailers"]
                self.assertEqual(rt[0]["headers"], [["X-Check", "abc"], ["X-Sum", sha(data)]])
                self.assertEqual(st[0]["headers"], [["X-Echo-X-Check", "abc"],
                                                    ["X-Echo-X-Sum", sha(data)]])
                self.assert_capture(s1, "request", data)
                self.assert_capture(s1, "response", data)
                ex = self.completed(s1)
                self.assertEqual((ex["request_bytes"], ex["response_bytes"]),
                                 (len(data), len(data)))

    def test_websocket_upgrade_relays_bytes(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                c = self.connect(p, leg)
                c.sendall(f"GET /ws HTTP/1.1\r\nHost: {self.host(leg)}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
                head = c.read_until(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
                self.assertIn(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
                for msg in (b"hello", b"x" * 100, os.urandom(60)):
                    c.sendall(ws_frame(2, msg))
                    b0, b1 = c.read_n(2)
                    self.assertEqual(c.read_n(b1 & 0x7F), msg)
                c.sendall(ws_frame(8, b"\x03\xe8"))
                self.assertEqual(c.read_n(4), b"\x88\x02\x03\xe8")
                if leg == "reverse":
                    # The origin closes after its close frame; then the client: both EOFs.
                    c.s.shutdown(socket.SHUT_WR)
                    self.assertEqual(c.read_to_eof(), b"")
                else:
                    time.sleep(0.3)
                c.close()
                time.sleep(0.3)
                evs = p.checked_events()
                fl, streams = self.one_flow(evs)
                s1 = streams[1]
                self.assertEqual(s1[1]["status"], 101)
                self.assertEqual(s1[0]["method"], "GET")
                self.assertEqual(self.completed(s1)["outcome"], "complete")
                self.assertEqual(fl[-1]["protocol"], "websocket")
                self.assertEqual(s1[-1]["protocol"], "websocket")

    def test_connection_close_request(self):
        with self.proxy("reverse") as p:
            c = self.connect(p, "reverse")
            c.sendall(self.req("reverse", "GET", "/size/100", headers=[("Connection", "close")]) +
                      self.req("reverse", "GET", "/size/200"))
            r = read_response(c)
            self.assertEqual(r["body"], BLOB[:100])
            self.assertEqual(c.read_to_eof(), b"", "nothing after a closing exchange")
            c.close()
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            self.assertEqual(list(streams), [1])

    def test_small_capture_budget(self):
        with self.proxy("reverse", events={"body_capture_bytes": 10}) as p:
            c = self.connect(p, "reverse")
            data = os.urandom(100)
            c.sendall(self.req("reverse", "POST", "/echo-chunked", chunked=[data[:7], data[7:]]))
            r = read_response(c)
            c.close()
            self.assertEqual(r["body"], data)
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            self.assert_capture(streams[1], "request", data, cap=10)
            self.assert_capture(streams[1], "response", data, cap=10)

    def test_slow_reader_streams_with_bounded_memory(self):
        """64 MiB response to a client that stops reading: the proxy holds back (its RSS stays
        far below the body) and every byte arrives intact once the client reads again."""
        total = 64 << 20
        block = BLOB[:1 << 20]

        def rss_kb(pid):
            with open(f"/proc/{pid}/status") as f:
                return int([x for x in f if x.startswith("VmRSS")][0].split()[1])

        with self.proxy("intercept") as p:
            base_kb = rss_kb(p.proc.pid)
            c = self.connect(p, "intercept")
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.sendall(self.req("intercept", "GET", f"/stream/{total}"))
            time.sleep(1.5)  # read nothing: the proxy must stop reading the upstream
            grown_kb = rss_kb(p.proc.pid) - base_kb
            head = c.read_until(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            got, pending = 0, b""
            while got < total:
                if not c.buf and not c.fill():
                    break
                d, c.buf = c.buf, b""
                pending += d
                got += len(d)
                while len(pending) >= len(block):
                    self.assertEqual(pending[:len(block)], block)
                    pending = pending[len(block):]
            self.assertEqual(got, total)
            self.assertEqual(pending, block[:len(pending)])
            c.close()
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            ex = self.completed(streams[1])
            self.assertEqual((ex["outcome"], ex["response_bytes"]), ("complete", total))
            captured, n = body_of(streams[1], "response")
            self.assertEqual((captured, n), (block[:CAP], total))
        self.assertLess(grown_kb, 40 * 1024, f"proxy RSS grew {grown_kb} KiB while stalled")

    def test_concurrent_large_downloads(self):
        """16 keep-alive connections, each downloading 3 x 2 MiB at the same time through one
        worker: every byte arrives, in bounded time, and every exchange is reported."""
        import concurrent.futures
        n, size = 16, 2 << 20
        for leg in ("rtls", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg) as p:
                def one(i):
                    c = self.connect(p, leg)
                    try:
                        for _ in range(3):
                            c.sendall(self.req(leg, "GET", f"/size/{size}"))
                            r = read_response(c)
                            if r["status"] != 200 or sha(r["body"]) != sha(BLOB[:size]):
                                return False
                        return True
                    finally:
                        c.close()

                t0 = time.time()
                with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
                    ok = list(ex.map(one, range(n)))
                took = time.time() - t0
                self.assertEqual(ok, [True] * n)
                self.assertLess(took, 60, f"{n} x 3 x 2 MiB took {took:.1f} s")
                evs = p.checked_events()
                flows = self.http_flows(evs)
                self.assertEqual(len(flows), n)
                for streams in flows.values():
                    self.assertEqual(list(streams), [1, 2, 3])
                    for s in streams.values():
                        ex_ = self.completed(s)
                        self.assertEqual((ex_["outcome"], ex_["response_bytes"]),
                                         ("complete", size))

    def test_slow_request_head_times_out(self):
        # timeouts.request_header_ms bounds the arrival of a whole request head, however slowly
        # its bytes trickle in (docs/config.md), here for a request inside a reverse-mode flow.
        with self.proxy("reverse", timeouts={"request_header_ms": 500}) as p:
            c = self.connect(p, "reverse")
            t0 = time.time()
            answer = b""
            try:
                for ch in b"GET /size/1 HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa":
                    c.sendall(bytes([ch]))
                    time.sleep(0.1)
            except OSError:
                pass
            sent = time.time() - t0
            answer = c.read_to_eof()
            c.close()
            took = time.time() - t0
            self.assertTrue(answer.startswith(b"HTTP/1.1 408"),
                            f"{answer!r} after {took:.1f} s (head trickled for {sent:.1f} s)")
            self.assertLess(took, 5)
            evs = p.checked_events()
            self.assertEqual(self.http_flows(evs), {})
            self.assertEqual(evs[-1]["reason_code"], "idle_timeout")

    def test_many_keepalive_exchanges_ids(self):
        with self.proxy("intercept") as p:
            c = self.connect(p, "intercept")
            for i in range(40):
                c.sendall(self.req("intercept", "GET", f"/size/{i}"))
                self.assertEqual(read_response(c)["body"], BLOB[:i])
            c.close()
            evs = p.checked_events()
            _, streams = self.one_flow(evs)
            self.assertEqual(list(streams), list(range(1, 41)))


if __name__ == "__main__":
    unittest.main()
