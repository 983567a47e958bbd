"""Memory ceilings (docs/performance.md, "Memory ceilings"): thousands of connections held open
at once, the proxy's RSS growth per connection measured here and compared with the ceiling that
page documents.

- 5,000 idle CONNECT tunnels (policy tunnel) to a local origin that accepts and holds them;
  closed at the end: every upstream sees the FIN and the proxy is back to its descriptors.
- 2,000 slowloris connections trickling a proxy request head one byte a second, never
  finishing it: each one gets 408 and is closed at timeouts.request_header_ms of its accept
  (docs/answers.md, "Before the upstream"), with connect_parse_failed
  (request_header_timeout) and stream_closed idle_timeout (docs/events.md).
- 500 idle intercepted HTTP/1.1 connections: CONNECT, TLS with ALPN http/1.1 on both legs (a
  TLS origin in this process), one GET answered byte-exact, then held; closed at the end, each
  with its exchange_completed (complete) and stream_closed (client_eof).
- 500 idle intercepted HTTP/2 connections: CONNECT, TLS with ALPN h2 on both legs (the python
  h2 origin of test_http2), one GET on stream 1 answered byte-exact, then held; closed at the
  end, each with its exchange_completed (complete) and stream_closed (client_eof).

Growth is VmRSS (/proc/PID/status) with the load held, minus VmRSS before it, over the number of
connections. Before the baseline, the memory a worker has whatever the load (its provided
receive buffers, its 8 MiB event producer ring, the jsonl sink's byte ring and a 1 MiB event
ring file) is touched once, so that its first use does not read as growth per connection. In a
sanitizer build the figure is printed but not compared with the ceiling (ASan's quarantine and
redzones are not the proxy's memory); every other assertion holds in every build.

The proxy inherits RLIMIT_NOFILE from this process (it does not raise its own), so the soft
limit is raised here first: a tunnel holds two descriptors in the proxy and two in this
process (client and origin)."""
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import ssl
import tempfile
import threading
import time
import unittest

from h2_origin import H2Origin, body_for, make_origin_pki
from harness import REPO, EchoServer, Proxy, connect_tunnel, read_all
from test_tls_soak import asan_build, status_kib

TUNNELS = 5000
SLOWLORIS = 2000
# timeouts.request_header_ms (default 10 s, docs/config.md): long enough to open every
# slowloris connection before the first one times out, on a loaded machine too
HEAD_MS = 30000
OPEN_AT_ONCE = 128  # connections being set up concurrently
FILL_REQUESTS = 1000  # x 12 KB request heads: more than the producer ring + ring file + sink
STREAM_BYTES = 64 << 20  # through one tunnel: every provided buffer filled a few times
# idle HTTP/2 connections; the python origin select()s each socket, so below FD_SETSIZE there
H2_IDLE = 500
H2_WARM = 64  # h2 connections opened, used and closed before the baseline
H2_BODY = 100
H1_IDLE = 500  # idle intercepted HTTP/1.1 connections (TLS origin in this process)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_get(path, authority):
    """The client preface, an empty SETTINGS and a GET on stream 1 (END_STREAM), its fields as
    HPACK literals without indexing (RFC 7541 6.2.2): no dynamic table needed to write it."""
    def lit(index, value):
        v = value.encode()
        return bytes([index, len(v)]) + v
    block = b"\x82\x87" + lit(4, path) + lit(1, authority)  # :method GET, :scheme https
    frame = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
    return PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + frame


async def h2_response(r, w):
    """Frames until stream 1 ends (SETTINGS acknowledged); returns (status byte, DATA bytes):
    the first byte of the response header block, 0x88 for ":status: 200" (RFC 7541 static
    index 8)."""
    status, body = None, b""
    while True:
        hd = await asyncio.wait_for(r.readexactly(9), 30)
        ln, typ, flags = int.from_bytes(hd[:3], "big"), hd[3], hd[4]
        sid = int.from_bytes(hd[5:9], "big") & 0x7FFFFFFF
        payload = await asyncio.wait_for(r.readexactly(ln), 30)
        if typ == 0x4 and not flags & 0x1:
            w.write(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        elif typ in (0x3, 0x7):
            raise AssertionError(f"frame type {typ} on stream {sid}: {payload.hex()}")
        elif typ == 0x1 and sid == 1 and status is None:
            status = payload[0]
        elif typ == 0x0 and sid == 1:
            body += payload
        if sid == 1 and typ in (0x0, 0x1) and flags & 0x1:
            return status, body


def documented_ceiling_kib(load):
    """The ceiling per connection for `load` ("idle tunnel", "slowloris"): the last column of
    its row in docs/performance.md's "Memory ceilings" table."""
    with open(os.path.join(REPO, "docs", "performance.md")) as f:
        text = f.read()
    sec = text.split("## Memory ceilings", 1)
    assert len(sec) == 2, "docs/performance.md has no \"Memory ceilings\" section"
    for line in sec[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(load):
            m = re.fullmatch(r"\**([0-9.]+) KiB\**", cells[-1])
            assert m, f"ceiling cell of {load!r} is not 'N KiB': {line}"
            return float(m.group(1))
    raise AssertionError(f"no {load!r} row in docs/performance.md \"Memory ceilings\"")


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError) as e:
            raise AssertionError(f"RLIMIT_NOFILE: {need} descriptors needed, hard limit {hard} "
                                 f"and it cannot be raised here ({e})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def rss(pid):
    return {k: status_kib(pid, k) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}


class FillOrigin:
    """Plain HTTP/1.1 origin on loopback: answers every request of a keep-alive connection
    with a 2-byte body."""

    def __init__(self):
        self.sock = socket.socket()
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

    @staticmethod
    def _serve(c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                _, buf = buf.split(b"\r\n\r\n", 1)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class HoldOrigin:
    """TCP origin (asyncio) that accepts and holds every connection, sends nothing, and closes
    its side when the peer's FIN arrives; counts both."""

    def __init__(self):
        self.accepted = 0
        self.eofs = 0

    async def start(self):
        self.srv = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
        self.port = self.srv.sockets[0].getsockname()[1]

    async def _handle(self, r, w):
        self.accepted += 1
        try:
            while await r.read(65536):
                pass
            self.eofs += 1
        except OSError:
            pass
        finally:
            w.close()

    async def close(self):
        self.srv.close()
        await self.srv.wait_closed()


class MemoryCeilingTests(unittest.TestCase):
    def setUp(self):
        raise_nofile(2 * TUNNELS + 1024)
        self.asan = asan_build()
        self.echo = EchoServer()
        self.fill = FillOrigin()

    def tearDown(self):
        self.echo.close()
        self.fill.close()

    def warm_up(self, p):
        """Touch the worker's fixed-size memory: stream through one tunnel (every provided
        buffer filled), then FILL_REQUESTS intercepted plain-HTTP requests with 12 KB heads on
        one connection (request_headers events through the producer ring, the ring file and
        the sink)."""
        s, head = connect_tunnel(p, "127.0.0.1", self.echo.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        got = [0]

        def drain():
            while got[0] < STREAM_BYTES:
                d = s.recv(1 << 20)
                if not d:
                    break
                got[0] += len(d)

        t = threading.Thread(target=drain)
        t.start()
        block = os.urandom(1 << 20)
        for _ in range(STREAM_BYTES >> 20):
            s.sendall(block)
        t.join(60)
        s.close()
        self.assertEqual(got[0], STREAM_BYTES)
        c = socket.create_connection(p.addr(), timeout=20)
        fill = "x" * 12000
        want = len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        for i in range(FILL_REQUESTS):
            c.sendall(f"GET http://fill.test:{self.fill.port}/fill/{i} HTTP/1.1\r\n"
                      f"Host: fill.test:{self.fill.port}\r\nX-Fill: {fill}\r\n\r\n".encode())
            n = 0
            while n < want:
                d = c.recv(want - n)
                self.assertTrue(d, f"EOF after {i} fill requests")
                n += len(d)
        c.close()
        time.sleep(0.5)  # the telemetry thread and the sink catch up

    def served(self, p):
        """A normal request through the proxy: an echo tunnel round trip."""
        s, head = connect_tunnel(p, "127.0.0.1", self.echo.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        msg = os.urandom(1000)
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(read_all(s), msg)
        s.close()

    def settled_fds(self, p, want, timeout=20.0):
        deadline = time.time() + timeout
        n = p.fd_count()
        while n > want and time.time() < deadline:
            time.sleep(0.1)
            n = p.fd_count()
        return n

    def sink_events(self, p):
        time.sleep(0.5)
        with open(p.sink_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def check_ceiling(self, load, n, before, after):
        ceiling = documented_ceiling_kib(load)
        per = (after["VmRSS"] - before["VmRSS"]) / n
        anon = (after["RssAnon"] - before["RssAnon"]) / n
        print(f"\n{load}: {n} connections, VmRSS {before['VmRSS']} -> {after['VmRSS']} KiB: "
              f"{per:.2f} KiB per connection (RssAnon {anon:.2f}); ceiling {ceiling:g} KiB "
              f"(docs/performance.md)"
              + ("; sanitizer build: the ceiling is asserted in Release builds only"
                 if self.asan else ""), flush=True)
        if not self.asan:
            self.assertLessEqual(per, ceiling,
                                 f"{load}: {per:.2f} KiB per connection is over the documented "
                                 f"ceiling of {ceiling:g} KiB ({before} -> {after})")
        return per

    def test_5000_idle_tunnels(self):
        asyncio.run(self.idle_tunnels())

    async def idle_tunnels(self):
        origin = HoldOrigin()
        await origin.start()
        with self.sinked_proxy() as p:
            pid = p.proc.pid
            fd0 = p.fd_count()
            self.warm_up(p)
            self.assertEqual(self.settled_fds(p, fd0), fd0, "descriptors after the warm-up")
            before = rss(pid)
            t0 = time.time()
            sem = asyncio.Semaphore(OPEN_AT_ONCE)
            req = (f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{origin.port}\r\n\r\n").encode()

            async def one():
                async with sem:
                    r, w = await asyncio.open_connection("127.0.0.1", p.port)
                    w.write(req)
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                    return r, w, head

            conns = await asyncio.gather(*(one() for _ in range(TUNNELS)))
            t_open = time.time() - t0
            bad = [h for _, _, h in conns if not h.startswith(b"HTTP/1.1 200")]
            self.assertEqual(bad[:3], [], f"{len(bad)} CONNECTs not answered 200")
            deadline = time.time() + 30
            while origin.accepted < TUNNELS and time.time() < deadline:
                await asyncio.sleep(0.05)
            self.assertEqual(origin.accepted, TUNNELS)
            await asyncio.sleep(1.0)  # idle
            self.assertEqual(p.fd_count(), fd0 + 2 * TUNNELS)
            after = rss(pid)
            self.check_ceiling("idle tunnel", TUNNELS, before, after)
            await asyncio.to_thread(self.served, p)  # served with the tunnels held
            t1 = time.time()
            for _, w, _ in conns:
                w.close()
            await asyncio.gather(*(w.wait_closed() for _, w, _ in conns),
                                 return_exceptions=True)
            deadline = time.time() + 60
            while origin.eofs < TUNNELS and time.time() < deadline:
                await asyncio.sleep(0.05)
            self.assertEqual(origin.eofs, TUNNELS, "upstreams that saw the client's FIN")
            fds = await asyncio.to_thread(self.settled_fds, p, fd0)
            self.assertEqual(fds, fd0, "descriptors after every tunnel closed")
            await asyncio.to_thread(self.served, p)
            print(f"tunnels opened in {t_open:.1f} s, closed in {time.time() - t1:.1f} s; "
                  f"proxy descriptors {fd0} -> {fd0 + 2 * TUNNELS} -> {fds}", flush=True)
            evs = self.sink_events(p)
        await origin.close()
        closed = [e for e in evs if e["type"] == "stream_closed"
                  and e["server_port"] == origin.port]
        self.assertEqual(len(closed), TUNNELS)
        self.assertEqual({e["reason_code"] for e in closed}, {"client_eof"})

    def test_2000_slowloris(self):
        asyncio.run(self.slowloris())

    async def slowloris(self):
        loop = asyncio.get_running_loop()
        with self.sinked_proxy() as p:
            pid = p.proc.pid
            fd0 = p.fd_count()
            self.warm_up(p)
            self.assertEqual(self.settled_fds(p, fd0), fd0, "descriptors after the warm-up")
            before = rss(pid)
            # A head that never completes: about 30 of its bytes arrive before the timeout.
            head = (f"CONNECT 127.0.0.1:{self.echo.port} HTTP/1.1\r\nX-Slow: " + "a" * 200
                    ).encode()
            sem = asyncio.Semaphore(OPEN_AT_ONCE)
            conns = []

            async def one():
                async with sem:
                    t0 = loop.time()  # before the connect: at or before the proxy's accept
                    r, w = await asyncio.open_connection("127.0.0.1", p.port)
                c = {"r": r, "w": w, "t0": t0, "sent": 1, "resp": b"", "t_resp": None,
                     "eof": False}
                w.write(head[:1])
                conns.append(c)
                while True:
                    d = await r.read(4096)
                    if not d:
                        break
                    if c["t_resp"] is None:
                        c["t_resp"] = loop.time()
                    c["resp"] += d
                c["eof"] = True
                w.close()

            async def trickle():
                while not conns or any(c["t_resp"] is None for c in conns):
                    await asyncio.sleep(1.0)
                    for c in conns:
                        if c["t_resp"] is None and c["sent"] < len(head):
                            c["w"].write(head[c["sent"]:c["sent"] + 1])
                            c["sent"] += 1

            readers = [asyncio.ensure_future(one()) for _ in range(SLOWLORIS)]
            trickler = asyncio.ensure_future(trickle())
            while len(conns) < SLOWLORIS:
                await asyncio.sleep(0.05)
            t_open = loop.time() - min(c["t0"] for c in conns)
            await asyncio.sleep(2.0)  # every head partly received, none complete
            if not self.asan:  # the figure compared with the ceiling is with every head held
                early = [c for c in conns if c["t_resp"] is not None]
                self.assertFalse(early, f"{len(early)} answers came before the load was "
                                 f"measured: {early[0]['resp'][:60] if early else ''}")
            self.assertEqual(p.fd_count(), fd0 + SLOWLORIS)
            after = rss(pid)
            self.check_ceiling("slowloris", SLOWLORIS, before, after)
            await asyncio.to_thread(self.served, p)  # served with the heads trickling
            await asyncio.wait_for(asyncio.gather(*readers), HEAD_MS / 1000 + 60)
            await asyncio.wait_for(trickler, 5)
            waits = sorted(c["t_resp"] - c["t0"] for c in conns)
            print(f"slowloris connections opened in {t_open:.1f} s; 408 after "
                  f"{waits[0]:.2f}-{waits[-1]:.2f} s (timeouts.request_header_ms {HEAD_MS}); "
                  f"bytes sent per connection {min(c['sent'] for c in conns)}-"
                  f"{max(c['sent'] for c in conns)}", flush=True)
            statuses = {c["resp"].split(b"\r\n", 1)[0] for c in conns}
            self.assertEqual(statuses, {b"HTTP/1.1 408 Request Timeout"})
            self.assertTrue(all(b"\r\nConnection: close\r\n" in c["resp"] for c in conns))
            self.assertTrue(all(c["eof"] for c in conns))
            # not before the timeout (one 8 ms tick of the proxy's timer wheel, core/timer.h)
            self.assertGreaterEqual(waits[0], HEAD_MS / 1000 - 0.01)
            fds = await asyncio.to_thread(self.settled_fds, p, fd0)
            self.assertEqual(fds, fd0, "descriptors after every slowloris connection closed")
            await asyncio.to_thread(self.served, p)
            evs = self.sink_events(p)
        failed = [e for e in evs if e["type"] == "connect_parse_failed"]
        self.assertEqual(len(failed), SLOWLORIS)
        self.assertEqual({e["reason_code"] for e in failed}, {"request_header_timeout"})
        ids = {e["flow_id"] for e in failed}
        closed = [e for e in evs if e["type"] == "stream_closed" and e["flow_id"] in ids]
        self.assertEqual(len(closed), SLOWLORIS)
        self.assertEqual({e["reason_code"] for e in closed}, {"idle_timeout"})
        self.assertGreaterEqual(min(e["duration_ns"] for e in closed), HEAD_MS * 1000000)

    def test_500_idle_h1(self):
        asyncio.run(self.idle_h1())

    async def h1_origin(self):
        """TLS HTTP/1.1 origin on loopback: GET /gen/I/N answered with body_for(I, N),
        keep-alive. Returns (server, port, CA file)."""
        d = tempfile.mkdtemp(prefix="soth-mem-h1-")
        self.addCleanup(shutil.rmtree, d, True)
        ca, cert, key = make_origin_pki(d)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])

        async def handle(r, w):
            try:
                while True:
                    head = await r.readuntil(b"\r\n\r\n")
                    m = re.match(rb"GET /gen/(\d+)/(\d+) HTTP/1\.1\r\n", head)
                    body = body_for(int(m.group(1)), int(m.group(2))) if m else b""
                    w.write(b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n\r\n"
                            % (200 if m else 404, len(body)) + body)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=4096)
        return srv, srv.sockets[0].getsockname()[1], ca

    async def h1_open(self, p, port, tls, i):
        """CONNECT, TLS with ALPN http/1.1, GET /gen/I/H2_BODY answered byte-exact."""
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(f"CONNECT origin.test:{port} HTTP/1.1\r\n"
                f"Host: origin.test:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        await asyncio.wait_for(w.start_tls(tls, server_hostname="origin.test"), 30)
        self.assertEqual(w.get_extra_info("ssl_object").selected_alpn_protocol(), "http/1.1")
        w.write(f"GET /gen/{i}/{H2_BODY} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), f"connection {i}: {head!r}")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        self.assertIsNotNone(m, head)
        body = await asyncio.wait_for(r.readexactly(int(m.group(1))), 30)
        self.assertEqual(body, body_for(i, H2_BODY), f"connection {i}")
        return r, w

    async def idle_h1(self):
        srv, port, ca = await self.h1_origin()
        try:
            with self.sinked_proxy(upstream_ca=ca) as p:
                pid = p.proc.pid
                fd0 = p.fd_count()
                self.warm_up(p)
                tls = ssl.create_default_context(
                    cafile=os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"))
                tls.set_alpn_protocols(["http/1.1"])
                sem = asyncio.Semaphore(OPEN_AT_ONCE)

                async def one(i):
                    async with sem:
                        return await self.h1_open(p, port, tls, i)

                # Warm: the worker's lent buffers and TLS state, used once and closed.
                warm = await asyncio.gather(*(one(i) for i in range(H2_WARM)))
                for _, w in warm:
                    w.close()
                await asyncio.gather(*(w.wait_closed() for _, w in warm),
                                     return_exceptions=True)
                fds = await asyncio.to_thread(self.settled_fds, p, fd0)
                self.assertEqual(fds, fd0, "descriptors after the warm-up")
                before = rss(pid)
                conns = await asyncio.gather(*(one(H2_WARM + i) for i in range(H1_IDLE)))
                await asyncio.sleep(1.0)  # idle
                self.assertEqual(p.fd_count(), fd0 + 2 * H1_IDLE)
                after = rss(pid)
                self.check_ceiling("idle HTTP/1.1 intercepted", H1_IDLE, before, after)
                await asyncio.to_thread(self.served, p)  # served with the connections held
                for _, w in conns:
                    w.close()
                await asyncio.gather(*(w.wait_closed() for _, w in conns),
                                     return_exceptions=True)
                fds = await asyncio.to_thread(self.settled_fds, p, fd0)
                self.assertEqual(fds, fd0, "descriptors after every connection closed")
                evs = self.sink_events(p)
        finally:
            srv.close()
        closed = [e for e in evs if e["type"] == "stream_closed" and e.get("server_port") == port]
        self.assertEqual(len(closed), H2_WARM + H1_IDLE)
        self.assertEqual({e["reason_code"] for e in closed}, {"client_eof"})
        ids = {e["flow_id"] for e in closed}
        done = [e for e in evs if e["type"] == "exchange_completed" and e["flow_id"] in ids]
        self.assertEqual(len(done), H2_WARM + H1_IDLE)
        self.assertEqual({e["outcome"] for e in done}, {"complete"})

    def test_500_idle_h2(self):
        asyncio.run(self.idle_h2())

    async def h2_open(self, p, origin, tls, i):
        """CONNECT, TLS with ALPN h2, GET /gen/I/H2_BODY answered byte-exact; returns (r, w)."""
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(f"CONNECT origin.test:{origin.port} HTTP/1.1\r\n"
                f"Host: origin.test:{origin.port}\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        await asyncio.wait_for(w.start_tls(tls, server_hostname="origin.test"), 30)
        self.assertEqual(w.get_extra_info("ssl_object").selected_alpn_protocol(), "h2")
        w.write(h2_get(f"/gen/{i}/{H2_BODY}", f"origin.test:{origin.port}"))
        status, body = await h2_response(r, w)
        self.assertEqual(status, 0x88, f"connection {i}: not :status 200")
        self.assertEqual(body, body_for(i, H2_BODY), f"connection {i}")
        return r, w

    async def idle_h2(self):
        origin = H2Origin()
        self.addCleanup(origin.close)
        with self.sinked_proxy(upstream_ca=origin.ca) as p:
            pid = p.proc.pid
            fd0 = p.fd_count()
            self.warm_up(p)
            tls = ssl.create_default_context(cafile=os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"))
            tls.set_alpn_protocols(["h2"])
            sem = asyncio.Semaphore(OPEN_AT_ONCE)

            async def one(i):
                async with sem:
                    return await self.h2_open(p, origin, tls, i)

            # Warm: the worker's lent HTTP/2 buffers and its TLS state, used once and closed.
            warm = await asyncio.gather(*(one(i) for i in range(H2_WARM)))
            for _, w in warm:
                w.close()
            await asyncio.gather(*(w.wait_closed() for _, w in warm), return_exceptions=True)
            fds = await asyncio.to_thread(self.settled_fds, p, fd0)
            self.assertEqual(fds, fd0, "descriptors after the warm-up")
            before = rss(pid)
            t0 = time.time()
            conns = await asyncio.gather(*(one(H2_WARM + i) for i in range(H2_IDLE)))
            t_open = time.time() - t0
            # idle past the 1 s after which an idle relay gives back its nghttp2 sessions' frame
            # buffers and stream maps (docs/http2.md, "Memory")
            await asyncio.sleep(2.5)
            self.assertEqual(p.fd_count(), fd0 + 2 * H2_IDLE)
            after = rss(pid)
            self.check_ceiling("idle HTTP/2 intercepted", H2_IDLE, before, after)
            await asyncio.to_thread(self.served, p)  # served with the connections held
            for _, w in conns:
                w.close()
            await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
            fds = await asyncio.to_thread(self.settled_fds, p, fd0)
            self.assertEqual(fds, fd0, "descriptors after every connection closed")
            print(f"h2 connections opened in {t_open:.1f} s; proxy descriptors {fd0} -> "
                  f"{fd0 + 2 * H2_IDLE} -> {fds}", flush=True)
            evs = self.sink_events(p)
        closed = [e for e in evs if e["type"] == "stream_closed"
                  and e.get("server_port") == origin.port]
        self.assertEqual(len(closed), H2_WARM + H2_IDLE)
        self.assertEqual({e["reason_code"] for e in closed}, {"client_eof"})
        ids = {e["flow_id"] for e in closed}
        done = [e for e in evs if e["type"] == "exchange_completed" and e["flow_id"] in ids]
        self.assertEqual(len(done), H2_WARM + H2_IDLE)
        self.assertEqual({e["outcome"] for e in done}, {"complete"})

    def sinked_proxy(self, upstream_ca=None):
        """The proxy of these tests, with a jsonl sink beside its ring."""
        d = tempfile.mkdtemp(prefix="soth-mem-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "events.jsonl")
        cfg = {"policy": {"default": "tunnel",
                          "rules": [{"host": "fill.test", "action": "intercept"},
                                    {"host": "origin.test", "action": "intercept"}]},
               "resolve": {"fill.test": "127.0.0.1", "origin.test": "127.0.0.1"},
               "timeouts": {"request_header_ms": HEAD_MS},
               "events": {"ring_size_mb": 1, "sinks": [{"type": "jsonl", "path": path}]}}
        if upstream_ca is not None:
            cfg["tls"] = {"upstream_ca_file": upstream_ca}
        p = Proxy(config=cfg)
        p.sink_path = path
        return p


if __name__ == "__main__":
    unittest.main()
