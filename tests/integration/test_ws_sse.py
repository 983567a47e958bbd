"""WebSocket and SSE through the real binary (docs/streaming.md) with real clients and origins.

WebSocket: the `websockets` library (Debian python3-websockets) on both ends, through
  reverse   --mode reverse:http://127.0.0.1:PORT (plain)
  intercept regular mode, CONNECT + TLS interception (the client trusts the proxy CA, the
            proxy trusts the origin's test CA through tls.upstream_ca_file)
Messages (text, binary, 1 MiB, fragmented) must come back byte-exact; every message must
appear as one ws_message with the captured prefix, and turns must group client-initiated and
server-initiated exchanges as docs/streaming.md says.

SSE: a raw origin streams text/event-stream and waits until the client has seen event 1
before it sends event 2 (the proxy must not buffer); the events must appear as sse_event.
"""
import asyncio
import base64
import os
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import websockets

from harness import Proxy, by_flow, close_listener, read_head
from test_http1 import make_origin_ca

CAP = 4096
TIMEOUT = 20


# ---------------------------------------------------------------- WebSocket origin

class WSOrigin:
    """websockets server in its own thread/loop. Paths:
      /echo   every message back as it came (text stays text, binary binary)
      /push   server-initiated: sends push-1, waits for an answer, sends push-2, waits for an
              answer, then waits for the client's close
    """

    def __init__(self, tls_dir=None):
        self.ctx = None
        if tls_dir:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(os.path.join(tls_dir, "o.pem"),
                                     os.path.join(tls_dir, "o.key"))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("websocket origin did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await websockets.serve(self._handler, "127.0.0.1", 0, ssl=self.ctx,
                                                 max_size=None, ping_interval=None)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handler(self, ws, path=None):
        path = path or ws.path
        try:
            if path == "/echo":
                async for m in ws:
                    await ws.send(m)
            elif path == "/push":
                await ws.send("push-1")
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                await ws.send("push-2")
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ---------------------------------------------------------------- SSE origin

SSE_EVENT_1 = b": welcome\n\nevent: greeting\nid: 1\ndata: first\n\n"
# Event 2 with CRLF line ends, retry, multi-line data; event 3 with a CR ending one piece and
# its LF starting the next; then an unfinished event the stream's end discards.
SSE_REST = [b"retry: 2500\r\ndata: line one\r\ndata: line two\r\nid: 2\r\n\r\n",
            b"data: third\r", b"\n\r\n", b"data: never dispatched\n"]
SSE_EXPECTED = [
    {"event": "greeting", "id": "1", "retry": None, "data": "first"},
    {"event": "message", "id": "2", "retry": 2500, "data": "line one\nline two"},
    {"event": "message", "id": "2", "retry": None, "data": "third"},
]


class SSEOrigin:
    """Raw HTTP/1.1 origin: GET /sse/chunked or /sse/close (body until close). Sends event 1,
    waits (up to TIMEOUT) for the test to set `seen1`, then the rest. Records whether it had
    to give up waiting and when it sent event 2."""

    def __init__(self, tls_dir=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.ctx = None
        if tls_dir:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(os.path.join(tls_dir, "o.pem"),
                                     os.path.join(tls_dir, "o.key"))
        self.seen1 = threading.Event()
        self.waited_out = None
        self.sent2_ns = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(TIMEOUT)
        s = raw
        try:
            s = self.ctx.wrap_socket(raw, server_side=True) if self.ctx else raw
            head = read_head(s)
            path = head.split(b" ")[1].decode()
            chunked = path.endswith("/chunked")
            hdr = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n" \
                  b"Cache-Control: no-cache\r\n"
            hdr += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else \
                b"Connection: close\r\n\r\n"

            def piece(b):
                return b"%x\r\n%s\r\n" % (len(b), b) if chunked else b

            s.sendall(hdr + piece(SSE_EVENT_1))
            self.waited_out = not self.seen1.wait(TIMEOUT)
            self.sent2_ns = time.time_ns()
            for b in SSE_REST:
                s.sendall(piece(b))
                time.sleep(0.05)
            if chunked:
                s.sendall(b"0\r\n\r\n")
                time.sleep(0.2)
        except OSError:
            pass
        finally:
            s.close()
            raw.close()

    def close(self):
        close_listener(self.sock)


class H2SSEOrigin:
    """TLS origin speaking only h2 (python h2): every request gets a text/event-stream
    response: event 1, then (once the test set `seen1`, or after TIMEOUT) the rest."""

    def __init__(self, tls_dir):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(tls_dir, "o.pem"), os.path.join(tls_dir, "o.key"))
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen1 = threading.Event()
        self.waited_out = None
        self.sent2_ns = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        import h2.config
        import h2.connection
        import h2.events
        raw.settimeout(TIMEOUT)
        s = raw
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            deadline = time.time() + 2 * TIMEOUT
            while time.time() < deadline:
                d = s.recv(65536)
                if not d:
                    return
                for ev in conn.receive_data(d):
                    if not isinstance(ev, h2.events.RequestReceived):
                        continue
                    sid = ev.stream_id
                    conn.send_headers(sid, [(":status", "200"),
                                            ("content-type", "text/event-stream")])
                    conn.send_data(sid, SSE_EVENT_1)
                    s.sendall(conn.data_to_send())
                    self.waited_out = not self.seen1.wait(TIMEOUT)
                    self.sent2_ns = time.time_ns()
                    for b in SSE_REST:
                        conn.send_data(sid, b)
                        s.sendall(conn.data_to_send())
                        time.sleep(0.05)
                    conn.end_stream(sid)
                s.sendall(conn.data_to_send())
        except (OSError, ValueError):
            pass
        finally:
            s.close()
            raw.close()

    def close(self):
        close_listener(self.sock)


class Dechunk:
    """Incremental chunked-body decoder for the test client."""

    def __init__(self):
        self.buf = b""
        self.out = b""
        self.done = False

    def feed(self, b):
        self.buf += b
        while not self.done:
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            n = int(self.buf[:i].split(b";")[0], 16)
            if n == 0:
                self.done = True
                return
            if len(self.buf) < i + 2 + n + 2:
                return
            self.out += self.buf[i + 2:i + 2 + n]
            self.buf = self.buf[i + 2 + n + 2:]


# ---------------------------------------------------------------- helpers

def ws_events(evs):
    """{flow_id: [ws/sse events]} of flows with streaming events."""
    out = {}
    for fid, fl in by_flow(evs).items():
        st = [e for e in fl if e["type"].startswith("ws_") or e["type"] == "sse_event"]
        if st:
            out[fid] = (fl, st)
    return out


def payload_of(m):
    return m.encode() if isinstance(m, str) else bytes(m)


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-ws-")
        make_origin_ca(cls.dir)
        cls.origin_ca = os.path.join(cls.dir, "ca.pem")
        cls.ws_plain = WSOrigin()
        cls.ws_tls = WSOrigin(tls_dir=cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls.ws_plain.close()
        cls.ws_tls.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def proxy(self, leg, plain_port, events=None):
        cfg = {"resolve": {"origin.test": "127.0.0.1"}, "policy": {"default": "intercept"},
               "tls": {"upstream_ca_file": self.origin_ca}}
        if events:
            cfg["events"] = events
        if leg == "reverse":
            return Proxy(mode=f"reverse:http://127.0.0.1:{plain_port}", config=cfg)
        return Proxy(config=cfg)

    def proxy_ca(self, p):
        return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")

    def open_tunnel(self, p, port):
        s = socket.create_connection(p.addr(), timeout=TIMEOUT)
        s.sendall(f"CONNECT origin.test:{port} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n"
                  .encode())
        head = read_head(s)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        s.setblocking(False)
        return s

    def ws_connect(self, p, leg, path, **kw):
        """websockets.connect(...) through proxy p on this leg."""
        kw.setdefault("max_size", None)
        kw.setdefault("ping_interval", None)
        if leg == "reverse":
            return websockets.connect(f"ws://127.0.0.1:{p.port}{path}", open_timeout=TIMEOUT,
                                      **kw)
        ctx = ssl.create_default_context(cafile=self.proxy_ca(p))
        port = self.ws_tls.port
        return websockets.connect(f"wss://origin.test:{port}{path}", ssl=ctx,
                                  sock=self.open_tunnel(p, port), server_hostname="origin.test",
                                  open_timeout=TIMEOUT, **kw)

    def flow_events(self, p):
        """Wait for the flow's stream_closed, then its (flow events, streaming events)."""
        deadline = time.time() + TIMEOUT
        while True:
            evs = p.checked_events(settle=0.1, require_closed=False)
            flows = ws_events(evs)
            done = [v for v in flows.values() if v[0][-1]["type"] == "stream_closed"]
            if len(flows) == 1 and done:
                return done[0]
            self.assertLess(time.time(), deadline, f"no closed streaming flow: {evs}")
            time.sleep(0.1)

    def assert_message(self, ev, direction, opcode, payload):
        self.assertEqual((ev["type"], ev["direction"], ev["opcode"], ev["len"]),
                         ("ws_message", direction, opcode, len(payload)), ev)
        self.assertEqual(base64.b64decode(ev["data_b64"]), payload[:CAP])
        self.assertEqual(ev["truncated"], len(payload) > CAP)

    def assert_turn(self, started, completed, turn_id, initiator, frames, nbytes, reason):
        self.assertEqual((started["type"], started["turn_id"], started["initiator"]),
                         ("ws_turn_started", turn_id, initiator), started)
        self.assertEqual(completed["type"], "ws_turn_completed", completed)
        self.assertEqual((completed["turn_id"], completed["initiator"],
                          completed["client_frames"], completed["server_frames"],
                          completed["client_bytes"], completed["server_bytes"],
                          completed["flush_reason"]),
                         (turn_id, initiator, frames[0], frames[1], nbytes[0], nbytes[1],
                          reason), completed)
        self.assertLessEqual(completed["started_ns"], completed["ended_ns"])


# ---------------------------------------------------------------- WebSocket tests

class WebSocketTests(Base):
    MESSAGES = ["hello", b"\x00\x01\x02binary\xff", os.urandom(1 << 20), "é" * 3000]

    def run_echo(self, leg):
        origin_port = self.ws_plain.port
        with self.proxy(leg, origin_port) as p:
            got = []
            frag = ["frag-one ", "frag-two ", "frag-three"]

            async def client():
                async with self.ws_connect(p, leg, "/echo", compression=None) as ws:
                    for m in self.MESSAGES:
                        await ws.send(m)
                        got.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    await ws.send(frag)  # one message in three frames
                    got.append(await asyncio.wait_for(ws.recv(), TIMEOUT))

            asyncio.run(asyncio.wait_for(client(), 60))
            for sent, back in zip(self.MESSAGES + ["".join(frag)], got):
                self.assertEqual(type(sent), type(back))
                self.assertEqual(sent, back, "echo not byte-exact")

            fl, st = self.flow_events(p)
            self.assertEqual(fl[-1]["protocol"], "websocket")
            sid = [e for e in fl if e["type"] == "response_headers"][0]["stream_id"]
            self.assertTrue(all(e["stream_id"] == sid for e in st))
            msgs = [e for e in st if e["type"] == "ws_message"]
            turns = [e for e in st if e["type"] != "ws_message"]
            sent = self.MESSAGES + ["".join(frag)]
            # each message and its echo; then the client's close and the origin's answer
            for i, m in enumerate(sent):
                op = 1 if isinstance(m, str) else 2
                self.assert_message(msgs[2 * i], "client_to_server", op, payload_of(m))
                self.assert_message(msgs[2 * i + 1], "server_to_client", op, payload_of(m))
            closes = msgs[2 * len(sent):]
            self.assertEqual([(e["direction"], e["opcode"]) for e in closes],
                             [("client_to_server", 8), ("server_to_client", 8)])
            self.assertEqual(base64.b64decode(closes[0]["data_b64"])[:2], b"\x03\xe8")
            # one turn per exchange: started before the request message, completed by the
            # next request (direction change) and, for the last one, by the close frame
            n = len(sent)
            self.assertEqual(len(turns), 2 * n)
            for i, m in enumerate(sent):
                b = len(payload_of(m))
                # the last one is the fragmented message: websockets sends each piece as a
                # frame and ends with an empty FIN continuation (4 frames); then the close
                last = i == n - 1
                frames = len(frag) + 1 + 1 if last else 1
                nbytes = b + closes[0]["len"] if last else b
                self.assert_turn(turns[2 * i], turns[2 * i + 1], i + 1, "client_to_server",
                                 (frames, 1), (nbytes, b),
                                 "close" if last else "direction_change")
            # order: started, request message, answer, completed
            order = [e["type"] for e in st]
            self.assertEqual(order[:4], ["ws_turn_started", "ws_message", "ws_message",
                                         "ws_turn_completed"])

    def test_echo_reverse(self):
        self.run_echo("reverse")

    def test_echo_intercept_tls(self):
        self.run_echo("intercept")

    def test_normal_close_completes_the_exchange(self):
        # After the close handshake the origin closes first (close_notify, FIN); the proxy's
        # close_notify toward the client must not stop it reading the client's own: the
        # exchange is complete and the connection ends as the origin's close, not an error.
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg, self.ws_plain.port) as p:
                async def client():
                    async with self.ws_connect(p, leg, "/echo", compression=None) as ws:
                        await ws.send("one")
                        self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "one")

                asyncio.run(asyncio.wait_for(client(), 60))
                fl, st = self.flow_events(p)
                done = [e for e in fl if e["type"] == "exchange_completed"]
                self.assertEqual([(e["outcome"], e.get("reason")) for e in done],
                                 [("complete", None)], fl)
                self.assertEqual(fl[-1]["reason_code"], "relay_eof", fl[-1])

    def test_server_initiated_turns(self):
        for leg in ("reverse", "intercept"):
            with self.subTest(leg=leg), self.proxy(leg, self.ws_plain.port) as p:
                async def client():
                    async with self.ws_connect(p, leg, "/push", compression=None) as ws:
                        self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "push-1")
                        await ws.send("ack-1")
                        self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "push-2")
                        await ws.send("ack-22")

                asyncio.run(asyncio.wait_for(client(), 60))
                fl, st = self.flow_events(p)
                turns = [e for e in st if e["type"] != "ws_message"]
                self.assertEqual(len(turns), 4, st)
                self.assert_turn(turns[0], turns[1], 1, "server_to_client", (1, 1), (5, 6),
                                 "direction_change")
                self.assert_turn(turns[2], turns[3], 2, "server_to_client", (2, 1), (6 + 2, 6),
                                 "close")
                self.assertEqual(turns[1]["ended_ns"], turns[3]["started_ns"])

    def test_permessage_deflate_inflated_and_relayed(self):
        # Default client: offers permessage-deflate, the origin accepts with context takeover
        # both ways; compressed frames (RSV1) are relayed untouched, and every ws_message
        # shows the message inflated, as the application gets it: len the inflated length,
        # data_b64 the first body_capture_bytes of the text. The later messages compress
        # against the earlier ones' window, so they only come out right when every message
        # of the direction went through the same inflater, in order.
        with self.proxy("reverse", self.ws_plain.port) as p:
            sent = ["compress me " * 500, "compress me again " * 20,
                    '{"model": "m", "messages": [{"role": "user", "content": "compress me"}]}']
            got = []

            async def client():
                async with self.ws_connect(p, "reverse", "/echo") as ws:
                    self.assertIn("permessage-deflate",
                                  ws.response_headers.get("Sec-WebSocket-Extensions", ""))
                    for m in sent:
                        await ws.send(m)
                        got.append(await asyncio.wait_for(ws.recv(), TIMEOUT))

            asyncio.run(asyncio.wait_for(client(), 60))
            self.assertEqual(got, sent)
            fl, st = self.flow_events(p)
            msgs = [e for e in st if e["type"] == "ws_message"]
            for i, m in enumerate(sent):
                self.assert_message(msgs[2 * i], "client_to_server", 1, m.encode())
                self.assert_message(msgs[2 * i + 1], "server_to_client", 1, m.encode())
            self.assertFalse(any(e.get("flush_reason") == "error" for e in st), st)
            turns = [e for e in st if e["type"] == "ws_turn_completed"]
            self.assertEqual(turns[0]["client_bytes"], len(sent[0]), "turns count inflated bytes")
            # the JSON message, once inflated, is parsed like any uncompressed one
            parsed = [e for e in fl if e["type"] == "payload_parsed"]
            self.assertEqual([(e["direction"], e["decoders"], e["value"]["model"])
                              for e in parsed],
                             [("client_to_server", ["ws", "json"], "m"),
                              ("server_to_client", ["ws", "json"], "m")], parsed)

    def test_idle_turn_completes_when_the_gap_passes(self):
        # events.ws_turn_idle_ms 300: after an exchange, nothing is sent; the open turn
        # completes with flush_reason idle once the gap has passed, while the connection is
        # still open and without another message (the worker's timer drives it).
        with self.proxy("reverse", self.ws_plain.port, events={"ws_turn_idle_ms": 300}) as p:
            def idle_turns():
                evs = p.checked_events(settle=0, require_closed=False)
                return [e for e in evs if e["type"] == "ws_turn_completed"], evs

            async def client():
                async with self.ws_connect(p, "reverse", "/echo", compression=None) as ws:
                    await ws.send("are you there")
                    self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT),
                                     "are you there")
                    t0 = time.time()
                    await asyncio.sleep(0.15)
                    done, _ = idle_turns()
                    self.assertEqual(done, [], "completed before the gap passed")
                    while True:
                        done, evs = idle_turns()
                        if done or time.time() - t0 > TIMEOUT:
                            break
                        await asyncio.sleep(0.05)
                    self.assertEqual(len(done), 1, evs)
                    self.assertGreaterEqual(time.time() - t0, 0.25)
                    # still open: the next message starts turn 2
                    await ws.send("still here")
                    self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "still here")
                    return done[0], evs

            done, evs = asyncio.run(asyncio.wait_for(client(), 60))
            self.assertEqual((done["turn_id"], done["initiator"], done["flush_reason"],
                              done["client_frames"], done["server_frames"]),
                             (1, "client_to_server", "idle", 1, 1), done)
            echo = [e for e in evs if e["type"] == "ws_message"][-1]
            self.assertEqual(echo["direction"], "server_to_client")
            # ended_ns is the turn's last message, not the moment the gap was noticed
            self.assertLessEqual(abs(done["ended_ns"] - echo["ts_ns"]), 5_000_000)
            self.assertGreaterEqual(done["ts_ns"] - done["ended_ns"], 300_000_000)
            fl, st = self.flow_events(p)
            turns = [e for e in st if e["type"] == "ws_turn_completed"]
            self.assertEqual([(t["turn_id"], t["flush_reason"]) for t in turns],
                             [(1, "idle"), (2, "close")])

    def test_abrupt_close_flushes_turn(self):
        # The client drops the TCP connection without a close frame: the open turn is still
        # completed (flush_reason close) before the exchange ends.
        with self.proxy("reverse", self.ws_plain.port) as p:
            async def client():
                ws = await self.ws_connect(p, "reverse", "/echo", compression=None)
                await ws.send("bye")
                self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "bye")
                ws.transport.abort()

            asyncio.run(asyncio.wait_for(client(), 60))
            fl, st = self.flow_events(p)
            turns = [e for e in st if e["type"] != "ws_message"]
            self.assertEqual(len(turns), 2, st)
            self.assert_turn(turns[0], turns[1], 1, "client_to_server", (1, 1), (3, 3), "close")
            types = [e["type"] for e in fl]
            self.assertLess(types.index("ws_turn_completed"), types.index("exchange_completed"))


# ---------------------------------------------------------------- WebSocket over HTTP/2

def ws_frame(b0, payload, mask):
    """One WebSocket frame (RFC 6455 5.2); masked with a random key when mask."""
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        h = bytes([b0, m | n])
    elif n < 65536:
        h = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        h = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if not mask:
        return h + payload
    key = os.urandom(4)
    return h + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def ws_take(buf):
    """(b0, payload, rest) of the first whole frame in buf, or None."""
    if len(buf) < 2:
        return None
    n, pos = buf[1] & 0x7F, 2
    if n == 126:
        n, pos = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        n, pos = int.from_bytes(buf[2:10], "big"), 10
    key = None
    if buf[1] & 0x80:
        key, pos = buf[pos:pos + 4], pos + 4
    if len(buf) < pos + n:
        return None
    p = buf[pos:pos + n]
    if key:
        p = bytes(c ^ key[i % 4] for i, c in enumerate(p))
    return buf[0], p, buf[pos + n:]


class H2WSOrigin:
    """h2-only TLS origin accepting RFC 8441 extended CONNECT for websocket; echoes each
    frame of the stream back unmasked and ends the stream after echoing a close."""

    def __init__(self, tls_dir):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(tls_dir, "o.pem"), os.path.join(tls_dir, "o.key"))
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings
        raw.settimeout(TIMEOUT)
        s = raw
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            conn.update_settings({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
            s.sendall(conn.data_to_send())
            bufs = {}
            deadline = time.time() + 2 * TIMEOUT
            while time.time() < deadline:
                d = s.recv(65536)
                if not d:
                    return
                for ev in conn.receive_data(d):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.requests.append(dict(ev.headers))
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                        bufs[ev.stream_id] = b""
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        buf = bufs[ev.stream_id] + ev.data
                        while True:
                            f = ws_take(buf)
                            if f is None:
                                break
                            b0, payload, buf = f
                            conn.send_data(ev.stream_id, ws_frame(b0, payload, False),
                                           end_stream=b0 & 0x0F == 8)
                        bufs[ev.stream_id] = buf
                s.sendall(conn.data_to_send())
        except (OSError, ValueError):
            pass
        finally:
            s.close()
            raw.close()

    def close(self):
        close_listener(self.sock)


class WebSocketH2Tests(Base):
    def test_rfc8441_websocket_over_h2_intercept(self):
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings
        origin = H2WSOrigin(self.dir)
        try:
            with self.proxy("intercept", 0) as p:
                raw = socket.create_connection(p.addr(), timeout=TIMEOUT)
                raw.sendall(f"CONNECT origin.test:{origin.port} HTTP/1.1\r\n"
                            f"Host: origin.test:{origin.port}\r\n\r\n".encode())
                self.assertTrue(read_head(raw).startswith(b"HTTP/1.1 200"))
                ctx = ssl.create_default_context(cafile=self.proxy_ca(p))
                ctx.set_alpn_protocols(["h2"])
                s = ctx.wrap_socket(raw, server_hostname="origin.test")
                self.assertEqual(s.selected_alpn_protocol(), "h2")
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                s.sendall(conn.data_to_send())
                deadline = time.time() + TIMEOUT
                state = {"connect_ok": False, "status": None, "buf": b"", "ended": False}

                def pump(until):
                    while not until():
                        self.assertLess(time.time(), deadline, state)
                        d = s.recv(65536)
                        self.assertTrue(d, "proxy closed the connection")
                        for ev in conn.receive_data(d):
                            if isinstance(ev, h2.events.RemoteSettingsChanged):
                                c = ev.changed_settings.get(
                                    h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                                if c is not None and c.new_value == 1:
                                    state["connect_ok"] = True
                            elif isinstance(ev, h2.events.ResponseReceived):
                                state["status"] = dict(ev.headers)[b":status"]
                            elif isinstance(ev, h2.events.DataReceived):
                                conn.acknowledge_received_data(ev.flow_controlled_length,
                                                               ev.stream_id)
                                state["buf"] += ev.data
                            elif isinstance(ev, h2.events.StreamEnded):
                                state["ended"] = True
                        s.sendall(conn.data_to_send())

                pump(lambda: state["connect_ok"])  # offered once the origin offered it
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                        (":scheme", "https"), (":path", "/chat"),
                                        (":authority", f"origin.test:{origin.port}"),
                                        ("sec-websocket-version", "13")])
                s.sendall(conn.data_to_send())
                pump(lambda: state["status"] is not None)
                self.assertEqual(state["status"], b"200")

                def exchange(b0, payload):
                    conn.send_data(sid, ws_frame(b0, payload, True))
                    s.sendall(conn.data_to_send())
                    pump(lambda: ws_take(state["buf"]) is not None)
                    got0, got, state["buf"] = ws_take(state["buf"])
                    self.assertEqual((got0, got), (b0, payload), "echo not byte-exact")

                binary = os.urandom(5000)
                exchange(0x81, b"hello")
                exchange(0x82, binary)
                exchange(0x88, b"\x03\xe8")
                pump(lambda: state["ended"])
                conn.end_stream(sid)
                s.sendall(conn.data_to_send())
                time.sleep(0.2)
                s.close()
                self.assertEqual(origin.requests[0][b":protocol"], b"websocket")

                fl, st = self.flow_events(p)
                self.assertEqual(fl[-1]["protocol"], "websocket")
                self.assertTrue(all(e["stream_id"] == sid for e in st))
                msgs = [e for e in st if e["type"] == "ws_message"]
                for i, (op, pl) in enumerate([(1, b"hello"), (2, binary), (8, b"\x03\xe8")]):
                    self.assert_message(msgs[2 * i], "client_to_server", op, pl)
                    self.assert_message(msgs[2 * i + 1], "server_to_client", op, pl)
                turns = [e for e in st if e["type"] != "ws_message"]
                self.assertEqual(len(turns), 4, st)
                self.assert_turn(turns[0], turns[1], 1, "client_to_server", (1, 1), (5, 5),
                                 "direction_change")
                self.assert_turn(turns[2], turns[3], 2, "client_to_server", (2, 1),
                                 (len(binary) + 2, len(binary)), "close")
        finally:
            origin.close()


    def test_six_concurrent_websockets_over_h2_all_observed(self):
        # Six RFC 8441 WebSockets open at once on one HTTP/2 connection: every one is
        # observed (no fixed number of observer slots per connection).
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings
        origin = H2WSOrigin(self.dir)
        try:
            with self.proxy("intercept", 0) as p:
                raw = socket.create_connection(p.addr(), timeout=TIMEOUT)
                raw.sendall(f"CONNECT origin.test:{origin.port} HTTP/1.1\r\n"
                            f"Host: origin.test:{origin.port}\r\n\r\n".encode())
                self.assertTrue(read_head(raw).startswith(b"HTTP/1.1 200"))
                ctx = ssl.create_default_context(cafile=self.proxy_ca(p))
                ctx.set_alpn_protocols(["h2"])
                s = ctx.wrap_socket(raw, server_hostname="origin.test")
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                s.sendall(conn.data_to_send())
                deadline = time.time() + TIMEOUT
                st = {"connect_ok": False, "status": {}, "buf": {}, "ended": set()}

                def pump(until):
                    while not until():
                        self.assertLess(time.time(), deadline, st)
                        d = s.recv(65536)
                        self.assertTrue(d, "proxy closed the connection")
                        for ev in conn.receive_data(d):
                            if isinstance(ev, h2.events.RemoteSettingsChanged):
                                c = ev.changed_settings.get(
                                    h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                                if c is not None and c.new_value == 1:
                                    st["connect_ok"] = True
                            elif isinstance(ev, h2.events.ResponseReceived):
                                st["status"][ev.stream_id] = dict(ev.headers)[b":status"]
                            elif isinstance(ev, h2.events.DataReceived):
                                conn.acknowledge_received_data(ev.flow_controlled_length,
                                                               ev.stream_id)
                                st["buf"][ev.stream_id] = st["buf"].get(ev.stream_id,
                                                                        b"") + ev.data
                            elif isinstance(ev, h2.events.StreamEnded):
                                st["ended"].add(ev.stream_id)
                        s.sendall(conn.data_to_send())

                pump(lambda: st["connect_ok"])
                sids = []
                for _ in range(6):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                            (":scheme", "https"), (":path", "/chat"),
                                            (":authority", f"origin.test:{origin.port}"),
                                            ("sec-websocket-version", "13")])
                    sids.append(sid)
                s.sendall(conn.data_to_send())
                pump(lambda: len(st["status"]) == len(sids))
                self.assertEqual(set(st["status"].values()), {b"200"})
                # every WebSocket is open now; one message each, then the close handshake
                for sid in sids:
                    conn.send_data(sid, ws_frame(0x81, b"hello %d" % sid, True))
                s.sendall(conn.data_to_send())
                pump(lambda: all(ws_take(st["buf"].get(x, b"")) for x in sids))
                for sid in sids:
                    b0, got, st["buf"][sid] = ws_take(st["buf"][sid])
                    self.assertEqual((b0, got), (0x81, b"hello %d" % sid))
                    conn.send_data(sid, ws_frame(0x88, b"\x03\xe8", True))
                s.sendall(conn.data_to_send())
                pump(lambda: st["ended"] >= set(sids))
                for sid in sids:
                    conn.end_stream(sid)
                s.sendall(conn.data_to_send())
                time.sleep(0.2)
                s.close()

                fl, ev = self.flow_events(p)
                for sid in sids:
                    mine = [e for e in ev if e["stream_id"] == sid]
                    msgs = [e for e in mine if e["type"] == "ws_message"]
                    self.assertEqual(len(msgs), 4, f"stream {sid} not observed: {ev}")
                    self.assert_message(msgs[0], "client_to_server", 1, b"hello %d" % sid)
                    self.assert_message(msgs[1], "server_to_client", 1, b"hello %d" % sid)
                    turns = [e for e in mine if e["type"] != "ws_message"]
                    self.assertEqual([e["type"] for e in turns],
                                     ["ws_turn_started", "ws_turn_completed"])
                    self.assertEqual(turns[1]["flush_reason"], "close")
        finally:
            origin.close()


# ---------------------------------------------------------------- SSE tests

class SSETests(Base):
    def run_sse(self, leg, path):
        origin = SSEOrigin(tls_dir=self.dir if leg == "intercept" else None)
        try:
            with self.proxy(leg, origin.port) as p:
                s = socket.create_connection(p.addr(), timeout=TIMEOUT)
                host = "127.0.0.1"
                if leg == "intercept":
                    s.sendall(f"CONNECT origin.test:{origin.port} HTTP/1.1\r\n"
                              f"Host: origin.test:{origin.port}\r\n\r\n".encode())
                    self.assertTrue(read_head(s).startswith(b"HTTP/1.1 200"))
                    ctx = ssl.create_default_context(cafile=self.proxy_ca(p))
                    s = ctx.wrap_socket(s, server_hostname="origin.test")
                    host = f"origin.test:{origin.port}"
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream"
                          "\r\n\r\n".encode())
                head = read_head(s)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                chunked = b"chunked" in head.lower()
                dec = Dechunk()
                body = b""
                deadline = time.time() + TIMEOUT
                while b"data: first\n\n" not in body:
                    self.assertLess(time.time(), deadline, "event 1 did not arrive")
                    d = s.recv(65536)
                    self.assertTrue(d, "EOF before event 1")
                    if chunked:
                        dec.feed(d)
                        body = dec.out
                    else:
                        body += d
                seen1_ns = time.time_ns()
                origin.seen1.set()  # only now does the origin send event 2
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    if chunked:
                        dec.feed(d)
                        body = dec.out
                        if dec.done:
                            break
                    else:
                        body += d
                s.close()
                self.assertFalse(origin.waited_out, "origin gave up waiting: event 1 held back")
                self.assertEqual(body, SSE_EVENT_1 + b"".join(SSE_REST))
                self.check_sse_events(p, origin, seen1_ns, "1.1")
        finally:
            origin.close()

    def check_sse_events(self, p, origin, seen1_ns, version):
        fl, st = self.flow_events(p)
        self.assertEqual([{k: e[k] for k in ("event", "id", "retry", "data")} for e in st],
                         SSE_EXPECTED)
        self.assertEqual(fl[-1]["protocol"], "sse")
        heads = [e for e in fl if e["type"] == "response_headers"]
        self.assertEqual(heads[0]["http_version"], version)
        self.assertTrue(all(e["stream_id"] == heads[0]["stream_id"] for e in st))
        # event 1 was reported before the origin sent event 2: no buffering anywhere
        self.assertLess(st[0]["ts_ns"], origin.sent2_ns)
        self.assertLess(st[0]["ts_ns"], seen1_ns)
        self.assertGreater(st[1]["ts_ns"], origin.sent2_ns)

    def test_sse_http2_curl_intercept(self):
        # curl --http2 -N through the intercepting proxy to an h2-only origin: the event
        # stream is parsed from the response DATA frames as they arrive.
        origin = H2SSEOrigin(self.dir)
        try:
            with self.proxy("intercept", 0) as p:
                cmd = ["curl", "-sS", "-N", "--http2", "--cacert", self.proxy_ca(p), "-x",
                       f"http://127.0.0.1:{p.port}", "-w", "\\n%{http_version}",
                       f"https://origin.test:{origin.port}/events"]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                try:
                    out = b""
                    deadline = time.time() + TIMEOUT
                    while b"data: first\n\n" not in out:
                        self.assertLess(time.time(), deadline, f"event 1 did not arrive: {out}")
                        r, _, _ = select.select([proc.stdout], [], [], 0.2)
                        if r:
                            d = os.read(proc.stdout.fileno(), 65536)
                            self.assertTrue(d, "EOF before event 1")
                            out += d
                    seen1_ns = time.time_ns()
                    origin.seen1.set()
                    rest, err = proc.communicate(timeout=TIMEOUT)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                self.assertEqual(proc.returncode, 0, err)
                self.assertFalse(origin.waited_out, "origin gave up waiting: event 1 held back")
                self.assertEqual(out + rest, SSE_EVENT_1 + b"".join(SSE_REST) + b"\n2")
                self.check_sse_events(p, origin, seen1_ns, "2")
        finally:
            origin.close()

    def test_sse_chunked_reverse(self):
        self.run_sse("reverse", "/sse/chunked")

    def test_sse_until_close_intercept_tls(self):
        self.run_sse("intercept", "/sse/close")

    def test_sse_chunked_intercept_tls(self):
        self.run_sse("intercept", "/sse/chunked")


if __name__ == "__main__":
    unittest.main()
