"""soth-mitm --engine mitmproxy (docs/bridge.md, "The mitmproxy engine"): mitmdump 8.1 from
Debian carries the traffic, with the addon of dist/mitmproxy and options translated from the
same config a native run takes; soth-mitm prints the same readiness line and its event stream
(worker -1) describes the flows, passing the shared checker (eventcheck.py).

mitmdump missing is a failure here, never a skip: ci/setup.sh installs it.
"""
import asyncio
import base64
import http.server
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import grpc
import websockets

from h2_origin import H2Origin, body_for
from harness import PROXY_BIN, EchoServer, Proxy, by_flow, connect_tunnel
from test_grpc_payload import GrpcOrigin, make_pki as make_grpc_pki, msg as grpc_msg
from test_http1 import make_origin_ca
from test_ws_sse import SSE_EXPECTED, SSEOrigin, WSOrigin

TIMEOUT = 20


def engine_proxy(config, mode="regular"):
    """soth-mitm --engine mitmproxy through the shared harness (no --workers: refused)."""
    return Proxy(mode=mode, workers=None, config=config, extra_args=["--engine", "mitmproxy"])


class TLSOrigin:
    """HTTPS/1.1 origin (python http.server over TLS): GET /hello answers "hello h1",
    POST /echo the request body back."""

    def __init__(self, d):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "o.pem"), os.path.join(d, "o.key"))
        ctx.set_alpn_protocols(["http/1.1"])

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self._answer(b"hello h1")

            def do_POST(self):
                n = int(self.headers.get("content-length", "0"))
                self._answer(self.rfile.read(n))

            def _answer(self, body):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class MitmEngineTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("mitmdump") is None:
            raise AssertionError("mitmdump not found: install mitmproxy (ci/setup.sh)")
        cls.dir = tempfile.mkdtemp(prefix="soth-mitmengine-")
        make_origin_ca(cls.dir)
        cls.h1 = TLSOrigin(cls.dir)
        cls.h2 = H2Origin()
        cls.ws = WSOrigin(tls_dir=cls.dir)
        cls.sse = SSEOrigin(tls_dir=cls.dir)
        cls.bundle = os.path.join(cls.dir, "origins.pem")
        with open(cls.bundle, "w") as out:
            for ca in (os.path.join(cls.dir, "ca.pem"), cls.h2.ca):
                with open(ca) as f:
                    out.write(f.read())

    @classmethod
    def tearDownClass(cls):
        cls.h1.close()
        cls.h2.close()
        cls.ws.close()
        cls.sse.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def config(self, **extra):
        cfg = {"resolve": {"origin.test": "127.0.0.1"}, "policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": self.bundle}}
        cfg.update(extra)
        return cfg

    @staticmethod
    def ca(p):
        return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")

    def curl(self, p, url, *args):
        out = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "--cacert", self.ca(p),
                              "-x", f"http://127.0.0.1:{p.port}", *args, url],
                             capture_output=True, timeout=TIMEOUT + 10)
        self.assertEqual(out.returncode, 0, out.stderr.decode() + p.diagnostics())
        return out.stdout

    def closed_flows(self, p, n, timeout=TIMEOUT):
        """Wait until n flows have their stream_closed; returns {flow_id: events}."""
        deadline = time.time() + timeout
        while True:
            flows = by_flow(p.checked_events(settle=0.1, require_closed=False))
            done = {k: v for k, v in flows.items() if v[-1]["type"] == "stream_closed"}
            if len(done) >= n:
                return done
            self.assertLess(time.time(), deadline, f"{len(done)} of {n} flows closed\n" +
                            p.diagnostics())
            time.sleep(0.2)

    def test_readiness_line_and_clean_stop(self):
        with engine_proxy(self.config()) as p:
            err = p.stderr()
            self.assertRegex(err, r"soth-mitm: listening on 127\.0\.0\.1:\d+ \(mode regular, "
                                  r"0 workers, events ")
            kids = subprocess.run(["pgrep", "-P", str(p.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            self.assertEqual(len(kids), 1, "one mitmdump child expected: " + err)
            with open(f"/proc/{kids[0]}/cmdline", "rb") as f:
                self.assertIn(b"mitmdump", f.read())
        # the harness asserted exit 0 after SIGTERM; the child is gone with it
        self.assertFalse(os.path.exists(f"/proc/{kids[0]}"), "mitmdump outlived soth-mitm")

    def test_http1_and_http2_through_connect(self):
        with engine_proxy(self.config()) as p:
            body = os.urandom(3000)
            out = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "--http1.1",
                                  "--cacert", self.ca(p), "-x", f"http://127.0.0.1:{p.port}",
                                  "--data-binary", "@-", f"https://origin.test:{self.h1.port}/echo"],
                                 input=body, capture_output=True, timeout=TIMEOUT + 10)
            self.assertEqual(out.returncode, 0, out.stderr.decode() + p.diagnostics())
            self.assertEqual(out.stdout, body)
            got = self.curl(p, f"https://origin.test:{self.h2.port}/gen/7/20000", "--http2")
            self.assertEqual(got, body_for(7, 20000))
            flows = list(self.closed_flows(p, 2).values())
            for fl in flows:
                self.assertTrue(all(e["worker"] == -1 for e in fl), fl)
                types = [e["type"] for e in fl]
                self.assertEqual(types[:2], ["connect_received", "connect_decision"])
                self.assertEqual((fl[0]["method"], fl[1]["decision"], fl[1]["reason"]),
                                 ("CONNECT", "intercept", "default"))
                for side in ("client", "upstream"):
                    ok = [e for e in fl if e["type"] == "tls_handshake_succeeded" and
                          e["side"] == side]
                    self.assertEqual(len(ok), 1, (side, types))
                self.assertIn("exchange_completed", types)
            h1 = [fl for fl in flows if fl[0]["server_port"] == self.h1.port][0]
            h2 = [fl for fl in flows if fl[0]["server_port"] == self.h2.port][0]
            req = [e for e in h1 if e["type"] == "request_headers"][0]
            self.assertEqual((req["method"], req["path"], req["http_version"]),
                             ("POST", "/echo", "1.1"))
            chunks = [e for e in h1 if e["type"] == "request_body_chunk"]
            self.assertEqual(sum(c["len"] for c in chunks), len(body))
            self.assertEqual(b"".join(base64.b64decode(c["data_b64"]) for c in chunks), body)
            resp = [e for e in h2 if e["type"] == "response_headers"][0]
            self.assertEqual((resp["status"], resp["http_version"]), (200, "2"))
            done = [e for e in h2 if e["type"] == "exchange_completed"][0]
            self.assertEqual((done["outcome"], done["response_bytes"]), ("complete", 20000))
            self.assertEqual(h2[-1]["protocol"], "http2")

    def test_reverse_and_socks5_modes(self):
        port = self.h1.port
        with engine_proxy(self.config(), mode=f"reverse:https://origin.test:{port}") as p:
            out = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "--cacert",
                                  self.ca(p), "--resolve", f"origin.test:{p.port}:127.0.0.1",
                                  f"https://origin.test:{p.port}/hello"],
                                 capture_output=True, timeout=TIMEOUT + 10)
            self.assertEqual(out.stdout, b"hello h1", out.stderr.decode() + p.diagnostics())
            fl = list(self.closed_flows(p, 1).values())[0]
            self.assertEqual((fl[0]["type"], fl[0]["method"], fl[0]["target"]),
                             ("connect_received", None, f"origin.test:{port}"))
            self.assertIn("exchange_completed", [e["type"] for e in fl])
        with engine_proxy(self.config(), mode="socks5") as p:
            out = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "--cacert",
                                  self.ca(p), "--socks5-hostname", f"127.0.0.1:{p.port}",
                                  f"https://origin.test:{port}/hello"],
                                 capture_output=True, timeout=TIMEOUT + 10)
            self.assertEqual(out.stdout, b"hello h1", out.stderr.decode() + p.diagnostics())
            fl = list(self.closed_flows(p, 1).values())[0]
            self.assertEqual((fl[0]["type"], fl[0]["method"], fl[0]["target"]),
                             ("connect_received", "SOCKS5", f"origin.test:{port}"))
            self.assertIn("exchange_completed", [e["type"] for e in fl])

    def test_websocket_echo(self):
        with engine_proxy(self.config()) as p:
            port = self.ws.port
            msgs = ["hello", b"\x00\x01binary\xff", "x" * 5000]

            async def client():
                s, head = connect_tunnel(p, "origin.test", port, timeout=TIMEOUT)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                s.setblocking(False)
                ctx = ssl.create_default_context(cafile=self.ca(p))
                async with websockets.connect(f"wss://origin.test:{port}/echo", ssl=ctx, sock=s,
                                              server_hostname="origin.test",
                                              open_timeout=TIMEOUT, ping_interval=None,
                                              compression=None) as ws:
                    for m in msgs:
                        await ws.send(m)
                        self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), m)

            asyncio.run(asyncio.wait_for(client(), 60))
            fl = list(self.closed_flows(p, 1).values())[0]
            self.assertEqual(fl[-1]["protocol"], "websocket")
            ws = [e for e in fl if e["type"] == "ws_message"]
            data = [(e["direction"], e["opcode"], e["len"], base64.b64decode(e["data_b64"]),
                     e["truncated"]) for e in ws]
            want = []
            for m in msgs:
                b = m.encode() if isinstance(m, str) else m
                op = 1 if isinstance(m, str) else 2
                cap = (b[:4096], len(b) > 4096)  # events.body_capture_bytes
                want += [("client_to_server", op, len(b)) + cap,
                         ("server_to_client", op, len(b)) + cap]
            self.assertEqual(data[:len(want)], want)
            resp = [e for e in fl if e["type"] == "response_headers"][0]
            self.assertEqual(resp["status"], 101)

    def test_sse_stream(self):
        with engine_proxy(self.config()) as p:
            s, head = connect_tunnel(p, "origin.test", self.sse.port, timeout=TIMEOUT)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            ctx = ssl.create_default_context(cafile=self.ca(p))
            t = ctx.wrap_socket(s, server_hostname="origin.test")
            t.sendall(b"GET /sse/chunked HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            buf = b""
            while b"data: first" not in buf:
                d = t.recv(65536)
                self.assertTrue(d, "stream ended before event 1: " + repr(buf))
                buf += d
            # event 1 came through while the origin holds the rest: the addon streams SSE
            self.sse.seen1.set()
            while not buf.endswith(b"0\r\n\r\n"):
                d = t.recv(65536)
                if not d:
                    break
                buf += d
            t.close()
            fl = list(self.closed_flows(p, 1).values())[0]
            self.assertEqual(fl[-1]["protocol"], "sse")
            evs = [{k: e[k] for k in ("event", "id", "retry", "data")}
                   for e in fl if e["type"] == "sse_event"]
            self.assertEqual(evs, SSE_EXPECTED)
            self.assertFalse(self.sse.waited_out)

    def test_grpc_call_is_reported_as_grpc(self):
        # grpcio offers ALPN grpc-exp next to h2; negotiated with the origin it made mitmproxy
        # relay the connection opaquely (no exchange at all): the addon leaves it out
        d = tempfile.mkdtemp(prefix="soth-mitm-grpc-", dir=self.dir)
        ca, cert, key = make_grpc_pki(d)
        origin = GrpcOrigin(cert, key)
        try:
            with engine_proxy(self.config(tls={"upstream_ca_file": ca})) as p:
                with open(self.ca(p), "rb") as f:
                    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
                ch = grpc.secure_channel(f"origin.test:{origin.port}", creds, options=[
                    ("grpc.http_proxy", f"http://127.0.0.1:{p.port}"),
                    ("grpc.enable_retries", 0)])
                r = ch.unary_unary("/test.Echo/Unary")(grpc_msg("unary", 3), timeout=TIMEOUT)
                ch.close()
                self.assertEqual(json.loads(r)["i"], 3)
                fl = list(self.closed_flows(p, 1).values())[0]
                alpn = {e["side"]: e["alpn"] for e in fl
                        if e["type"] == "tls_handshake_succeeded"}
                self.assertEqual(alpn, {"client": "h2", "upstream": "h2"})
                req = [e for e in fl if e["type"] == "request_headers"]
                self.assertEqual([(e["method"], e["path"]) for e in req],
                                 [("POST", "/test.Echo/Unary")])
                done = [e for e in fl if e["type"] == "exchange_completed"]
                self.assertEqual([e["outcome"] for e in done], ["complete"])
                self.assertEqual(fl[-1]["protocol"], "grpc")
        finally:
            origin.close()

    def test_client_leaving_mid_clienthello_is_no_tls_failure(self):
        # Half a ClientHello, then FIN: no handshake began (the native engine reports none
        # either), and above all no unknown_ca, which would count toward TLS learning.
        ctx = ssl.create_default_context()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="origin.test")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        with engine_proxy(self.config()) as p:
            s, head = connect_tunnel(p, "origin.test", self.h1.port, timeout=TIMEOUT)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.sendall(hello[:len(hello) // 2])
            time.sleep(0.3)
            s.close()
            fl = list(self.closed_flows(p, 1).values())[0]
            self.assertEqual([e["type"] for e in fl],
                             ["connect_received", "connect_decision", "stream_closed"])
            self.assertEqual(fl[-1]["reason_code"], "client_eof")

    def test_block_rule_answers_403_naming_it(self):
        cfg = self.config(policy={"default": "intercept",
                                  "rules": [{"host": "*.blocked.test", "action": "block",
                                                 "id": "ads"}]})
        with engine_proxy(cfg) as p:
            s, head = connect_tunnel(p, "ads.blocked.test", 443, timeout=TIMEOUT)
            self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)
            n = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                     if ln.lower().startswith(b"content-length:")][0])
            rest = b""
            s.settimeout(TIMEOUT)
            while len(rest) < n:
                d = s.recv(65536)
                if not d:
                    break
                rest += d
            s.close()
            self.assertIn(b'soth-mitm: ads.blocked.test:443 is blocked by policy rule '
                          b'"*.blocked.test"', rest)
            fl = list(self.closed_flows(p, 1).values())[0]
            dec = [e for e in fl if e["type"] == "connect_decision"][0]
            # rule: its id (docs/events.md), as the native engine says it
            self.assertEqual((dec["decision"], dec["reason"], dec["rule"], dec["route"]),
                             ("block", "policy_rule", "ads", "direct"))
            self.assertEqual(fl[-1]["reason_code"], "blocked")

    def test_tunnel_rule_keeps_bytes_intact(self):
        echo = EchoServer()
        try:
            cfg = self.config(policy={"default": "intercept",
                                      "rules": [{"host": "origin.test", "action": "tunnel"}]})
            with engine_proxy(cfg) as p:
                s, head = connect_tunnel(p, "origin.test", echo.port, timeout=TIMEOUT)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                payload = os.urandom(100000)
                s.sendall(payload)
                # mitmproxy 8.1 does not pass a half-close through a tunnel: read what was sent
                s.settimeout(TIMEOUT)
                got = b""
                while len(got) < len(payload):
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                s.close()
                self.assertEqual(got, payload)
                fl = list(self.closed_flows(p, 1).values())[0]
                dec = [e for e in fl if e["type"] == "connect_decision"][0]
                # a rule without an id is named by its index
                self.assertEqual((dec["decision"], dec["reason"], dec["rule"]),
                                 ("tunnel", "policy_rule", "0"))
                self.assertFalse([e for e in fl if e["type"].startswith("tls_")], fl)
        finally:
            echo.close()

    def test_sighup_reloads_the_policy_without_restarting_mitmdump(self):
        with engine_proxy(self.config()) as p:
            kid = subprocess.run(["pgrep", "-P", str(p.proc.pid)], capture_output=True,
                                 text=True).stdout.split()
            s, head = connect_tunnel(p, "origin.test", self.h1.port, timeout=TIMEOUT)
            s.close()
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            with open(os.path.join(p.tmp, "config.json"), "w") as f:
                json.dump(self.config(policy={"default": "intercept", "rules": [
                    {"host": "origin.test", "action": "block"}]}), f)
            p.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + TIMEOUT
            while True:
                time.sleep(0.5)  # the addon looks at its policy file at most once a second
                s, head = connect_tunnel(p, "origin.test", self.h1.port, timeout=TIMEOUT)
                s.close()
                if head.startswith(b"HTTP/1.1 403"):
                    break
                self.assertLess(time.time(), deadline, "reload not applied\n" + p.stderr())
            self.assertIn("SIGHUP: policy reloaded", p.stderr())
            self.assertEqual(subprocess.run(["pgrep", "-P", str(p.proc.pid)],
                                            capture_output=True, text=True).stdout.split(), kid)

    def check(self, cfg, *flags):
        path = os.path.join(self.dir, "check.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return subprocess.run([PROXY_BIN, "--check-config", path, *flags], capture_output=True,
                              text=True, timeout=30)

    def test_check_config_same_output_or_refusal_naming_the_key(self):
        cfg = self.config(policy={"default": "intercept",
                                  "rules": [{"host": "*.bank.example", "action": "tunnel"}]},
                          ignore_hosts=["^.*\\.apple\\.com:443$"], http2_enabled=False)
        native = self.check(cfg)
        mitm = self.check(cfg, "--engine", "mitmproxy")
        self.assertEqual((native.returncode, mitm.returncode), (0, 0), mitm.stderr)
        self.assertEqual(native.stdout, mitm.stdout)
        for key, value, name in [("tls", {"leaf_cache_size": 5}, "tls.leaf_cache_size"),
                                 ("timeouts", {"connect_ms": 500}, "timeouts.connect_ms"),
                                 ("workers", 2, "workers"),
                                 ("busy_poll_us", 50, "busy_poll_us"),
                                 ("wake_batch_us", 20, "wake_batch_us"),
                                 ("identities", {"networks": [{"id": "lo", "cidrs":
                                                               ["127.0.0.0/8"]}]}, "identities"),
                                 ("policy", {"rules": [{"host": "a.test", "action": "tunnel",
                                                        "budget": {"requests": 5,
                                                                   "window_s": 9}}]},
                                  "policy")]:
            bad = dict(cfg)
            bad[key] = value
            self.assertEqual(self.check(bad).returncode, 0)
            out = self.check(bad, "--engine", "mitmproxy")
            self.assertEqual(out.returncode, 2, out.stdout)
            self.assertEqual(out.stdout, "")
            self.assertTrue(out.stderr.startswith(
                f"config: {name}: not supported by --engine mitmproxy"), out.stderr)
        # and the run refuses the same way before starting anything
        path = os.path.join(self.dir, "bad.json")
        with open(path, "w") as f:
            json.dump({"tls": {"leaf_cache_size": 5}}, f)
        out = subprocess.run([PROXY_BIN, "--config", path, "--engine", "mitmproxy",
                              "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn("config: tls.leaf_cache_size: not supported by --engine mitmproxy",
                      out.stderr)

    def test_missing_mitmdump_is_a_clear_error(self):
        d = tempfile.mkdtemp(prefix="soth-nomitm-")
        try:
            out = subprocess.run([PROXY_BIN, "--engine", "mitmproxy", "--listen", "127.0.0.1:0",
                                  "--ca-dir", os.path.join(d, "ca"), "--event-ring",
                                  os.path.join(d, "ring")], capture_output=True, text=True,
                                 timeout=30, env=dict(os.environ, PATH=d))
            self.assertEqual(out.returncode, 1)
            self.assertIn("mitmdump not found on PATH", out.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_mitmdump_dies_with_soth_mitm(self):
        p = engine_proxy(self.config())
        try:
            kid = int(subprocess.run(["pgrep", "-P", str(p.proc.pid)], capture_output=True,
                                     text=True).stdout.split()[0])
            p.proc.kill()  # no chance to stop the child itself
            p.proc.wait(TIMEOUT)
            deadline = time.time() + TIMEOUT
            while os.path.exists(f"/proc/{kid}"):
                with open(f"/proc/{kid}/stat") as f:
                    if f.read().split(") ")[1].startswith("Z"):
                        break  # dead, waiting for init to reap it
                self.assertLess(time.time(), deadline, "mitmdump outlived a killed soth-mitm")
                time.sleep(0.1)
        finally:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
            p._stderr.close()
            shutil.rmtree(p.tmp, ignore_errors=True)

    def test_child_exit_stops_soth_mitm(self):
        p = engine_proxy(self.config())
        try:
            kid = subprocess.run(["pgrep", "-P", str(p.proc.pid)], capture_output=True,
                                 text=True).stdout.split()[0]
            os.kill(int(kid), signal.SIGKILL)
            rc = p.proc.wait(TIMEOUT)
            self.assertEqual(rc, 1)
            self.assertIn("mitmdump exited unexpectedly", p.stderr())
        finally:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
            p._stderr.close()
            shutil.rmtree(p.tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
