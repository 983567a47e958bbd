"""gRPC and payload decoding through the real binary (docs/streaming.md).

- gRPC (python grpcio, generic handlers, no protoc) through regular-mode interception: the
  client reaches the proxy with grpc's own HTTP CONNECT support (grpc.http_proxy) and trusts
  the proxy's CA; the origin is a grpcio TLS server the proxy trusts. Unary, server-streaming,
  client-streaming and bidi calls with messages over 16 KiB (split across DATA frames), with
  and without grpc-encoding gzip: grpc_message per message, payload_parsed for the JSON
  messages, trailers with grpc-status, protocol grpc, ALPN h2 on both legs (grpcio offers
  grpc-exp,h2; the proxy filters grpc-exp out of the upstream offer).
- HTTP/1.1 (plain, regular mode) origin serving JSON behind an anti-hijack prefix with
  gzip, br and zstd Content-Encoding, msgpack, and malformed msgpack: payload_parsed with the
  decoders in order and sanitized, while the client still gets every body byte-exact.
"""
import asyncio
import base64
import gzip
import http.client
import http.server
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
from concurrent import futures

import brotli
import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import msgpack
import websockets
import zstandard

from harness import Proxy, by_flow, close_listener
from eventcheck import by_stream


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d, name="origin.test"):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=grpc origin CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "o.key", "-out", "o.csr", "-subj", f"/CN={name}", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return (os.path.join(d, "ca.pem"), os.path.join(d, "o.pem"), os.path.join(d, "o.key"))


PAD = 20000  # every message is over 16 KiB: split across DATA frames


def msg(kind, i):
    return json.dumps({"kind": kind, "i": i, "pad": "p" * PAD}, separators=(",", ":")).encode()


class GrpcOrigin:
    """grpcio TLS server with generic handlers speaking raw bytes (JSON messages)."""

    def __init__(self, cert, key):
        def unary(req, ctx):
            return msg("unary-reply", json.loads(req)["i"])

        def server_stream(req, ctx):
            n = json.loads(req)["n"]
            for i in range(n):
                yield msg("ss-reply", i)

        def client_stream(it, ctx):
            count = sum(1 for _ in it)
            return msg("cs-reply", count)

        def bidi(it, ctx):
            for r in it:
                yield msg("bidi-reply", json.loads(r)["i"])

        h = grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  handlers=[h], compression=None)
        with open(key, "rb") as f:
            k = f.read()
        with open(cert, "rb") as f:
            c = f.read()
        self.port = self.server.add_secure_port("127.0.0.1:0",
                                                grpc.ssl_server_credentials([(k, c)]))
        self.server.start()

    def close(self):
        self.server.stop(0)


def wait_closed(p, n_flows=1, timeout=15):
    """Events once n_flows flows have their stream_closed (bounded wait)."""
    deadline = time.time() + timeout
    while True:
        evs = p.events(settle=0.1)
        if sum(1 for e in evs if e["type"] == "stream_closed") >= n_flows:
            return evs
        if time.time() > deadline:
            return evs
        time.sleep(0.1)


class GrpcTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-grpc-")
        cls.ca, cert, key = make_pki(cls.dir)
        cls.origin = GrpcOrigin(cert, key)

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def proxy(self):
        return Proxy(config={"policy": {"default": "intercept"},
                             "resolve": {"origin.test": "127.0.0.1"},
                             "tls": {"upstream_ca_file": self.ca}})

    def channel(self, p, compression=None):
        with open(os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"), "rb") as f:
            ca = f.read()
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.secure_channel(f"origin.test:{self.origin.port}", creds,
                                   options=[("grpc.http_proxy", f"http://127.0.0.1:{p.port}"),
                                            ("grpc.enable_retries", 0)],
                                   compression=compression)

    def run_calls(self, ch):
        unary = ch.unary_unary("/test.Echo/Unary")
        ss = ch.unary_stream("/test.Echo/ServerStream")
        cs = ch.stream_unary("/test.Echo/ClientStream")
        bidi = ch.stream_stream("/test.Echo/Bidi")
        r = unary(msg("unary", 7), timeout=20)
        self.assertEqual(json.loads(r)["kind"], "unary-reply")
        self.assertEqual(json.loads(r)["i"], 7)
        out = list(ss(json.dumps({"n": 3}).encode(), timeout=20))
        self.assertEqual([json.loads(x)["i"] for x in out], [0, 1, 2])
        r = cs(iter([msg("cs", i) for i in range(3)]), timeout=20)
        self.assertEqual(json.loads(r)["i"], 3)
        out = list(bidi(iter([msg("bidi", i) for i in range(3)]), timeout=20))
        self.assertEqual([json.loads(x)["i"] for x in out], [0, 1, 2])

    def check_flow(self, evs):
        flows = by_flow(evs)
        self.assertEqual(len(flows), 1, [e["type"] for e in evs])
        fl = list(flows.values())[0]
        # ALPN: h2 on both legs (grpc-exp filtered out of the upstream offer).
        alpn = {e["side"]: e["alpn"] for e in fl if e["type"] == "tls_handshake_succeeded"}
        self.assertEqual(alpn, {"client": "h2", "upstream": "h2"})
        streams = by_stream(fl)
        paths = {}
        for sid, s in streams.items():
            self.assertEqual(s[0]["type"], "request_headers")
            paths[s[0]["path"]] = s
        self.assertEqual(sorted(paths), ["/test.Echo/Bidi", "/test.Echo/ClientStream",
                                         "/test.Echo/ServerStream", "/test.Echo/Unary"])
        want = {"/test.Echo/Unary": (1, 1), "/test.Echo/ServerStream": (1, 3),
                "/test.Echo/ClientStream": (3, 1), "/test.Echo/Bidi": (3, 3)}
        for path, s in paths.items():
            with self.subTest(path=path):
                self.assertTrue(all(e["protocol"] == "grpc" for e in s), s[0])
                gm = [e for e in s if e["type"] == "grpc_message"]
                n_req = [e for e in gm if e["direction"] == "client_to_server"]
                n_resp = [e for e in gm if e["direction"] == "server_to_client"]
                self.assertEqual((len(n_req), len(n_resp)), want[path])
                for e in gm:
                    if e["length"] > 1000:  # the JSON messages (not {"n": 3})
                        self.assertGreater(e["length"], 16384)
                        self.assertFalse(e["compressed"])
                        data = base64.b64decode(e["data_b64"])
                        self.assertEqual(len(data), 4096)
                        self.assertTrue(e["truncated"])
                        self.assertTrue(data.startswith(b'{"kind":'))
                # One payload_parsed per JSON message, decoders in order.
                pp = [e for e in s if e["type"] == "payload_parsed"]
                self.assertEqual(len(pp), len(gm), [e["type"] for e in s])
                for e in pp:
                    self.assertEqual(e["decoders"], ["grpc", "json"])
                    self.assertEqual(e["format"], "json")
                    self.assertNotIn("error", e)
                    self.assertFalse(e["sanitized"])
                    v = e["value"]
                    self.assertTrue(isinstance(v, dict), v)
                    self.assertTrue("kind" in v or "n" in v, v)
                # Trailers carry grpc-status 0; exchange complete.
                tr = [e for e in s if e["type"] == "response_trailers"]
                self.assertEqual(len(tr), 1)
                self.assertIn(["grpc-status", "0"], tr[0]["headers"])
                rh = [e for e in s if e["type"] == "response_headers"][0]
                self.assertIn(["content-type", "application/grpc"], rh["headers"])
                self.assertLess(s.index(rh), s.index(tr[0]))
                self.assertEqual(s[-1]["type"], "exchange_completed")
                self.assertEqual(s[-1]["outcome"], "complete")
        return paths

    def test_unary_and_streaming_through_intercept(self):
        with self.proxy() as p:
            ch = self.channel(p)
            try:
                self.run_calls(ch)
            finally:
                ch.close()
            evs = wait_closed(p)
        paths = self.check_flow(evs)
        # The unary request's payload_parsed value is the message (capped at 16 KiB).
        s = paths["/test.Echo/Unary"]
        pp = [e for e in s if e["type"] == "payload_parsed"]
        self.assertEqual(pp[0]["direction"], "client_to_server")
        self.assertEqual(pp[0]["value"]["kind"], "unary")
        self.assertEqual(pp[0]["value"]["i"], 7)
        self.assertEqual(pp[1]["value"]["kind"], "unary-reply")

    def test_grpc_encoding_gzip(self):
        with self.proxy() as p:
            ch = self.channel(p, compression=grpc.Compression.Gzip)
            try:
                self.run_calls(ch)
            finally:
                ch.close()
            evs = wait_closed(p)
        fl = list(by_flow(evs).values())[0]
        streams = by_stream(fl)
        n_compressed = 0
        for s in streams.values():
            # Each payload_parsed directly follows its grpc_message: a compressed message
            # has grpc-encoding gzip undone after the framing.
            for a, b in zip(s, s[1:]):
                if b["type"] != "payload_parsed":
                    continue
                self.assertEqual(a["type"], "grpc_message")
                self.assertEqual(a["direction"], b["direction"])
                want = ["grpc", "gzip", "json"] if a["compressed"] else ["grpc", "json"]
                self.assertEqual(b["decoders"], want)
                self.assertEqual(b["format"], "json")
                self.assertTrue("kind" in b["value"] or "n" in b["value"], b)
                if a["compressed"]:
                    n_compressed += 1
                    self.assertLess(a["length"], PAD)  # gzip made it small
        # The client compresses its messages (grpc.Compression.Gzip on the channel).
        self.assertGreaterEqual(n_compressed, 7)


# ---------------------------------------------------------------- HTTP/1.1 payloads

DOC = {"items": [{"id": i, "name": f"item-{i}"} for i in range(20)], "ok": True}
DOC_TEXT = json.dumps(DOC).encode()
PREFIXED = b")]}',\n" + DOC_TEXT
MSGPACK_DOC = {"user": "ada", "ids": [1, 2, 3], "bin": b"\x00\xff", "f": 0.5}
BAD_MSGPACK = b"\x83\xa1a\x01\xa1b\xc1\xa1c\x02"  # reserved byte 0xc1 in a map value

BODIES = {
    "/gzip": ("application/json", "gzip", gzip.compress(PREFIXED)),
    "/br": ("application/json; charset=utf-8", "br", brotli.compress(PREFIXED)),
    "/zstd": ("application/json", "zstd", zstandard.ZstdCompressor().compress(PREFIXED)),
    "/gzip-br": ("application/json", "gzip, br", brotli.compress(gzip.compress(PREFIXED))),
    "/msgpack": ("application/msgpack", None, msgpack.packb(MSGPACK_DOC)),
    "/bad-msgpack": ("application/x-msgpack", None, BAD_MSGPACK),
    "/plain": ("application/json", None, b"while(1);" + DOC_TEXT),
    "/html": ("text/html", None, b"<p>not parsed</p>"),
    "/sse": ("text/event-stream", None,
             b'data: {"delta": "hi", "n": 1}\n\nevent: x\ndata: plain text\n\ndata: [DONE]\n\n'),
}


class PayloadOrigin:
    def __init__(self):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                ct, ce, body = BODIES[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ct)
                if ce:
                    self.send_header("Content-Encoding", ce)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class Http1PayloadTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = PayloadOrigin()

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()

    def fetch_all(self, p, paths):
        """GET each path over one keep-alive proxy connection (absolute-form); raw bodies."""
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=20)
        out = {}
        for path in paths:
            c.request("GET", f"http://origin.test:{self.origin.port}{path}",
                      headers={"Accept-Encoding": "gzip, br, zstd"})
            r = c.getresponse()
            out[path] = r.read()  # http.client does not decode: the bytes as sent
            self.assertEqual(r.status, 200)
        c.close()
        return out

    def parsed(self, evs):
        fl = list(by_flow(evs).values())[0]
        streams = by_stream(fl)
        res = {}
        for sid, s in streams.items():
            path = s[0]["path"]
            pp = [e for e in s if e["type"] == "payload_parsed"]
            res[path] = pp
            if pp:
                # after the response head and before exchange_completed
                self.assertEqual(s[-1]["type"], "exchange_completed")
                self.assertLess(s.index([e for e in s if e["type"] == "response_headers"][0]),
                                s.index(pp[0]))
        return res

    def test_encoded_json_msgpack_and_malformed(self):
        paths = list(BODIES)
        with Proxy(config={"policy": {"default": "intercept"},
                           "resolve": {"origin.test": "127.0.0.1"}}) as p:
            bodies = self.fetch_all(p, paths)
            evs = wait_closed(p)
        for path in paths:
            self.assertEqual(bodies[path], BODIES[path][2], f"{path}: body not byte-exact")
        res = self.parsed(evs)
        compact = json.loads(DOC_TEXT)
        for path, decs in (("/gzip", ["gzip", "json"]), ("/br", ["br", "json"]),
                           ("/zstd", ["zstd", "json"]), ("/gzip-br", ["br", "gzip", "json"])):
            with self.subTest(path=path):
                self.assertEqual(len(res[path]), 1)
                e = res[path][0]
                self.assertEqual(e["direction"], "server_to_client")
                self.assertEqual(e["decoders"], decs)
                self.assertTrue(e["sanitized"])
                self.assertEqual(e["format"], "json")
                self.assertEqual(e["value"], compact)
                self.assertEqual(e["protocol"], "http1")
        e = res["/plain"][0]
        self.assertEqual((e["decoders"], e["sanitized"], e["value"]), (["json"], True, compact))
        e = res["/msgpack"][0]
        self.assertEqual((e["decoders"], e["format"], e["sanitized"]),
                         (["msgpack"], "msgpack", False))
        self.assertEqual(e["value"], {"user": "ada", "ids": [1, 2, 3],
                                      "bin": base64.b64encode(b"\x00\xff").decode(), "f": 0.5})
        e = res["/bad-msgpack"][0]
        self.assertEqual(e["decoders"], ["msgpack"])
        self.assertEqual(e["error"], "msgpack: reserved byte 0xc1")
        self.assertNotIn("value", e)
        self.assertEqual(res["/html"], [])
        # SSE: the JSON event's data is parsed (framing sse); text and [DONE] say nothing.
        self.assertEqual([(e["decoders"], e["value"]) for e in res["/sse"]],
                         [(["sse", "json"], {"delta": "hi", "n": 1})])

    def test_request_body_and_truncated(self):
        """A JSON request body is parsed too; a body over the decode capture (64 KiB) is
        reported truncated; the echo comes back byte-exact."""
        small = json.dumps({"q": "x" * 100}).encode()
        big = json.dumps({"q": "y" * 100000}).encode()
        with Proxy(config={"policy": {"default": "intercept"},
                           "resolve": {"origin.test": "127.0.0.1"}}) as p:
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=20)
            got = []
            for body in (small, big):
                c.request("POST", f"http://origin.test:{self.origin.port}/echo", body=body,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                got.append(r.read())
            c.close()
            evs = wait_closed(p)
        self.assertEqual(got, [small, big])
        fl = list(by_flow(evs).values())[0]
        streams = by_stream(fl)
        pp1 = [e for e in streams[1] if e["type"] == "payload_parsed"]
        self.assertEqual([e["direction"] for e in pp1], ["client_to_server", "server_to_client"])
        self.assertEqual(pp1[0]["value"], {"q": "x" * 100})
        pp2 = [e for e in streams[2] if e["type"] == "payload_parsed"]
        self.assertEqual([e.get("error") for e in pp2], ["truncated", "truncated"])
        self.assertEqual(pp2[0]["format"], "json")


# ---------------------------------------------------------------- HTTP/2 origin (python h2)

def grpc_env(flag, m, declared=None):
    n = len(m) if declared is None else declared
    return bytes([flag]) + n.to_bytes(4, "big") + m


H2_JSON = gzip.compress(b")]}'\n" + DOC_TEXT)
H2_PATHS = {
    # path: (response headers, body, trailers)
    "/json": ([("content-type", "application/json"), ("content-encoding", "gzip")], H2_JSON,
              None),
    "/grpc-json": ([("content-type", "application/grpc+json")],
                   grpc_env(0, b'{"a":1}') + grpc_env(0, b'[true]'), [("grpc-status", "0")]),
    "/grpc-bad-flag": ([("content-type", "application/grpc")],
                       grpc_env(0, b"\x0a\x01x") + grpc_env(7, b"zz"), [("grpc-status", "0")]),
    "/grpc-truncated": ([("content-type", "application/grpc+json")],
                        grpc_env(0, b'{"cut":', declared=100), [("grpc-status", "0")]),
}


class H2PayloadOrigin:
    """A TLS origin speaking only h2 (python h2), answering H2_PATHS."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        s = raw
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            paths = {}
            for _ in range(10000):  # bounded
                data = s.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        paths[ev.stream_id] = dict(ev.headers)[b":path"].decode()
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        hdrs, body, trailers = H2_PATHS[paths[ev.stream_id]]
                        conn.send_headers(ev.stream_id, [(":status", "200")] + hdrs)
                        conn.send_data(ev.stream_id, body, end_stream=trailers is None)
                        if trailers:
                            conn.send_headers(ev.stream_id, trailers, end_stream=True)
                s.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            s.close()

    def close(self):
        close_listener(self.sock)


class Http2PayloadTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-h2pl-")
        cls.ca, cert, key = make_pki(cls.dir)
        cls.origin = H2PayloadOrigin(cert, key)

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_h2_json_and_grpc_framing_errors(self):
        """curl over HTTP/2 through interception: a gzip JSON body with an anti-hijack prefix,
        application/grpc+json messages, a bad flag byte and a message cut short at stream end
        (payload_parsed errors), every body byte-exact."""
        with Proxy(config={"policy": {"default": "intercept"},
                           "resolve": {"origin.test": "127.0.0.1"},
                           "tls": {"upstream_ca_file": self.ca}}) as p:
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            base = f"https://origin.test:{self.origin.port}"
            outs = {}
            for path in H2_PATHS:
                out = os.path.join(p.tmp, path.strip("/"))
                args = ["curl", "-sS", "--http2", "--cacert", ca, "-x",
                        f"http://127.0.0.1:{p.port}", "-o", out, base + path]
                if path.startswith("/grpc"):
                    args[1:1] = ["-H", "content-type: application/grpc+json", "-H", "te: trailers",
                                 "--data-binary", "@-"]
                r = subprocess.run(args, input=grpc_env(0, b'{"q":1}'), capture_output=True,
                                   timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                with open(out, "rb") as f:
                    outs[path] = f.read()
            evs = wait_closed(p, n_flows=len(H2_PATHS))
        for path, (_, body, _) in H2_PATHS.items():
            self.assertEqual(outs[path], body, path)
        got = {}
        for fl in by_flow(evs).values():
            for sid, s in by_stream(fl).items():
                got[s[0]["path"]] = s
        e = [x for x in got["/json"] if x["type"] == "payload_parsed"]
        self.assertEqual(len(e), 1)
        self.assertEqual((e[0]["decoders"], e[0]["sanitized"], e[0]["format"]),
                         (["gzip", "json"], True, "json"))
        self.assertEqual(e[0]["value"], json.loads(DOC_TEXT))
        self.assertEqual(e[0]["protocol"], "http2")

        s = got["/grpc-json"]
        self.assertTrue(all(x["protocol"] == "grpc" for x in s))
        gm = [x for x in s if x["type"] == "grpc_message"]
        self.assertEqual([(x["direction"], x["length"]) for x in gm],
                         [("client_to_server", 7), ("server_to_client", 7),
                          ("server_to_client", 6)])
        pp = [x for x in s if x["type"] == "payload_parsed"]
        self.assertEqual([x["value"] for x in pp], [{"q": 1}, {"a": 1}, [True]])
        self.assertTrue(all(x["decoders"] == ["grpc", "json"] for x in pp))

        s = got["/grpc-bad-flag"]
        gm = [x for x in s if x["type"] == "grpc_message" and x["direction"] == "server_to_client"]
        self.assertEqual(len(gm), 1)  # the proto message before the bad envelope
        pp = [x for x in s if x["type"] == "payload_parsed" and
              x["direction"] == "server_to_client"]
        self.assertEqual([(x["decoders"], x.get("error")) for x in pp],
                         [(["grpc"], "grpc: bad_flag")])
        self.assertEqual(s[-1]["type"], "exchange_completed")

        s = got["/grpc-truncated"]
        gm = [x for x in s if x["type"] == "grpc_message" and x["direction"] == "server_to_client"]
        self.assertEqual([(x["length"], x["truncated"], base64.b64decode(x["data_b64"]))
                          for x in gm], [(100, True, b'{"cut":')])
        pp = [x for x in s if x["type"] == "payload_parsed" and
              x["direction"] == "server_to_client"]
        self.assertEqual([x.get("error") for x in pp], ["grpc: truncated"])


# ---------------------------------------------------------------- WebSocket messages

class WebSocketPayloadTests(unittest.TestCase):
    def test_ws_json_and_msgpack_messages(self):
        """Reverse mode over plain HTTP, a websockets echo origin: JSON text messages and a
        msgpack binary message get payload_parsed (framing ws) in both directions; plain
        text gets nothing."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box = {}

        async def echo(ws, path=None):
            try:
                async for m in ws:
                    await ws.send(m)
            except websockets.ConnectionClosed:
                pass

        def run():
            asyncio.set_event_loop(loop)

            async def start():
                box["srv"] = await websockets.serve(echo, "127.0.0.1", 0, ping_interval=None)
                box["port"] = box["srv"].sockets[0].getsockname()[1]
                ready.set()
            loop.run_until_complete(start())
            loop.run_forever()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.assertTrue(ready.wait(10))
        packed = msgpack.packb({"op": "sub", "ch": [1, 2]})
        try:
            with Proxy(mode=f"reverse:http://127.0.0.1:{box['port']}",
                       config={"policy": {"default": "intercept"}}) as p:
                async def client():
                    async with websockets.connect(f"ws://127.0.0.1:{p.port}/", compression=None,
                                                  ping_interval=None, open_timeout=10) as ws:
                        got = []
                        for m in ('{"type":"hello","id":1}', "just text", packed):
                            await ws.send(m)
                            got.append(await asyncio.wait_for(ws.recv(), 10))
                        return got
                got = asyncio.run(client())
                self.assertEqual(got, ['{"type":"hello","id":1}', "just text", packed])
                evs = wait_closed(p)
        finally:
            async def stop():
                box["srv"].close()
                await box["srv"].wait_closed()
            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            t.join(10)
        fl = list(by_flow(evs).values())[0]
        pp = [e for e in fl if e["type"] == "payload_parsed"]
        self.assertEqual([(e["direction"], e["decoders"], e["format"], e["value"]) for e in pp],
                         [("client_to_server", ["ws", "json"], "json", {"type": "hello", "id": 1}),
                          ("server_to_client", ["ws", "json"], "json", {"type": "hello", "id": 1}),
                          ("client_to_server", ["ws", "msgpack"], "msgpack",
                           {"op": "sub", "ch": [1, 2]}),
                          ("server_to_client", ["ws", "msgpack"], "msgpack",
                           {"op": "sub", "ch": [1, 2]})])


if __name__ == "__main__":
    unittest.main()
