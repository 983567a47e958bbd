"""Core engine through the real binary: CONNECT tunnels, block, parse failures, plain HTTP,
reverse mode, upstream failures, drain on SIGTERM."""
import concurrent.futures
import http.server
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from harness import (EchoServer, Nginx, Proxy, by_flow, connect_tunnel, free_port, read_all,
                     read_head)


class HTTPOrigin:
    """A tiny HTTP/1.1 origin (python http.server) answering GET with a known body."""

    def __init__(self, one_write=False):
        body = b"hello from origin\n" * 100

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # one_write: the response leaves in one write (buffered, flushed after the
            # handler), not the head and the body apart (whose second write Nagle holds for
            # the ACK of the first)
            wbufsize = -1 if one_write else 0

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Path", self.path)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.body = body
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class TunnelTests(unittest.TestCase):
    def setUp(self):
        self.echo = EchoServer()

    def tearDown(self):
        self.echo.close()

    def test_tunnel_roundtrip_and_events(self):
        with Proxy() as p:
            s, head = connect_tunnel(p, "127.0.0.1", self.echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            payload = os.urandom(300000)
            t = threading.Thread(target=s.sendall, args=(payload,))
            t.start()
            got = b""
            while len(got) < len(payload):
                d = s.recv(65536)
                self.assertTrue(d, "tunnel closed early")
                got += d
            t.join()
            self.assertEqual(got, payload)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(read_all(s), b"")
            s.close()
            evs = p.checked_events(settle=0.5)
        flows = by_flow(evs)
        self.assertEqual(len(flows), 1)
        (fl,) = flows.values()
        self.assertEqual([e["type"] for e in fl],
                         ["connect_received", "connect_decision", "stream_closed"])
        self.assertEqual(fl[0]["method"], "CONNECT")
        self.assertEqual(fl[0]["target"], f"127.0.0.1:{self.echo.port}")
        self.assertEqual(fl[0]["server_port"], self.echo.port)
        self.assertEqual(fl[2]["reason_code"], "client_eof")
        self.assertEqual(fl[2]["bytes_client_to_server"], len(payload) + len(
            f"CONNECT 127.0.0.1:{self.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{self.echo.port}\r\n\r\n"))
        self.assertEqual(fl[2]["bytes_server_to_client"], len(payload))

    def test_500_parallel_short_tunnels(self):
        with Proxy(workers=2) as p:
            base_fds = p.fd_count()

            def one(i):
                s, head = connect_tunnel(p, "127.0.0.1", self.echo.port)
                assert head.startswith(b"HTTP/1.1 200"), head
                msg = os.urandom(1000 + i)
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                got = read_all(s)
                s.close()
                return got == msg

            with concurrent.futures.ThreadPoolExecutor(max_workers=100) as ex:
                results = list(ex.map(one, range(500)))
            self.assertEqual(results.count(True), 500)
            deadline = time.time() + 10
            while p.fd_count() > base_fds and time.time() < deadline:
                time.sleep(0.05)
            self.assertLessEqual(p.fd_count(), base_fds, "leaked file descriptors")
            evs = p.checked_events(settle=0.5)
        closed = [e for e in evs if e["type"] == "stream_closed"]
        self.assertEqual(len(closed), 500)
        self.assertTrue(all(e["reason_code"] == "client_eof" for e in closed))
        self.assertEqual(len({e["flow_id"] for e in closed}), 500)

    def test_upstream_closes_first_is_relay_eof(self):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def serve():
            c, _ = srv.accept()
            c.sendall(b"bye")
            c.shutdown(socket.SHUT_WR)
            c.recv(10)
            c.close()

        t = threading.Thread(target=serve)
        t.start()
        with Proxy() as p:
            s, head = connect_tunnel(p, "127.0.0.1", port)
            self.assertEqual(read_all(s), b"bye")
            s.close()
            t.join()
            evs = p.checked_events(settle=0.5)
        srv.close()
        self.assertEqual(evs[-1]["type"], "stream_closed")
        self.assertEqual(evs[-1]["reason_code"], "relay_eof")

    def test_upstream_refused_gives_502(self):
        port = free_port()
        with Proxy() as p:
            s, head = connect_tunnel(p, "127.0.0.1", port)
            self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway"), head)
            s.close()
            evs = p.checked_events()
        self.assertEqual(evs[-1]["reason_code"], "upstream_connect_failed")

    def test_unresolvable_name_gives_502(self):
        with Proxy() as p:
            s, head = connect_tunnel(p, "no-such-host.invalid", 443)
            self.assertTrue(head.startswith(b"HTTP/1.1 502"), head)
            s.close()
            evs = p.checked_events()
        self.assertEqual(evs[-1]["reason_code"], "upstream_connect_failed")

    def test_resolve_override(self):
        cfg = {"resolve": {"origin.test": "127.0.0.1"}, "policy": {"default": "tunnel"}}
        with Proxy(config=cfg) as p:
            s, head = connect_tunnel(p, "origin.test", self.echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.sendall(b"ping")
            self.assertEqual(s.recv(4), b"ping")
            s.close()
            evs = p.checked_events()
        self.assertEqual(evs[0]["server_host"], "origin.test")
        dec = [e for e in evs if e["type"] == "connect_decision"][0]
        self.assertEqual(dec["decision"], "tunnel")
        self.assertEqual(dec["reason"], "default")


class PolicyTests(unittest.TestCase):
    def test_block_opens_no_upstream_socket(self):
        echo = EchoServer()
        cfg = {"resolve": {"ads.example": "127.0.0.1"},
               "policy": {"default": "tunnel",
                          "rules": [{"host": "ads.example", "action": "block"}]}}
        with Proxy(config=cfg) as p:
            s, head = connect_tunnel(p, "ads.example", echo.port)
            resp = head + read_all(s)
            self.assertTrue(resp.startswith(b"HTTP/1.1 403 Forbidden"), resp)
            self.assertIn(b'rule "ads.example"', resp.split(b"\r\n\r\n", 1)[1])
            s.close()
            evs = p.checked_events()
        time.sleep(0.1)
        self.assertEqual(echo.accepts, 0)
        echo.close()
        dec = [e for e in evs if e["type"] == "connect_decision"][0]
        self.assertEqual(dec["decision"], "block")
        self.assertEqual(dec["reason"], "policy_rule")
        self.assertEqual(dec["rule"], "0")  # the rule's index: it has no id
        self.assertEqual(evs[-1]["reason_code"], "blocked")

    def test_ignore_hosts_tunnels(self):
        echo = EchoServer()
        cfg = {"ignore_hosts": [r"^127\.0\.0\.1:"], "policy": {"default": "block"}}
        with Proxy(config=cfg) as p:
            s, head = connect_tunnel(p, "127.0.0.1", echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.sendall(b"x")
            self.assertEqual(s.recv(1), b"x")
            s.close()
            evs = p.checked_events()
        echo.close()
        dec = [e for e in evs if e["type"] == "connect_decision"][0]
        self.assertEqual((dec["decision"], dec["reason"]), ("tunnel", "ignore_hosts"))


class BadInputTests(unittest.TestCase):
    BAD = [
        b"CONNECT example.com HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:65536 HTTP/1.1\r\n\r\n",
        b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
        b"CONNECT exa\x01mple.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\n\n",
        b"GARBAGE\r\n\r\n",
    ]

    def test_malformed_connect_gets_400_and_next_client_is_served(self):
        echo = EchoServer()
        with Proxy() as p:
            for bad in self.BAD:
                s = socket.create_connection(p.addr(), timeout=5)
                s.sendall(bad)
                resp = read_all(s)
                s.close()
                self.assertTrue(resp.startswith(b"HTTP/1.1 400 Bad Request"), (bad, resp))
            s, head = connect_tunnel(p, "127.0.0.1", echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"))
            s.close()
            evs = p.checked_events()
        echo.close()
        fails = [e for e in evs if e["type"] == "connect_parse_failed"]
        self.assertEqual(len(fails), len(self.BAD))
        closed = [e for e in evs if e["type"] == "stream_closed"]
        self.assertEqual(sum(1 for e in closed if e["reason_code"] == "parse_failed"),
                         len(self.BAD))
        codes = [e["reason_code"] for e in fails]
        self.assertEqual(codes[0], "missing_port")
        self.assertEqual(codes[1], "invalid_port")
        self.assertEqual(codes[2], "invalid_port")

    def test_oversized_head_gets_431(self):
        with Proxy() as p:
            s = socket.create_connection(p.addr(), timeout=5)
            s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\n")
            try:
                for _ in range(100):
                    s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            except OSError:
                pass
            resp = read_head(s)
            s.close()
            self.assertTrue(resp.startswith(b"HTTP/1.1 431"), resp)
            p.checked_events()

    def test_split_head_across_reads(self):
        echo = EchoServer()
        with Proxy() as p:
            s = socket.create_connection(p.addr(), timeout=5)
            line = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            for i in range(len(line)):
                s.sendall(line[i:i + 1])
                time.sleep(0.001)
            head = read_head(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.sendall(b"abc")
            self.assertEqual(s.recv(3), b"abc")
            s.close()
            p.checked_events()
        echo.close()

    def test_slow_head_times_out(self):
        cfg = {"timeouts": {"request_header_ms": 300}}
        with Proxy(config=cfg) as p:
            s = socket.create_connection(p.addr(), timeout=5)
            s.sendall(b"CONNECT exa")
            t0 = time.time()
            resp = read_all(s)
            self.assertLess(time.time() - t0, 3)
            self.assertTrue(resp.startswith(b"HTTP/1.1 408"), resp)
            s.close()
            evs = p.checked_events()
        self.assertEqual(evs[-1]["reason_code"], "idle_timeout")


class PlainHTTPTests(unittest.TestCase):
    def test_absolute_form_with_curl(self):
        o = HTTPOrigin()
        with Proxy() as p:
            out = subprocess.run(["curl", "-sS", "-x", f"http://127.0.0.1:{p.port}",
                                  f"http://127.0.0.1:{o.port}/some/path?q=1"],
                                 capture_output=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, o.body)
            evs = p.checked_events()
        o.close()
        rec = [e for e in evs if e["type"] == "connect_received"][0]
        self.assertEqual(rec["method"], "GET")
        self.assertEqual(rec["target"], f"http://127.0.0.1:{o.port}/some/path?q=1")

    def test_curl_proxytunnel(self):
        # curl -p: plain HTTP through a CONNECT tunnel.
        o = HTTPOrigin()
        with Proxy(config={"policy": {"default": "tunnel"}}) as p:
            out = subprocess.run(["curl", "-sS", "-p", "-x", f"http://127.0.0.1:{p.port}",
                                  f"http://127.0.0.1:{o.port}/x"],
                                 capture_output=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, o.body)
            p.checked_events()
        o.close()


class HeadRecorder:
    """An origin that records the request heads it receives, as bytes, and answers each with
    200 "ok" (keep-alive)."""

    def __init__(self):
        self.heads = []
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()


class OriginFormHostTests(unittest.TestCase):
    """A request in absolute-form whose Host names another authority: the upstream gets
    origin-form with Host from the target (RFC 9112 3.2.2) and no Proxy-* fields, on both plain
    paths: intercepted (parsed by the HTTP layer) and tunnelled (policy tunnel)."""

    def check(self, config, parsed):
        o = HeadRecorder()
        try:
            with Proxy(config=config) as p:
                s = socket.create_connection(p.addr(), timeout=10)
                s.sendall(f"GET http://127.0.0.1:{o.port}/p?q=1 HTTP/1.1\r\n"
                          "Host: other.example:8080\r\nProxy-Connection: keep-alive\r\n"
                          "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n"
                          "X-Keep: 1\r\n\r\n".encode())
                head = read_head(s)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                s.close()
                evs = p.checked_events()
        finally:
            o.close()
        self.assertEqual(len(o.heads), 1, o.heads)
        lines = o.heads[0].split(b"\r\n")
        self.assertEqual(lines[0], b"GET /p?q=1 HTTP/1.1")
        fields = [tuple(x.split(b": ", 1)) for x in lines[1:]]
        hosts = [v for k, v in fields if k.lower() == b"host"]
        self.assertEqual(hosts, [f"127.0.0.1:{o.port}".encode()])
        self.assertFalse([k for k, v in fields if k.lower().startswith(b"proxy-")], fields)
        self.assertIn((b"X-Keep", b"1"), fields)
        req = [e for e in evs if e["type"] == "request_headers"]
        if parsed:
            # the event shows what was sent upstream
            self.assertEqual(len(req), 1)
            hdrs = {h[0].lower(): h[1] for h in req[0]["headers"]}
            self.assertEqual(hdrs.get("host"), f"127.0.0.1:{o.port}")
            self.assertNotIn("proxy-authorization", hdrs)

    def test_intercepted_plain_path(self):
        self.check({"policy": {"default": "intercept"}}, parsed=True)

    def test_tunnelled_plain_path(self):
        self.check({"policy": {"default": "tunnel"}}, parsed=False)


class ReverseTests(unittest.TestCase):
    def test_reverse_http_with_curl_keepalive(self):
        o = HTTPOrigin()
        with Proxy(mode=f"reverse:http://127.0.0.1:{o.port}") as p:
            url = f"http://127.0.0.1:{p.port}/a"
            out = subprocess.run(["curl", "-sS", url, url], capture_output=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, o.body * 2)
            evs = p.checked_events()
        o.close()
        self.assertEqual(evs[0]["type"], "connect_received")
        self.assertEqual(evs[0]["server_port"], o.port)

    def test_reverse_upstream_down_gives_502(self):
        port = free_port()
        with Proxy(mode=f"reverse:http://127.0.0.1:{port}") as p:
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  f"http://127.0.0.1:{p.port}/"], capture_output=True,
                                 timeout=20)
            self.assertEqual(out.stdout, b"502")
            p.checked_events()


def worker_thread(p):
    """(voluntary context switches, CPU seconds) of the proxy's worker thread soth-worker-0."""
    task = f"/proc/{p.proc.pid}/task"
    for tid in os.listdir(task):
        with open(f"{task}/{tid}/status") as f:
            st = f.read()
        if re.search(r"^Name:\s+soth-worker-0$", st, re.M):
            vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", st, re.M).group(1))
            with open(f"{task}/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return vol, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise AssertionError("no soth-worker-0 thread")


class BusyPollTests(unittest.TestCase):
    """busy_poll_us (docs/config.md; docs/performance.md, "Waking the worker"): a loaded worker
    watches its rings before it sleeps; a quiet one sleeps at once."""

    def get_many(self, port, n, gap_s=0.0):
        """n GETs on one keep-alive connection, each answered whole before the next."""
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        f = s.makefile("rb")
        try:
            for i in range(n):
                s.sendall(f"GET /r{i} HTTP/1.1\r\nHost: o\r\n\r\n".encode())
                status = f.readline()
                self.assertEqual(status, b"HTTP/1.1 200 OK\r\n")
                length = None
                for line in iter(f.readline, b"\r\n"):
                    k, _, v = line.decode().partition(":")
                    if k.lower() == "content-length":
                        length = int(v)
                    if k.lower() == "x-path":
                        self.assertEqual(v.strip(), f"/r{i}")
                self.assertEqual(f.read(length), self.origin.body)
                if gap_s:
                    time.sleep(gap_s)
        finally:
            f.close()
            s.close()

    def setUp(self):
        self.origin = HTTPOrigin(one_write=True)

    def tearDown(self):
        self.origin.close()

    def switches_for(self, poll_us, n):
        """The worker's sleeps over n requests, and its metrics after them."""
        mport = free_port()
        with Proxy(mode=f"reverse:http://127.0.0.1:{self.origin.port}",
                   config={"busy_poll_us": poll_us,
                           "metrics": {"listen": f"127.0.0.1:{mport}"}}) as p:
            self.get_many(p.port, 20)  # the waits' average settles
            v0, _ = worker_thread(p)
            self.get_many(p.port, n)
            v1, _ = worker_thread(p)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                m = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines()
                         if line and not line.startswith("#"))
        return v1 - v0, m

    def test_loaded_worker_polls_instead_of_sleeping(self):
        n = 300
        off, m_off = self.switches_for(0, n)
        on, m_on = self.switches_for(5000, n)
        # without polling the worker sleeps at least once per request (waiting for the client,
        # then for the origin); polling 5 ms, the waits of this closed loop all end in the watch
        self.assertGreaterEqual(off, n)
        self.assertLess(on, off / 4, f"sleeps per {n} requests: {on} polling, {off} not")
        # and the metrics say so (docs/metrics.md)
        polled = 'soth_worker_waits_total{result="polled"}'
        blocked = 'soth_worker_waits_total{result="blocked"}'
        self.assertEqual(int(m_off[polled]), 0)
        self.assertGreaterEqual(int(m_off[blocked]), n)
        self.assertEqual(float(m_off["soth_busy_poll_seconds_total"]), 0)
        self.assertGreaterEqual(int(m_on[polled]), n)
        self.assertGreaterEqual(int(m_on[polled]), 3 * int(m_on[blocked]))
        self.assertGreater(float(m_on["soth_busy_poll_seconds_total"]), 0)
        self.assertLess(float(m_on["soth_busy_poll_seconds_total"]), 60)

    def test_quiet_worker_does_not_poll(self):
        with Proxy(mode=f"reverse:http://127.0.0.1:{self.origin.port}",
                   config={"busy_poll_us": 10000}) as p:
            _, c0 = worker_thread(p)
            # a request every 100 ms: a worker that watched 10 ms before each of its sleeps
            # would spend 20 x 3 x 10 ms = 0.6 s of CPU on it
            self.get_many(p.port, 20, gap_s=0.1)
            _, c1 = worker_thread(p)
        self.assertLess(c1 - c0, 0.15, "CPU seconds of the worker over 20 requests in 2 s")


def kernel_has_min_wait():
    """Linux 6.12 or later: io_uring's min_wait, which wake_batch_us needs (docs/config.md)."""
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (6, 12)


def scrape(mport):
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
        return dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines()
                    if line and not line.startswith("#"))


class WakeBatchTests(unittest.TestCase):
    """wake_batch_us (docs/config.md; docs/performance.md, "Batching the wake-ups"), at its
    default (50) against 0: a loaded worker lets completions gather before it wakes; a lone
    client is not held up. On a kernel without min_wait (before Linux 6.12) the option is inert,
    and that is what is checked."""

    WRK = shutil.which("wrk") or "/usr/bin/wrk"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="soth-wb-")
        cls.nginx = Nginx(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def wrk(self, port, conns, secs):
        """Requests wrk completed; every one answered 200 with nginx's 16 bytes."""
        out = subprocess.run([self.WRK, "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s",
                              f"http://127.0.0.1:{port}/s"],
                             capture_output=True, timeout=secs + 30, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("Non-2xx", out.stdout)
        self.assertNotIn("Socket errors", out.stdout)
        m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", out.stdout)
        self.assertIsNotNone(m, out.stdout)
        return int(m.group(1))

    def load(self, batch_us, conns, secs=2):
        """(requests, the worker's sleeps, the waits by result) under wrk -c conns; batch_us
        None leaves wake_batch_us at its default."""
        mport = free_port()
        config = {"metrics": {"listen": f"127.0.0.1:{mport}"}}
        if batch_us is not None:
            config["wake_batch_us"] = batch_us
        with Proxy(mode=f"reverse:http://127.0.0.1:{self.nginx.port}", config=config) as p:
            self.wrk(p.port, conns, 1)  # the waits' averages settle
            m0 = scrape(mport)
            v0, _ = worker_thread(p)
            n = self.wrk(p.port, conns, secs)
            v1, _ = worker_thread(p)
            m1 = scrape(mport)
        waits = {r: int(m1[f'soth_worker_waits_total{{result="{r}"}}']) -
                 int(m0[f'soth_worker_waits_total{{result="{r}"}}'])
                 for r in ("batched", "blocked", "polled")}
        return n, v1 - v0, waits

    def test_loaded_worker_batches_its_wake_ups(self):
        n_off, sleeps_off, w_off = self.load(0, 50)
        n_on, sleeps_on, w_on = self.load(None, 50)
        self.assertEqual(w_off["batched"], 0)
        self.assertGreater(w_off["blocked"], 0)
        if not kernel_has_min_wait():
            self.assertEqual(w_on["batched"], 0, f"{platform.release()}: no min_wait here")
            return
        per_off, per_on = sleeps_off / n_off, sleeps_on / n_on
        print(f"\nworker sleeps per request: {per_on:.3f} batching, {per_off:.3f} not "
              f"({n_on} and {n_off} requests); waits batching {w_on}")
        self.assertGreater(w_on["batched"], 0, w_on)
        if per_off < 0.2:
            # a worker slower than its clients (a sanitizer's build) hardly sleeps anyway:
            # nothing for batching to take away, and no share of it to hold it to
            return
        # a worker that sleeps for every few requests sleeps less per request (batched waits
        # collect several completions per wake-up; `blocked` counts waits entered, many of
        # which find a send's completion at once, not sleeps)
        self.assertLess(per_on, per_off * 0.8)

    def test_few_clients_are_not_held_up(self):
        # one connection, then four, each sending its next request as the last answer comes:
        # a batched wait would hold every hop up, so the worker does not batch (each flow's
        # receives come well under ten windows apart)
        for conns in (1, 4):
            n, _, w = self.load(None, conns)
            total = sum(w.values())
            self.assertGreater(n, 500)
            self.assertLessEqual(w["batched"], total / 100, f"{conns} connections: {w}")


class BackpressureTests(unittest.TestCase):
    def test_slow_client_bounds_proxy_memory_and_loses_nothing(self):
        total = 64 << 20
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        payload = os.urandom(1 << 20)

        def serve():
            c, _ = srv.accept()
            for _ in range(total // len(payload)):
                c.sendall(payload)
            c.close()

        t = threading.Thread(target=serve)
        t.start()
        def rss_kb(pid):
            with open(f"/proc/{pid}/status") as f:
                return int([x for x in f if x.startswith("VmRSS")][0].split()[1])

        with Proxy(config={"policy": {"default": "tunnel"}}) as p:
            base_kb = rss_kb(p.proc.pid)  # includes the mapped event ring file
            s = socket.create_connection(p.addr(), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            head = read_head(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            time.sleep(1.5)  # the client reads nothing: the proxy must stop reading upstream
            grown_kb = rss_kb(p.proc.pid) - base_kb
            got = 0
            h = b""
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                # Compare as we go: every MiB is the same random block.
                h += d
                while len(h) >= len(payload):
                    self.assertEqual(h[:len(payload)], payload)
                    h = h[len(payload):]
                got += len(d)
            s.close()
            t.join()
            p.checked_events()
        srv.close()
        self.assertEqual(got, total)
        # The proxy held back instead of buffering the 64 MiB (its buffer pool is 32 MiB).
        self.assertLess(grown_kb, 40 * 1024, f"proxy RSS grew {grown_kb} KiB while stalled")


class ReloadTests(unittest.TestCase):
    def test_sighup_reloads_policy_without_dropping_connections(self):
        echo = EchoServer()
        p = Proxy(config={"policy": {"default": "tunnel"}})
        try:
            old, head = connect_tunnel(p, "127.0.0.1", echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"))
            with open(os.path.join(p.tmp, "config.json"), "w") as f:
                f.write('{"policy": {"default": "block"}}')
            p.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            new, head = connect_tunnel(p, "127.0.0.1", echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)
            new.close()
            old.sendall(b"still")
            self.assertEqual(old.recv(5), b"still")
            old.close()
        finally:
            p.__exit__(None, None, None)
            echo.close()


class LifecycleTests(unittest.TestCase):
    def test_sigterm_drains_inflight_tunnel(self):
        echo = EchoServer()
        p = Proxy(config={"timeouts": {"drain_ms": 3000}})
        try:
            s, head = connect_tunnel(p, "127.0.0.1", echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"))
            p.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            # The in-flight tunnel still works during the drain...
            s.sendall(b"still here")
            self.assertEqual(s.recv(10), b"still here")
            # ...while new clients are refused.
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(p.addr(), timeout=2)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(read_all(s), b"")
            s.close()
            rc = p.proc.wait(10)
            self.assertEqual(rc, 0, p.stderr())
            evs = p.checked_events(settle=0)
            self.assertEqual(evs[-1]["type"], "stream_closed")
        finally:
            p.__exit__(None, None, None)
            echo.close()

    def test_sigterm_closes_idle_tunnel_after_drain(self):
        echo = EchoServer()
        p = Proxy(config={"timeouts": {"drain_ms": 300}})
        try:
            s, head = connect_tunnel(p, "127.0.0.1", echo.port)
            t0 = time.time()
            p.proc.send_signal(signal.SIGTERM)
            rc = p.proc.wait(10)
            self.assertEqual(rc, 0)
            self.assertLess(time.time() - t0, 5)
            self.assertEqual(read_all(s), b"")
            s.close()
            evs = p.checked_events(settle=0)
            self.assertEqual(evs[-1]["reason_code"], "shutdown")
        finally:
            p.__exit__(None, None, None)
            echo.close()

    def test_idle_timeout(self):
        echo = EchoServer()
        with Proxy(config={"timeouts": {"idle_ms": 300}}) as p:
            s, head = connect_tunnel(p, "127.0.0.1", echo.port)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"))
            t0 = time.time()
            self.assertEqual(read_all(s), b"")
            self.assertLess(time.time() - t0, 3)
            s.close()
            evs = p.checked_events()
        echo.close()
        self.assertEqual(evs[-1]["reason_code"], "idle_timeout")


if __name__ == "__main__":
    unittest.main()
