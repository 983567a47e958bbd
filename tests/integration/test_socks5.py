"""socks5 mode through the real binary (docs/socks5.md): curl through SOCKS5 to an intercepted
TLS origin (the same events as through CONNECT), a tunnelled one (its own certificate), a
blocked one, IPv4 and IPv6 literal targets, and the exact reply bytes to what is refused."""
import http.server
import os
import socket
import ssl
import subprocess
import threading
import time
import unittest

from harness import Proxy, EchoServer, by_flow, close_listener, free_port, read_all
from test_tls import TLSOrigin

NOAUTH = b"\x05\x01\x00"  # greeting: one method, "no authentication required"


def refusal(rep):
    return bytes([5, rep, 0, 1, 0, 0, 0, 0, 0, 0])


def request(cmd, host, port):
    """A SOCKS5 request for host (IPv4 text, IPv6 text in a tuple ('v6', text), or a name)."""
    if isinstance(host, tuple):
        addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host[1])
    elif host.count(".") == 3 and host.replace(".", "").isdigit():
        addr = b"\x01" + socket.inet_aton(host)
    else:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    return bytes([5, cmd, 0]) + addr + port.to_bytes(2, "big")


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            break
        buf += d
    return buf


class PlainOrigin:
    """An HTTP origin on a loopback address (127.0.0.1 or ::1) that says which it is."""

    def __init__(self, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(http.server.ThreadingHTTPServer):
            address_family = fam

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = f"plain origin on {host}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = Server((host, 0), H)
        self.port = self.srv.server_address[1]
        self.body = f"plain origin on {host}\n".encode()
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class Socks5Tests(unittest.TestCase):
    def setUp(self):
        self.origin = TLSOrigin()

    def tearDown(self):
        self.origin.close()

    def config(self, rules=()):
        return {"policy": {"default": "intercept", "rules": list(rules)},
                "resolve": {"origin.test": "127.0.0.1"},
                "tls": {"upstream_ca_file": self.origin.ca}}

    def curl_types(self, mode, proxy_flag):
        """One curl through a proxy in mode; the flow's events."""
        with Proxy(mode=mode, config=self.config()) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            out = subprocess.run(["curl", "-sS", "--cacert", ca, *proxy_flag(p.port),
                                  f"https://origin.test:{self.origin.port}/x"],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, self.origin.body)
            evs = p.checked_events()
        flows = list(by_flow(evs).values())
        self.assertEqual(len(flows), 1)
        return flows[0]

    def test_intercepted_https_has_the_events_of_a_connect(self):
        socks = self.curl_types("socks5", lambda port: ["--socks5-hostname", f"127.0.0.1:{port}"])
        connect = self.curl_types("regular", lambda port: ["-x", f"http://127.0.0.1:{port}"])
        types = [e["type"] for e in socks]
        self.assertEqual(types, [e["type"] for e in connect])
        self.assertEqual(types, ["connect_received", "connect_decision", "tls_handshake_started",
                                 "tls_handshake_succeeded", "tls_handshake_started",
                                 "tls_handshake_succeeded", "request_headers",
                                 "response_headers", "response_body_chunk",
                                 "exchange_completed", "stream_closed"])
        target = f"origin.test:{self.origin.port}"
        self.assertEqual((socks[0]["method"], socks[0]["target"]), ("SOCKS5", target))
        self.assertEqual((connect[0]["method"], connect[0]["target"]), ("CONNECT", target))
        for s, c in zip(socks, connect):
            for k in ("server_host", "server_port", "protocol", "decision", "reason", "side",
                      "sni", "method", "scheme", "authority", "path", "status", "outcome"):
                if k in c and c["type"] != "connect_received":
                    self.assertEqual(s.get(k), c[k], f"{c['type']}.{k}")
        self.assertEqual(socks[-1]["reason_code"], connect[-1]["reason_code"])

    def test_tunnelled_host_shows_the_origin_certificate(self):
        cfg = self.config([{"host": "origin.test", "action": "tunnel"}])
        with Proxy(mode="socks5", config=cfg) as p:
            # The client trusts only the origin's CA: it must see the origin's own certificate.
            out = subprocess.run(["curl", "-sS", "--cacert", self.origin.ca, "--socks5-hostname",
                                  f"127.0.0.1:{p.port}",
                                  f"https://origin.test:{self.origin.port}/"],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, self.origin.body)
            evs = p.checked_events()
        self.assertEqual([e["type"] for e in evs],
                         ["connect_received", "connect_decision", "stream_closed"])
        self.assertEqual((evs[1]["decision"], evs[1]["reason"]), ("tunnel", "policy_rule"))
        self.assertEqual(evs[0]["method"], "SOCKS5")

    def test_tunnel_bytes_intact_and_bound_address_is_the_upstream_socket(self):
        # An origin that reports the address the proxy connected from, then echoes.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        seen = []

        def serve():
            try:
                c, peer = lsock.accept()
            except OSError:
                return
            seen.append(peer)
            with c:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)
                c.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with Proxy(mode="socks5") as p:
                s = socket.create_connection(p.addr(), timeout=10)
                # Byte by byte: the greeting and the request may arrive in any pieces.
                for b in NOAUTH + request(1, "127.0.0.1", lsock.getsockname()[1]):
                    s.sendall(bytes([b]))
                    time.sleep(0.002)
                self.assertEqual(recv_exact(s, 2), b"\x05\x00")
                rep = recv_exact(s, 10)
                self.assertEqual(rep[:4], b"\x05\x00\x00\x01")
                data = os.urandom(300000)
                threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)),
                                 daemon=True).start()
                self.assertEqual(read_all(s), data)
                s.close()
                evs = p.checked_events()
            t.join(5)
            self.assertEqual(seen, [(socket.inet_ntoa(rep[4:8]), int.from_bytes(rep[8:], "big"))])
            self.assertEqual([e["type"] for e in evs],
                             ["connect_received", "connect_decision", "stream_closed"])
            self.assertEqual(evs[-1]["bytes_client_to_server"], 3 + 10 + len(data))
            self.assertEqual(evs[-1]["bytes_server_to_client"], len(data))
        finally:
            close_listener(lsock)

    def test_greeting_and_request_in_one_send_with_data_behind(self):
        echo = EchoServer()
        try:
            with Proxy(mode="socks5") as p:
                s = socket.create_connection(p.addr(), timeout=10)
                s.sendall(NOAUTH + request(1, "127.0.0.1", echo.port) + b"early bytes")
                self.assertEqual(recv_exact(s, 12)[:3], b"\x05\x00\x05")
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(read_all(s), b"early bytes")
                s.close()
        finally:
            echo.close()

    def test_client_hello_sent_with_the_request_is_intercepted(self):
        # The client sends greeting, request and its ClientHello in one go, before any reply.
        with Proxy(mode="socks5", config=self.config()) as p:
            ctx = ssl.create_default_context(cafile=os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"))
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(inc, out, server_hostname="origin.test")
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            s = socket.create_connection(p.addr(), timeout=10)
            s.sendall(NOAUTH + request(1, "origin.test", self.origin.port) + out.read())
            self.assertEqual(recv_exact(s, 2), b"\x05\x00")
            self.assertEqual(recv_exact(s, 4), b"\x05\x00\x00\x01")
            recv_exact(s, 6)
            req = "GET /early HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
            sent, got = False, b""
            while True:
                try:
                    if not sent:
                        tls.do_handshake()
                        tls.write(req.encode())
                        sent = True
                    got += tls.read(65536)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
                pending = out.read()
                if pending:
                    s.sendall(pending)
                d = s.recv(65536)
                if not d:
                    inc.write_eof()
                    try:
                        got += tls.read(65536)
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
                        pass
                    break
                inc.write(d)
            s.close()
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:100])
            self.assertTrue(got.endswith(self.origin.body), got[-100:])
            evs = p.checked_events()
        types = [e["type"] for e in evs]
        self.assertEqual(types[:6], ["connect_received", "connect_decision",
                                     "tls_handshake_started", "tls_handshake_succeeded",
                                     "tls_handshake_started", "tls_handshake_succeeded"])
        self.assertIn("request_headers", types)
        self.assertEqual(evs[types.index("request_headers")]["path"], "/early")

    def test_blocked_host_is_refused_by_ruleset(self):
        cfg = self.config([{"host": "origin.test", "action": "block"}])
        with Proxy(mode="socks5", config=cfg) as p:
            out = subprocess.run(["curl", "-sS", "--socks5-hostname", f"127.0.0.1:{p.port}",
                                  f"https://origin.test:{self.origin.port}/"],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 97, out.stderr)  # CURLE_PROXY
            self.assertIn(b"(2)", out.stderr)  # REP 0x02: not allowed by ruleset
            s = socket.create_connection(p.addr(), timeout=10)
            s.sendall(NOAUTH + request(1, "origin.test", self.origin.port))
            self.assertEqual(read_all(s), b"\x05\x00" + refusal(2))
            s.close()
            evs = p.checked_events()
        for fl in by_flow(evs).values():
            self.assertEqual([e["type"] for e in fl],
                             ["connect_received", "connect_decision", "stream_closed"])
            self.assertEqual((fl[1]["decision"], fl[1]["rule"]), ("block", "0"))
            self.assertEqual(fl[2]["reason_code"], "blocked")

    def test_ipv4_and_ipv6_literal_targets(self):
        for host in ("127.0.0.1", "::1"):
            origin = PlainOrigin(host)
            try:
                with Proxy(mode="socks5") as p:
                    url_host = f"[{host}]" if ":" in host else host
                    out = subprocess.run(["curl", "-sS", "--socks5", f"127.0.0.1:{p.port}",
                                          f"http://{url_host}:{origin.port}/"],
                                         capture_output=True, timeout=30)
                    self.assertEqual(out.returncode, 0, out.stderr)
                    self.assertEqual(out.stdout, origin.body)
                    evs = p.checked_events()
                self.assertEqual(evs[0]["type"], "connect_received")
                self.assertEqual((evs[0]["method"], evs[0]["target"]),
                                 ("SOCKS5", f"{url_host}:{origin.port}"))
                self.assertEqual((evs[0]["server_host"], evs[0]["server_port"]),
                                 (host, origin.port))
                self.assertEqual(evs[-1]["reason_code"], "client_eof")
            finally:
                origin.close()

    def test_plain_http_through_an_intercepted_flow_is_parsed(self):
        origin = PlainOrigin("127.0.0.1")
        try:
            with Proxy(mode="socks5", config={"policy": {"default": "intercept"}}) as p:
                url = f"http://127.0.0.1:{origin.port}/p"
                out = subprocess.run(["curl", "-sS", "--socks5-hostname", f"127.0.0.1:{p.port}",
                                      url, url], capture_output=True, timeout=30)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, origin.body * 2)
                evs = p.checked_events()
        finally:
            origin.close()
        self.assertEqual([e["type"] for e in evs],
                         ["connect_received", "connect_decision"] +
                         ["request_headers", "response_headers", "response_body_chunk",
                          "exchange_completed"] * 2 + ["stream_closed"])
        self.assertEqual(evs[1]["decision"], "intercept")
        self.assertEqual((evs[2]["method"], evs[2]["path"], evs[2]["protocol"]),
                         ("GET", "/p", "http1"))
        self.assertEqual(evs[3]["status"], 200)

    def test_ipv6_request_bytes(self):
        echo_srv = socket.socket(socket.AF_INET6)
        echo_srv.bind(("::1", 0))
        echo_srv.listen(1)
        port = echo_srv.getsockname()[1]
        try:
            with Proxy(mode="socks5") as p:
                s = socket.create_connection(p.addr(), timeout=10)
                s.sendall(NOAUTH + request(1, ("v6", "::1"), port))
                self.assertEqual(recv_exact(s, 2), b"\x05\x00")
                rep = recv_exact(s, 22)
                # The bound address of an IPv6 upstream socket is IPv6 (ATYP 4): ::1.
                self.assertEqual(rep[:4], b"\x05\x00\x00\x04")
                self.assertEqual(socket.inet_ntop(socket.AF_INET6, rep[4:20]), "::1")
                c, peer = echo_srv.accept()
                self.assertEqual(peer[1], int.from_bytes(rep[20:], "big"))
                c.close()
                s.close()
        finally:
            close_listener(echo_srv)

    def test_refusals_exact_bytes_then_close(self):
        cases = [
            # (what the client sends, what the proxy answers, reason_code)
            (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"\x05\xff", "socks5_bad_version"),
            (b"CONNECT a:1 HTTP/1.1\r\n\r\n", b"\x05\xff", "socks5_bad_version"),
            (b"\x05\x01\x02", b"\x05\xff", "socks5_no_acceptable_method"),
            (b"\x05\x00", b"\x05\xff", "socks5_no_acceptable_method"),
            (NOAUTH + request(2, "127.0.0.1", 80), b"\x05\x00" + refusal(7),
             "socks5_command_not_supported"),
            (NOAUTH + request(3, "127.0.0.1", 80), b"\x05\x00" + refusal(7),
             "socks5_command_not_supported"),
            (NOAUTH + b"\x05\x01\x00\x02\x00", b"\x05\x00" + refusal(8),
             "socks5_bad_address_type"),
            (NOAUTH + b"\x05\x01\x00\x03\x05a b.c\x00\x50", b"\x05\x00" + refusal(1),
             "bad_target"),
        ]
        with Proxy(mode="socks5") as p:
            for sent, answer, code in cases:
                s = socket.create_connection(p.addr(), timeout=10)
                s.sendall(sent)
                # The answer, then EOF (our FIN): the client does not close first.
                self.assertEqual(read_all(s), answer, sent)
                s.close()
            evs = p.checked_events()
        flows = list(by_flow(evs).values())
        self.assertEqual(len(flows), len(cases))
        for fl, (sent, _, code) in zip(flows, cases):
            self.assertEqual([e["type"] for e in fl], ["connect_parse_failed", "stream_closed"],
                             sent)
            self.assertEqual(fl[0]["reason_code"], code)
            self.assertEqual(fl[1]["reason_code"], "parse_failed")

    def test_upstream_refused_is_reply_5(self):
        port = free_port()
        with Proxy(mode="socks5") as p:
            s = socket.create_connection(p.addr(), timeout=10)
            s.sendall(NOAUTH + request(1, "127.0.0.1", port))
            self.assertEqual(read_all(s), b"\x05\x00" + refusal(5))
            s.close()
            out = subprocess.run(["curl", "-sS", "--socks5-hostname", f"127.0.0.1:{p.port}",
                                  f"http://127.0.0.1:{port}/"], capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 97, out.stderr)
            evs = p.checked_events()
        for fl in by_flow(evs).values():
            self.assertEqual([e["type"] for e in fl],
                             ["connect_received", "connect_decision", "stream_closed"])
            self.assertEqual(fl[-1]["reason_code"], "upstream_connect_failed")

    def test_upstream_connect_timeout_is_reply_6(self):
        # A loopback listener whose accept queue is full: the kernel drops further SYNs, so the
        # proxy's connect stays pending until timeouts.connect_ms.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        fill = []
        try:
            for _ in range(3):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fill.append(c)
            time.sleep(0.2)
            with Proxy(mode="socks5", config={"timeouts": {"connect_ms": 400}}) as p:
                s = socket.create_connection(p.addr(), timeout=10)
                t0 = time.monotonic()
                s.sendall(NOAUTH + request(1, "127.0.0.1", port))
                self.assertEqual(read_all(s), b"\x05\x00" + refusal(6))
                self.assertGreaterEqual(time.monotonic() - t0, 0.35)
                s.close()
                evs = p.checked_events()
            self.assertEqual([e["type"] for e in evs],
                             ["connect_received", "connect_decision", "stream_closed"])
            self.assertEqual(evs[-1]["reason_code"], "upstream_connect_failed")
        finally:
            for c in fill:
                c.close()
            close_listener(lsock)

    def test_request_head_timeout(self):
        with Proxy(mode="socks5", config={"timeouts": {"request_header_ms": 300}}) as p:
            s = socket.create_connection(p.addr(), timeout=10)
            s.sendall(NOAUTH)
            self.assertEqual(recv_exact(s, 2), b"\x05\x00")
            t0 = time.monotonic()
            self.assertEqual(read_all(s), b"")
            self.assertLess(time.monotonic() - t0, 5)
            s.close()
            evs = p.checked_events()
        self.assertEqual([e["type"] for e in evs], ["connect_parse_failed", "stream_closed"])
        self.assertEqual(evs[0]["reason_code"], "request_header_timeout")
        self.assertEqual(evs[1]["reason_code"], "idle_timeout")


if __name__ == "__main__":
    unittest.main()
