"""Allocations per request (docs/performance.md, "Allocations per request"): the proxy runs with
the allocation counter of tests/alloc preloaded (LD_PRELOAD: it counts every malloc-family call
of every thread, from our objects, the static wolfSSL, and the shared nghttp2, jansson and libc
alike). Each workload opens its connections, warms them up, reads the counts, runs 10,000
requests on the same connections, reads the counts again, and asserts that the worker threads
("soth-worker-N") allocated at most the documented bound over those 10,000 requests, and the
telemetry thread at most its own. Every response is checked byte-exact and counted.

- HTTP/1.1 keep-alive over intercepted TLS, reverse mode, 4 connections, 100-byte responses
- HTTP/2 over intercepted TLS, reverse mode, 2 connections x 10 concurrent streams (the bound
  also allows what grows with each connection's age, not with its requests: see WORKER_BOUND)
- CONNECT + intercept (regular mode), HTTP/1.1 keep-alive, 4 connections

The origin is Debian's nginx over TLS on loopback (HTTP/1.1 and h2)."""
import os
import shutil
import socket
import ssl
import struct
import tempfile
import time
import unittest

import hpack

from h2_origin import make_origin_pki
from harness import BUILD, Nginx, Proxy

SHIM = os.path.join(BUILD, "libsoth_alloc_count.so")
REQUESTS = 10000
WARM = 200  # requests per workload before the first reading (pools and free lists filled)
BODY = bytes(range(97, 123)) * 3 + b"0123456789abcdefghjk"  # 98 bytes
assert len(BODY) == 98

# The bounds over 10,000 requests (docs/performance.md, "Allocations per request"): the worker
# threads' malloc/calloc/realloc/memalign calls together, and the telemetry thread's. None is
# per request (one per request would be 10,000); what they allow grows with other things:
# - every workload: 16 KiB send chunks (core/iobuf.c, kept by the worker for good), allocated
#   only when more are in flight at once than ever before on that worker (0-1 seen per run);
# - HTTP/2 also, per connection and second until its HPACK tables are full: the origin's Date
#   changes every second, and each new value is a new dynamic-table entry in the upstream
#   session's inflater and the client session's deflater (a block each, kept until evicted
#   from the 4 KiB table, then reused).
CHUNKS = 4
WORKER_BOUND = {"h1": CHUNKS, "h2": CHUNKS + 12, "connect": CHUNKS}
H2_PER_CONN_SECOND = 4  # 2 tables x (entry + its copy), rounded up
TELEMETRY_BOUND = {"h1": 0, "h2": 0, "connect": 0}

class Counts:
    """The shim's table (tests/alloc/alloc_count.c): a 64-byte header, then 64-byte slots."""

    HDR = struct.Struct("<QIII")
    SLOT = struct.Struct("<iiQQQQ")

    def __init__(self, path, pid):
        self.path = path
        self.pid = pid

    def read(self):
        """{tid: (comm, allocs, reallocs, frees, bytes)} for the threads alive now."""
        with open(self.path, "rb") as f:
            data = f.read()
        magic, slot_size, nslots, used = self.HDR.unpack_from(data, 0)
        assert magic == 0x31434F4C4C41434F, "allocation counter not loaded"
        out = {}
        for i in range(min(used, nslots)):
            tid, _, allocs, reallocs, frees, nbytes = self.SLOT.unpack_from(data, 64 + i * slot_size)
            try:
                with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue  # thread gone (its tid is not reused within a test)
            out[tid] = (comm, allocs, reallocs, frees, nbytes)
        return out


def delta(before, after, prefix):
    """Sum over threads named prefix*: (allocs + reallocs, frees, bytes) between two readings."""
    calls = frees = nbytes = 0
    threads = 0
    for tid, (comm, a, r, fr, b) in after.items():
        if not comm.startswith(prefix):
            continue
        threads += 1
        _, a0, r0, f0, b0 = before.get(tid, (comm, 0, 0, 0, 0))
        calls += (a - a0) + (r - r0)
        frees += fr - f0
        nbytes += b - b0
    return threads, calls, frees, nbytes


class H1Conns:
    """HTTP/1.1 keep-alive over TLS on n connections, one request in flight on each."""

    def __init__(self, socks, host):
        self.socks = socks
        self.req = f"GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.bufs = [b""] * len(socks)

    def _response(self, i):
        s = self.socks[i]
        buf = self.bufs[i]
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            assert d, f"connection {i} of {len(self.socks)} closed mid-response"
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        n = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        assert n == len(BODY), head
        while len(rest) < n:
            d = s.recv(65536)
            assert d, "connection closed mid-body"
            rest += d
        assert rest[:n] == BODY
        self.bufs[i] = rest[n:]

    def run(self, count):
        done = 0
        while done < count:
            k = min(len(self.socks), count - done)
            for i in range(k):
                self.socks[i].sendall(self.req)
            for i in range(k):
                self._response(i)
            done += k
        return done

    def close(self):
        for s in self.socks:
            s.close()


class H2Conn:
    """A minimal HTTP/2 client over TLS: GETs `streams` at a time, responses checked."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self, sock, authority):
        self.s = sock
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.authority = authority
        self.next_id = 1
        self.buf = b""
        # preface, empty SETTINGS, and a connection window large enough for every response
        self.s.sendall(self.PREFACE + self.frame(4, 0, 0, b"") +
                       self.frame(8, 0, 0, struct.pack(">I", 1 << 30)))

    @staticmethod
    def frame(typ, flags, sid, payload):
        return len(payload).to_bytes(3, "big") + bytes([typ, flags]) + sid.to_bytes(4, "big") + \
            payload

    def read_frame(self):
        while len(self.buf) < 9:
            d = self.s.recv(65536)
            assert d, "connection closed"
            self.buf += d
        n = int.from_bytes(self.buf[:3], "big")
        while len(self.buf) < 9 + n:
            d = self.s.recv(65536)
            assert d, "connection closed"
            self.buf += d
        typ, flags = self.buf[3], self.buf[4]
        sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = self.buf[9:9 + n]
        self.buf = self.buf[9 + n:]
        return typ, flags, sid, payload

    def run(self, count, streams=10):
        done = 0
        while done < count:
            k = min(streams, count - done)
            ids = []
            out = b""
            for _ in range(k):
                sid = self.next_id
                self.next_id += 2
                block = self.enc.encode([(":method", "GET"), (":scheme", "https"),
                                         (":path", "/small"), (":authority", self.authority)])
                out += self.frame(1, 0x5, sid, block)  # HEADERS, END_STREAM | END_HEADERS
                ids.append(sid)
            self.s.sendall(out)
            status, body, ended = {}, {i: b"" for i in ids}, set()
            while len(ended) < k:
                typ, flags, sid, payload = self.read_frame()
                if typ == 4 and not flags & 1:
                    self.s.sendall(self.frame(4, 1, 0, b""))
                elif typ == 6 and not flags & 1:
                    self.s.sendall(self.frame(6, 1, 0, payload))
                elif typ in (3, 7):
                    raise AssertionError(f"frame type {typ} on stream {sid}: {payload.hex()}")
                elif typ == 1:
                    assert flags & 0x4, "CONTINUATION not expected for a small head"
                    fields = dict(self.dec.decode(payload))
                    status[sid] = fields.get(":status")
                elif typ == 0:
                    body[sid] += payload
                if typ in (0, 1) and flags & 1:
                    ended.add(sid)
            for sid in ids:
                assert status.get(sid) == "200", (sid, status.get(sid))
                assert body[sid] == BODY, (sid, body[sid][:50])
            done += k
        return done


class AllocTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        assert os.path.exists(SHIM), f"{SHIM} not built"
        assert shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"), "nginx missing"
        cls.d = tempfile.mkdtemp(prefix="soth-alloc-")
        cls.ca, cert, key = make_origin_pki(cls.d)
        # keep-alive and HTTP/2 without request limits: 10,000 requests on the same connections
        cls.nginx = Nginx(cls.d, files={"small": BODY}, listen="ssl http2",
                          worker_connections=256,
                          http="keepalive_requests 1000000; keepalive_timeout 600s; "
                               "http2_max_requests 1000000;",
                          server=f"ssl_certificate {cert}; ssl_certificate_key {key};")
        cls.port = cls.nginx.port

    @classmethod
    def tearDownClass(cls):
        cls.nginx.close()
        shutil.rmtree(cls.d, ignore_errors=True)

    def proxy(self, mode, workers=2):
        cfg = {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.ca}}
        self.count_file = os.path.join(self.d, f"alloc-{mode.split(':')[0]}.counts")
        return Proxy(mode=mode, workers=workers, config=cfg, extra_args=("--log-level", "warn"),
                     env={"LD_PRELOAD": SHIM, "SOTH_ALLOC_COUNT_FILE": self.count_file})

    def client_ctx(self, p, alpn):
        ctx = ssl.create_default_context(cafile=os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"))
        ctx.set_alpn_protocols([alpn])
        return ctx

    def tls_conn(self, p, alpn, connect):
        s = socket.create_connection(p.addr(), timeout=30)
        if connect:
            target = f"origin.test:{self.port}"
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(1)
                assert d, "proxy closed the CONNECT"
                head += d
            assert head.startswith(b"HTTP/1.1 200"), head
        ts = self.client_ctx(p, alpn).wrap_socket(s, server_hostname="origin.test")
        self.assertEqual(ts.selected_alpn_protocol(), alpn)
        return ts

    def measure(self, p, name, warm, run, conns):
        counts = Counts(self.count_file, p.proc.pid)
        self.assertEqual(warm(WARM), WARM)
        time.sleep(0.3)  # the telemetry thread drains the warm-up's events
        before = counts.read()
        t0 = time.monotonic()
        self.assertEqual(run(REQUESTS), REQUESTS)
        secs = time.monotonic() - t0
        time.sleep(0.3)
        after = counts.read()
        nw, wcalls, wfrees, wbytes = delta(before, after, "soth-worker-")
        self.assertEqual(nw, p.workers, f"worker threads found: {after}")
        _, tcalls, tfrees, tbytes = delta(before, after, "soth-telemetry")
        print(f"\n{name}: {REQUESTS} requests in {secs:.1f} s; workers ({nw}): {wcalls} "
              f"allocations ({wbytes} bytes), {wfrees} frees; telemetry: {tcalls} allocations "
              f"({tbytes} bytes), {tfrees} frees")
        bound = WORKER_BOUND[name]
        if name == "h2":
            bound += H2_PER_CONN_SECOND * conns * (int(secs) + 1)
        self.assertLessEqual(wcalls, bound,
                             f"{name}: worker threads allocated {wcalls} times ({wbytes} bytes) "
                             f"over {REQUESTS} requests (bound {bound})")
        self.assertLessEqual(tcalls, TELEMETRY_BOUND[name],
                             f"{name}: telemetry thread allocated {tcalls} times ({tbytes} bytes) "
                             f"over {REQUESTS} requests")
        return wcalls, tcalls

    def test_h1_reverse_keepalive(self):
        with self.proxy(f"reverse:https://origin.test:{self.port}") as p:
            c = H1Conns([self.tls_conn(p, "http/1.1", False) for _ in range(4)], "origin.test")
            try:
                self.measure(p, "h1", c.run, c.run, 4)
            finally:
                c.close()

    def test_h2_reverse(self):
        with self.proxy(f"reverse:https://origin.test:{self.port}") as p:
            conns = [H2Conn(self.tls_conn(p, "h2", False), f"origin.test:{self.port}")
                     for _ in range(2)]

            def run(n):
                done = 0
                while done < n:
                    for c in conns:
                        done += c.run(min(100, n - done)) if done < n else 0
                return done
            try:
                self.measure(p, "h2", run, run, len(conns))
            finally:
                for c in conns:
                    c.s.close()

    def test_connect_intercept_keepalive(self):
        with self.proxy("regular") as p:
            c = H1Conns([self.tls_conn(p, "http/1.1", True) for _ in range(4)],
                        f"origin.test:{self.port}")
            try:
                self.measure(p, "connect", c.run, c.run, 4)
            finally:
                c.close()


if __name__ == "__main__":
    unittest.main()
