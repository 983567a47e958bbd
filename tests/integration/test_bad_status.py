"""A response status outside 100..999 is a malformed response (docs/http1.md `bad_status`,
docs/http2.md "Outcomes"): the client gets a 502, nothing of the origin's response is relayed,
no `response_headers` event is written and the exchange ends `upstream_aborted`. HTTP/1.1
through reverse mode to a raw TCP origin; HTTP/2 through reverse mode's TLS listener (curl
--http2) to a python h2 origin that sends `:status` 099 or 000, which nghttp2 lets through."""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import h2.config
import h2.connection
import h2.events

from h2_origin import make_origin_pki
from harness import Proxy

SECRET = b"origin body that must not reach the client"


def listen():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    return ls


class H1Origin:
    """Answers every request with `HTTP/1.1 <status> X` and a small body."""

    def __init__(self, status):
        self.status = status
        self.ls = listen()
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with c:
                c.settimeout(10)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        break
                    buf += d
                c.sendall(b"HTTP/1.1 %s X\r\nContent-Length: %d\r\n\r\n" % (
                    self.status.encode(), len(SECRET)) + SECRET)

    def close(self):
        self.ls.close()


class H2StatusOrigin:
    """TLS, ALPN h2; answers GET /status/NNN with `:status` NNN (sent unchecked), then the body
    for a status from 100 up; below 100 the stream stays open until the proxy resets it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soth-badstatus-")
        self.ca, cert, key = make_origin_pki(self.dir)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2"])
        self.ls = listen()
        self.port = self.ls.getsockname()[1]
        self.resets = []  # error codes of RST_STREAM received
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                raw, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(raw,), daemon=True).start()

    def conn(self, raw):
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        cfg = h2.config.H2Configuration(client_side=False, validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        c = h2.connection.H2Connection(config=cfg)
        c.initiate_connection()
        s.settimeout(15)
        try:
            s.sendall(c.data_to_send())
            while True:
                d = s.recv(65536)
                if not d:
                    return
                for ev in c.receive_data(d):
                    if isinstance(ev, h2.events.RequestReceived):
                        path = dict(ev.headers).get(b":path", b"/status/200")
                        st = path.rsplit(b"/", 1)[-1]
                        c.send_headers(ev.stream_id, [(b":status", st),
                                                      (b"content-length", b"%d" % len(SECRET))])
                        if st >= b"100":
                            c.send_data(ev.stream_id, SECRET, end_stream=True)
                        # else the body stays pending: the proxy has to reset the stream
                    elif isinstance(ev, h2.events.StreamReset):
                        self.resets.append(int(ev.error_code))
                s.sendall(c.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            s.close()

    def close(self):
        self.ls.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def exchanges(evs):
    out = {}
    for e in evs:
        if "stream_id" in e:
            out.setdefault((e["flow_id"], e["stream_id"]), []).append(e)
    return list(out.values())


class BadStatusTests(unittest.TestCase):
    def check_events(self, evs, n):
        ex = exchanges(evs)
        self.assertEqual(len(ex), n)
        for x in ex:
            types = [e["type"] for e in x]
            self.assertEqual(types[0], "request_headers")
            self.assertNotIn("response_headers", types)
            self.assertNotIn("response_body_chunk", types)
            done = [e for e in x if e["type"] == "exchange_completed"]
            self.assertEqual([e["outcome"] for e in done], ["upstream_aborted"])
            # the event says why (docs/events.md, exchange_completed `reason`)
            self.assertEqual([e.get("reason") for e in done], ["response_bad_status"])

    def test_http1_status_below_100_gets_502(self):
        for status in ("099", "000", "042"):
            with self.subTest(status=status):
                o = H1Origin(status)
                try:
                    with Proxy(mode=f"reverse:http://127.0.0.1:{o.port}",
                               config={"policy": {"default": "intercept"}}) as p:
                        out = subprocess.run(
                            ["curl", "-sS", "-i", "--max-time", "20",
                             f"http://127.0.0.1:{p.port}/x"], capture_output=True, timeout=30)
                        self.assertEqual(out.returncode, 0, out.stderr)
                        self.assertTrue(out.stdout.startswith(b"HTTP/1.1 502 "), out.stdout)
                        self.assertIn(b"(bad_status)", out.stdout)
                        self.assertNotIn(SECRET, out.stdout)
                        evs = p.checked_events()
                finally:
                    o.close()
                self.check_events(evs, 1)
                closed = [e["reason_code"] for e in evs if e["type"] == "stream_closed"]
                self.assertEqual(closed, ["relay_error"])

    def test_http2_status_below_100_gets_502(self):
        o = H2StatusOrigin()
        try:
            cfg = {"resolve": {"origin.test": "127.0.0.1"}, "policy": {"default": "intercept"},
                   "tls": {"upstream_ca_file": o.ca}}
            with Proxy(mode=f"reverse:https://origin.test:{o.port}", config=cfg) as p:
                ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
                base = f"https://origin.test:{p.port}"
                # two malformed statuses and a good one on the same connection
                out = subprocess.run(
                    ["curl", "-sS", "--http2", "--cacert", ca, "--max-time", "8",
                     "--resolve", f"origin.test:{p.port}:127.0.0.1",
                     "-w", "%{http_code} %{http_version}\\n",
                     f"{base}/status/099", f"{base}/status/000", f"{base}/status/200"],
                    capture_output=True, timeout=30)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout.count(SECRET), 1, out.stdout)  # the 200's
                deadline = time.time() + 5
                while len(o.resets) < 2 and time.time() < deadline:
                    time.sleep(0.05)
                codes = [ln for ln in out.stdout.split(b"\n") if ln.endswith(b" 2")]
                self.assertEqual([ln[-5:] for ln in codes], [b"502 2", b"502 2", b"200 2"],
                                 out.stdout)
                evs = p.checked_events()
        finally:
            o.close()
        self.assertEqual(o.resets, [1, 1], "RST_STREAM(PROTOCOL_ERROR) for each, upstream")
        bad = [x for x in exchanges(evs) if any(e["type"] == "request_headers" and
                                                e["path"] != "/status/200" for e in x)]
        self.check_events([e for x in bad for e in x], 2)


if __name__ == "__main__":
    unittest.main()
