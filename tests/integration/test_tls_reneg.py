"""TLS renegotiation (docs/tls.md, "Renegotiation"): the proxy refuses a client-initiated
renegotiation on its client-facing TLS and never renegotiates upstream. A real client,
`openssl s_client -tls1_2`, asks for one (`R` on its stdin) on the TLS listener of reverse mode;
the proxy must refuse it and no second handshake may complete, and a fresh connection must
still be served."""
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from h2_origin import make_origin_pki
from harness import Proxy, free_port
from test_tls import TLSOrigin


def proxy_ca(p):
    return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")


class RenegotiationTests(unittest.TestCase):
    def setUp(self):
        self.origin = TLSOrigin(max_tls12=True)

    def tearDown(self):
        self.origin.close()

    def proxy(self):
        cfg = {"resolve": {"origin.test": "127.0.0.1"}, "policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": self.origin.ca}}
        return Proxy(mode=f"reverse:https://origin.test:{self.origin.port}", config=cfg)

    def s_client(self, p, stdin_steps, timeout=20):
        """openssl s_client -tls1_2 to the proxy's TLS listener, writing each (delay, bytes) of
        stdin_steps; returns (exit status, stdout + stderr)."""
        proc = subprocess.Popen(
            ["openssl", "s_client", "-tls1_2", "-connect", f"127.0.0.1:{p.port}",
             "-servername", "origin.test", "-CAfile", proxy_ca(p), "-verify_return_error",
             "-msg"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for delay, data in stdin_steps:
                time.sleep(delay)
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except BrokenPipeError:
                    break
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            out = proc.stdout.read()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.stdout.read()
            proc.wait()
        finally:
            proc.stdout.close()
        return proc.returncode, out.decode(errors="replace")

    def test_client_renegotiation_refused(self):
        req = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n"
        with self.proxy() as p:
            rc, out = self.s_client(p, [(1.0, b"R\n"), (1.0, req), (2.0, b"")])
            self.assertIn("RENEGOTIATING", out, out)  # the client did ask
            first, _, after = out.partition("RENEGOTIATING")
            # the first handshake completed (the server's Finished arrived) ...
            self.assertRegex(first, r"<<< TLS 1\.2, Handshake \[length [0-9a-f]+\], Finished")
            # ... the second did not: no ServerHello and no Finished from the proxy after R
            self.assertNotRegex(after, r"<<< TLS 1\.2, Handshake \[length [0-9a-f]+\], "
                                       r"(ServerHello|Finished)", out)
            # refused with an alert (or the connection closed), and nothing was served on it
            self.assertTrue(re.search(r"<<< TLS 1\.2, Alert", after) or "closed" in after
                            or rc != 0, out)
            self.assertNotIn("HTTP/1.1 200", after, out)
            # a fresh connection is served
            rc, out = self.s_client(p, [(1.0, req), (2.0, b"")])
            self.assertIn("HTTP/1.1 200", out, out)
            self.assertIn(self.origin.body[:40].decode(), out)
            evs = p.checked_events()
        ok = [e for e in evs if e["type"] == "tls_handshake_succeeded" and e["side"] == "client"]
        self.assertEqual(len(ok), 2, "one handshake per connection, none more")
        self.assertTrue(all(e["tls_version"] == "TLSv1.2" for e in ok))


class UpstreamRenegotiationTests(unittest.TestCase):
    def test_origin_hello_request_is_not_followed(self):
        """An origin (openssl s_server -tls1_2) asks for a renegotiation with HelloRequest
        (`R` on its stdin) while a request is in flight: the proxy sends no second
        ClientHello upstream, it answers no_renegotiation."""
        d = tempfile.mkdtemp(prefix="soth-reneg-")
        try:
            ca, cert, key = make_origin_pki(d)
            port = free_port()
            srv = subprocess.Popen(
                ["openssl", "s_server", "-tls1_2", "-accept", f"127.0.0.1:{port}", "-cert", cert,
                 "-key", key, "-msg", "-naccept", "1"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            lines = []
            threading.Thread(target=lambda: lines.extend(srv.stdout), daemon=True).start()

            def seen(text, timeout=10):
                deadline = time.time() + timeout
                while time.time() < deadline:
                    if any(text in ln.decode(errors="replace") for ln in list(lines)):
                        return True
                    time.sleep(0.05)
                return False

            try:
                self.assertTrue(seen("ACCEPT"), b"".join(lines))
                cfg = {"resolve": {"origin.test": "127.0.0.1"},
                       "policy": {"default": "intercept"}, "tls": {"upstream_ca_file": ca}}
                with Proxy(mode=f"reverse:https://origin.test:{port}", config=cfg) as p:
                    ctx = ssl.create_default_context(cafile=proxy_ca(p))
                    c = ctx.wrap_socket(socket.create_connection(p.addr(), timeout=10),
                                        server_hostname="origin.test")
                    c.sendall(b"GET /r HTTP/1.1\r\nHost: origin.test\r\n\r\n")
                    self.assertTrue(seen("GET /r HTTP/1.1"), b"".join(lines))
                    mark = len(lines)
                    srv.stdin.write(b"R\n")
                    srv.stdin.flush()
                    self.assertTrue(seen("HelloRequest"), b"".join(lines))
                    time.sleep(2)  # room for a ClientHello that must not come
                    after = b"".join(lines[mark:]).decode(errors="replace")
                    self.assertNotRegex(after, r"<<< TLS 1\.2, Handshake \[length [0-9a-f]+\], "
                                               r"ClientHello", after)
                    # declined the way RFC 5746 4.2 describes: a no_renegotiation warning
                    self.assertIn("Alert [length 0002], warning no_renegotiation", after)
                    c.close()
                    p.checked_events()
            finally:
                srv.kill()
                srv.wait()
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
