"""The upstream connection pool of reverse:https mode (docs/http1.md, "Upstream connection
pool"), seen from a real nginx origin: its access log records, per request, the origin-side
connection number, the requests that connection carried so far and the Connection field it
received (`$connection $connection_requests $http_connection $status $request_uri`).

Every client request here is on its own connection with `Connection: close` (the churn shape of
bench/peers/run.py): with the pool (the default) the origin sees few connections, each carrying
many requests and never a `Connection: close`; without it one connection per request.
"""
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import tempfile
import time
import types
import unittest
import urllib.request

from h2_origin import make_origin_pki
from harness import Nginx, Proxy, close_listener, free_port

BODY = bytes(range(256)) * 16 + b"pooled upstream\n"
BIG = bytes(range(256)) * 8192
# /big: BIG, then zeros to 64 MiB (sparse). Still on its way when the client resets: more than
# the kernel's socket buffers on every hop between the origin and a client that stopped
# reading can hold (a 2 MiB body could all reach them on a loaded machine).
BIG_SIZE = 64 << 20


class Origin(Nginx):
    """nginx on loopback (TLS, origin.test signed by its own test CA) serving /r and /big."""

    def __init__(self, keepalive_timeout="75s", keepalive_requests=100000):
        self.tmp = tempfile.mkdtemp(prefix="soth-upool-")
        self.ca, cert, key = make_origin_pki(self.tmp)
        super().__init__(self.tmp, files={"r": BODY}, listen="ssl",
                         http=f"keepalive_timeout {keepalive_timeout}; "
                              f"keepalive_requests {keepalive_requests};",
                         server=f"ssl_certificate {cert}; ssl_certificate_key {key};",
                         log_format='$connection $connection_requests "$http_connection" '
                                    '$status $request_uri')
        with open(os.path.join(self.dir, "www", "big"), "wb") as f:  # read per request
            f.write(BIG)
            f.truncate(BIG_SIZE)

    def requests(self):
        """(connection, connection_requests, Connection field, status, uri) per request."""
        out = []
        with open(self.log) as f:
            for line in f.read().splitlines():
                m = re.fullmatch(r'(\d+) (\d+) "([^"]*)" (\d+) (\S+)', line)
                assert m, line
                out.append((int(m[1]), int(m[2]), m[3], int(m[4]), m[5]))
        return out

    def close(self):
        super().close()
        subprocess.run(["rm", "-rf", self.tmp], check=False)


class DroppingOrigin:
    """A Python TLS origin (origin.test, http/1.1) that answers the first request on each
    connection with keep-alive and, when a second request arrives on its first connection,
    closes that connection without answering: `how` is "fin" (no close_notify), "notify"
    (close_notify, then FIN) or "rst" (SO_LINGER 0). With stop_listening it also stops
    accepting before that, so a fresh connection is refused. `later` is what every connection
    after the first does: "answer" (as the first), "silent" (accepts TCP, never answers the
    TLS handshake, holds the socket until the peer closes it), "h2" (offers ALPN h2 only) or
    "blackhole" (when the first connection is dropped, its listener is replaced by one on the
    same port whose accept queue is full: a new connection's SYN is dropped, its connect hangs).
    Records (connection number, request line) per request received in `log`, and (connection
    number, request line, body bytes) in `bodies`; `closed` holds the numbers of the
    connections whose peer closed them (or reset them)."""

    def __init__(self, how="fin", stop_listening=False, later="answer"):
        self.dir = d = tempfile.mkdtemp(prefix="soth-upool-py-")
        self.ca, cert, key = make_origin_pki(d)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.h2ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.h2ctx.load_cert_chain(cert, key)
        self.h2ctx.set_alpn_protocols(["h2"])
        self.how, self.stop_listening, self.later = how, stop_listening, later
        self.log, self.bodies, self.closed = [], [], []
        self.alpn = {}  # connection number -> ALPN it negotiated
        self.conns, self.lock = 0, threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            t = threading.Thread(target=self._serve, args=(c, n), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _read_request(s, buf):
        while b"\r\n\r\n" not in buf:
            b = s.recv(65536)
            if not b:
                return None, buf
            buf += b
        head, _, rest = buf.partition(b"\r\n\r\n")
        n = 0
        for ln in head.split(b"\r\n")[1:]:
            name, _, val = ln.partition(b":")
            if name.strip().lower() == b"content-length":
                n = int(val)
        while len(rest) < n:
            b = s.recv(65536)
            if not b:
                return None, buf
            rest += b
        return (head.split(b"\r\n")[0].decode(), rest[:n]), rest[n:]

    def _blackhole(self):
        """Listen on the same port with a full accept queue (never accepted): Linux drops
        the SYNs of further connections."""
        close_listener(self.sock)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(0)
        self.fillers = []
        for _ in range(3):  # a backlog of 0 queues one; the rest wait in SYN retransmits
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)
        time.sleep(0.1)

    def _silent(self, c, n):
        """Accepted, never answered: wait (bounded) for the peer to close."""
        try:
            while c.recv(65536):
                pass
            with self.lock:
                self.closed.append(n)
        except OSError:
            with self.lock:
                self.closed.append(n)
        finally:
            c.close()

    def _serve(self, c, n):
        c.settimeout(20)
        if n > 1 and self.later == "silent":
            self._silent(c, n)
            return
        try:
            ctx = self.h2ctx if n > 1 and self.later == "h2" else self.ctx
            s = ctx.wrap_socket(c, server_side=True)
        except (OSError, ssl.SSLError):
            c.close()
            return
        with self.lock:
            self.alpn[n] = s.selected_alpn_protocol()
        buf, k = b"", 0
        try:
            while True:
                req, buf = self._read_request(s, buf)
                if req is None:
                    break
                line, body = req
                k += 1
                with self.lock:
                    self.log.append((n, line))
                    self.bodies.append((n, line, body))
                if n == 1 and k == 2:
                    if self.stop_listening:
                        close_listener(self.sock)
                    if self.later == "blackhole":
                        self._blackhole()
                    if self.how == "rst":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    elif self.how == "notify":
                        s = s.unwrap()
                    break
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
        except (OSError, ssl.SSLError):
            pass
        finally:
            s.close()

    def close(self):
        close_listener(self.sock)
        for c in getattr(self, "fillers", []):
            c.close()
        subprocess.run(["rm", "-rf", self.dir], check=False)


def get_once(addr):
    """One plain-HTTP request on its own connection, `Connection: close` (as wrk's churn)."""
    s = socket.create_connection(addr, timeout=10)
    try:
        s.sendall(b"GET /r HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                return data
            data += b
    finally:
        s.close()


def check_response(tc, data):
    head, _, body = data.partition(b"\r\n\r\n")
    tc.assertTrue(head.startswith(b"HTTP/1.1 200 "), data[:300])
    tc.assertEqual(body, BODY)
    fields = [ln.lower() for ln in head.split(b"\r\n")[1:]]
    tc.assertIn(b"connection: close", fields, head)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'soth_upstream_pool_total\{result="(\w+)"\} (\d+)', line)
        if m:
            out[m[1]] = int(m[2])
        m = re.fullmatch(r"soth_upstream_pool_idle (\d+)", line)
        if m:
            out["idle"] = int(m[1])
    return out


class UpstreamPoolTests(unittest.TestCase):
    def proxy(self, origin, pool, metrics_port=None, extra=None):
        cfg = {"policy": {"default": "intercept"},
               "resolve": {"origin.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": origin.ca}}
        cfg.update(extra or {})
        if pool is not None:
            cfg["upstream_pool"] = pool
        if metrics_port is not None:
            cfg["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
        return Proxy(mode=f"reverse:https://origin.test:{origin.port}", config=cfg, workers=1)

    def test_churn_reuses_few_origin_connections(self):
        n = 300
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True}, mport) as p:
                deadline = time.time() + 120
                for i in range(n):
                    self.assertLess(time.time(), deadline, f"only {i} requests in 120 s")
                    check_response(self, get_once(p.addr()))
                m = scrape(mport)
                evs = p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), n)
            self.assertTrue(all(r[3] == 200 and r[4] == "/r" for r in log), log[:5])
            self.assertEqual([r for r in log if r[2] != "-"], [])  # no Connection: close
            conns = {r[0] for r in log}
            self.assertLessEqual(len(conns), 5, f"{len(conns)} origin connections for {n}")
            self.assertGreaterEqual(max(r[1] for r in log), n // 2)
            self.assertGreaterEqual(m.get("hit", 0), n - 5, m)
            # A client's next connection may be accepted before the last flow let its
            # upstream go: two connections at most, both idle now.
            self.assertIn(m.get("idle"), (1, 2), m)
            self.assertLessEqual(m.get("miss", 0), 5, m)
            # Every flow reports its upstream leg; the pooled ones carry `reused`.
            ok = [e for e in evs if e["type"] == "tls_handshake_succeeded" and
                  e["side"] == "upstream"]
            self.assertEqual(len(ok), n)
            self.assertNotIn("reused", ok[0])
            reused = [e.get("reused") for e in ok[1:]]
            self.assertGreaterEqual(sum(1 for r in reused if r is not None), n - 5)
            self.assertIn(1, reused)
            started = [e for e in evs if e["type"] == "tls_handshake_started" and
                       e["side"] == "upstream"]
            self.assertEqual(len(started), n)
            # The request head reported is the one forwarded: without the client's close.
            heads = [e for e in evs if e["type"] == "request_headers"]
            self.assertEqual(len(heads), n)
            self.assertFalse(any(h[0].lower() == "connection" for e in heads[1:]
                                 for h in e["headers"]), heads[1])
        finally:
            origin.close()

    def test_tls_clients_keep_alive_and_close(self):
        """TLS clients (ALPN http/1.1, and none): each offer has its own pooled connections;
        a client keeping its connection alive for 3 requests, then one closing, both reuse."""
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True}, mport) as p:
                ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
                for i in range(12):
                    ctx = ssl.create_default_context(cafile=ca)
                    if i % 2:
                        ctx.set_alpn_protocols(["http/1.1"])
                    raw = socket.create_connection(p.addr(), timeout=10)
                    with ctx.wrap_socket(raw, server_hostname="origin.test") as s:
                        f = s.makefile("rb")
                        for k in range(3):
                            close = b"Connection: close\r\n" if k == 2 else b""
                            s.sendall(b"GET /r HTTP/1.1\r\nHost: origin.test\r\n" + close +
                                      b"\r\n")
                            status = f.readline()
                            self.assertTrue(status.startswith(b"HTTP/1.1 200 "), status)
                            fields = {}
                            while True:
                                ln = f.readline().rstrip(b"\r\n")
                                if not ln:
                                    break
                                name, _, val = ln.partition(b":")
                                fields[name.strip().lower()] = val.strip().lower()
                            self.assertEqual(f.read(int(fields[b"content-length"])), BODY)
                            self.assertEqual(fields.get(b"connection") == b"close", k == 2)
                        self.assertEqual(f.read(), b"")  # closed after the last response
                        f.close()  # the socket closes (FIN) only once its file is closed too
                    time.sleep(0.05)
                m = scrape(mport)
                evs = p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 36)
            self.assertEqual([r for r in log if r[2] != "-"], [])
            self.assertLessEqual(len({r[0] for r in log}), 4, log)
            self.assertGreaterEqual(m.get("hit", 0), 8, m)
            ok = [e for e in evs if e["type"] == "tls_handshake_succeeded"]
            self.assertEqual(len(ok), 24)
        finally:
            origin.close()

    def test_client_reset_mid_response_is_not_pooled(self):
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True}, mport) as p:
                # A small receive buffer, and a body far larger than what the buffers between
                # the origin and this client hold: the reset comes with most of it still due.
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.settimeout(10)
                s.connect(p.addr())
                s.sendall(b"GET /big HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
                got = b""
                while len(got) < 65536:
                    b = s.recv(65536)
                    self.assertTrue(b)
                    got += b
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # RST with most of the body still due
                time.sleep(0.3)
                check_response(self, get_once(p.addr()))
                m = scrape(mport)
                p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 2, log)
            self.assertNotEqual(log[0][0], log[1][0], (log, m))
            self.assertEqual(m.get("hit", 0), 0, m)
            self.assertEqual(m.get("stale", 0), 0, m)
        finally:
            origin.close()

    def test_origin_closing_after_n_requests_is_never_pooled_closed(self):
        """nginx's keepalive_requests 5: its 5th response on a connection says close; that
        connection is not kept, so nothing stale is ever taken and nothing fails."""
        origin = Origin(keepalive_requests=5)
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True}, mport) as p:
                for _ in range(20):
                    check_response(self, get_once(p.addr()))
                    time.sleep(0.02)
                m = scrape(mport)
                p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 20)
            self.assertLessEqual(max(r[1] for r in log), 5)
            self.assertGreaterEqual(len({r[0] for r in log}), 4)
            self.assertEqual(m.get("stale", 0), 0, m)
            self.assertGreaterEqual(m.get("hit", 0), 12, m)
        finally:
            origin.close()

    def test_concurrent_clients(self):
        """8 threads x 25 requests, each on its own connection: no error; with max_idle above
        the concurrency the origin sees about as many connections as clients run at once (a
        client's next connection may come before its last flow let its upstream go)."""
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True}, mport) as p:
                errors = []

                def run():
                    try:
                        for _ in range(25):
                            check_response(self, get_once(p.addr()))
                    except Exception as e:  # reported below, with the thread's error
                        errors.append(repr(e))

                ts = [threading.Thread(target=run) for _ in range(8)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(120)
                self.assertFalse(any(t.is_alive() for t in ts), "clients still running")
                self.assertEqual(errors, [])
                m = scrape(mport)
                p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 200)
            self.assertEqual([r for r in log if r[2] != "-" or r[3] != 200], [])
            self.assertLessEqual(len({r[0] for r in log}), 16, m)
            self.assertLessEqual(m.get("idle", 0), 16, m)
            self.assertEqual(m.get("evicted", 0), 0, m)
            self.assertGreaterEqual(m.get("hit", 0), 184, m)
        finally:
            origin.close()

    def test_stale_connection_closed_by_origin_is_not_used(self):
        origin = Origin(keepalive_timeout="1s")
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True, "idle_ms": 10000}, mport) as p:
                check_response(self, get_once(p.addr()))
                time.sleep(1.5)  # nginx closed its idle connection; the pool still holds it
                check_response(self, get_once(p.addr()))
                m = scrape(mport)
                p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 2)
            self.assertNotEqual(log[0][0], log[1][0], (log, m))
            self.assertEqual(log[1][1], 1)
            self.assertGreaterEqual(m.get("stale", 0), 1, m)
        finally:
            origin.close()

    def test_max_requests_bounds_each_origin_connection(self):
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True, "max_requests": 3}, mport) as p:
                for _ in range(10):
                    check_response(self, get_once(p.addr()))
                m = scrape(mport)
                p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 10)
            self.assertLessEqual(max(r[1] for r in log), 3, log)
            self.assertEqual(max(r[1] for r in log), 3, log)
            self.assertGreaterEqual(len({r[0] for r in log}), 4, log)
            self.assertGreaterEqual(m.get("closed_max_requests", 0), 1, m)
        finally:
            origin.close()

    def test_idle_connection_expires(self):
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, {"enabled": True, "idle_ms": 300}, mport) as p:
                check_response(self, get_once(p.addr()))
                time.sleep(0.1)  # the first flow has let its upstream connection go
                check_response(self, get_once(p.addr()))
                time.sleep(1.0)
                check_response(self, get_once(p.addr()))
                m = scrape(mport)
                p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 3)
            self.assertEqual(log[0][0], log[1][0])
            self.assertNotEqual(log[1][0], log[2][0])
            self.assertGreaterEqual(m.get("expired", 0), 1, m)
        finally:
            origin.close()

    def test_on_by_default(self):
        origin = Origin()
        mport = free_port()
        try:
            with self.proxy(origin, None, mport) as p:
                for _ in range(3):
                    check_response(self, get_once(p.addr()))
                    time.sleep(0.05)  # the last flow has let its upstream connection go
                m = scrape(mport)
                evs = p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 3)
            self.assertEqual([r[2] for r in log], ["-"] * 3)  # the client's close not sent
            self.assertEqual(len({r[0] for r in log}), 1, log)
            self.assertEqual(m.get("hit", 0), 2, m)
            self.assertEqual([e.get("reused") for e in evs
                              if e["type"] == "tls_handshake_succeeded" and
                              e["side"] == "upstream"], [None, 1, 2])
        finally:
            origin.close()

    def test_disabled_forwards_close(self):
        origin = Origin()
        try:
            with self.proxy(origin, {"enabled": False}) as p:
                for _ in range(3):
                    data = get_once(p.addr())
                    head, _, body = data.partition(b"\r\n\r\n")
                    self.assertTrue(head.startswith(b"HTTP/1.1 200 "), data[:300])
                    self.assertEqual(body, BODY)
                evs = p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), 3)
            self.assertEqual([r[2] for r in log], ["close"] * 3)
            self.assertEqual(len({r[0] for r in log}), 3)
            self.assertFalse(any("reused" in e for e in evs
                                 if e["type"] == "tls_handshake_succeeded"))
        finally:
            origin.close()

    def dropped_second_request(self, how, method=b"GET", stop_listening=False):
        """First client: a 200 whose origin connection goes to the pool. Second client: takes
        it, and the origin drops it on that request. Returns (second response, metrics, the
        second client's flow events, origin log)."""
        r = self.second_request(how, method=method, stop_listening=stop_listening)
        return r.data, r.m, r.evs, r.log

    def second_request(self, how, method=b"GET", stop_listening=False, later="answer",
                       body=b"", timeouts=None, alpn=None, client_close=None, fds_back=False):
        """dropped_second_request with more knobs: `later` (DroppingOrigin), a request `body`
        (sent with Content-Length), `timeouts` for the proxy's config, `alpn` (both clients use
        TLS offering it; None: plain HTTP), `client_close` ("fin" or "rst": the second client
        closes 0.5 s after its request instead of reading the answer), `fds_back` (wait for the
        proxy's descriptor count to come back: the pool ends empty). Returns a namespace:
        data (second response, b"" when closed early), elapsed (request sent to response
        complete or to close), ended (request sent to the flow's stream_closed, within
        0.1 s, and with fds_back to the descriptors back), m (metrics), evs (second flow's
        events), log, origin, and fds (the proxy's descriptor count before the first client,
        after the second flow)."""
        origin = DroppingOrigin(how, stop_listening, later)
        mport = free_port()
        r = types.SimpleNamespace()
        try:
            cfg_extra = {"timeouts": timeouts} if timeouts else None
            with self.proxy(origin, {"enabled": True}, mport, cfg_extra) as p:
                fds0 = p.fd_count()
                ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")

                def connect():
                    raw = socket.create_connection(p.addr(), timeout=10)
                    if alpn is None:
                        return raw
                    ctx = ssl.create_default_context(cafile=ca)
                    ctx.set_alpn_protocols(alpn)
                    return ctx.wrap_socket(raw, server_hostname="origin.test")

                def read_to_end(s):
                    data = b""
                    while True:
                        try:
                            b = s.recv(65536)
                        except ssl.SSLError:  # an abrupt end after the answer
                            break
                        if not b:
                            break
                        data += b
                    return data

                s = connect()
                s.sendall(b"GET /r HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
                check_response(self, read_to_end(s))
                s.close()
                time.sleep(0.2)  # the first flow has let its upstream connection go
                s = connect()
                s.sendall(method + b" /r HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n" +
                          (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" +
                          body)
                t0 = time.time()
                if client_close is None:
                    r.data = read_to_end(s)
                else:
                    time.sleep(0.5)  # the retry's new connection is being made
                    if client_close == "rst":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    r.data = b""
                r.elapsed = time.time() - t0
                s.close()
                # The second flow ends (stream_closed); with fds_back its descriptors are
                # closed too: wait, bounded, for the count to come back (the pool holds nothing
                # then: the old connection was dropped, the new one failed).
                deadline = time.time() + 15
                while time.time() < deadline:
                    evs = p.events(settle=0.1)
                    if (len([e for e in evs if e["type"] == "stream_closed"]) >= 2 and
                            (not fds_back or p.fd_count() <= fds0)):
                        break
                r.ended = time.time() - t0
                r.fds = (fds0, p.fd_count())
                r.m = scrape(mport)
                evs = p.checked_events()
                self.assertIsNone(p.proc.poll())
            flows = sorted({e["flow_id"] for e in evs})
            self.assertEqual(len(flows), 2, flows)
            r.evs = [e for e in evs if e["flow_id"] == flows[1]]
            r.log, r.origin = origin.log, origin
            return r
        finally:
            origin.close()

    def upstream_tls(self, evs):
        return [e["type"] for e in evs if e["type"].startswith("tls_handshake") and
                e["side"] == "upstream"]

    def check_retried(self, how):
        data, m, evs, log = self.dropped_second_request(how)
        check_response(self, data)
        self.assertEqual(m.get("retried", 0), 1, m)
        self.assertEqual(m.get("hit", 0), 1, m)
        # one start per side: the retry's handshake is not reported
        self.assertEqual(self.upstream_tls(evs),
                         ["tls_handshake_started", "tls_handshake_succeeded"])
        ok = [e for e in evs if e["type"] == "tls_handshake_succeeded" and
              e["side"] == "upstream"]
        self.assertEqual(ok[0].get("reused"), 1)
        self.assertEqual([e["status"] for e in evs if e["type"] == "response_headers"], [200])
        self.assertEqual(log, [(1, "GET /r HTTP/1.1"), (1, "GET /r HTTP/1.1"),
                               (2, "GET /r HTTP/1.1")])

    def test_retry_get_after_origin_fin(self):
        self.check_retried("fin")

    def test_retry_get_after_origin_close_notify(self):
        self.check_retried("notify")

    def test_retry_get_after_origin_reset(self):
        self.check_retried("rst")

    def test_no_retry_for_post(self):
        data, m, evs, log = self.dropped_second_request("fin", method=b"POST")
        self.assertTrue(data.startswith(b"HTTP/1.1 502 "), data[:300])
        self.assertIn(b"upstream closed the connection before its response", data)
        self.assertEqual(m.get("retried", 0), 0, m)
        self.assertEqual(log, [(1, "GET /r HTTP/1.1"), (1, "POST /r HTTP/1.1")])
        closed = [e["reason_code"] for e in evs if e["type"] == "stream_closed"]
        self.assertEqual(closed, ["relay_eof"])
        self.assertEqual(self.upstream_tls(evs),
                         ["tls_handshake_started", "tls_handshake_succeeded"])

    def test_retry_whose_reconnect_fails_answers_502(self):
        data, m, evs, log = self.dropped_second_request("fin", stop_listening=True)
        self.assertTrue(data.startswith(b"HTTP/1.1 502 "), data[:300])
        self.assertIn(b"upstream closed the connection before its response", data)
        self.assertEqual(m.get("retried", 0), 0, m)
        self.assertEqual(log, [(1, "GET /r HTTP/1.1"), (1, "GET /r HTTP/1.1")])
        self.assertEqual(self.upstream_tls(evs),
                         ["tls_handshake_started", "tls_handshake_succeeded"])
        self.assertEqual([e for e in evs if e["type"] == "tls_handshake_failed"], [])
        closed = [e["reason_code"] for e in evs if e["type"] == "stream_closed"]
        self.assertEqual(closed, ["relay_eof"])

    def test_retry_after_reset_whose_reconnect_fails_answers_502(self):
        data, m, evs, log = self.dropped_second_request("rst", stop_listening=True)
        self.assertTrue(data.startswith(b"HTTP/1.1 502 "), data[:300])
        self.assertIn(b"upstream reset the connection before its response", data)
        self.assertEqual(m.get("retried", 0), 0, m)
        self.assertEqual(self.upstream_tls(evs),
                         ["tls_handshake_started", "tls_handshake_succeeded"])
        self.assertEqual(len([e for e in evs if e["type"] == "stream_closed"]), 1)


    # ---- the retry's other paths (docs/http1.md "Upstream connection pool", Retry)

    def check_one_upstream_handshake(self, r):
        """The second flow reported its pooled upstream leg once (started, succeeded with
        `reused` 1), no handshake failure, and closed once."""
        self.assertEqual(self.upstream_tls(r.evs),
                         ["tls_handshake_started", "tls_handshake_succeeded"])
        ok = [e for e in r.evs if e["type"] == "tls_handshake_succeeded" and
              e["side"] == "upstream"]
        self.assertEqual(ok[0].get("reused"), 1)
        self.assertEqual([e for e in r.evs if e["type"] == "tls_handshake_failed"], [])
        self.assertEqual(len([e for e in r.evs if e["type"] == "stream_closed"]), 1, r.evs)

    def check_put_retried(self, how):
        # three 16 KiB chunks of replay; not a repeating pattern, so a chunk sent twice or out
        # of order would show
        body = bytes((i * 7 + i // 251) % 256 for i in range(40 << 10))
        r = self.second_request(how, method=b"PUT", body=body)
        check_response(self, r.data)
        self.assertEqual(r.m.get("retried", 0), 1, r.m)
        self.assertEqual(r.m.get("hit", 0), 1, r.m)
        self.check_one_upstream_handshake(r)
        self.assertEqual([e["status"] for e in r.evs if e["type"] == "response_headers"], [200])
        got = r.origin.bodies
        self.assertEqual([(n, line, len(b)) for n, line, b in got],
                         [(1, "GET /r HTTP/1.1", 0), (1, "PUT /r HTTP/1.1", len(body)),
                          (2, "PUT /r HTTP/1.1", len(body))])
        self.assertTrue(got[1][2] == body and got[2][2] == body, "body changed on its way")

    def test_retry_put_of_40k_after_origin_fin(self):
        self.check_put_retried("fin")

    def test_retry_put_of_40k_after_origin_reset(self):
        self.check_put_retried("rst")

    def test_no_retry_over_64k_sent(self):
        body = bytes((i * 13) % 256 for i in range(100 << 10))
        r = self.second_request("fin", method=b"PUT", body=body, fds_back=True)
        self.assertTrue(r.data.startswith(b"HTTP/1.1 502 "), r.data[:300])
        self.assertIn(b"upstream closed the connection before its response", r.data)
        self.assertEqual(r.m.get("retried", 0), 0, r.m)
        self.check_one_upstream_handshake(r)
        self.assertEqual([(n, line, len(b)) for n, line, b in r.origin.bodies],
                         [(1, "GET /r HTTP/1.1", 0), (1, "PUT /r HTTP/1.1", len(body))])
        self.assertEqual([e["reason_code"] for e in r.evs if e["type"] == "stream_closed"],
                         ["relay_eof"])
        self.assertLessEqual(r.fds[1], r.fds[0], r.fds)

    def check_retry_timed_out(self, r, origin_conns):
        """A retry that ended at connect_ms + tls_handshake_ms (1.5 s): the old connection's
        502, nothing counted as retried, the one upstream handshake, descriptors back."""
        self.assertTrue(r.data.startswith(b"HTTP/1.1 502 "), r.data[:300])
        self.assertIn(b"upstream closed the connection before its response", r.data)
        self.assertGreaterEqual(r.elapsed, 1.3, r.elapsed)
        self.assertLess(r.elapsed, 3.5, r.elapsed)
        self.assertEqual(r.origin.conns, origin_conns)
        self.assertEqual(r.m.get("retried", 0), 0, r.m)
        self.check_one_upstream_handshake(r)
        self.assertEqual([e["reason_code"] for e in r.evs if e["type"] == "stream_closed"],
                         ["relay_eof"])
        self.assertEqual(r.log, [(1, "GET /r HTTP/1.1"), (1, "GET /r HTTP/1.1")])
        self.assertLessEqual(r.fds[1], r.fds[0], r.fds)

    def test_retry_whose_new_connection_never_handshakes_answers_502_in_time(self):
        # the new connection is accepted and never answered: the retry ends at connect_ms +
        # tls_handshake_ms (1.5 s) after it began, not at the 10 s defaults nor never
        r = self.second_request("fin", later="silent", fds_back=True,
                                timeouts={"connect_ms": 500, "tls_handshake_ms": 1000})
        self.check_retry_timed_out(r, 2)  # the retry's connection was made

    def test_retry_whose_connect_hangs_answers_502_in_time(self):
        # the new connection's SYN is dropped (a full accept queue): the retry ends at
        # connect_ms + tls_handshake_ms (1.5 s) with its connect still pending
        r = self.second_request("fin", later="blackhole", fds_back=True,
                                timeouts={"connect_ms": 500, "tls_handshake_ms": 1000})
        self.check_retry_timed_out(r, 1)  # nothing accepted after the first

    def client_gone_during_retry(self, how, timeouts, later="silent"):
        """The retry's new connection is accepted and never answered ("silent") or its
        connect hangs ("blackhole"), so the retry runs to its deadline (connect_ms +
        tls_handshake_ms after it began); the client closes ("fin" or "rst") 0.5 s after its
        request, while the retry runs."""
        r = self.second_request("fin", later=later, client_close=how, fds_back=True,
                                timeouts=timeouts)
        self.assertEqual(r.m.get("retried", 0), 0, r.m)
        self.check_one_upstream_handshake(r)
        print(f"\n{how}: flow ended {r.ended:.2f} s after the request, fds {r.fds}, "
              f"closed by proxy {r.origin.closed}")
        self.assertLessEqual(r.fds[1], r.fds[0], r.fds)  # the half-made connection closed
        if later == "silent":
            self.assertEqual(r.origin.conns, 2)  # the retry's connection was made
            deadline = time.time() + 2  # and the proxy closed it (seen by the origin's thread)
            while not r.origin.closed and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual(r.origin.closed, [2])
        else:
            self.assertEqual(r.origin.conns, 1)  # nothing accepted after the first
        self.assertEqual(r.log, [(1, "GET /r HTTP/1.1"), (1, "GET /r HTTP/1.1")])
        return r

    def test_client_fin_during_retry(self):
        # A FIN does not end the retry (the client may wait for its answer half-closed): the
        # flow ends at the retry's deadline (3 s) as the old connection's end, not sooner.
        r = self.client_gone_during_retry("fin", {"connect_ms": 1000, "tls_handshake_ms": 2000})
        self.assertGreaterEqual(r.ended, 2.8, r.ended)
        self.assertLess(r.ended, 6.0, r.ended)
        self.assertEqual([e["reason_code"] for e in r.evs if e["type"] == "stream_closed"],
                         ["relay_eof"])
        self.assertEqual([e["outcome"] for e in r.evs if e["type"] == "exchange_completed"],
                         ["upstream_aborted"])

    def test_client_reset_during_retry(self):
        # A reset is seen at once (docs/http1.md: a poll on the client while its reads wait),
        # not at the retry's 6 s deadline: the flow ends as any client reset ends it (its
        # exchange client_aborted, client_eof) within 1 s, the retry's connection closed.
        self.check_reset_ended_at_once(
            self.client_gone_during_retry("rst", {"connect_ms": 3000, "tls_handshake_ms": 3000}))

    def test_client_reset_during_retry_connect(self):
        # the same while the retry's connect hangs (cancelled with the flow)
        self.check_reset_ended_at_once(
            self.client_gone_during_retry("rst", {"connect_ms": 3000, "tls_handshake_ms": 3000},
                                          later="blackhole"))

    def check_reset_ended_at_once(self, r):
        self.assertLess(r.ended - r.elapsed, 1.0, (r.elapsed, r.ended))
        self.assertEqual([e["reason_code"] for e in r.evs if e["type"] == "stream_closed"],
                         ["client_eof"])
        self.assertEqual([e["outcome"] for e in r.evs if e["type"] == "exchange_completed"],
                         ["client_aborted"])

    def test_retry_whose_new_connection_negotiates_h2_answers_502(self):
        # TLS clients offering h2 and http/1.1: the pooled connection chose http/1.1, the new
        # one h2; HTTP/1.1 bytes must not go on it
        r = self.second_request("fin", later="h2", alpn=["h2", "http/1.1"], fds_back=True)
        self.assertTrue(r.data.startswith(b"HTTP/1.1 502 "), r.data[:300])
        self.assertIn(b"upstream closed the connection before its response", r.data)
        self.assertEqual(r.origin.alpn, {1: "http/1.1", 2: "h2"})
        self.assertEqual(r.m.get("retried", 0), 0, r.m)
        self.check_one_upstream_handshake(r)
        self.assertEqual(r.log, [(1, "GET /r HTTP/1.1"), (1, "GET /r HTTP/1.1")])
        self.assertLessEqual(r.fds[1], r.fds[0], r.fds)

    def test_retry_whose_new_connection_negotiates_no_alpn_answers_502(self):
        # plain clients (offer http/1.1): the new connection's origin offers only h2, so it
        # negotiates no ALPN where the pooled one had http/1.1
        r = self.second_request("fin", later="h2", fds_back=True)
        self.assertTrue(r.data.startswith(b"HTTP/1.1 502 "), r.data[:300])
        self.assertEqual(r.origin.alpn, {1: "http/1.1", 2: None})
        self.assertEqual(r.m.get("retried", 0), 0, r.m)
        self.check_one_upstream_handshake(r)
        self.assertEqual(r.log, [(1, "GET /r HTTP/1.1"), (1, "GET /r HTTP/1.1")])
        self.assertLessEqual(r.fds[1], r.fds[0], r.fds)

if __name__ == "__main__":
    unittest.main()
