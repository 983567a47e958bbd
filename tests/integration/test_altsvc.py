"""http3_passthrough false (docs/http3.md, "Forcing clients back to TCP"): intercepted HTTP/1.1
and HTTP/2 responses reach the client without the HTTP/3 entries of Alt-Svc, a field left
without entries is gone, and response_headers carries alt_svc_removed while its headers stay
as the origin sent them; with the default (true) Alt-Svc is relayed unchanged. Clients: curl
through the proxy (CONNECT, interception with the proxy's CA). Origins: a python HTTP/1.1 TLS
origin here, the python h2 origin of h2_origin.py."""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import unittest

from h2_origin import ALT_SVC, H2Origin, make_origin_pki
from harness import Proxy, close_listener

MIXED = 'h3=":443"; ma=86400, h2=":443"'
H3_ENTRY = 'h3=":443"; ma=86400'
# HTTP/1.1 responses by path: (interim heads, final head fields); every body is "alt"
H1_RESPONSES = {
    "/mixed": ([], [("Alt-Svc", MIXED), ("X-After", "1")]),
    "/h3only": ([], [("X-Before", "1"), ("Alt-Svc", H3_ENTRY)]),
    # an interim 103 whose only Alt-Svc entry is h3, then two Alt-Svc fields
    "/interim": ([[("Alt-Svc", 'h3=":443"')]],
                 [("alt-svc", 'h3-29=":8443"'), ("Alt-Svc", 'clear')]),
    "/plain": ([], [("X-Plain", "1")]),
}


class H1Origin:
    """A TLS HTTP/1.1 origin with keep-alive answering H1_RESPONSES (GET only)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soth-altsvc-")
        self.ca, cert, key = make_origin_pki(self.dir)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
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

    def _serve(self, raw):
        raw.settimeout(20)
        s = raw
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                interim, fields = H1_RESPONSES[path]
                out = b""
                for f in interim:
                    out += b"HTTP/1.1 103 Early Hints\r\n" + b"".join(
                        f"{k}: {v}\r\n".encode() for k, v in f) + b"\r\n"
                out += b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n" + b"".join(
                    f"{k}: {v}\r\n".encode() for k, v in fields) + b"\r\nalt"
                s.sendall(out)
        except (OSError, ssl.SSLError, KeyError, IndexError):
            pass
        finally:
            s.close()

    def close(self):
        close_listener(self.sock)
        shutil.rmtree(self.dir, ignore_errors=True)


def heads(dump):
    """curl -D output -> list of (status line, [(name, value)]) per response head of the origin
    (the proxy's answer to CONNECT, which curl dumps too, left out)."""
    out = []
    for block in dump.decode("latin-1").split("\r\n\r\n"):
        lines = [ln for ln in block.split("\r\n") if ln]
        if not lines or lines[0] == "HTTP/1.1 200 Connection Established":
            continue
        fields = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:]]
        out.append((lines[0], fields))
    return out


def alt_svc(fields):
    return [v for k, v in fields if k.lower() == "alt-svc"]


class AltSvcBase(unittest.TestCase):
    origin = None

    def config(self, passthrough):
        cfg = {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.origin.ca}}
        if passthrough is not None:
            cfg["http3_passthrough"] = passthrough
        return cfg

    def curl(self, p, version, paths):
        """GET paths on one connection through p; returns (heads per path, bodies)."""
        ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
        with tempfile.TemporaryDirectory() as d:
            args = ["curl", "-sS", "--max-time", "30"]
            for i, path in enumerate(paths):
                if i:
                    args.append("--next")
                args += [version, "--cacert", ca, "-x", f"http://127.0.0.1:{p.port}",
                         "-D", os.path.join(d, f"h{i}"), "-o", os.path.join(d, f"b{i}"),
                         f"https://origin.test:{self.origin.port}{path}"]
            out = subprocess.run(args, capture_output=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            hs, bodies = [], []
            for i in range(len(paths)):
                with open(os.path.join(d, f"h{i}"), "rb") as f:
                    hs.append(heads(f.read()))
                with open(os.path.join(d, f"b{i}"), "rb") as f:
                    bodies.append(f.read())
        return hs, bodies

    def responses(self, evs):
        """response_headers events, in stream order."""
        rs = [e for e in evs if e["type"] == "response_headers"]
        return sorted(rs, key=lambda e: (e["flow_id"], e["stream_id"]))


class Http1(AltSvcBase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H1Origin()

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()

    def test_false_removes_h3_entries_and_reports_them(self):
        paths = ["/mixed", "/h3only", "/interim", "/plain"]
        with Proxy(config=self.config(False)) as p:
            hs, bodies = self.curl(p, "--http1.1", paths)
            evs = p.checked_events()
        self.assertEqual(bodies, [b"alt"] * 4)
        final = [h[-1] for h in hs]
        self.assertTrue(all(st.startswith("HTTP/1.1 200") for st, _ in final), final)
        # what the client got
        self.assertEqual(alt_svc(final[0][1]), ['h2=":443"'])
        self.assertIn(("X-After", "1"), final[0][1])
        self.assertEqual(alt_svc(final[1][1]), [], "an Alt-Svc with only h3 entries is gone")
        self.assertIn(("X-Before", "1"), final[1][1])
        self.assertEqual(len(hs[2]), 2, hs[2])  # the 103, then the 200
        self.assertTrue(hs[2][0][0].startswith("HTTP/1.1 103"))
        self.assertEqual(alt_svc(hs[2][0][1]), [])
        self.assertEqual(alt_svc(final[2][1]), ["clear"])
        self.assertIn(("X-Plain", "1"), final[3][1])
        # what the events say: headers as the origin sent them, plus what was removed
        rs = self.responses(evs)
        self.assertEqual(len(rs), 4)
        self.assertEqual(len({r["flow_id"] for r in rs}), 1, "one connection")
        self.assertEqual(alt_svc(rs[0]["headers"]), [MIXED])
        self.assertEqual(rs[0]["alt_svc_removed"], [H3_ENTRY])
        self.assertEqual(alt_svc(rs[1]["headers"]), [H3_ENTRY])
        self.assertEqual(rs[1]["alt_svc_removed"], [H3_ENTRY])
        self.assertEqual(alt_svc(rs[2]["headers"]), ['h3-29=":8443"', "clear"])
        self.assertEqual(rs[2]["alt_svc_removed"], ['h3-29=":8443"'])
        self.assertNotIn("alt_svc_removed", rs[3])
        done = [e for e in evs if e["type"] == "exchange_completed"]
        self.assertEqual([(d["outcome"], d["response_bytes"]) for d in done],
                         [("complete", 3)] * 4)

    def test_default_relays_alt_svc_unchanged(self):
        for passthrough in (None, True):
            with Proxy(config=self.config(passthrough)) as p:
                hs, bodies = self.curl(p, "--http1.1", ["/mixed", "/interim"])
                evs = p.checked_events()
            self.assertEqual(bodies, [b"alt"] * 2)
            self.assertEqual(alt_svc(hs[0][-1][1]), [MIXED])
            self.assertEqual(alt_svc(hs[1][0][1]), ['h3=":443"'])
            self.assertEqual(alt_svc(hs[1][-1][1]), ['h3-29=":8443"', "clear"])
            rs = self.responses(evs)
            self.assertEqual(len(rs), 2)
            self.assertTrue(all("alt_svc_removed" not in r for r in rs), rs)


class Http2(AltSvcBase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H2Origin()

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()

    def test_false_removes_h3_entries_and_reports_them(self):
        with Proxy(config=self.config(False)) as p:
            hs, bodies = self.curl(p, "--http2", ["/altsvc/mixed", "/altsvc/h3only", "/gen/1/5"])
            evs = p.checked_events()
        self.assertEqual(bodies[:2], [b"alt"] * 2)
        final = [h[-1] for h in hs]
        self.assertTrue(all(st.startswith("HTTP/2 200") for st, _ in final), final)
        self.assertEqual(alt_svc(final[0][1]), ['h2=":443"'])
        self.assertEqual(alt_svc(final[1][1]), [], "an Alt-Svc with only h3 entries is gone")
        self.assertIn(("content-length", "3"), final[1][1])
        rs = self.responses(evs)
        self.assertEqual(len(rs), 3)
        self.assertTrue(all(r["http_version"] == "2" for r in rs))
        self.assertEqual(alt_svc(rs[0]["headers"]), [ALT_SVC["mixed"][0][1].decode()])
        self.assertEqual(rs[0]["alt_svc_removed"], [H3_ENTRY])
        self.assertEqual(alt_svc(rs[1]["headers"]), [H3_ENTRY])
        self.assertEqual(rs[1]["alt_svc_removed"], [H3_ENTRY])
        self.assertNotIn("alt_svc_removed", rs[2])

    def test_default_relays_alt_svc_unchanged(self):
        with Proxy(config=self.config(None)) as p:
            hs, bodies = self.curl(p, "--http2", ["/altsvc/mixed", "/altsvc/h3only"])
            evs = p.checked_events()
        self.assertEqual(bodies, [b"alt"] * 2)
        self.assertEqual(alt_svc(hs[0][-1][1]), [MIXED])
        self.assertEqual(alt_svc(hs[1][-1][1]), [H3_ENTRY])
        rs = self.responses(evs)
        self.assertEqual(len(rs), 2)
        self.assertTrue(all("alt_svc_removed" not in r for r in rs), rs)


if __name__ == "__main__":
    unittest.main()
