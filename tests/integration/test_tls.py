"""TLS interception through the real binary: curl and python clients that trust the proxy's CA
reach a TLS origin through CONNECT, with the handshake events in order."""
import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from harness import Proxy, by_flow, connect_tunnel, free_port, read_all
from test_observe import scrape

PY = "/usr/bin/python3"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class TLSOrigin:
    """An HTTPS origin (python http.server + ssl) for origin.test with its own test CA."""

    def __init__(self, max_tls12=False):
        self.dir = tempfile.mkdtemp(prefix="soth-origin-")
        self.reused = []  # per request: whether the TLS session was resumed
        d = self.dir
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=origin test CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=origin.test", cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:origin.test\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
        self.ca = os.path.join(d, "ca.pem")
        body = b"hello over intercepted TLS\n" * 50
        reused = self.reused

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                reused.append(self.connection.session_reused)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.body = body
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "o.pem"), os.path.join(d, "o.key"))
        if max_tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


class InterceptTests(unittest.TestCase):
    def setUp(self):
        self.origin = TLSOrigin()

    def tearDown(self):
        self.origin.close()

    def config(self, **tls):
        t = {"upstream_ca_file": self.origin.ca}
        t.update(tls)
        return {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
                "tls": t}

    def test_curl_through_intercept_with_trusted_ca(self):
        with Proxy(config=self.config()) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            url = f"https://origin.test:{self.origin.port}/x"
            out = subprocess.run(["curl", "-sS", "--cacert", ca, "-x",
                                  f"http://127.0.0.1:{p.port}", url, url],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, self.origin.body * 2)
            evs = p.checked_events()
        fl = list(by_flow(evs).values())[0]
        types = [e["type"] for e in fl]
        # Both handshakes, then the two requests parsed as HTTP/1.1 exchanges on one flow.
        self.assertEqual(types, ["connect_received", "connect_decision", "tls_handshake_started",
                                 "tls_handshake_succeeded", "tls_handshake_started",
                                 "tls_handshake_succeeded"] +
                         ["request_headers", "response_headers", "response_body_chunk",
                          "exchange_completed"] * 2 + ["stream_closed"])
        self.assertEqual(fl[1]["decision"], "intercept")
        self.assertEqual([fl[2]["side"], fl[3]["side"], fl[4]["side"], fl[5]["side"]],
                         ["upstream", "upstream", "client", "client"])
        self.assertEqual(fl[2]["sni"], "origin.test")
        self.assertTrue(fl[5]["tls_version"].startswith("TLSv1."))
        self.assertEqual(fl[5]["protocol"], "tls")
        self.assertEqual([fl[6]["stream_id"], fl[10]["stream_id"]], [1, 2])
        self.assertEqual((fl[6]["method"], fl[6]["scheme"], fl[6]["authority"], fl[6]["path"]),
                         ("GET", "https", f"origin.test:{self.origin.port}", "/x"))
        self.assertEqual(fl[7]["status"], 200)
        self.assertEqual(fl[9]["outcome"], "complete")
        self.assertEqual(fl[6]["protocol"], "http1")

    def test_python_post_1mib_byte_exact_with_ca_checked(self):
        with Proxy(config=self.config()) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            script = f"""
import http.client, os, ssl, sys
ctx = ssl.create_default_context(cafile={ca!r})
c = http.client.HTTPSConnection("127.0.0.1", {p.port}, context=ctx, timeout=30)
c.set_tunnel("origin.test", {self.origin.port})
data = os.urandom(1 << 20)
c.request("POST", "/echo", body=data, headers={{"Content-Type": "application/octet-stream"}})
r = c.getresponse()
body = r.read()
sys.exit(0 if r.status == 200 and body == data else 1)
"""
            out = subprocess.run([PY, "-c", script], capture_output=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            p.checked_events()

    def test_client_without_our_ca_is_classified_unknown_ca(self):
        with Proxy(config=self.config()) as p:
            out = subprocess.run(["curl", "-sS", "-x", f"http://127.0.0.1:{p.port}",
                                  f"https://origin.test:{self.origin.port}/"],
                                 capture_output=True, timeout=30)
            self.assertNotEqual(out.returncode, 0)
            evs = p.checked_events()
        failed = [e for e in evs if e["type"] == "tls_handshake_failed"]
        self.assertEqual(len(failed), 1, evs)
        self.assertEqual(failed[0]["side"], "client")
        self.assertEqual(failed[0]["tls_failure_reason"], "unknown_ca", failed[0])
        self.assertEqual(failed[0]["tls_ops_provider"], "native")
        self.assertEqual(evs[-1]["reason_code"], "tls_failed")

    def test_upstream_tls12_sessions_are_resumed(self):
        o = TLSOrigin(max_tls12=True)
        try:
            cfg = self.config()
            cfg["tls"]["upstream_ca_file"] = o.ca
            with Proxy(config=cfg, workers=1) as p:
                ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
                for _ in range(4):
                    out = subprocess.run(["curl", "-sS", "--cacert", ca, "-x",
                                          f"http://127.0.0.1:{p.port}",
                                          f"https://origin.test:{o.port}/r"],
                                         capture_output=True, timeout=30)
                    self.assertEqual(out.returncode, 0, out.stderr)
                    self.assertEqual(out.stdout, o.body)
                evs = p.checked_events()
            # The first upstream handshake is full; the worker resumes it for the next ones.
            self.assertEqual(o.reused, [False, True, True, True])
            up = [e for e in evs if e["type"] == "tls_handshake_succeeded" and
                  e["side"] == "upstream"]
            self.assertEqual([e["tls_version"] for e in up], ["TLSv1.2"] * 4)
        finally:
            o.close()

    def test_untrusted_upstream_fails_upstream_side(self):
        cfg = self.config()
        del cfg["tls"]["upstream_ca_file"]
        with Proxy(config=cfg) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            # docs/answers.md: the client gets a TLS session with our leaf, then 502 saying why.
            out = subprocess.run(["curl", "-sS", "--cacert", ca, "-x",
                                  f"http://127.0.0.1:{p.port}", "-w", "%{http_code}",
                                  f"https://origin.test:{self.origin.port}/"],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertTrue(out.stdout.endswith(b"502"), out.stdout)
            self.assertIn(b"TLS with the upstream origin.test", out.stdout)
            self.assertIn(b"unknown_ca", out.stdout)
            evs = p.checked_events()
        failed = [e for e in evs if e["type"] == "tls_handshake_failed"]
        self.assertEqual(len(failed), 1, evs)
        self.assertEqual(failed[0]["side"], "upstream")
        self.assertEqual(failed[0]["tls_failure_reason"], "unknown_ca")
        ok = [e for e in evs if e["type"] == "tls_handshake_succeeded"]
        self.assertEqual([e["side"] for e in ok], ["client"])
        self.assertEqual(evs[-1]["reason_code"], "tls_failed")

    def test_tunnelled_host_never_reaches_the_mitm_path(self):
        cfg = self.config()
        cfg["policy"]["rules"] = [{"host": "origin.test", "action": "tunnel"}]
        with Proxy(config=cfg) as p:
            # The client trusts only the origin's CA: it must see the origin's own certificate.
            out = subprocess.run(["curl", "-sS", "--cacert", self.origin.ca, "-x",
                                  f"http://127.0.0.1:{p.port}",
                                  f"https://origin.test:{self.origin.port}/"],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, self.origin.body)
            evs = p.checked_events()
        self.assertEqual([e["type"] for e in evs],
                         ["connect_received", "connect_decision", "stream_closed"])
        self.assertEqual((evs[1]["decision"], evs[1]["reason"]), ("tunnel", "policy_rule"))

    def test_leaf_for_the_sni_verifies_with_openssl(self):
        with Proxy(config=self.config()) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            script = f"""
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", {p.port}), timeout=10)
s.sendall(b"CONNECT origin.test:{self.origin.port} HTTP/1.1\\r\\n\\r\\n")
buf = b""
while not buf.endswith(b"\\r\\n\\r\\n"):
    buf += s.recv(1)
assert buf.startswith(b"HTTP/1.1 200"), buf
ctx = ssl.create_default_context(cafile={ca!r})
t = ctx.wrap_socket(s, server_hostname="origin.test")
cert = t.getpeercert()
san = [v for k, v in cert["subjectAltName"] if k == "DNS"]
sys.exit(0 if san == ["origin.test"] else 3)
"""
            out = subprocess.run([PY, "-c", script], capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            p.checked_events()

    def test_reverse_mode_leaf_is_for_the_clients_sni(self):
        """Reverse mode: the leaf is for the name the client asked for (its SNI), while the
        origin stays the configured one; a client without SNI gets the origin's name."""
        with Proxy(mode=f"reverse:https://origin.test:{self.origin.port}",
                   config=self.config()) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            for sni, want in (("shop.example", "shop.example"), (None, "origin.test")):
                ctx = ssl.create_default_context(cafile=ca)
                if sni is None:
                    ctx.check_hostname = False
                s = socket.create_connection(p.addr(), timeout=10)
                t = ctx.wrap_socket(s, server_hostname=sni)
                cert = t.getpeercert()
                self.assertEqual([v for k, v in cert["subjectAltName"] if k == "DNS"], [want])
                t.sendall(b"GET / HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
                got = read_all(t)
                t.close()
                self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:200])
                self.assertTrue(got.endswith(self.origin.body))
            evs = p.checked_events()
            started = [e for e in evs if e["type"] == "tls_handshake_started" and
                       e.get("side") == "client"]
            self.assertEqual([e.get("sni") for e in started], ["shop.example", "origin.test"],
                             started)

    def leaf_der(self, p, ctx):
        """One intercepted connection: the DER of the leaf the proxy presented, after a GET."""
        s, head = connect_tunnel(p, "origin.test", self.origin.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        t = ctx.wrap_socket(s, server_hostname="origin.test")
        der = t.getpeercert(binary_form=True)
        t.sendall(b"GET / HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        got = read_all(t)
        t.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 200") and got.endswith(self.origin.body), got)
        return der

    def test_sigusr1_flushes_every_workers_leaf_cache(self):
        """Each worker mints its leaf once and serves it from its cache (random serials tell
        leaves apart); after SIGUSR1 no worker presents a leaf from before."""
        mport = free_port()
        cfg = self.config()
        cfg["metrics"] = {"listen": f"127.0.0.1:{mport}"}
        with Proxy(config=cfg, workers=2) as p:
            ctx = ssl.create_default_context(cafile=os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"))
            before = []
            # Connections land on the workers by the kernel's hash of the client port: go on
            # until both have answered (2^-39 odds of 40 all landing on one).
            while len(set(before)) < 2 and len(before) < 40:
                before.append(self.leaf_der(p, ctx))
            self.assertEqual(len(set(before)), 2, "one leaf per worker, then cache hits")
            m = scrape(mport)
            self.assertEqual(m["soth_leaf_cache_misses_total"], 2)
            self.assertEqual(m["soth_leaf_cache_hits_total"], len(before) - 2)
            p.proc.send_signal(signal.SIGUSR1)
            deadline = time.time() + 10
            while "SIGUSR1: flushing leaf certificate caches" not in p.stderr():
                self.assertLess(time.time(), deadline, p.stderr())
                time.sleep(0.02)
            after = []
            while len(set(after)) < 2 and len(after) < 40:
                after.append(self.leaf_der(p, ctx))
            self.assertEqual(set(before) & set(after), set(), "a worker kept a flushed leaf")
            self.assertEqual(len(set(after)), 2)
            m2 = scrape(mport)
            self.assertEqual(m2["soth_leaf_cache_misses_total"], 4)
            self.assertEqual(m2["soth_leaf_cache_hits_total"], len(before) + len(after) - 4)
            p.checked_events()

    def test_client_leaving_during_upstream_handshake_abandons_it(self):
        # reverse:https with a plain client: the proxy starts the upstream handshake on the
        # first bytes; a client that sends part of a request and leaves ~2 ms later closes the
        # flow while that handshake runs. The handshake has no end event and is no TLS
        # failure (docs/events.md; checked_events below), and the proxy goes on serving.
        mport = free_port()
        cfg = self.config()
        cfg["metrics"] = {"listen": f"127.0.0.1:{mport}"}
        with Proxy(mode=f"reverse:https://origin.test:{self.origin.port}", config=cfg) as p:
            for _ in range(20):
                s = socket.create_connection(p.addr())
                s.sendall(b"GET / H")
                time.sleep(0.002)
                s.close()
            out = subprocess.run(["curl", "-sS", "--max-time", "10", "http://" +
                                  "%s:%d/hello" % p.addr()], capture_output=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            deadline = time.time() + 10
            evs = p.events()
            while sum(e["type"] == "stream_closed" for e in evs) < 21:
                self.assertLess(time.time(), deadline, evs[-5:])
                evs = p.events()
            closes = [e for e in evs if e["type"] == "stream_closed"]
            # Each flow ends because the client left (its FIN, or the reset of its close with
            # unread bytes) or, when the handshake finished first, because the origin then
            # closed on the partial request; never a TLS failure.
            self.assertTrue(all(e["reason_code"] in ("client_eof", "relay_eof", "relay_error")
                                for e in closes), closes)
            self.assertFalse([e for e in evs if e["type"] == "tls_handshake_failed"])
            self.assertEqual(scrape(mport).get(
                'soth_tls_handshake_failures_total{side="upstream",reason="eof"}', 0), 0)
            p.checked_events()


if __name__ == "__main__":
    unittest.main()
