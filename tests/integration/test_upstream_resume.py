"""Upstream TLS 1.3 session resumption against an OpenSSL origin (nginx from Debian, TLSv1.3
only), counted from the origin's side: its access log records `$ssl_session_reused` for every
request (docs/tls.md, "Upstream sessions").

soth-mitm in reverse:https mode opens one upstream TLS connection per client connection; every
request here is on its own client connection (`Connection: close`). Between them, clients that
reject the proxy's leaf leave after the upstream handshake and before any response: their
upstream connections, resumed themselves, are closed before the origin's NewSessionTicket is
read, which is the case wolfSSL 5.5.4 got wrong (the kept session paired the old ticket with the
new connection's resumption secret, so the next resumption failed with alert 47; see
docs/dependencies.md, "wolfSSL patches")."""
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from h2_origin import make_origin_pki
from harness import Nginx, Proxy

REQUESTS = 1000
LEAVE_EVERY = 10  # a client that rejects our leaf before every 10th request
BODY = b"resumed upstream TLS 1.3\n" * 4


class TLS13Origin(Nginx):
    """nginx on loopback, TLSv1.3 only unless protocols says otherwise, origin.test signed by
    its own test CA; each request's
    `$ssl_protocol $ssl_session_reused $status $request_uri` goes to access.log."""

    def __init__(self, protocols="TLSv1.3"):
        self.tmp = tempfile.mkdtemp(prefix="soth-resume-")
        self.ca, cert, key = make_origin_pki(self.tmp)
        super().__init__(self.tmp, files={"r": BODY}, listen="ssl", http="",
                         server=f"ssl_protocols {protocols}; ssl_certificate {cert}; "
                                f"ssl_certificate_key {key};",
                         log_format="$ssl_protocol $ssl_session_reused $status $request_uri")

    def requests(self):
        """The access log's records, flushed: nginx writes each one as the request ends."""
        with open(self.log) as f:
            return [line.split() for line in f.read().splitlines()]

    def close(self):
        super().close()
        subprocess.run(["rm", "-rf", self.tmp], check=False)


def get_once(addr):
    """One plain-HTTP request on its own connection (reverse:https takes plain clients)."""
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


def get_keep_open(addr):
    """One plain-HTTP keep-alive request whose connection is left open: returns the socket and
    the response."""
    s = socket.create_connection(addr, timeout=10)
    s.sendall(b"GET /r HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(BODY)):
        b = s.recv(65536)
        if not b:
            break
        data += b
    return s, data


def leave_after_upstream_handshake(addr):
    """A TLS client that does not trust the proxy's CA: the proxy completes the upstream
    handshake first (docs/answers.md), then this client rejects our leaf and hangs up."""
    ctx = ssl.create_default_context()  # the system store, without the proxy's test CA
    raw = socket.create_connection(addr, timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname="origin.test"):
            return False
    except ssl.SSLCertVerificationError:
        return True
    finally:
        raw.close()


class UpstreamResumeTests(unittest.TestCase):
    def check_resumes_while_first_conn_lives(self, version):
        """The session is kept as soon as wolfSSL makes it (a TLS 1.3 ticket read, a TLS 1.2
        handshake done), not only when the first upstream connection ends: a second client
        arriving while the first one still holds its upstream connection resumes."""
        origin = TLS13Origin(version)
        try:
            cfg = {"policy": {"default": "intercept"},
                   "resolve": {"origin.test": "127.0.0.1"},
                   "tls": {"upstream_ca_file": origin.ca},
                   "upstream_pool": {"enabled": False}}
            with Proxy(mode=f"reverse:https://origin.test:{origin.port}", config=cfg,
                       workers=1) as p:
                first, data = get_keep_open(p.addr())
                try:
                    self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:200])
                    self.assertTrue(data.endswith(BODY), data[-200:])
                    for _ in range(3):
                        data = get_once(p.addr())
                        self.assertTrue(data.startswith(b"HTTP/1.1 200 ") and
                                        data.endswith(BODY), data[:200])
                finally:
                    first.close()
            log = origin.requests()
            self.assertEqual([(r[0], r[2]) for r in log], [(version, "200")] * 4, log)
            self.assertEqual([r[1] for r in log], [".", "r", "r", "r"], log)
        finally:
            origin.close()

    def test_second_client_resumes_while_first_holds_tls13(self):
        self.check_resumes_while_first_conn_lives("TLSv1.3")

    def test_second_client_resumes_while_first_holds_tls12(self):
        self.check_resumes_while_first_conn_lives("TLSv1.2")

    def test_tls13_resumption_1000_requests_against_nginx(self):
        origin = TLS13Origin()
        try:
            cfg = {"policy": {"default": "intercept"},
                   "resolve": {"origin.test": "127.0.0.1"},
                   # The leaving clients reject our leaf on purpose: no learning from that.
                   "tls": {"upstream_ca_file": origin.ca, "learning": {"enabled": False}},
                   # Every request on a fresh upstream connection (whose handshake resumes):
                   # the pool would carry them all on one connection, with no handshake.
                   "upstream_pool": {"enabled": False}}
            with Proxy(mode=f"reverse:https://origin.test:{origin.port}", config=cfg,
                       workers=1) as p:
                deadline = time.time() + 180
                bad, leavers = [], 0
                for i in range(REQUESTS):
                    self.assertLess(time.time(), deadline, f"only {i} requests in 180 s")
                    if i % LEAVE_EVERY == LEAVE_EVERY - 1:
                        self.assertTrue(leave_after_upstream_handshake(p.addr()))
                        leavers += 1
                    data = get_once(p.addr())
                    head, _, body = data.partition(b"\r\n\r\n")
                    if not head.startswith(b"HTTP/1.1 200 ") or body != BODY:
                        bad.append((i, data[:300]))
                self.assertEqual(bad[:5], [], f"{len(bad)} of {REQUESTS} requests failed")
                evs = p.checked_events()
            log = origin.requests()
            self.assertEqual(len(log), REQUESTS, log[:5])
            self.assertTrue(all(r[0] == "TLSv1.3" and r[2] == "200" and r[3] == "/r"
                                for r in log), [r for r in log if r[0] != "TLSv1.3"][:5])
            # The first upstream handshake is full; every later request's is resumed.
            reused = [r[1] == "r" for r in log]
            self.assertFalse(reused[0])
            self.assertGreaterEqual(sum(reused), REQUESTS - 1,
                                    [i for i, r in enumerate(reused) if not r][:20])
            up = [e for e in evs if e["type"].startswith("tls_handshake_") and
                  e["side"] == "upstream"]
            self.assertEqual([e for e in up if e["type"] == "tls_handshake_failed"], [])
            ok = [e for e in up if e["type"] == "tls_handshake_succeeded"]
            self.assertEqual(len(ok), REQUESTS + leavers)
            self.assertEqual({e["tls_version"] for e in ok}, {"TLSv1.3"})
            failed_client = [e for e in evs if e["type"] == "tls_handshake_failed" and
                             e["side"] == "client"]
            self.assertEqual(len(failed_client), leavers)
        finally:
            origin.close()


if __name__ == "__main__":
    unittest.main()
