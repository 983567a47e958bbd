"""Fault injection: one test per row of docs/failures.md (fault -> what the client sees -> event).

The origins misbehave on purpose (RST, FIN, stalls before and after the response head, bad
certificates); each test checks the client's answer, the events' outcome and reason, and that
the proxy serves the next request. HTTP/1.1 rows run on the plain path (regular mode,
absolute-form) and on the intercepted path (CONNECT + TLS); HTTP/2 rows on an intercepted h2
connection. The network rows (delay, loss, reordering) run in network namespaces this test
creates, with a user-space packet relay between two TUN devices (the kernel has no netem):
they need root and skip otherwise, except under CI (CI=true), where a skip is a failure.
"""
import datetime
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from h2_origin import H2Client
from harness import Proxy, close_listener

PY = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
BODY = bytes(range(256)) * 4096  # 1 MiB
HEAD_TIMEOUT_MS = 700  # timeouts.response_header_ms in these tests
IDLE_MS = 1500  # timeouts.idle_ms in these tests


# ---- certificates (python3-cryptography)

def make_pki(d):
    """A root CA, an intermediate CA under it, and leaves for origin.test: `good` (by the
    intermediate, served with it), `expired`, `wronghost` (for other.test), `selfsigned`,
    `nochain` (the good leaf served without its intermediate). Returns {name: (cert, key)} and
    the root's path (what the proxy trusts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca, start, end, san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                              False, False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san or subject)]),
                                critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem(*certs):
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def write(fname, data):
        p = os.path.join(d, fname)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def keypem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    rk, ik, lk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = cert("faults root CA", rk, "faults root CA", rk, True, now - day, now + 2 * day)
    inter = cert("faults intermediate CA", ik, "faults root CA", rk, True, now - day,
                 now + 2 * day)
    good = cert("origin.test", lk, "faults intermediate CA", ik, False, now - day, now + 2 * day)
    expired = cert("origin.test", lk, "faults intermediate CA", ik, False, now - 3 * day,
                   now - 2 * day)
    wrong = cert("other.test", lk, "faults intermediate CA", ik, False, now - day, now + 2 * day)
    selfs = cert("origin.test", lk, "origin.test", lk, False, now - day, now + 2 * day)
    key = write("leaf.key", keypem(lk))
    out = {
        "good": (write("good.pem", pem(good, inter)), key),
        "expired": (write("expired.pem", pem(expired, inter)), key),
        "wronghost": (write("wrong.pem", pem(wrong, inter)), key),
        "selfsigned": (write("self.pem", pem(selfs)), key),
        "nochain": (write("nochain.pem", pem(good)), key),
    }
    return out, write("root.pem", pem(root))


# ---- a misbehaving origin

def rst_close(c):
    """Close with RST (SO_LINGER 0) instead of FIN."""
    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    c.close()


class FaultOrigin:
    """HTTP/1.1 origin whose behaviour follows the request path:
        /ok                  200 with BODY (1 MiB)
        /rst-before-head     RST once the request head arrived
        /fin-before-head     FIN once the request head arrived
        /stall-before-head   nothing, until the peer goes away
        /rst-mid-body        200 head, 64 KiB of a 1 MiB body, RST
        /fin-mid-body        200 head, 64 KiB of a 1 MiB body, FIN
        /stall-after-head    200 head, 64 KiB of a 1 MiB body, then nothing
        /rst-upload          reads 16 KiB of the request body, then RST
        /fin-upload          reads 16 KiB of the request body, then FIN (and keeps reading)
    With tls (an ssl.SSLContext) it speaks HTTPS; raw sockets are closed under the TLS."""

    def __init__(self, tls=None, host="127.0.0.1"):
        self.tls = tls
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((host, 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.paths = []
        self.open = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                raw, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(raw,), daemon=True).start()

    def serve(self, raw):
        self.open.append(raw)
        raw.settimeout(30)
        c = raw
        try:
            if self.tls is not None:
                # the wrapped socket takes the descriptor over: RST, FIN and reads go
                # through it (FIN without close_notify, reads decrypt and discard)
                c = raw = self.tls.wrap_socket(raw, server_side=True)
                self.open.append(c)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                self.paths.append(path)
                clen = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        clen = int(v)
                if path.endswith("-upload"):
                    while len(buf) < 16384:
                        d = c.recv(65536)
                        if not d:
                            return
                        buf += d
                    if path.endswith("/rst-upload"):
                        rst_close(raw)
                        return
                    raw.shutdown(socket.SHUT_WR)
                    while raw.recv(65536):
                        pass
                    return
                while len(buf) < clen:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[clen:]
                if path.endswith("/ok"):
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
                    continue
                if path.endswith("/rst-before-head"):
                    rst_close(raw)
                    return
                if path.endswith("/fin-before-head"):
                    raw.shutdown(socket.SHUT_WR)
                    return
                if path.endswith("/stall-before-head"):
                    while raw.recv(65536):
                        pass
                    return
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) +
                          BODY[:65536])
                time.sleep(0.2)  # the head and the first bytes reach the client first
                if path.endswith("/rst-mid-body"):
                    rst_close(raw)
                    return
                if path.endswith("/fin-mid-body"):
                    raw.shutdown(socket.SHUT_WR)
                    return
                while raw.recv(65536):  # stall-after-head
                    pass
                return
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                raw.close()
            except OSError:
                pass

    def close(self):
        close_listener(self.ls)
        for c in self.open:
            try:
                c.close()
            except OSError:
                pass


# ---- clients

def parse_response(data):
    """(status, body) of the first response in data; status 0 when there is none."""
    if b"\r\n\r\n" not in data:
        return 0, b""
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), body


class Leg:
    """One client connection to an origin through the proxy: plain (absolute-form) or
    intercepted (CONNECT, then TLS trusting the proxy's CA)."""

    def __init__(self, proxy, port, intercept, host="origin.test"):
        self.intercept = intercept
        self.host = host
        self.port = port
        self.s = socket.create_connection(proxy.addr(), timeout=20)
        if intercept:
            self.s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                           .encode())
            buf = b""
            while not buf.endswith(b"\r\n\r\n"):
                d = self.s.recv(1)
                if not d:
                    raise ConnectionError("proxy closed during CONNECT")
                buf += d
            assert buf.startswith(b"HTTP/1.1 200"), buf
            ctx = ssl.create_default_context(cafile=os.path.join(proxy.tmp, "ca",
                                                                 "soth-mitm-ca.pem"))
            self.s = ctx.wrap_socket(self.s, server_hostname=host)

    def head(self, method, path, extra=b""):
        target = path if self.intercept else f"http://{self.host}:{self.port}{path}"
        return (f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n".encode() +
                extra + b"\r\n")

    def send(self, data):
        self.s.sendall(data)

    def read_all(self):
        out = []
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    break
                out.append(d)
        except (ConnectionResetError, ssl.SSLError):
            pass  # what was read before the reset is what the client saw
        return b"".join(out)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def exchanges(evs):
    out = {}
    for e in evs:
        if "stream_id" in e:
            out.setdefault((e["flow_id"], e["stream_id"]), []).append(e)
    return out


def completed(evs, path_suffix):
    """The exchange_completed events of the exchanges whose request path ends so."""
    out = []
    for x in exchanges(evs).values():
        req = [e for e in x if e["type"] == "request_headers"]
        if req and req[0]["path"].endswith(path_suffix):
            out += [e for e in x if e["type"] == "exchange_completed"]
    return out


def closed_of(evs, path_suffix):
    """The stream_closed reason_code of the flows that carried a request for path_suffix."""
    flows = {e["flow_id"] for e in evs
             if e["type"] == "request_headers" and e["path"].endswith(path_suffix)}
    return [e["reason_code"] for e in evs if e["type"] == "stream_closed" and e["flow_id"] in flows]


class FaultBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-faults-")
        cls.certs, cls.root = make_pki(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def tls_ctx(self, which="good", alpn=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.certs[which])
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def config(self, **timeouts):
        t = {"response_header_ms": HEAD_TIMEOUT_MS, "idle_ms": IDLE_MS}
        t.update(timeouts)
        return {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
                "tls": {"upstream_ca_file": self.root}, "timeouts": t}


class H1FaultTests(FaultBase):
    """HTTP/1.1 rows, each on the plain and the intercepted path."""

    def run_row(self, path, want_status, outcome, reason, closed, body_cut=False, upload=False,
                want_elapsed=None):
        for intercept in (False, True):
            with self.subTest(intercept=intercept):
                o = FaultOrigin(tls=self.tls_ctx() if intercept else None)
                try:
                    with Proxy(config=self.config()) as p:
                        c = Leg(p, o.port, intercept)
                        t0 = time.monotonic()
                        if upload:
                            # a 1 MiB upload of which the origin reads 16 KiB
                            c.send(c.head("POST", path, b"Content-Length: %d\r\n" % len(BODY)) +
                                   BODY[:65536])
                        else:
                            c.send(c.head("GET", path))
                        data = c.read_all()
                        elapsed = time.monotonic() - t0
                        c.close()
                        status, body = parse_response(data)
                        self.assertEqual(status, want_status, data[:300])
                        if body_cut:
                            self.assertGreater(len(body), 0)
                            self.assertLess(len(body), len(BODY))
                            self.assertEqual(body, BODY[:len(body)])
                        if want_elapsed is not None:
                            self.assertGreaterEqual(elapsed, want_elapsed[0])
                            self.assertLess(elapsed, want_elapsed[1])
                        # the proxy serves the next request
                        n = Leg(p, o.port, intercept)
                        n.send(n.head("GET", "/ok", b"Connection: close\r\n"))
                        status, body = parse_response(n.read_all())
                        n.close()
                        self.assertEqual(status, 200)
                        self.assertEqual(body, BODY)
                        evs = p.checked_events()
                finally:
                    o.close()
                done = completed(evs, path)
                self.assertEqual([e["outcome"] for e in done], [outcome], done)
                self.assertEqual(done[0].get("reason"), reason, done)
                self.assertEqual(closed_of(evs, path), [closed])
                self.assertEqual([e["outcome"] for e in completed(evs, "/ok")], ["complete"])
                self.assertNotIn("reason", completed(evs, "/ok")[0])

    def test_rst_before_head_gets_502(self):
        self.run_row("/rst-before-head", 502, "upstream_aborted", "upstream_reset",
                     "relay_error")

    def test_fin_before_head_gets_502(self):
        self.run_row("/fin-before-head", 502, "upstream_aborted", "upstream_eof", "relay_eof")

    def test_rst_during_upload_gets_502(self):
        self.run_row("/rst-upload", 502, "upstream_aborted", "upstream_reset", "relay_error",
                     upload=True)

    def test_fin_during_upload_gets_502(self):
        self.run_row("/fin-upload", 502, "upstream_aborted", "upstream_eof", "relay_eof",
                     upload=True)

    def test_stall_before_head_gets_504(self):
        self.run_row("/stall-before-head", 504, "timeout", "upstream_timeout", "idle_timeout",
                     want_elapsed=(HEAD_TIMEOUT_MS / 1000 - 0.05, IDLE_MS / 1000))

    def test_rst_mid_body_truncates(self):
        self.run_row("/rst-mid-body", 200, "upstream_aborted", "upstream_reset", "relay_error",
                     body_cut=True)

    def test_fin_mid_body_truncates(self):
        self.run_row("/fin-mid-body", 200, "upstream_aborted", "upstream_eof", "relay_eof",
                     body_cut=True)

    def test_stall_after_head_ends_at_idle(self):
        self.run_row("/stall-after-head", 200, "timeout", None, "idle_timeout", body_cut=True,
                     want_elapsed=(IDLE_MS / 1000 - 0.05, IDLE_MS / 1000 + 5))


class CertFaultTests(FaultBase):
    """Upstream certificates the proxy must refuse: the client gets its TLS session with our
    leaf, then a 502 naming the failure (docs/answers.md, "Upstream TLS failed"). An origin
    whose CA is simply not trusted is test_tls.py's test_untrusted_upstream_fails_upstream_side."""

    def row(self, which, reason):
        bad = FaultOrigin(tls=self.tls_ctx(which))
        good = FaultOrigin(tls=self.tls_ctx("good"))
        try:
            with Proxy(config=self.config()) as p:
                c = Leg(p, bad.port, True)
                c.send(c.head("GET", "/ok"))
                status, body = parse_response(c.read_all())
                c.close()
                self.assertEqual(status, 502)
                self.assertIn(b"TLS with the upstream origin.test", body)
                self.assertIn(reason.encode(), body)
                n = Leg(p, good.port, True)
                n.send(n.head("GET", "/ok", b"Connection: close\r\n"))
                status, body = parse_response(n.read_all())
                n.close()
                self.assertEqual((status, body), (200, BODY))
                evs = p.checked_events()
        finally:
            bad.close()
            good.close()
        self.assertEqual(bad.paths, [])  # nothing reached the bad origin's HTTP layer
        failed = [e for e in evs if e["type"] == "tls_handshake_failed"]
        self.assertEqual([(e["side"], e["tls_failure_reason"], e["server_port"]) for e in failed],
                         [("upstream", reason, bad.port)])
        closed = {e["server_port"]: e["reason_code"] for e in evs if e["type"] == "stream_closed"}
        self.assertEqual(closed[bad.port], "tls_failed")
        self.assertEqual(completed(evs, "/ok")[0]["outcome"], "complete")

    def test_expired_certificate(self):
        self.row("expired", "cert_validation")

    def test_wrong_host_certificate(self):
        self.row("wronghost", "cert_validation")

    def test_self_signed_certificate(self):
        self.row("selfsigned", "unknown_ca")

    def test_incomplete_chain(self):
        self.row("nochain", "unknown_ca")

    def test_complete_chain_is_accepted(self):
        # the control for the rows above: the same leaf with its intermediate passes
        o = FaultOrigin(tls=self.tls_ctx("good"))
        try:
            with Proxy(config=self.config()) as p:
                c = Leg(p, o.port, True)
                c.send(c.head("GET", "/ok", b"Connection: close\r\n"))
                self.assertEqual(parse_response(c.read_all()), (200, BODY))
                c.close()
                p.checked_events()
        finally:
            o.close()


class H2FaultOrigin:
    """HTTP/2 origin (TLS, ALPN h2) whose behaviour follows the request path:
        /ok            200 with 1000 bytes
        /stall         nothing on that stream (the others are served)
        /close         FIN on the connection (no GOAWAY)
        /reset         RST on the connection
        /rst-mid-body  200 head and 1000 of 100000 bytes, then RST on the connection"""

    SMALL = b"x" * 1000

    def __init__(self, ctx):
        self.ctx = ctx
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.open = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                raw, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(raw,), daemon=True).start()

    def conn(self, raw):
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self.open.append(s)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        c.initiate_connection()
        s.settimeout(30)
        try:
            s.sendall(c.data_to_send())
            while True:
                d = s.recv(65536)
                if not d:
                    return
                for ev in c.receive_data(d):
                    if not isinstance(ev, h2.events.RequestReceived):
                        continue
                    path = dict(ev.headers).get(b":path", b"/ok").decode()
                    if path.endswith("/ok"):
                        c.send_headers(ev.stream_id, [(":status", "200"),
                                                      ("content-length", "1000")])
                        c.send_data(ev.stream_id, self.SMALL, end_stream=True)
                    elif path.endswith("/close"):
                        s.sendall(c.data_to_send())
                        s.shutdown(socket.SHUT_WR)
                        while s.recv(65536):
                            pass
                        return
                    elif path.endswith("/reset"):
                        rst_close(s)
                        return
                    elif path.endswith("/rst-mid-body"):
                        c.send_headers(ev.stream_id, [(":status", "200"),
                                                      ("content-length", "100000")])
                        c.send_data(ev.stream_id, self.SMALL)
                        s.sendall(c.data_to_send())
                        time.sleep(0.3)
                        rst_close(s)
                        return
                s.sendall(c.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        close_listener(self.ls)
        for s in self.open:
            try:
                s.close()
            except OSError:
                pass


class H2FaultTests(FaultBase):
    """HTTP/2 rows: the answers are per stream; a stalled stream does not hold the others."""

    def setUp(self):
        self.origin = H2FaultOrigin(self.tls_ctx(alpn=["h2"]))

    def tearDown(self):
        self.origin.close()

    def client(self, p):
        c = H2Client(p.addr(), os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"), "origin.test",
                     self.origin.port)
        self.assertEqual(c.alpn, "h2")
        return c

    def outcomes(self, evs):
        out = {}
        for x in exchanges(evs).values():
            req = [e for e in x if e["type"] == "request_headers"]
            done = [e for e in x if e["type"] == "exchange_completed"]
            out.setdefault(req[0]["path"], []).append((done[0]["outcome"],
                                                       done[0].get("reason")))
        return out

    def test_stall_before_head_gets_504_on_that_stream(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            t0 = time.monotonic()
            stall = c.request("GET", "/stall")
            ok = c.request("GET", "/ok")
            c.run_until(lambda: c.done(ok))
            self.assertEqual(c.r[ok]["status"], 200)
            self.assertEqual(bytes(c.r[ok]["body"]), H2FaultOrigin.SMALL)
            c.run_until(lambda: c.done(stall))
            self.assertGreaterEqual(time.monotonic() - t0, HEAD_TIMEOUT_MS / 1000 - 0.05)
            self.assertEqual(c.r[stall]["status"], 504)
            self.assertEqual(bytes(c.r[stall]["body"]), b"")
            again = c.request("GET", "/ok")  # the same connection carries on
            c.run_until(lambda: c.done(again))
            self.assertEqual(c.r[again]["status"], 200)
            c.close()
            evs = p.checked_events()
        self.assertEqual(self.outcomes(evs), {"/stall": [("timeout", "upstream_timeout")],
                                              "/ok": [("complete", None)] * 2})

    def upstream_gone(self, path, outcome, reason):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            waiting = c.request("GET", "/stall")
            time.sleep(0.1)
            bad = c.request("GET", path)
            c.run_until(lambda: c.done(bad) and c.done(waiting))
            self.assertEqual(c.r[bad]["status"], 502)
            self.assertEqual(c.r[waiting]["status"], 502)
            c.close()
            n = self.client(p)  # the next connection is served
            ok = n.request("GET", "/ok")
            n.run_until(lambda: n.done(ok))
            self.assertEqual(n.r[ok]["status"], 200)
            n.close()
            evs = p.checked_events()
        self.assertEqual(self.outcomes(evs), {"/stall": [(outcome, reason)],
                                              path: [(outcome, reason)],
                                              "/ok": [("complete", None)]})
        self.assertEqual(closed_of(evs, path), ["relay_eof"])

    def test_fin_before_head_gets_502(self):
        self.upstream_gone("/close", "upstream_aborted", "upstream_eof")

    def test_rst_before_head_gets_502(self):
        # a transport reset is outcome `reset` on HTTP/2 (docs/http2.md, "Outcomes")
        self.upstream_gone("/reset", "reset", "upstream_reset")

    def test_rst_mid_body_resets_the_stream(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            cut = c.request("GET", "/rst-mid-body")
            c.run_until(lambda: c.done(cut) or c.closed)
            self.assertEqual(c.r[cut]["status"], 200)
            self.assertEqual(bytes(c.r[cut]["body"]), H2FaultOrigin.SMALL)
            self.assertFalse(c.r[cut]["ended"], "a cut body must not end cleanly")
            c.close()
            n = self.client(p)
            ok = n.request("GET", "/ok")
            n.run_until(lambda: n.done(ok))
            self.assertEqual(n.r[ok]["status"], 200)
            n.close()
            evs = p.checked_events()
        self.assertEqual(self.outcomes(evs), {"/rst-mid-body": [("reset", "upstream_reset")],
                                              "/ok": [("complete", None)]})
        self.assertEqual(closed_of(evs, "/rst-mid-body"), ["relay_eof"])


# ---- delay, loss and reordering in user space (the kernel has no sch_netem)

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
NET_A, NET_B = "10.99.0.1", "10.99.0.2"  # the proxy's and the origin's ends, private netns only
NET_ROWS = {
    # row: (one-way delay ms, loss probability, reorder probability, extra delay of a
    #       reordered packet ms, transfers of 1 MiB)
    "delay": (15.0, 0.0, 0.0, 0.0, 20),
    "loss": (1.0, 0.02, 0.0, 0.0, 50),
    "reorder": (1.0, 0.0, 0.05, 4.0, 50),
}


def tun_open(name):
    import fcntl
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


class PacketRelay:
    """Moves IP packets between two TUN devices, delaying each by `delay_ms`, dropping a
    `loss` share and holding a `reorder` share back by `extra_ms` more (so later packets
    overtake them): the kernels' TCP on both ends must retransmit and reassemble."""

    def __init__(self, fd_a, fd_b, delay_ms, loss, reorder, extra_ms, seed=7):
        import random
        self.fds = (fd_a, fd_b)
        self.delay, self.loss, self.reorder, self.extra = (delay_ms / 1000, loss, reorder,
                                                           extra_ms / 1000)
        self.rnd = random.Random(seed)
        self.forwarded = self.dropped = self.held = self.overtaken = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import heapq
        q = []
        seq = 0
        last_out = [-1, -1]  # highest arrival number written, per direction
        while not self.stop:
            now = time.monotonic()
            while q and q[0][0] <= now:
                _, n, i, pkt = heapq.heappop(q)
                try:
                    os.write(self.fds[1 - i], pkt)
                except OSError:
                    pass
                if n < last_out[i]:
                    self.overtaken += 1
                last_out[i] = max(last_out[i], n)
                self.forwarded += 1
            wait = min(0.05, q[0][0] - now) if q else 0.05
            r, _, _ = select.select(self.fds, [], [], max(wait, 0))
            now = time.monotonic()
            for i, fd in enumerate(self.fds):
                if fd not in r:
                    continue
                while True:
                    try:
                        pkt = os.read(fd, 65535)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    seq += 1
                    if self.rnd.random() < self.loss:
                        self.dropped += 1
                        continue
                    due = now + self.delay
                    if self.rnd.random() < self.reorder:
                        due += self.extra
                        self.held += 1
                    heapq.heappush(q, (due, seq, i, pkt))


def net_origin_main(cert, key):
    """Inside the origin's namespace: wait for tunb, configure it, serve FaultOrigin."""
    deadline = time.time() + 20
    while subprocess.run(["ip", "link", "show", "tunb"], capture_output=True).returncode != 0:
        if time.time() > deadline:
            sys.exit("tunb never arrived")
        time.sleep(0.02)
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", NET_B + "/24", "dev", "tunb")
    sh("ip", "link", "set", "tunb", "up")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    o = FaultOrigin(tls=ctx, host=NET_B)
    print("PORT", o.port, flush=True)
    sys.stdin.read()  # until the test is over


class NetInnerRow:
    """Run by NetFaultTests inside a fresh network namespace (the proxy's and the client's);
    the origin lives in a second one behind two TUN devices and a PacketRelay. A TestCase
    only there (net_inner_main), so the module's own run never collects it."""

    row = None

    def test_row(self):
        delay_ms, loss, reorder, extra_ms, n = NET_ROWS[self.row]
        n = int(os.environ.get("SOTH_FAULTS_TRANSFERS", n))
        sh("ip", "link", "set", "lo", "up")
        fd_a, fd_b = tun_open("tuna"), tun_open("tunb")
        origin = subprocess.Popen(["unshare", "-n", PY, os.path.abspath(__file__), "net-origin",
                                   *self.certs["good"]], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, cwd=HERE)
        relay = None
        try:
            time.sleep(0.2)  # unshare has run: the pid is the origin's namespace
            sh("ip", "link", "set", "tunb", "netns", str(origin.pid))
            sh("ip", "addr", "add", NET_A + "/24", "dev", "tuna")
            sh("ip", "link", "set", "tuna", "up")
            line = origin.stdout.readline().decode()
            self.assertTrue(line.startswith("PORT "), line)
            port = int(line.split()[1])
            relay = PacketRelay(fd_a, fd_b, delay_ms, loss, reorder, extra_ms)
            cfg = self.config(response_header_ms=60000, idle_ms=60000)
            cfg["resolve"] = {"origin.test": NET_B}
            t0 = time.monotonic()
            with Proxy(config=cfg) as p:
                conns = 5
                for k in range(conns):
                    c = Leg(p, port, True)
                    for i in range(n // conns):
                        last = i == n // conns - 1
                        c.send(c.head("GET", "/ok", b"Connection: close\r\n" if last else b""))
                        self.assertEqual(read_response(c.s), BODY, (k, i))
                    c.close()
                evs = p.checked_events()
            took = time.monotonic() - t0
        finally:
            if relay is not None:
                relay.stop = True
            origin.stdin.close()
            origin.kill()
            origin.wait()
            origin.stdout.close()
            os.close(fd_a)
            os.close(fd_b)
        done = [e["outcome"] for e in evs if e["type"] == "exchange_completed"]
        self.assertEqual(done, ["complete"] * (n // conns * conns))
        print(f"{self.row}: {n // conns * conns} x 1 MiB in {took:.1f} s; packets forwarded "
              f"{relay.forwarded}, dropped {relay.dropped}, held back {relay.held}, overtaken "
              f"{relay.overtaken}", file=sys.stderr)
        if loss:
            self.assertGreater(relay.dropped, 100)
        if reorder:
            self.assertGreater(relay.overtaken, 100)
        if delay_ms >= 10:
            self.assertGreater(took, n * 2 * delay_ms / 1000 / 5)  # round trips were slow


def read_response(s):
    """The body of one Content-Length response read off s (keep-alive)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise ConnectionError("closed before the response head")
        buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    clen = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
            if l.lower().startswith(b"content-length:")][0]
    while len(body) < clen:
        d = s.recv(min(1 << 20, clen - len(body)))
        if not d:
            raise ConnectionError("closed mid-body")
        body += d
    return body


def net_inner_main(row):
    case = type("NetInner", (NetInnerRow, FaultBase), {"row": row})
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(case)
    ok = unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful()
    sys.exit(0 if ok else 1)


class NetFaultTests(unittest.TestCase):
    """docs/failures.md's network rows. Need root (network namespaces, TUN devices): skipped
    otherwise, but never under CI (CI=true), where that is a failure."""

    def inner(self, row):
        ci = os.environ.get("CI") == "true"
        why = None
        if os.geteuid() != 0:
            why = "needs root (network namespaces and TUN devices)"
        elif subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
            why = "network namespaces are refused here"
        elif not os.path.exists("/dev/net/tun"):
            why = "no /dev/net/tun"
        if why is not None:
            if ci:
                self.fail("CI must run the network fault rows: " + why)
            self.skipTest(why)
        r = subprocess.run(["unshare", "-n", PY, os.path.abspath(__file__), "net", row],
                           cwd=HERE, capture_output=True, timeout=900)
        sys.stderr.write(r.stderr.decode(errors="replace")[-3000:])
        self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace")[-3000:])

    def test_delay(self):
        self.inner("delay")

    def test_loss(self):
        self.inner("loss")

    def test_reorder(self):
        self.inner("reorder")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "net-origin":
        net_origin_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "net":
        net_inner_main(sys.argv[2])
    else:
        unittest.main()
