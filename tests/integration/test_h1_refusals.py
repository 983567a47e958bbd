"""Requests the proxy refuses inside an HTTP/1.1 connection, and one request-line strictness
for every path (docs/http1.md "Requests the proxy refuses" and "One strictness for every path";
docs/answers.md):

- regular-mode plain HTTP: a request for another authority than the connection's upstream
  gets 421 once the exchanges before it are answered (keep-alive and pipelined), never reaches
  an origin, and leaves request_headers, response_headers 421, exchange_completed `reset`;
- a CONNECT inside an intercepted connection, to an origin that would accept it, gets 501 and
  never reaches the origin;
- the same request-line shapes give the same status on the plain first request (the proxy
  head parser), a later plain request and an intercepted request (the exchange engine).
"""
import os
import subprocess
import unittest

import test_http1 as h1
from eventcheck import by_stream
from harness import by_flow

BLOB = h1.BLOB


class ConnectOrigin(h1.Origin):
    """The test_http1 origin, which also accepts CONNECT (200, then echoes bytes): what a
    nested CONNECT would open if the proxy forwarded it."""

    def _one(self, c):
        head = c.read_until(b"\r\n\r\n")
        if head.startswith(b"CONNECT "):
            with self.lock:
                self.log.append({"method": "CONNECT", "target": head.split(b" ")[1].decode()})
            c.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            while c.fill():
                c.sendall(c.buf)
                c.buf = b""
            return False
        c.buf = head + c.buf
        return super()._one(c)


class RefusalBase(h1.H1Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tls.close()
        cls.tls = ConnectOrigin(tls_dir=cls.dir)

    def stream_types(self, streams, sid):
        return [e["type"] for e in streams[sid]]

    def flow_of(self, evs):
        flows = [fl for fl in by_flow(evs).values() if by_stream(fl)]
        self.assertEqual(len(flows), 1, evs)
        return flows[0], by_stream(flows[0])

    def assert_refused(self, evs, sid, status, method, authority):
        fl, streams = self.flow_of(evs)
        self.assertEqual(self.stream_types(streams, sid),
                         ["request_headers", "response_headers", "exchange_completed"])
        rq, rs, done = streams[sid]
        self.assertEqual((rq["method"], rq["authority"]), (method, authority))
        self.assertEqual(rs["status"], status)
        self.assertEqual((done["outcome"], done["request_bytes"], done["response_bytes"]),
                         ("reset", 0, 0))
        # the exchanges before it are over before the answer is reported
        order = [(e["type"], e.get("stream_id")) for e in fl]
        i_answer = order.index(("response_headers", sid))
        for other in streams:
            if other < sid:
                self.assertLess(order.index(("exchange_completed", other)), i_answer, order)
        self.assertEqual(fl[-1]["type"], "stream_closed")
        self.assertEqual(fl[-1]["reason_code"], "parse_failed")
        return streams


class SecondAuthorityTests(RefusalBase):
    def other(self, path):
        return f"http://localhost:{self.plain.port}{path}"

    def get(self, target, host, extra=""):
        return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").encode()

    def test_keepalive_second_authority_gets_421_after_the_first(self):
        with self.proxy("plain") as p:
            c = self.connect(p, "plain")
            c.sendall(self.get(self.target("plain", "/size/1000"), self.host("plain")))
            r = h1.read_response(c)
            self.assertEqual((r["status"], r["body"]), (200, BLOB[:1000]))
            c.sendall(self.get(self.other("/size/20"), f"localhost:{self.plain.port}"))
            r = h1.read_response(c)
            self.assertEqual(r["status"], 421, r)
            self.assertEqual(h1.hget(r["headers"], "connection"), "close")
            self.assertEqual(c.read_to_eof(), b"")
            c.close()
            self.assertEqual([x["target"] for x in self.plain.log], ["/size/1000"])
            streams = self.assert_refused(p.checked_events(), 2, 421, "GET",
                                          f"localhost:{self.plain.port}")
            self.assertEqual(self.completed(streams[1])["outcome"], "complete")
            self.assertEqual(self.completed(streams[1])["response_bytes"], 1000)

    def test_pipelined_second_authority_first_answered_intact(self):
        post = os.urandom(50000)
        with self.proxy("plain") as p:
            c = self.connect(p, "plain")
            first = (f"POST {self.target('plain', '/echo')} HTTP/1.1\r\n"
                     f"Host: {self.host('plain')}\r\nContent-Length: {len(post)}\r\n\r\n"
                     ).encode() + post
            c.sendall(first + self.get(self.other("/size/20"), f"localhost:{self.plain.port}") +
                      self.get(self.target("plain", "/size/30"), self.host("plain")))
            r = h1.read_response(c)
            self.assertEqual(r["status"], 200)
            self.assertEqual(r["body"], post)
            r = h1.read_response(c)
            self.assertEqual(r["status"], 421, r)
            self.assertEqual(c.read_to_eof(), b"")
            c.close()
            self.assertEqual([(x["method"], x["target"]) for x in self.plain.log],
                             [("POST", "/echo")])
            self.assertEqual(self.plain.log[0]["body"], post)
            streams = self.assert_refused(p.checked_events(), 2, 421, "GET",
                                          f"localhost:{self.plain.port}")
            self.assertEqual(list(streams), [1, 2])
            self.assertEqual(self.completed(streams[1])["outcome"], "complete")

    def test_same_authority_other_spelling_is_served(self):
        # the host compares case-insensitively: one authority, served on the connection
        with self.proxy("plain") as p:
            c = self.connect(p, "plain")
            for i, host in enumerate(("origin.test", "ORIGIN.test")):
                auth = f"{host}:{self.plain.port}"
                c.sendall(self.get(f"http://{auth}/size/{5 + i}", auth))
                r = h1.read_response(c)
                self.assertEqual((r["status"], r["body"]), (200, BLOB[:5 + i]))
            c.close()
            self.assertEqual(len(self.plain.log), 2)
            _, streams = self.flow_of(p.checked_events())
            self.assertEqual([self.completed(streams[s])["outcome"] for s in streams],
                             ["complete", "complete"])

    def test_curl_two_authorities_one_connection(self):
        # curl -x reuses its proxy connection for another authority: the first URL is served,
        # the second gets the 421 (curl does not retry it on HTTP/1.1).
        with self.proxy("plain") as p:
            out = subprocess.run(
                ["curl", "-sS", "--http1.1", "--max-time", "30", "-x",
                 f"http://127.0.0.1:{p.port}", "-w", "[%{http_code}]",
                 f"http://127.0.0.1:{self.plain.port}/size/10", self.other("/size/20")],
                capture_output=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertTrue(out.stdout.startswith(BLOB[:10] + b"[200]"), out.stdout)
            self.assertTrue(out.stdout.endswith(b"[421]"), out.stdout)
            p.checked_events()


class NestedConnectTests(RefusalBase):
    def connect_req(self):
        return b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n"

    def test_connect_inside_intercepted_flow_gets_501(self):
        with self.proxy("intercept") as p:
            c = self.connect(p, "intercept")
            c.sendall(self.connect_req())
            r = h1.read_response(c)
            self.assertEqual(r["status"], 501, r)
            self.assertEqual(c.read_to_eof(), b"")
            c.close()
            self.assertEqual(self.tls.log, [])
            self.assert_refused(p.checked_events(), 1, 501, "CONNECT", "other.test:443")

    def test_connect_pipelined_behind_a_get(self):
        with self.proxy("intercept") as p:
            c = self.connect(p, "intercept")
            c.sendall(self.get_req("/size/5000") + self.connect_req() + b"GET /size/1 HTTP/1.1"
                      b"\r\nHost: x\r\n\r\n")
            r = h1.read_response(c)
            self.assertEqual((r["status"], r["body"]), (200, BLOB[:5000]))
            r = h1.read_response(c)
            self.assertEqual(r["status"], 501, r)
            self.assertEqual(c.read_to_eof(), b"")
            c.close()
            self.assertEqual([x["method"] for x in self.tls.log], ["GET"])
            self.assert_refused(p.checked_events(), 2, 501, "CONNECT", "other.test:443")

    def get_req(self, path):
        return f"GET {path} HTTP/1.1\r\nHost: {self.host('intercept')}\r\n\r\n".encode()

    def test_connect_on_plain_connection_after_a_request(self):
        with self.proxy("plain") as p:
            c = self.connect(p, "plain")
            c.sendall(f"GET {self.target('plain', '/size/7')} HTTP/1.1\r\n"
                      f"Host: {self.host('plain')}\r\n\r\n".encode())
            self.assertEqual(h1.read_response(c)["body"], BLOB[:7])
            c.sendall(f"CONNECT 127.0.0.1:{self.plain.port} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{self.plain.port}\r\n\r\n".encode())
            self.assertEqual(h1.read_response(c)["status"], 501)
            self.assertEqual(c.read_to_eof(), b"")
            c.close()
            self.assertEqual([x["method"] for x in self.plain.log], ["GET"])
            self.assert_refused(p.checked_events(), 2, 501, "CONNECT",
                                f"127.0.0.1:{self.plain.port}")


class StrictnessTests(RefusalBase):
    # (name, bytes before the method, request line with {T} for the target, status)
    CASES = [
        ("plain", b"", b"GET {T} HTTP/1.1", 200),
        ("one_empty_line", b"\r\n", b"GET {T} HTTP/1.1", 200),
        ("two_empty_lines", b"\r\n\r\n", b"GET {T} HTTP/1.1", 200),
        ("bare_lf_empty_line", b"\n", b"GET {T} HTTP/1.1", 400),
        ("two_spaces_after_method", b"", b"GET  {T} HTTP/1.1", 400),
        ("two_spaces_before_version", b"", b"GET {T}  HTTP/1.1", 400),
        ("space_after_version", b"", b"GET {T} HTTP/1.1 ", 400),
        ("tab_separator", b"", b"GET\t{T} HTTP/1.1", 400),
        ("space_before_method", b"", b" GET {T} HTTP/1.1", 400),
    ]

    def one(self, p, leg, lead, line, second):
        c = self.connect(p, leg)
        host = self.host(leg)
        if second:
            c.sendall(f"GET {self.target(leg, '/size/3')} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                      .encode())
            self.assertEqual(h1.read_response(c)["body"], BLOB[:3])
        target = self.target(leg, "/size/11").encode()
        c.sendall(lead + line.replace(b"{T}", target) + b"\r\nHost: " + host.encode() +
                  b"\r\n\r\n")
        try:
            r = h1.read_response(c)
        finally:
            c.close()
        if r["status"] == 200:
            self.assertEqual(r["body"], BLOB[:11])
        return r["status"]

    def test_same_status_on_every_path(self):
        paths = [("plain", False), ("plain", True), ("intercept", False), ("intercept", True)]
        got = {}
        with self.proxy("plain") as pp, self.proxy("intercept") as pi:
            for name, lead, line, want in self.CASES:
                for leg, second in paths:
                    p = pp if leg == "plain" else pi
                    with self.subTest(case=name, leg=leg, second=second):
                        st = self.one(p, leg, lead, line, second)
                        got[(name, leg, second)] = st
                        self.assertEqual(st, want, p.diagnostics())
            pp.checked_events()
            pi.checked_events()


if __name__ == "__main__":
    unittest.main()
