"""Exchanges assembled from events (docs/exchanges.md) through the real binary.

One intercepting proxy with a jsonl sink of "format": "exchange" carries, each on its own
connection: curl HTTP/1.1 POST with a body (an HTTP/1.1 TLS origin echoes it), curl HTTP/2 POST
with a body (the h2 origin echoes it), a WebSocket echo session, an SSE stream, a blocked CONNECT
and a tunnelled one. `soth-mitm-tail --exchanges --from-start --once RING` must print one
exchange per exchange with the method, path, status and body bytes the clients sent and got,
and the sink must hold exactly the same lines.
"""
import asyncio
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import websockets

from h2_origin import H2Origin, body_for
from harness import TAIL_BIN, EchoServer, Proxy, connect_tunnel, read_all
from test_http1 import make_origin_ca
from test_ws_sse import WSOrigin

TIMEOUT = 20
CAP = 4096
SSE_BODY = [b"event: greeting\nid: 1\ndata: first\n\n", b"data: second\ndata: more\n\n"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in SSE_BODY:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class H1Origin:
    """HTTP/1.1 over TLS: POST echoes the body, GET streams two server-sent events."""

    def __init__(self, d):
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "o.pem"), os.path.join(d, "o.key"))
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class ExchangeTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-xch-")
        make_origin_ca(cls.dir)
        cls.h1 = H1Origin(cls.dir)
        cls.ws = WSOrigin(tls_dir=cls.dir)
        cls.h2 = H2Origin()
        cls.echo = EchoServer()
        cls.cas = os.path.join(cls.dir, "cas.pem")
        with open(cls.cas, "wb") as out:
            for ca in (os.path.join(cls.dir, "ca.pem"), cls.h2.ca):
                with open(ca, "rb") as f:
                    out.write(f.read())

    @classmethod
    def tearDownClass(cls):
        cls.h1.close()
        cls.ws.close()
        cls.h2.close()
        cls.echo.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def curl(self, p, ca, version, url, data):
        up = os.path.join(self.dir, "up.bin")
        with open(up, "wb") as f:
            f.write(data)
        out = subprocess.run(["curl", "-sS", version, "--cacert", ca, "-x",
                              f"http://127.0.0.1:{p.port}", "--data-binary", "@" + up, url],
                             capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def tail_exchanges(self, p, want):
        deadline = time.time() + TIMEOUT
        while True:
            out = subprocess.run([TAIL_BIN, "--exchanges", "--from-start", "--once", p.ring],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            lines = out.stdout.decode().splitlines()
            if len(lines) >= want or time.time() > deadline:
                return lines
            time.sleep(0.1)

    def test_every_kind_of_exchange_from_the_ring_and_the_sink(self):
        sink = os.path.join(self.dir, "exchanges.jsonl")
        cfg = {"policy": {"default": "intercept",
                          "rules": [{"host": "blocked.test", "action": "block"},
                                    {"host": "tunnel.test", "action": "tunnel"}]},
               "resolve": {"origin.test": "127.0.0.1", "tunnel.test": "127.0.0.1",
                           "blocked.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.cas},
               "events": {"sinks": [{"type": "jsonl", "path": sink, "format": "exchange"}]}}
        with Proxy(config=cfg) as p:
            pca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            # HTTP/1.1 and HTTP/2 with bodies (larger than the capture)
            b1, b2 = body_for(3, 6000), body_for(4, 70000)
            got1 = self.curl(p, pca, "--http1.1", f"https://origin.test:{self.h1.port}/echo1",
                             b1)
            self.assertEqual(got1, b1)
            got2 = self.curl(p, pca, "--http2", f"https://origin.test:{self.h2.port}/echo", b2)
            self.assertEqual(got2, b2)
            # SSE
            out = subprocess.run(["curl", "-sS", "--http1.1", "--cacert", pca, "-x",
                                  f"http://127.0.0.1:{p.port}",
                                  f"https://origin.test:{self.h1.port}/events"],
                                 capture_output=True, timeout=60)
            self.assertEqual(out.stdout, b"".join(SSE_BODY), out.stderr)
            # WebSocket echo
            msgs = ["hello", b"\x00\x01binary"]

            async def ws_client():
                s, head = connect_tunnel(p, "origin.test", self.ws.port, TIMEOUT)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                s.setblocking(False)
                ctx = ssl.create_default_context(cafile=pca)
                async with websockets.connect(f"wss://origin.test:{self.ws.port}/echo", ssl=ctx,
                                              sock=s, server_hostname="origin.test",
                                              open_timeout=TIMEOUT, ping_interval=None,
                                              compression=None) as ws:
                    for m in msgs:
                        await ws.send(m)
                        self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), m)
            asyncio.run(asyncio.wait_for(ws_client(), 60))
            # blocked and tunnelled CONNECTs
            s, head = connect_tunnel(p, "blocked.test", 443, TIMEOUT)
            self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)
            s.close()
            s, head = connect_tunnel(p, "tunnel.test", self.echo.port, TIMEOUT)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.sendall(b"ping through")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(read_all(s), b"ping through")
            s.close()
            lines = self.tail_exchanges(p, 6)
        # After the proxy's exit its jsonl sink holds every line.
        with open(sink) as f:
            sink_lines = f.read().splitlines()
        self.assertEqual(sink_lines, lines, "the sink writes what soth-mitm-tail assembles")
        xs = [json.loads(line) for line in lines]
        self.assertEqual(len(xs), 6, lines)
        for x in xs:
            self.assertEqual(x["v"], 1)
            self.assertEqual(x["exchange_id"], f"{x['flow_id']}-{x['stream_id']}")
            self.assertEqual(x["events_dropped"], 0, x)
            self.assertNotIn("partial", x)
        by_path = {(x["request"]["path"], x["protocol"]): x for x in xs if x["request"]}

        def body(msg, data):
            self.assertEqual(msg["body"]["bytes"], len(data))
            self.assertEqual(base64.b64decode(msg["body"]["captured_b64"]), data[:CAP])
            self.assertEqual(msg["body"]["truncated"], len(data) > CAP)

        # The h1 origin negotiates no ALPN, so neither does the client leg (docs/tls.md).
        for path, data, version, alpn in (("/echo1", b1, "HTTP/1.1", None),
                                          ("/echo", b2, "HTTP/2", "h2")):
            x = by_path[(path, "http1" if alpn is None else "http2")]
            self.assertEqual((x["decision"], x["request"]["method"], x["response"]["status"],
                              x["request"]["http_version"], x["outcome"]),
                             ("intercept", "POST", 200, version, "complete"), x)
            self.assertEqual(x["tls"]["client"]["alpn"], alpn)
            self.assertEqual(x["tls"]["client"]["sni"], "origin.test")
            self.assertEqual(x["protocol"], "http1" if alpn is None else "http2")
            body(x["request"], data)
            body(x["response"], data)
            self.assertLessEqual(x["started_ns"], x["ended_ns"])
        sse = by_path[("/events", "sse")]
        self.assertEqual((sse["protocol"], sse["response"]["status"]), ("sse", 200))
        self.assertEqual(sse["sse"]["events"],
                         [{"event": "greeting", "id": "1", "retry": None, "data": "first"},
                          {"event": "message", "id": "1", "retry": None,
                           "data": "second\nmore"}])
        body(sse["response"], b"".join(SSE_BODY))
        ws = by_path[("/echo", "websocket")]
        self.assertEqual((ws["request"]["method"], ws["response"]["status"]), ("GET", 101))
        self.assertEqual(ws["ws"]["messages"], 2 * len(msgs) + 2, ws)  # and the two closes
        self.assertEqual([t["initiator"] for t in ws["ws"]["turns"]],
                         ["client_to_server"] * len(msgs))
        never = {x["decision"]: x for x in xs if x["stream_id"] == 0}
        self.assertEqual(set(never), {"block", "tunnel"}, never)
        self.assertEqual((never["block"]["outcome"], never["block"]["rule"],
                          never["block"]["request"], never["block"]["response"]),
                         ("blocked", "0", None, None))
        self.assertEqual((never["tunnel"]["server_host"], never["tunnel"]["tls"],
                          never["tunnel"]["protocol"]), ("tunnel.test", None, "tcp"))
        self.assertIn(never["tunnel"]["outcome"], ("client_eof", "relay_eof"))


if __name__ == "__main__":
    unittest.main()
