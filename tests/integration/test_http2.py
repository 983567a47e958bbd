"""HTTP/2 interception through the real binary (docs/http2.md): curl --http2, nghttp and python h2
clients through the proxy to a python h2 TLS origin; concurrency, byte accounting, header-list
limits on both legs, RST_STREAM/GOAWAY propagation, a raw-frame conformance lane, and
http2_enabled false. Every test's events go through the shared checker (harness)."""
import base64
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from h2_origin import H2Client, H2Origin, body_for, make_origin_pki, pair_body
from harness import Proxy, by_flow

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# RFC 9113 error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 5, 6, 7, 8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11


def proxy_ca(p):
    return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")


def flows_with(evs, typ):
    return [fl for fl in by_flow(evs).values() if any(e["type"] == typ for e in fl)]


def exchanges(evs):
    """stream_id -> {type: [events]} for every HTTP/2 stream (all flows merged: one flow)."""
    out = {}
    for e in evs:
        if "stream_id" in e and e.get("protocol") == "http2":
            out.setdefault((e["flow_id"], e["stream_id"]), {}).setdefault(e["type"], []).append(e)
    return out


def captured(chunks):
    return b"".join(base64.b64decode(c["data_b64"]) for c in chunks)


class H2Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H2Origin()

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()

    def config(self, **extra):
        cfg = {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.origin.ca}}
        cfg.update(extra)
        return cfg

    def client(self, p, **kw):
        return H2Client(p.addr(), proxy_ca(p), "origin.test", self.origin.port, **kw)

    def url(self, path):
        return f"https://origin.test:{self.origin.port}{path}"


class CurlTests(H2Base):
    def test_curl_http2_get_and_post_one_connection(self):
        with Proxy(config=self.config()) as p, tempfile.TemporaryDirectory() as d:
            up = os.path.join(d, "up.bin")
            data = body_for(7, 300000)
            with open(up, "wb") as f:
                f.write(data)
            out = subprocess.run(
                ["curl", "-sS", "--http2", "--cacert", proxy_ca(p), "-x",
                 f"http://127.0.0.1:{p.port}", "-w", "%{http_version}\\n",
                 "-o", os.path.join(d, "a"), self.url("/gen/1/5000"), "--next", "--http2",
                 "--cacert", proxy_ca(p), "-x", f"http://127.0.0.1:{p.port}",
                 "-w", "%{http_version}\\n", "--data-binary", "@" + up,
                 "-o", os.path.join(d, "b"), self.url("/echo")],
                capture_output=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, b"2\n2\n")
            with open(os.path.join(d, "a"), "rb") as f:
                self.assertEqual(f.read(), body_for(1, 5000))
            with open(os.path.join(d, "b"), "rb") as f:
                self.assertEqual(f.read(), data)
            evs = p.checked_events()
        fls = flows_with(evs, "request_headers")
        self.assertEqual(len(fls), 1, "one connection, two streams")
        fl = fls[0]
        alpn = [e["alpn"] for e in fl if e["type"] == "tls_handshake_succeeded"]
        self.assertEqual(alpn, ["h2", "h2"])
        reqs = [e for e in fl if e["type"] == "request_headers"]
        self.assertEqual([(r["method"], r["path"], r["http_version"], r["scheme"], r["stream_id"])
                          for r in reqs],
                         [("GET", "/gen/1/5000", "2", "https", 1), ("POST", "/echo", "2", "https",
                                                                   3)])
        self.assertEqual(reqs[0]["authority"], f"origin.test:{self.origin.port}")
        self.assertTrue(all(e["protocol"] == "http2" for e in fl if e["type"] in
                            ("request_headers", "exchange_completed", "stream_closed")))
        done = [e for e in fl if e["type"] == "exchange_completed"]
        self.assertEqual([(d["outcome"], d["request_bytes"], d["response_bytes"]) for d in done],
                         [("complete", 0, 5000), ("complete", 300000, 300000)])
        self.assertEqual(fl[-1]["reason_code"], "client_eof")

    def test_curl_parallel_100_streams_distinct_bodies(self):
        n = 100
        with Proxy(config=self.config()) as p, tempfile.TemporaryDirectory() as d:
            args = ["curl", "-sS", "--parallel", "--parallel-max", "100"]
            for i in range(n):
                with open(os.path.join(d, f"in{i}"), "wb") as f:
                    f.write(body_for(1000 + i, 1 + i * 677 % 40000))
                if i:
                    args.append("--next")
                args += ["--http2", "--cacert", proxy_ca(p), "-x", f"http://127.0.0.1:{p.port}",
                         "--data-binary", "@" + os.path.join(d, f"in{i}"), "-o",
                         os.path.join(d, f"out{i}"), self.url(f"/echo?i={i}")]
            out = subprocess.run(args, capture_output=True, timeout=120)
            self.assertEqual(out.returncode, 0, out.stderr)
            for i in range(n):
                with open(os.path.join(d, f"out{i}"), "rb") as f:
                    self.assertEqual(f.read(), body_for(1000 + i, 1 + i * 677 % 40000), i)
            evs = p.checked_events()
        ex = exchanges(evs)
        self.assertEqual(len(ex), n)
        self.assertTrue(all(x["exchange_completed"][0]["outcome"] == "complete"
                            for x in ex.values()))


class PythonClientTests(H2Base):
    def test_100_concurrent_streams_distinct_bodies_byte_exact(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            self.assertEqual(c.alpn, "h2")
            bodies = {}
            for i in range(100):
                body = body_for(i, 1 + i * 997 % 70000)
                bodies[c.request("POST", f"/echo?i={i}", body)] = body
            c.run_until(lambda: all(c.done(s) for s in bodies), timeout=60)
            for sid, body in bodies.items():
                self.assertEqual(c.r[sid]["status"], 200)
                self.assertEqual(bytes(c.r[sid]["body"]), body, sid)
            c.close()
            evs = p.checked_events()
        ex = exchanges(evs)
        self.assertEqual(len(ex), 100)
        for (_, sid), x in ex.items():
            body = bodies[sid]
            done = x["exchange_completed"][0]
            self.assertEqual((done["outcome"], done["request_bytes"], done["response_bytes"]),
                             ("complete", len(body), len(body)))
            self.assertEqual(captured(x.get("request_body_chunk", [])), body[:4096])
            self.assertEqual(captured(x.get("response_body_chunk", [])), body[:4096])
            self.assertEqual(x["request_headers"][0]["path"], f"/echo?i={list(bodies).index(sid)}")

    def test_1000_streams_one_connection_byte_accounting(self):
        n = 1000
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            want = {}
            started = 0
            while started < n or not all(c.done(s) for s in want):
                while started < n and c.c.open_outbound_streams < 90:
                    i = started
                    if i % 2:
                        sid = c.request("POST", "/echo", body_for(i, i * 31 % 3000))
                        want[sid] = (i * 31 % 3000, i * 31 % 3000)
                    else:
                        sid = c.request("GET", f"/gen/{i}/{i * 17 % 5000}")
                        want[sid] = (0, i * 17 % 5000)
                    started += 1
                c.run_until(lambda: (started < n and c.c.open_outbound_streams < 60) or
                            all(c.done(s) for s in want), timeout=60)
            got_req = got_resp = 0
            for sid, (rq, rs) in want.items():
                self.assertEqual(c.r[sid]["status"], 200)
                self.assertEqual(len(c.r[sid]["body"]), rs)
                got_resp += rs
                got_req += rq
            c.close()
            evs = p.checked_events()
        fls = flows_with(evs, "request_headers")
        self.assertEqual(len(fls), 1)
        done = [e for e in fls[0] if e["type"] == "exchange_completed"]
        self.assertEqual(len(done), n)
        self.assertTrue(all(d["outcome"] == "complete" for d in done))
        self.assertEqual(sum(d["request_bytes"] for d in done), got_req)
        self.assertEqual(sum(d["response_bytes"] for d in done), got_resp)
        closed = fls[0][-1]
        self.assertEqual(closed["type"], "stream_closed")
        # The connection's bytes include framing and TLS: at least the bodies.
        self.assertGreater(closed["bytes_client_to_server"], got_req)
        self.assertGreater(closed["bytes_server_to_client"], got_resp)

    def test_streams_after_the_idle_relay_gave_back_memory(self):
        """docs/http2.md "Memory": a connection idle for a second gives back its nghttp2 sessions'
        frame buffers and stream maps; the streams after that (new heads through the same HPACK
        state, large bodies through the emptied frame buffers, trailers) arrive byte-exact."""
        with Proxy(config=self.config(), extra_args=("--log-level", "debug")) as p:
            c = self.client(p)
            bodies = {}
            for rnd in range(3):
                for i in range(8):
                    body = body_for(rnd * 8 + i, 1 + (rnd * 8 + i) * 7919 % 100000)
                    bodies[c.request("POST", f"/echo?r={rnd}&i={i}", body)] = body
                sid = c.request("POST", "/echo?trailers=1", b"t" * 5000,
                                trailers=[(b"x-req-sum", b"5000")])
                c.run_until(lambda: all(c.done(s) for s in bodies) and c.done(sid), timeout=60)
                self.assertEqual(c.r[sid]["trailers"], [(b"x-sum", b"5000")])
                self.assertEqual(bytes(c.r[sid]["body"]), b"t" * 5000)
                deadline = time.time() + 10
                while p.stderr().count("idle HTTP/2 relay:") <= rnd and time.time() < deadline:
                    time.sleep(0.1)
                self.assertEqual(p.stderr().count("idle HTTP/2 relay:"), rnd + 1, p.stderr())
            for sid, body in bodies.items():
                self.assertEqual(c.r[sid]["status"], 200)
                self.assertEqual(bytes(c.r[sid]["body"]), body, sid)
            c.close()
            evs = p.checked_events()
        ex = exchanges(evs)
        self.assertEqual(len(ex), 27)
        self.assertEqual({x["exchange_completed"][0]["outcome"] for x in ex.values()},
                         {"complete"})

    def test_requests_counted_in_metrics(self):
        from harness import free_port
        mport = free_port()
        with Proxy(config=self.config(metrics={"listen": f"127.0.0.1:{mport}"})) as p:
            c = self.client(p)
            sids = [c.request("GET", f"/gen/{40 + i}/10") for i in range(7)]
            c.run_until(lambda: all(c.done(s) for s in sids))
            c.close()
            time.sleep(0.3)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                text = r.read().decode()
            p.checked_events()
        line = [ln for ln in text.splitlines()
                if ln.startswith('soth_requests_total{protocol="http2"}')]
        self.assertEqual(line, ['soth_requests_total{protocol="http2"} 7'], text)

    def test_trailers_both_ways(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            sid = c.request("POST", "/echo?trailers=1", b"x" * 5000,
                            trailers=[(b"x-req-sum", b"5000")])
            c.run_until(lambda: c.done(sid))
            self.assertEqual(bytes(c.r[sid]["body"]), b"x" * 5000)
            self.assertEqual(c.r[sid]["trailers"], [(b"x-sum", b"5000")])
            c.close()
            evs = p.checked_events()
        x = list(exchanges(evs).values())[0]
        self.assertEqual(x["request_trailers"][0]["headers"], [["x-req-sum", "5000"]])
        self.assertEqual(x["response_trailers"][0]["headers"], [["x-sum", "5000"]])

    def test_request_header_order_reaches_origin(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            names = [f"x-h{i:02d}" for i in range(20)]
            sid = c.request("GET", "/hdrs", headers=[(n, "v") for n in reversed(names)])
            c.run_until(lambda: c.done(sid))
            self.assertEqual(bytes(c.r[sid]["body"]).decode().split(),
                             list(reversed(names)))
            c.close()
            evs = p.checked_events()
        req = list(exchanges(evs).values())[0]["request_headers"][0]
        self.assertEqual([h[0] for h in req["headers"]], list(reversed(names)))


class LimitTests(H2Base):
    def big_headers(self, total):
        return [(f"x-big-{i}", "a" * 8000) for i in range(total // 8000)]

    def test_oversized_request_head_431_connection_survives(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            bad = c.request("GET", "/gen/1/10", headers=self.big_headers(80000))
            c.run_until(lambda: c.done(bad))
            self.assertEqual(c.r[bad]["status"], 431)
            ok = c.request("GET", "/gen/2/10")
            c.run_until(lambda: c.done(ok))
            self.assertEqual(bytes(c.r[ok]["body"]), body_for(2, 10))
            c.close()
            evs = p.checked_events()
        # The refused head never reached the origin.
        paths = [e["path"] for e in self.origin.log() if e["ev"] == "head"]
        self.assertNotIn(None, paths)
        ex = exchanges(evs)
        self.assertEqual(len(ex), 1, "the refused head leaves no exchange")

    def test_configured_limit_on_both_legs(self):
        with Proxy(config=self.config(http2_max_header_list_size=16384)) as p:
            c = self.client(p)
            fits = c.request("GET", "/gen/3/10", headers=self.big_headers(8000))
            over = c.request("GET", "/gen/4/10", headers=self.big_headers(24000))
            resp_fits = c.request("GET", "/big/8000")
            resp_over = c.request("GET", "/big/32000")
            c.run_until(lambda: all(c.done(s) for s in (fits, over, resp_fits, resp_over)))
            self.assertEqual(c.r[fits]["status"], 200)
            self.assertEqual(c.r[over]["status"], 431)
            self.assertEqual(c.r[resp_fits]["status"], 200)
            self.assertEqual(bytes(c.r[resp_fits]["body"]), b"after a big head")
            self.assertEqual(c.r[resp_over]["status"], 502)
            ok = c.request("GET", "/gen/5/100")
            c.run_until(lambda: c.done(ok))
            self.assertEqual(c.r[ok]["status"], 200)
            c.close()
            evs = p.checked_events()
        outcomes = {x["request_headers"][0]["path"]: x["exchange_completed"][0]["outcome"]
                    for x in exchanges(evs).values()}
        self.assertEqual(outcomes, {"/gen/3/10": "complete", "/big/8000": "complete",
                                    "/big/32000": "upstream_aborted", "/gen/5/100": "complete"})

    def test_oversized_response_head_502_connection_survives(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            bad = c.request("GET", "/big/100000")
            c.run_until(lambda: c.done(bad))
            self.assertEqual(c.r[bad]["status"], 502)
            ok = c.request("GET", "/gen/6/1000")
            c.run_until(lambda: c.done(ok))
            self.assertEqual(bytes(c.r[ok]["body"]), body_for(6, 1000))
            c.close()
            p.checked_events()


class PropagationTests(H2Base):
    def test_rst_stream_both_ways(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            up = c.request("GET", "/rst/11")
            slow = c.request("GET", "/slow")
            c.run_until(lambda: c.done(up) and c.r[slow]["status"] == 200)
            self.assertEqual(c.r[up]["reset"], ENHANCE_YOUR_CALM)
            c.reset(slow, CANCEL)
            hits = self.origin.wait_log(lambda e: e["ev"] == "reset" and e["path"] == "/slow")
            self.assertTrue(hits, "origin saw the client's reset")
            self.assertEqual(hits[-1]["code"], CANCEL)
            # An error code that only describes one hop becomes INTERNAL_ERROR.
            proto = c.request("GET", "/rst/1")
            c.run_until(lambda: c.done(proto))
            self.assertEqual(c.r[proto]["reset"], INTERNAL_ERROR)
            ok = c.request("GET", "/gen/7/10")
            c.run_until(lambda: c.done(ok))
            self.assertEqual(c.r[ok]["status"], 200)
            c.close()
            evs = p.checked_events()
        outcomes = {x["request_headers"][0]["path"]: x["exchange_completed"][0]["outcome"]
                    for x in exchanges(evs).values()}
        self.assertEqual(outcomes, {"/rst/11": "upstream_aborted", "/slow": "client_aborted",
                                    "/rst/1": "upstream_aborted", "/gen/7/10": "complete"})

    def test_goaway_from_origin(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            sid = c.request("GET", "/goaway")
            c.run_until(lambda: c.done(sid) and c.goaway is not None)
            self.assertEqual(bytes(c.r[sid]["body"]), b"bye")
            self.assertEqual(c.goaway[0], NO_ERROR)
            # New streams are refused (or the connection is gone).
            try:
                late = c.request("GET", "/gen/8/10")
                c.run_until(lambda: c.done(late) or c.closed, timeout=10)
                if not c.closed:
                    self.assertEqual(c.r[late]["reset"], REFUSED_STREAM)
            except Exception:
                pass
            c.run_until(lambda: c.closed, timeout=10)
            c.close()
            evs = p.checked_events()
        fl = flows_with(evs, "request_headers")[0]
        self.assertEqual(fl[-1]["type"], "stream_closed")
        self.assertEqual(fl[-1]["reason_code"], "relay_eof")

    def test_goaway_from_client_reaches_origin(self):
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            sid = c.request("GET", "/gen/9/100")
            c.run_until(lambda: c.done(sid))
            n_before = len([e for e in self.origin.log() if e["ev"] == "goaway"])
            c.c.close_connection(error_code=ENHANCE_YOUR_CALM)
            c.flush()
            hits = self.origin.wait_log(lambda e: e["ev"] == "goaway")
            self.assertGreater(len(hits), n_before)
            self.assertEqual(hits[-1]["code"], NO_ERROR, "the client's code stays on its hop")
            c.run_until(lambda: c.closed, timeout=10)
            c.close()
            evs = p.checked_events()
        fl = flows_with(evs, "request_headers")[0]
        self.assertEqual(fl[-1]["reason_code"], "client_eof")

    def test_slow_stream_does_not_block_others(self):
        # One stream's reader stops (its window stays shut): the relay buffers at most that
        # stream's window and the other streams of the connection go on (no head-of-line
        # blocking inside the proxy); then the stalled stream completes byte-exact.
        with Proxy(config=self.config()) as p:
            c = self.client(p)
            big = 8 << 20
            stalled = c.request("GET", f"/gen/20/{big}")
            c.hold.add(stalled)
            c.run_until(lambda: len(c.r[stalled]["body"]) > 0)
            others = [c.request("GET", f"/gen/{21 + i}/300000") for i in range(5)]
            c.run_until(lambda: all(c.done(s) for s in others), timeout=60)
            for i, s in enumerate(others):
                self.assertEqual(bytes(c.r[s]["body"]), body_for(21 + i, 300000))
            got = len(c.r[stalled]["body"])
            self.assertLess(got, big)
            self.assertLessEqual(got, (1 << 20), "no more than the client's stream window")
            c.release(stalled)
            c.run_until(lambda: c.done(stalled), timeout=120)
            self.assertEqual(bytes(c.r[stalled]["body"]), body_for(20, big))
            c.close()
            evs = p.checked_events()
        done = {x["request_headers"][0]["path"]: x["exchange_completed"][0]
                for x in exchanges(evs).values()}
        self.assertEqual(done[f"/gen/20/{big}"]["response_bytes"], big)

    def test_idle_timeout_ends_streams_with_timeout(self):
        cfg = self.config(timeouts={"idle_ms": 800})
        with Proxy(config=cfg) as p:
            c = self.client(p)
            ok = c.request("GET", "/gen/30/10")
            slow = c.request("GET", "/slow")
            c.run_until(lambda: c.done(ok) and c.r[slow]["status"] == 200)
            c.run_until(lambda: c.closed, timeout=20)
            c.close()
            evs = p.checked_events()
        fl = flows_with(evs, "request_headers")[0]
        outcomes = {e["stream_id"]: e["outcome"] for e in fl if e["type"] == "exchange_completed"}
        self.assertEqual(outcomes, {ok: "complete", slow: "timeout"})
        self.assertEqual(fl[-1]["reason_code"], "idle_timeout")

    def test_sigterm_drains_in_flight_stream(self):
        p = Proxy(config=self.config())
        try:
            c = self.client(p)
            sid = c.request("POST", "/echo", body_for(10, 200000))
            c.run_until(lambda: c.r[sid]["status"] == 200 or c.done(sid))
            p.proc.send_signal(15)
            c.run_until(lambda: c.done(sid) and c.goaway is not None, timeout=20)
            self.assertEqual(bytes(c.r[sid]["body"]), body_for(10, 200000))
            self.assertEqual(c.goaway[0], NO_ERROR)
            c.run_until(lambda: c.closed, timeout=10)  # the proxy closes once drained
            c.close()
            self.assertEqual(p.proc.wait(20), 0)
            evs = p.checked_events(settle=0)
        finally:
            p.__exit__(None, None, None)
        fl = flows_with(evs, "request_headers")[0]
        self.assertEqual(fl[-2]["outcome"], "complete")
        self.assertEqual(fl[-1]["reason_code"], "shutdown")


# ---- conformance lane: raw frames through the proxy


class RawH2:
    """TLS (ALPN h2) through the proxy's CONNECT, then raw frames."""

    def __init__(self, p, port, preface=True):
        self.raw = socket.create_connection(p.addr(), timeout=10)
        self.raw.sendall(f"CONNECT origin.test:{port} HTTP/1.1\r\n\r\n".encode())
        buf = b""
        while not buf.endswith(b"\r\n\r\n"):
            buf += self.raw.recv(1)
        assert buf.startswith(b"HTTP/1.1 200"), buf
        ctx = ssl.create_default_context(cafile=proxy_ca(p))
        ctx.set_alpn_protocols(["h2"])
        self.s = ctx.wrap_socket(self.raw, server_hostname="origin.test")
        assert self.s.selected_alpn_protocol() == "h2"
        self.enc = hpack.Encoder()
        self.buf = b""
        if preface:
            self.s.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames):
        self.s.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def headers(self, sid, path="/gen/1/10", end_stream=True, end_headers=True):
        f = HeadersFrame(sid)
        f.data = self.enc.encode([(":method", "GET"), (":scheme", "https"),
                                  (":authority", "origin.test"), (":path", path)])
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    def frames(self, until, timeout=10):
        """Read frames until until(frame) is true or the connection closes; returns them."""
        out = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            while len(self.buf) >= 9:
                f, n = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + n:
                    break
                f.parse_body(memoryview(self.buf[9:9 + n]))
                self.buf = self.buf[9 + n:]
                out.append(f)
                if until(f):
                    return out
            try:
                self.s.settimeout(max(0.05, deadline - time.time()))
                d = self.s.recv(65536)
            except (socket.timeout, ssl.SSLError, OSError):
                d = b""
                if time.time() < deadline and not isinstance(d, bytes):
                    continue
            if not d:
                out.append(None)  # closed
                return out
            self.buf += d
        raise TimeoutError([type(f).__name__ for f in out])

    def goaway(self, timeout=10):
        fs = self.frames(lambda f: isinstance(f, GoAwayFrame), timeout)
        g = [f for f in fs if isinstance(f, GoAwayFrame)]
        return g[-1] if g else None

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def raw_frame(ftype, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


class ConformanceTests(H2Base):
    def assert_still_serving(self, p):
        c = self.client(p)
        sid = c.request("GET", "/gen/11/100")
        c.run_until(lambda: c.done(sid))
        self.assertEqual(bytes(c.r[sid]["body"]), body_for(11, 100))
        c.close()

    def conn_error(self, p, frames, code, reason="relay_error", served=None):
        r = RawH2(p, self.origin.port)
        if served is not None:
            r.send(r.headers(1, served))
            r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
        r.send(*frames)
        g = r.goaway()
        self.assertIsNotNone(g, "GOAWAY expected")
        self.assertEqual(g.error_code, code)
        r.frames(lambda f: False)  # then the proxy closes the connection
        r.close()
        self.assert_still_serving(p)
        return g

    def test_bad_preface(self):
        with Proxy(config=self.config()) as p:
            r = RawH2(p, self.origin.port, preface=False)
            r.send(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            g = r.goaway()
            self.assertEqual(g.error_code, PROTOCOL_ERROR)
            self.assertIsNone(r.frames(lambda f: False)[-1], "then the proxy closes")
            r.close()
            self.assert_still_serving(p)
            evs = p.checked_events()
        reasons = [e["reason_code"] for e in evs if e["type"] == "stream_closed"]
        self.assertIn("parse_failed", reasons)

    def test_data_on_idle_half_closed_and_closed_streams(self):
        with Proxy(config=self.config()) as p:
            d = DataFrame(3)
            d.data = b"x"
            self.conn_error(p, [d], PROTOCOL_ERROR)  # idle stream (RFC 9113 5.1)
            r = RawH2(p, self.origin.port)
            # half-closed (remote): the request ended, the response is still coming
            r.send(r.headers(1, "/slow"))
            r.frames(lambda f: isinstance(f, HeadersFrame))
            d = DataFrame(1)
            d.data = b"x"
            r.send(d)
            # a stream error by the RFC; nghttp2 makes it a connection error (allowed, 5.4.1)
            g = r.goaway()
            self.assertEqual(g.error_code, STREAM_CLOSED)
            r.close()
            r.close()
            self.assert_still_serving(p)
            p.checked_events()

    def closed_stream(self, reset):
        """A raw connection whose stream 1 the client has closed: its request ended and the
        whole response came back, or (reset) the client reset it mid-request."""
        r = RawH2(self.p, self.origin.port)
        if reset:
            r.send(r.headers(1, "/echo", end_stream=False), RstStreamFrame(1, error_code=CANCEL))
        else:
            r.send(r.headers(1, "/gen/14/10"))
            fs = r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            self.assertEqual(fs[-1].data, body_for(14, 10))
        return r

    def assert_conn_error(self, r, code, last_stream_id=None):
        fs = r.frames(lambda f: isinstance(f, GoAwayFrame))
        self.assertIsInstance(fs[-1], GoAwayFrame, fs)
        self.assertEqual(fs[-1].error_code, code)
        if last_stream_id is not None:
            self.assertEqual(fs[-1].last_stream_id, last_stream_id)
        self.assertIsNone(r.frames(lambda f: False)[-1], "then the proxy closes the connection")
        r.close()

    def test_frames_on_streams_the_client_closed(self):
        # RFC 9113 5.1: DATA or HEADERS on a stream the client reset, or on a closed stream,
        # is STREAM_CLOSED; the relay makes it a connection error (allowed, 5.4.1).
        with Proxy(config=self.config()) as p:
            self.p = p
            for reset in (True, False):
                for kind in ("data", "headers"):
                    with self.subTest(reset=reset, frame=kind):
                        r = self.closed_stream(reset)
                        if kind == "data":
                            d = DataFrame(1)
                            d.data = b"x"
                            d.flags.add("END_STREAM")
                            r.send(d)
                        else:
                            r.send(r.headers(1, "/gen/14/10"))
                        self.assert_conn_error(r, STREAM_CLOSED, last_stream_id=1)
            self.assert_still_serving(p)
            p.checked_events()

    def test_frames_after_the_proxy_reset_are_ignored(self):
        # RFC 9113 5.1: after sending RST_STREAM an endpoint MUST ignore frames the peer may
        # already have sent on that stream: the origin resets a stream whose request body is
        # still coming, the client's late DATA and trailers change nothing.
        with Proxy(config=self.config()) as p:
            r = RawH2(p, self.origin.port)
            r.send(r.headers(1, "/rst/8", end_stream=False))
            fs = r.frames(lambda f: isinstance(f, RstStreamFrame))
            self.assertEqual((fs[-1].stream_id, fs[-1].error_code), (1, CANCEL))
            d = DataFrame(1)
            d.data = b"late"
            t = HeadersFrame(1)
            t.data = r.enc.encode([("x-trailer", "1")])
            t.flags.add("END_HEADERS")
            t.flags.add("END_STREAM")
            r.send(d, t, r.headers(3, "/gen/15/10"))
            fs = r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            self.assertEqual((fs[-1].stream_id, fs[-1].data), (3, body_for(15, 10)))
            self.assertFalse([f for f in fs if isinstance(f, GoAwayFrame)])
            r.close()
            p.checked_events()

    def test_stream_id_smaller_than_previous(self):
        # RFC 9113 5.1.1: a new stream's identifier must exceed every one the client opened.
        with Proxy(config=self.config()) as p:
            r = RawH2(p, self.origin.port)
            r.send(r.headers(5, "/gen/16/10"), r.headers(3, "/gen/17/10"))
            fs = r.frames(lambda f: isinstance(f, GoAwayFrame))
            self.assertIsInstance(fs[-1], GoAwayFrame, fs)
            self.assertEqual((fs[-1].error_code, fs[-1].last_stream_id), (PROTOCOL_ERROR, 5))
            self.assertFalse([f for f in fs if f is not None and f.stream_id == 3])
            r.close()
            self.assert_still_serving(p)
            p.checked_events()

    def test_priority_frames(self):
        with Proxy(config=self.config()) as p:
            # on stream 0: connection error (RFC 9113 6.3)
            self.conn_error(p, [raw_frame(2, 0, 0, struct.pack(">IB", 1, 15))], PROTOCOL_ERROR)
            # depending on itself (5.3.1), on an idle stream: a stream error, but RST_STREAM
            # cannot be sent on an idle stream (6.4), so the connection ends
            self.conn_error(p, [raw_frame(2, 0, 1, struct.pack(">IB", 1, 15))], PROTOCOL_ERROR)
            # a HEADERS frame depending on itself: nghttp2 ends the connection
            h = HeadersFrame(1)
            h.data = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"),
                                             (":authority", "origin.test"), (":path", "/")])
            for flag in ("END_STREAM", "END_HEADERS", "PRIORITY"):
                h.flags.add(flag)
            h.depends_on, h.stream_weight = 1, 255
            self.conn_error(p, [h], PROTOCOL_ERROR)
            # on an open stream: RST_STREAM(PROTOCOL_ERROR) for it, the connection goes on
            r = RawH2(p, self.origin.port)
            r.send(r.headers(1, "/slow"))
            r.frames(lambda f: isinstance(f, HeadersFrame))
            r.send(raw_frame(2, 0, 1, struct.pack(">IB", 1, 15)))
            fs = r.frames(lambda f: isinstance(f, RstStreamFrame))
            self.assertEqual((fs[-1].stream_id, fs[-1].error_code), (1, PROTOCOL_ERROR))
            # PRIORITY frames that are fine (idle stream, other dependency) change nothing
            r.send(raw_frame(2, 0, 7, struct.pack(">IB", 0, 15)),
                   raw_frame(2, 0, 1, struct.pack(">IB", 3, 15)), r.headers(3, "/gen/18/10"))
            fs = r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            self.assertEqual((fs[-1].stream_id, fs[-1].data), (3, body_for(18, 10)))
            self.assertFalse([f for f in fs if isinstance(f, GoAwayFrame)])
            r.close()
            self.assert_still_serving(p)
            p.checked_events()

    def test_even_stream_id_and_stream_zero_data(self):
        with Proxy(config=self.config()) as p:
            r = RawH2(p, self.origin.port)
            self.conn_error(p, [r.headers(2)], PROTOCOL_ERROR)
            r.close()
            d = DataFrame(1)
            d.data = b"x"
            self.conn_error(p, [raw_frame(0, 0, 0, b"x")], PROTOCOL_ERROR)
            p.checked_events()

    def test_window_overflow(self):
        with Proxy(config=self.config()) as p:
            self.conn_error(p, [WindowUpdateFrame(0, window_increment=(1 << 31) - 1)],
                            FLOW_CONTROL_ERROR)
            # on a stream: a stream error, the connection goes on
            r = RawH2(p, self.origin.port)
            r.send(r.headers(1, "/slow"))
            r.frames(lambda f: isinstance(f, HeadersFrame))
            r.send(WindowUpdateFrame(1, window_increment=(1 << 31) - 1))
            fs = r.frames(lambda f: isinstance(f, RstStreamFrame))
            self.assertEqual(fs[-1].error_code, FLOW_CONTROL_ERROR)
            r.send(r.headers(3, "/gen/12/10"))
            fs = r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            self.assertEqual(fs[-1].data, body_for(12, 10))
            r.close()
            # increment 0 on the connection
            self.conn_error(p, [raw_frame(8, 0, 0, struct.pack(">I", 0))], PROTOCOL_ERROR)
            p.checked_events()

    def test_oversized_frames(self):
        with Proxy(config=self.config()) as p:
            # a DATA frame over SETTINGS_MAX_FRAME_SIZE (16384) on an open stream
            r = RawH2(p, self.origin.port)
            r.send(r.headers(1, "/echo", end_stream=False))
            r.send(raw_frame(0, 0, 1, b"y" * 16385))
            g = r.goaway()
            self.assertEqual(g.error_code, FRAME_SIZE_ERROR)
            r.close()
            # an oversized HEADERS frame
            self.conn_error(p, [raw_frame(1, 0x4 | 0x1, 1, b"\x00" * 20000)], FRAME_SIZE_ERROR)
            # a SETTINGS frame whose length is not a multiple of 6
            self.conn_error(p, [raw_frame(4, 0, 0, b"\x00" * 7)], FRAME_SIZE_ERROR)
            self.assert_still_serving(p)
            p.checked_events()

    def test_continuation_handling(self):
        with Proxy(config=self.config()) as p:
            # a head split over HEADERS + 2 CONTINUATIONs is served
            r = RawH2(p, self.origin.port)
            block = r.enc.encode([(":method", "GET"), (":scheme", "https"),
                                  (":authority", "origin.test"), (":path", "/gen/13/10"),
                                  ("x-pad", "p" * 100)])
            h = HeadersFrame(1)
            h.data = block[:10]
            h.flags.add("END_STREAM")
            c1 = ContinuationFrame(1)
            c1.data = block[10:40]
            c2 = ContinuationFrame(1)
            c2.data = block[40:]
            c2.flags.add("END_HEADERS")
            r.send(h, c1, c2)
            fs = r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            self.assertEqual(fs[-1].data, body_for(13, 10))
            # another frame in the middle of a header block is a connection error
            h = r.headers(3, end_headers=False)
            d = DataFrame(3)
            d.data = b"z"
            r.send(h, d)
            g = r.goaway()
            self.assertEqual(g.error_code, PROTOCOL_ERROR)
            r.close()
            # CONTINUATION without a HEADERS before it
            c = ContinuationFrame(1)
            c.data = b"\x82"
            c.flags.add("END_HEADERS")
            self.conn_error(p, [c], PROTOCOL_ERROR)
            # a CONTINUATION flood (more than the relay's 8 per block) ends the connection
            r = RawH2(p, self.origin.port)
            h = r.headers(1, end_headers=False)
            conts = []
            for _ in range(40):
                c = ContinuationFrame(1)
                c.data = b""
                conts.append(c)
            r.send(h, *conts)
            fs = r.frames(lambda f: isinstance(f, GoAwayFrame))
            self.assertTrue(isinstance(fs[-1], GoAwayFrame) or fs[-1] is None, fs)
            r.close()
            self.assert_still_serving(p)
            p.checked_events()

    def flood(self, p, first, frame, n=20000, batch=250):
        """Send first(r)'s frames, then up to n copies of `frame` in batches, stopping once a GOAWAY
        arrives (so little is left unread when the proxy closes); returns the GOAWAY."""
        r = RawH2(p, self.origin.port)
        r.send(*first(r))
        closed = False
        for _ in range(n // batch):
            try:
                r.send(frame * batch)
            except OSError:
                break
            r.s.settimeout(0.02)
            try:
                d = r.s.recv(65536)
                closed = not d
                r.buf += d
            except (socket.timeout, ssl.SSLWantReadError):
                pass
            except OSError:
                closed = True
            i, seen = 0, False
            while i + 9 <= len(r.buf) and not seen:
                seen = r.buf[i + 3] == 7
                i += 9 + int.from_bytes(r.buf[i:i + 3], "big")
            if seen or closed:
                break
        g = r.goaway()
        r.close()
        return g

    def test_priority_and_empty_data_floods(self):
        # docs/http2.md "Stream states": more than 1,000 PRIORITY or empty DATA frames (no
        # END_STREAM) beyond the HEADERS and DATA with data end the connection with
        # GOAWAY(ENHANCE_YOUR_CALM); other connections are not affected.
        with Proxy(config=self.config()) as p:
            g = self.flood(p, lambda r: [], raw_frame(2, 0, 3, struct.pack(">IB", 0, 15)))
            self.assertIsNotNone(g, "GOAWAY expected after the PRIORITY flood")
            self.assertEqual(g.error_code, ENHANCE_YOUR_CALM)
            self.assert_still_serving(p)
            g = self.flood(p, lambda r: [r.headers(1, "/echo", end_stream=False)],
                           raw_frame(0, 0, 1, b""))
            self.assertIsNotNone(g, "GOAWAY expected after the empty DATA flood")
            self.assertEqual((g.error_code, g.last_stream_id), (ENHANCE_YOUR_CALM, 1))
            self.assert_still_serving(p)
            p.checked_events()

    def test_bad_settings_values(self):
        with Proxy(config=self.config()) as p:
            self.conn_error(p, [raw_frame(4, 0, 0, struct.pack(">HI", 2, 2))], PROTOCOL_ERROR)
            self.conn_error(p, [raw_frame(4, 0, 0, struct.pack(">HI", 4, 1 << 31))],
                            FLOW_CONTROL_ERROR)
            self.conn_error(p, [raw_frame(4, 0, 0, struct.pack(">HI", 5, 100))], PROTOCOL_ERROR)
            p.checked_events()

    def test_rst_stream_on_idle_stream(self):
        with Proxy(config=self.config()) as p:
            self.conn_error(p, [RstStreamFrame(5, error_code=CANCEL)], PROTOCOL_ERROR)
            p.checked_events()


class IdleUpstreamTests(H2Base):
    """docs/http2.md "Idle upstream connection": an intercepted HTTP/2 connection with no stream
    for timeouts.upstream_idle_ms closes its upstream connection (GOAWAY, close_notify, FIN) and
    makes a new one for the next request; the client sees one connection throughout."""

    IDLE_MS = 300

    def setUp(self):
        self.own = H2Origin()  # its own log: connections are counted

    def tearDown(self):
        self.own.close()

    def own_config(self, **extra):
        cfg = {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.own.ca},
               "timeouts": {"upstream_idle_ms": self.IDLE_MS}}
        cfg.update(extra)
        return cfg

    def own_client(self, p):
        return H2Client(p.addr(), proxy_ca(p), "origin.test", self.own.port)

    def wait_closed(self, n):
        """Until the origin saw n connections end (our GOAWAY first on each)."""
        deadline = time.time() + 10
        while time.time() < deadline:
            log = self.own.log()
            if sum(1 for e in log if e["ev"] == "closed") >= n:
                return log
            time.sleep(0.02)
        self.fail(f"origin saw {n} connections close: {self.own.log()}")

    def test_requests_after_the_upstream_closed_while_idle(self):
        with Proxy(config=self.own_config(), extra_args=("--log-level", "debug")) as p:
            c = self.own_client(p)
            bodies = {}
            for rnd in range(3):
                for i in range(8):
                    body = body_for(rnd * 8 + i, 1 + (rnd * 8 + i) * 7919 % 100000)
                    bodies[c.request("POST", f"/echo?r={rnd}&i={i}", body)] = body
                sid = c.request("POST", "/echo?trailers=1", b"t" * 5000,
                                trailers=[(b"x-req-sum", b"5000")])
                c.run_until(lambda: all(c.done(s) for s in bodies) and c.done(sid), timeout=60)
                self.assertEqual(c.r[sid]["trailers"], [(b"x-sum", b"5000")],
                                 (rnd, sid, c.r[sid], p.stderr()[-3000:], self.own.log()))
                self.assertEqual(bytes(c.r[sid]["body"]), b"t" * 5000)
                log = self.wait_closed(rnd + 1)
                # Ours was a graceful GOAWAY; the origin's connection count grows by one a round.
                self.assertEqual([e["code"] for e in log if e["ev"] == "goaway"], [0] * (rnd + 1))
                self.assertEqual(sum(1 for e in log if e["ev"] == "conn"), rnd + 1)
            for sid, body in bodies.items():
                self.assertEqual(c.r[sid]["status"], 200)
                self.assertEqual(bytes(c.r[sid]["body"]), body, sid)
            self.assertIsNone(c.goaway)  # the client's connection never ended
            c.close()
            evs = p.checked_events()
            err = p.stderr()
        self.assertEqual(err.count("closing it until the next request"), 3, err)
        self.assertEqual(err.count("a request came, reconnecting"), 2, err)
        ex = exchanges(evs)
        self.assertEqual(len(ex), 27)
        self.assertEqual({x["exchange_completed"][0]["outcome"] for x in ex.values()},
                         {"complete"})
        # One flow; the upstream side reported its handshake once.
        self.assertEqual(len(by_flow(evs)), 1)
        ups = [e for e in evs if e["type"] == "tls_handshake_succeeded"
               and e.get("side") == "upstream"]
        self.assertEqual(len(ups), 1)

    def test_ping_while_parked_needs_no_upstream(self):
        with Proxy(config=self.own_config()) as p:
            r = RawH2(p, self.own.port)
            r.send(r.headers(1))
            r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            self.wait_closed(1)
            r.send(PingFrame(0, opaque_data=b"12345678"))
            got = r.frames(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags)
            self.assertEqual(got[-1].opaque_data, b"12345678")
            time.sleep(0.3)
            self.assertEqual(sum(1 for e in self.own.log() if e["ev"] == "conn"), 1)
            # The next request, in several pieces across reads: a new connection answers it.
            f = r.headers(3, path="/gen/7/30000")
            data = f.serialize()
            for k in range(0, len(data), 5):
                r.send(data[k:k + 5])
                time.sleep(0.01)
            got = r.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
            body = b"".join(f.data for f in got if isinstance(f, DataFrame) and f.stream_id == 3)
            self.assertEqual(body, body_for(7, 30000))
            self.assertEqual(sum(1 for e in self.own.log() if e["ev"] == "conn"), 2)
            r.s.close()
            p.checked_events()

    def test_origin_gone_while_parked_refuses_the_request(self):
        with Proxy(config=self.own_config()) as p:
            c = self.own_client(p)
            sid = c.request("GET", "/gen/3/100")
            c.run_until(lambda: c.done(sid))
            self.assertEqual(bytes(c.r[sid]["body"]), body_for(3, 100))
            self.wait_closed(1)
            self.own.proc.kill()  # nothing listens on its port now
            self.own.proc.wait()
            sid2 = c.request("GET", "/gen/4/100")
            c.run_until(lambda: c.done(sid2) and c.goaway is not None, timeout=15)
            # Not processed: the client may retry it elsewhere (RFC 9113 8.7).
            self.assertEqual(c.r[sid2]["reset"], REFUSED_STREAM)
            self.assertEqual(c.goaway[0], NO_ERROR)
            self.assertLessEqual(c.goaway[1], sid2)
            c.close()
            evs = p.checked_events()
        closed = [e for e in evs if e["type"] == "stream_closed"]
        self.assertEqual(len(closed), 1)

    def test_zero_keeps_the_upstream_open(self):
        with Proxy(config=self.own_config(timeouts={"upstream_idle_ms": 0})) as p:
            c = self.own_client(p)
            sid = c.request("GET", "/gen/3/100")
            c.run_until(lambda: c.done(sid))
            time.sleep(1.0)
            sid = c.request("GET", "/gen/4/100")
            c.run_until(lambda: c.done(sid))
            self.assertEqual(bytes(c.r[sid]["body"]), body_for(4, 100))
            log = self.own.log()
            self.assertEqual(sum(1 for e in log if e["ev"] == "conn"), 1)
            self.assertEqual(sum(1 for e in log if e["ev"] == "closed"), 0)
            c.close()
            p.checked_events()


class ReverseAndConfigTests(H2Base):
    def test_nghttp_reverse_mode_100_streams(self):
        cfg = self.config(events={"body_capture_bytes": 65536})
        mode = f"reverse:https://origin.test:{self.origin.port}"
        sizes = {k: 1 + k * 613 % 60000 for k in range(100)}
        with Proxy(mode=mode, config=cfg) as p:
            urls = [f"https://127.0.0.1:{p.port}/pair/{k}/{n}" for k, n in sizes.items()]
            out = subprocess.run(["nghttp", "-s", "--max-concurrent-streams=100"] + urls,
                                 capture_output=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            # nghttp writes every stream's data as it arrives, interleaved; body K is made of
            # the byte values 2K and 2K+1 only, so each stream's bytes can be picked out again
            # and compared whole, in order.
            total = sum(sizes.values())
            data, stats = out.stdout[:total], out.stdout[total:]
            self.assertTrue(stats.lstrip().startswith(b"***** Statistics *****"), stats[:200])
            got = {k: bytearray() for k in sizes}
            for b in data:
                got[b >> 1].append(b)
            for k, n in sizes.items():
                self.assertEqual(bytes(got[k]), pair_body(k, n), f"stream body {k}")
            evs = p.checked_events()
        ex = exchanges(evs)
        self.assertEqual(len(ex), 100)
        self.assertEqual(len(flows_with(evs, "request_headers")), 1)
        for x in ex.values():
            path = x["request_headers"][0]["path"]
            _, _, k, n = path.split("/")
            # what the proxy relayed, byte-exact per stream (captured in full here)
            self.assertEqual(captured(x["response_body_chunk"]), pair_body(int(k), int(n)))
            self.assertEqual(x["exchange_completed"][0]["outcome"], "complete")

    def test_h2load_reverse_mode(self):
        mode = f"reverse:https://origin.test:{self.origin.port}"
        with Proxy(mode=mode, config=self.config()) as p:
            out = subprocess.run(["h2load", "-n", "1000", "-c", "4", "-m", "10",
                                  f"https://127.0.0.1:{p.port}/gen/50/2000"],
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("1000 succeeded, 0 failed, 0 errored", out.stdout)
            self.assertIn("status codes: 1000 2xx", out.stdout)
            evs = p.checked_events()
        done = [e for e in evs if e["type"] == "exchange_completed"]
        self.assertEqual(len(done), 1000)
        self.assertTrue(all(d["outcome"] == "complete" and d["response_bytes"] == 2000
                            for d in done))
        self.assertEqual(len(flows_with(evs, "request_headers")), 4)

    def test_http2_disabled_offers_http11_only(self):
        # An origin that would pick h2 when offered, and says what it negotiated.
        d = tempfile.mkdtemp(prefix="soth-alpn-")
        ca, cert, key = make_origin_pki(d)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        seen = []

        def serve():
            try:
                raw, _ = ls.accept()
                s = ctx.wrap_socket(raw, server_side=True)
                seen.append(s.selected_alpn_protocol())
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += s.recv(4096)
                body = b"negotiated " + str(seen[0]).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                s.close()
            except OSError:
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            cfg = {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
                   "tls": {"upstream_ca_file": ca}, "http2_enabled": False}
            with Proxy(config=cfg) as p:
                out = subprocess.run(
                    ["curl", "-sS", "--http2", "--cacert", proxy_ca(p), "-x",
                     f"http://127.0.0.1:{p.port}", "-w", " %{http_version}",
                     f"https://origin.test:{ls.getsockname()[1]}/"],
                    capture_output=True, timeout=30)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, b"negotiated http/1.1 1.1")
                evs = p.checked_events()
        finally:
            ls.close()
            shutil.rmtree(d, ignore_errors=True)
        self.assertEqual(seen, ["http/1.1"], "the proxy offered the origin no h2")
        alpn = [e["alpn"] for e in evs if e["type"] == "tls_handshake_succeeded"]
        self.assertEqual(alpn, ["http/1.1", "http/1.1"])
        self.assertTrue(any(e["type"] == "request_headers" and e["http_version"] == "1.1"
                            for e in evs))


if __name__ == "__main__":
    unittest.main()
