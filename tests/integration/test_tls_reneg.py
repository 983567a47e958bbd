"""TLS renegotiation (docs/tls.md, "Renegotiation"): the proxy refuses a client-initiated
renegotiation on its client-facing TLS and never renegotiates upstream. A real client,
`openssl s_client -tls1_2`, asks for one (`R` on its stdin) on the TLS listener of reverse mode;
the proxy must refuse it and no second handshake may complete, and a fresh connection must
still be served."""
import os
import re
import subprocess
import time
import unittest

from harness import Proxy
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


if __name__ == "__main__":
    unittest.main()
