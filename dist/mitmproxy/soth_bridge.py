"""soth-mitm's bridge addon for mitmproxy (docs/bridge.md, "The mitmproxy engine").

Load it into mitmdump (or mitmproxy / mitmweb):

    mitmdump -s /usr/share/soth-mitm/soth_bridge.py --set soth_bridge=/run/soth-mitm/bridge.sock

It reports every client connection to a soth-mitm listening on that Unix socket
(`bridge.listen`), one JSON object per line:

- `{"kind":"tls_op",...}` for mitmproxy's TLS hooks (tls_clienthello, tls_start_*,
  tls_established_*, tls_failed_*, client_disconnected): soth-mitm classifies the failures and
  feeds TLS learning with them;
- `{"kind":"event","conn":ID,"type":T,...}` carrying the flow's soth-mitm events
  (docs/events.md): connect_received, connect_decision, request/response heads and bodies,
  exchange_completed, ws_message, sse_event, stream_closed.

Options (`--set NAME=VALUE`):
  soth_bridge                the Unix socket path; empty = report nothing
  soth_policy                a JSON file with soth-mitm's `ignore_hosts` and `policy` keys
                             (a whole soth-mitm config file will do); empty = intercept all
  soth_body_capture_bytes    body bytes captured per message into events [4096]
  soth_mode                  soth-mitm's mode text (reverse target, socks5 method)
  soth_strip_alt_svc_h3      remove HTTP/3 entries from Alt-Svc (http3_passthrough false)

The policy file is read again when it changes (soth-mitm rewrites it on SIGHUP), checked at
most once a second when a connection is decided; connections already decided keep their
decision. Its `resolve` key overrides name resolution of upstream connections as in soth-mitm.

It never blocks mitmproxy's event loop: lines go into a bounded queue that a writer thread
drains to the socket; when the queue is full a line is dropped and counted, and when the socket
goes away (soth-mitm restarts) the writer reconnects with a growing delay (0.1 s to 2 s).

Written for mitmproxy 8.1 (Debian 12) and current releases: only hooks and attributes both
have are used, and the few that differ are looked up defensively.
"""

import base64
import json
import logging
import os
import queue
import re
import socket
import threading
import time

from mitmproxy import ctx, http

try:  # the layer classes moved over releases; only next_layer needs them
    from mitmproxy.proxy import layers as _layers
except ImportError:  # pragma: no cover
    _layers = None

QUEUE_MAX = 16384          # lines held while the socket is slow or away
LINE_MAX = 1 << 20         # soth-mitm closes a bridge client sending a longer line
SSE_DATA_MAX = 64 * 1024   # docs/events.md: sse_event data is cut at 64 KiB
WS_CAPTURE_MAX = 256 * 1024

log = logging.getLogger("soth_bridge")


def _now_ns():
    return time.time_ns()


def _addr_text(addr):
    if not addr:
        return ""
    host, port = addr[0], addr[1]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def _hostport(host, port):
    if ":" in host and not host.startswith("["):
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


# ---------------------------------------------------------------------------------------------
# Policy: the same semantics as soth-mitm's own (docs/config.md "ignore_hosts", "policy").

def _glob_match(labels, glob):
    """`*` matches one or more whole labels (docs/config.md, "Host globs")."""
    if not glob:
        return not labels
    if glob[0] == "*":
        for n in range(1, len(labels) + 1):
            if _glob_match(labels[n:], glob[1:]):
                return True
        return False
    return bool(labels) and labels[0] == glob[0] and _glob_match(labels[1:], glob[1:])


class Rule:
    def __init__(self, text, action):
        self.text = text
        self.action = action
        host, port = text, -1
        m = re.match(r"^(.*):(\d+)$", text)
        if m and (not text.startswith("[") or m.group(1).endswith("]")):
            host, port = m.group(1), int(m.group(2))
        self.glob_text = host
        host = host.lower().rstrip(".") if not host.startswith("[") else host.lower()
        self.port = port
        self.labels = [host] if host.startswith("[") else host.split(".")

    def matches(self, host, port):
        if self.port >= 0 and self.port != port:
            return False
        h = host.lower().rstrip(".")
        if ":" in h and not h.startswith("["):
            h = "[" + h + "]"
        labels = [h] if h.startswith("[") else h.split(".")
        return _glob_match(labels, self.labels)


class Policy:
    def __init__(self, doc=None):
        doc = doc or {}
        # POSIX ERE (soth-mitm) and Python re agree on the patterns people write for hosts;
        # both match unanchored and case-insensitively.
        self.ignore = [re.compile(p, re.IGNORECASE) for p in doc.get("ignore_hosts", [])]
        pol = doc.get("policy", {}) or {}
        self.default = pol.get("default", "intercept")
        self.rules = [Rule(r["host"], r["action"]) for r in pol.get("rules", [])]
        # What events call the rule (docs/events.md, connect_decision): its id, else its index.
        for i, (rule, doc_rule) in enumerate(zip(self.rules, pol.get("rules", []))):
            rule.id = str(doc_rule.get("id", i))
        self.resolve = {k.lower().rstrip("."): v for k, v in (doc.get("resolve") or {}).items()}

    def decide(self, host, port):
        """(decision, reason, rule or None), consulted in the order of docs/events.md."""
        hp = _hostport(host, port)
        for rx in self.ignore:
            if rx.search(hp):
                return "tunnel", "ignore_hosts", None
        for r in self.rules:
            if r.matches(host, port):
                return r.action, "policy_rule", r
        return self.default, "default", None


# ---------------------------------------------------------------------------------------------
# The writer: a bounded queue drained by a thread to the Unix socket.

class Writer:
    def __init__(self):
        self.q = queue.Queue(maxsize=QUEUE_MAX)
        self.path = ""
        self.dropped = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = None
        self._path_lock = threading.Lock()

    def set_path(self, path):
        with self._path_lock:
            self.path = path
        if path and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="soth-bridge-writer",
                                            daemon=True)
            self._thread.start()

    def put(self, obj):
        """False when the line was dropped (queue full or no socket configured)."""
        if not self.path:
            return False
        line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if len(line) > LINE_MAX:
            self.dropped += 1
            return False
        try:
            self.q.put_nowait(line)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100, 1000) or self.dropped % 10000 == 0:
                log.warning("soth_bridge: queue full, %d lines dropped so far", self.dropped)
            return False

    def _connect(self):
        with self._path_lock:
            path = self.path
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s

    def _run(self):
        sock = None
        delay = 0.1
        pending = None
        while not self._stop.is_set():
            if pending is None:
                try:
                    pending = self.q.get(timeout=0.2)
                except queue.Empty:
                    continue
            if sock is None:
                try:
                    sock = self._connect()
                    delay = 0.1
                except OSError:
                    self._stop.wait(delay)
                    delay = min(delay * 2, 2.0)
                    continue
            # batch what is queued into one send
            buf = [pending]
            size = len(pending)
            while size < 65536:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                buf.append(nxt)
                size += len(nxt)
            data = b"".join(buf)
            try:
                sock.sendall(data)
                self.sent += len(buf)
                pending = None
            except OSError:
                sock.close()
                sock = None
                # the batch is retried on the next connection, line by line order kept
                pending = data
        if sock is not None:
            sock.close()

    def flush(self, timeout=1.0):
        end = time.monotonic() + timeout
        while not self.q.empty() and time.monotonic() < end:
            time.sleep(0.01)

    def stop(self):
        self.flush()
        self._stop.set()


# ---------------------------------------------------------------------------------------------
# Per-connection state.

class Conn:
    __slots__ = ("id", "client_addr", "host", "port", "protocol", "started_ns", "announced",
                 "decision", "reason", "rule", "tunnel_applied", "next_sid", "h2", "c2s", "s2c",
                 "tls_failed", "dropped", "open_streams", "closed", "hello_seen")

    def __init__(self, cid, client_addr):
        self.id = cid
        self.client_addr = client_addr
        self.host = ""
        self.port = 0
        self.protocol = "tcp"
        self.started_ns = _now_ns()
        self.announced = False   # connect_received + connect_decision sent
        self.decision = None
        self.reason = None
        self.rule = None
        self.tunnel_applied = False
        self.next_sid = 1
        self.h2 = False
        self.c2s = 0
        self.s2c = 0
        self.tls_failed = False
        self.dropped = 0
        self.open_streams = {}   # flow.id -> Stream
        self.closed = False
        self.hello_seen = False           # mitmproxy parsed the client's whole ClientHello


PROTO_RANK = {"tcp": 0, "tls": 1, "http1": 2, "http2": 2, "websocket": 3, "sse": 3, "grpc": 3}


class Stream:
    __slots__ = ("sid", "req_off", "req_cap", "resp_off", "resp_cap", "done", "head_seen",
                 "sse", "websocket")

    def __init__(self, sid):
        self.sid = sid
        self.req_off = 0
        self.req_cap = 0
        self.resp_off = 0
        self.resp_cap = 0
        self.done = False
        self.head_seen = False
        self.sse = None
        self.websocket = False


class SseParser:
    """Server-sent events (HTML Living Standard, "Parsing an event stream")."""

    def __init__(self, emit):
        self.emit = emit
        self.buf = b""
        self.event = ""
        self.data = []
        self.has_data = False
        self.last_id = ""
        self.retry = None

    def feed(self, chunk):
        self.buf += chunk
        while True:
            cut = -1
            for i, b in enumerate(self.buf):
                if b in (10, 13):
                    cut = i
                    break
            if cut < 0:
                return
            line = self.buf[:cut]
            step = 2 if self.buf[cut:cut + 2] == b"\r\n" else 1
            if self.buf[cut] == 13 and cut + 1 == len(self.buf):
                return  # a CR at the end: wait to see whether LF follows
            self.buf = self.buf[cut + step:]
            self._line(line.decode("utf-8", "replace"))

    def _line(self, line):
        if line == "":
            if self.has_data:
                data = "\n".join(self.data)[:SSE_DATA_MAX]
                self.emit(self.event or "message", self.last_id or None, self.retry, data)
            self.event, self.data, self.has_data, self.retry = "", [], False, None
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
            self.has_data = True
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)


class SothBridge:
    def __init__(self):
        self.writer = Writer()
        self.policy = Policy()
        self.cap = 4096
        self.reverse_target = None
        self.socks5 = False
        self.strip_h3 = False
        self.policy_path = ""
        self.policy_stamp = None
        self.policy_checked = 0.0
        self.conns = {}

    # --- options --------------------------------------------------------------------------

    def load(self, loader):
        loader.add_option("soth_bridge", str, "",
                          "soth-mitm bridge socket (bridge.listen) to report to")
        loader.add_option("soth_policy", str, "",
                          "JSON file with soth-mitm's ignore_hosts and policy keys")
        loader.add_option("soth_body_capture_bytes", int, 4096,
                          "body bytes captured per message into events")
        loader.add_option("soth_mode", str, "", "soth-mitm's mode text (reverse target)")
        loader.add_option("soth_strip_alt_svc_h3", bool, False,
                          "remove HTTP/3 entries from Alt-Svc response fields")

    def configure(self, updated):
        if "soth_policy" in updated:
            self.policy_path = ctx.options.soth_policy
            self._load_policy()
        if "soth_strip_alt_svc_h3" in updated:
            self.strip_h3 = ctx.options.soth_strip_alt_svc_h3
        if "soth_body_capture_bytes" in updated:
            self.cap = max(0, ctx.options.soth_body_capture_bytes)
        if "soth_mode" in updated:
            m = re.match(r"^reverse:(https?)://(\[[^\]]+\]|[^:/]+)(?::(\d+))?/?$",
                         ctx.options.soth_mode or "")
            if m:
                host = m.group(2).strip("[]")
                port = int(m.group(3) or (443 if m.group(1) == "https" else 80))
                self.reverse_target = (host, port)
            else:
                self.reverse_target = None
            self.socks5 = ctx.options.soth_mode == "socks5"
        if "soth_bridge" in updated:
            self.writer.set_path(ctx.options.soth_bridge)

    def _load_policy(self):
        doc = {}
        stamp = None
        if self.policy_path:
            st = os.stat(self.policy_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            with open(self.policy_path, encoding="utf-8") as f:
                doc = json.load(f)
        self.policy = Policy(doc)
        self.policy_stamp = stamp

    def _maybe_reload_policy(self):
        now = time.monotonic()
        if not self.policy_path or now - self.policy_checked < 1.0:
            return
        self.policy_checked = now
        try:
            st = os.stat(self.policy_path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) != self.policy_stamp:
                self._load_policy()
                log.info("soth_bridge: policy reloaded from %s", self.policy_path)
        except (OSError, ValueError, KeyError, re.error) as e:
            log.warning("soth_bridge: policy %s not reloaded: %s", self.policy_path, e)

    def done(self):
        for c in list(self.conns.values()):
            self._close(c, "shutdown")
        self.writer.stop()

    # --- emitting -------------------------------------------------------------------------

    def _conn(self, client):
        c = self.conns.get(client.id)
        if c is None:
            c = Conn(client.id, _addr_text(client.peername))
            self.conns[client.id] = c
        return c

    def _proto(self, c, p):
        if PROTO_RANK.get(p, 0) >= PROTO_RANK.get(c.protocol, 0):
            c.protocol = p

    def _event(self, c, etype, **fields):
        obj = {"kind": "event", "conn": c.id, "type": etype, "ts_ns": _now_ns(),
               "client_addr": c.client_addr, "server_host": c.host, "server_port": c.port,
               "protocol": c.protocol}
        obj.update(fields)
        if not self.writer.put(obj):
            c.dropped += 1

    def _tls_op(self, hook, c, sni=None, error=None, conn=None):
        obj = {"kind": "tls_op", "provider": "mitmproxy", "hook": hook, "conn": c.id,
               "client_addr": c.client_addr, "server_host": c.host, "server_port": c.port,
               "sni": sni, "ts_ns": _now_ns()}
        if error is not None:
            obj["error"] = str(error)
        if conn is not None and hook.startswith("tls_established"):
            obj["tls_version"] = getattr(conn, "tls_version", None)
            obj["cipher"] = getattr(conn, "cipher", None) or getattr(conn, "cipher_name", None)
            alpn = getattr(conn, "alpn", None)
            obj["alpn"] = alpn.decode("ascii", "replace") if alpn else None
        self.writer.put(obj)

    def _announce(self, c, method, target, host, port):
        """connect_received + connect_decision, once per connection; returns the decision."""
        if c.announced:
            return c.decision
        self._maybe_reload_policy()
        c.host, c.port = host, port
        self._event(c, "connect_received", method=method, target=target)
        c.decision, c.reason, c.rule = self.policy.decide(host, port)
        # This engine takes only direct routes (docs/bridge.md, "Config keys").
        fields = {"decision": c.decision, "reason": c.reason, "route": "direct"}
        if c.rule is not None:
            fields["rule"] = c.rule.id
        self._event(c, "connect_decision", **fields)
        c.announced = True
        return c.decision

    def _forbidden(self, c):
        what = _hostport(c.host, c.port)
        if c.rule is not None:
            body = 'soth-mitm: %s is blocked by policy rule "%s"\n' % (what, c.rule.glob_text)
        else:
            body = "soth-mitm: %s is blocked by the default policy\n" % what
        return http.Response.make(403, body.encode(),
                                  {"Content-Type": "text/plain", "Connection": "close"})

    def _close(self, c, reason_code):
        if c.closed:
            return
        for st in list(c.open_streams.values()):
            if not st.done:
                self._complete(c, st, "client_aborted" if reason_code != "shutdown" else "reset")
        if not c.announced:
            # mitmproxy never got a target (e.g. garbage instead of a proxy request)
            self._event(c, "connect_parse_failed", reason_code="malformed",
                        detail="mitmproxy found no request target")
            reason_code = "parse_failed"
        self._event(c, "stream_closed", reason_code=reason_code,
                    bytes_client_to_server=c.c2s, bytes_server_to_client=c.s2c,
                    duration_ns=max(0, _now_ns() - c.started_ns), events_dropped=c.dropped)
        c.closed = True
        self.conns.pop(c.id, None)

    # --- connections ----------------------------------------------------------------------

    def client_connected(self, client):
        c = self._conn(client)
        if self.reverse_target is not None:
            host, port = self.reverse_target
            if self._announce(c, None, _hostport(host, port), host, port) == "block":
                client.error = "blocked by policy"

    def client_disconnected(self, client):
        c = self.conns.get(client.id)
        if c is None:
            return
        if c.announced:
            # soth-mitm ends a conn driven by event lines at its stream_closed: this line only
            # reports the hook (a conn not yet announced gets no tls_op line: after its
            # connect_parse_failed and stream_closed the conn would start a new flow)
            self._tls_op("client_disconnected", c)
        if c.decision == "block":
            reason = "blocked"
        elif c.tls_failed:
            reason = "tls_failed"
        else:
            reason = "client_eof"
        self._close(c, reason)

    def next_layer(self, nextlayer):
        context = nextlayer.context
        c = self.conns.get(context.client.id)
        if c is None or len(context.layers) == 0:
            return
        if not c.announced and context.server.address:
            # transparent mode: the original destination is known now
            host, port = context.server.address[0], context.server.address[1]
            self._announce(c, "SOCKS5" if self.socks5 else None, _hostport(host, port), host,
                           port)
            if c.decision == "block":
                context.client.error = "blocked by policy"
        if c.decision == "tunnel" and not c.tunnel_applied and _layers is not None:
            c.tunnel_applied = True
            nextlayer.layer = _layers.TCPLayer(context, ignore=True)

    def server_connect(self, data):
        """`resolve` (docs/config.md): a static address for a name, the name kept for SNI."""
        server = data.server
        if not server.address:
            return
        host, port = server.address[0], server.address[1]
        client = getattr(data, "client", None)
        c = self.conns.get(client.id) if client is not None else None
        if c is not None and not c.announced:
            # socks5 and transparent modes: the target as the client named it, before the
            # address below replaces a name
            self._announce(c, "SOCKS5" if self.socks5 else None, _hostport(host, port), host,
                           port)
        if not self.policy.resolve:
            return
        addr = self.policy.resolve.get(str(host).lower().rstrip("."))
        if addr is not None:
            if getattr(server, "sni", None) is None and server.tls:
                server.sni = host
            server.address = (addr, port)

    # --- TLS ------------------------------------------------------------------------------

    def tls_clienthello(self, data):
        client = data.context.client
        c = self._conn(client)
        sni = getattr(data.client_hello, "sni", None)
        if not c.announced and data.context.server.address:
            host, port = data.context.server.address[0], data.context.server.address[1]
            self._announce(c, None, _hostport(host, port), host, port)
        if c.decision == "tunnel":
            data.ignore_connection = True
            return
        c.hello_seen = True
        # grpc-exp (offered by grpcio next to h2) is no protocol mitmproxy speaks: negotiated
        # with the origin it would turn the connection into an opaque relay. The native engine
        # leaves it out of the upstream offer too (docs/bridge.md).
        offers = getattr(client, "alpn_offers", None)
        if offers and b"grpc-exp" in offers:
            client.alpn_offers = [a for a in offers if a != b"grpc-exp"]
        self._proto(c, "tls")
        self._tls_op("tls_clienthello", c, sni=sni)

    def _tls_side(self, hook, data, error=False):
        conn = data.conn
        c = self.conns.get(data.context.client.id)
        if c is None:
            return
        sni = getattr(conn, "sni", None)  # the client's SNI, or the one sent upstream
        if isinstance(sni, bytes):
            sni = sni.decode("ascii", "replace")
        err = None
        if error:
            err = getattr(conn, "error", None) or "handshake failed"
            c.tls_failed = True
        self._tls_op(hook, c, sni=sni, error=err, conn=conn)

    def tls_start_client(self, data):
        self._tls_side("tls_start_client", data)

    def tls_start_server(self, data):
        self._tls_side("tls_start_server", data)

    def tls_established_client(self, data):
        self._tls_side("tls_established_client", data)

    def tls_established_server(self, data):
        self._tls_side("tls_established_server", data)

    def tls_failed_client(self, data):
        c = self.conns.get(data.context.client.id)
        err = str(getattr(data.conn, "error", "") or "")
        if c is not None and not c.hello_seen and not err.startswith("Cannot parse ClientHello"):
            # The client hung up before its ClientHello was whole: no handshake began (the
            # native engine reports none either), and no certificate was refused.
            return
        self._tls_side("tls_failed_client", data, error=True)

    def tls_failed_server(self, data):
        self._tls_side("tls_failed_server", data, error=True)

    # --- HTTP -----------------------------------------------------------------------------

    def http_connect(self, flow):
        c = self._conn(flow.client_conn)
        req = flow.request
        target = _hostport(req.host, req.port)
        c.c2s += len(req.method) + len(target) + 16
        if c.announced:
            return  # a CONNECT inside an intercepted connection is the upstream's business
        if self._announce(c, "CONNECT", target, req.host, req.port) == "block":
            flow.response = self._forbidden(c)

    def _stream(self, c, flow):
        st = c.open_streams.get(flow.id)
        if st is None:
            if flow.request.http_version.startswith("HTTP/2"):
                c.h2 = True
                sid = c.next_sid * 2 - 1   # client stream ids 1, 3, 5, ... in request order
            else:
                sid = c.next_sid
            c.next_sid += 1
            st = Stream(sid)
            c.open_streams[flow.id] = st
        return st

    @staticmethod
    def _version(v):
        v = v.upper()
        if v.startswith("HTTP/2"):
            return "2"
        if v.startswith("HTTP/"):
            return v[5:]
        return v

    def requestheaders(self, flow):
        c = self._conn(flow.client_conn)
        req = flow.request
        if not c.announced:
            # a plain absolute-form request in regular mode names the target itself
            if self._announce(c, req.method, req.url, req.host, req.port) == "block":
                flow.response = self._forbidden(c)
                return
        if c.decision == "block":
            return
        self._proto(c, "http2" if req.http_version.startswith("HTTP/2") else "http1")
        if req.headers.get("content-type", "").lower().startswith("application/grpc"):
            self._proto(c, "grpc")  # as natively (docs/events.md, "protocol")
        st = self._stream(c, flow)
        scheme = req.scheme if req.method != "CONNECT" else None
        authority = req.authority or req.headers.get("host") or None
        path = req.path
        hdrs = [[k, v] for k, v in req.headers.items(multi=True)]
        c.c2s += sum(len(k) + len(v) + 4 for k, v in hdrs) + len(req.method) + len(path) + 12
        st.head_seen = True
        self._event(c, "request_headers", stream_id=st.sid, method=req.method, scheme=scheme,
                    authority=authority, path=path, http_version=self._version(req.http_version),
                    headers=hdrs)

    def _chunk(self, c, st, etype, data, req):
        if not data:
            return
        off = st.req_off if req else st.resp_off
        capd = st.req_cap if req else st.resp_cap
        take = max(0, min(len(data), self.cap - capd))
        captured = data[:take]
        capd += take
        self._event(c, etype, stream_id=st.sid, offset=off, len=len(data),
                    data_b64=base64.b64encode(captured).decode(),
                    truncated=capd < off + len(data))
        if req:
            st.req_off, st.req_cap = off + len(data), capd
            c.c2s += len(data)
        else:
            st.resp_off, st.resp_cap = off + len(data), capd
            c.s2c += len(data)

    def request(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is None or c.decision == "block":
            return
        st = c.open_streams.get(flow.id)
        if st is None:
            return
        self._chunk(c, st, "request_body_chunk", flow.request.raw_content or b"", True)

    def responseheaders(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is None:
            return
        st = c.open_streams.get(flow.id)
        if st is None or st.done:
            return
        resp = flow.response
        hdrs = [[k, v] for k, v in resp.headers.items(multi=True)]
        removed = self._strip_alt_svc(resp) if self.strip_h3 else []
        c.s2c += sum(len(k) + len(v) + 4 for k, v in hdrs) + 17
        ctype = resp.headers.get("content-type", "").lower()
        if ctype.startswith("text/event-stream"):
            self._proto(c, "sse")
            st.sse = SseParser(lambda ev, eid, retry, data: self._event(
                c, "sse_event", stream_id=st.sid, event=ev, id=eid, retry=retry, data=data))

            # mitmproxy would buffer the whole response: stream it instead, reporting each
            # piece as a body chunk and each dispatched event as sse_event as it passes.
            def relay(data):
                if data:
                    self._chunk(c, st, "response_body_chunk", data, False)
                    st.sse.feed(data)
                return data
            resp.stream = relay
        extra = {"alt_svc_removed": removed[:16]} if removed else {}
        self._event(c, "response_headers", stream_id=st.sid, status=resp.status_code,
                    http_version=self._version(resp.http_version), headers=hdrs, **extra)

    @staticmethod
    def _strip_alt_svc(resp):
        """docs/http3.md, "Forcing clients back to TCP": the h3 entries leave Alt-Svc."""
        values = resp.headers.get_all("alt-svc")
        if not values:
            return []
        removed, kept = [], []
        for v in values:
            for entry in v.split(","):
                e = entry.strip()
                if not e:
                    continue
                proto = e.split("=", 1)[0].strip().lower()
                (removed if proto == "h3" or proto.startswith("h3-") else kept).append(e)
        if removed:
            if kept:
                resp.headers.set_all("alt-svc", [", ".join(kept)])
            else:
                del resp.headers["alt-svc"]
        return removed

    def _complete(self, c, st, outcome, reason=None):
        if st.done:
            return
        st.done = True
        fields = {"stream_id": st.sid, "outcome": outcome, "request_bytes": st.req_off,
                  "response_bytes": st.resp_off}
        if reason is not None and outcome != "complete":
            fields["reason"] = reason
        self._event(c, "exchange_completed", **fields)

    def response(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is None:
            return
        st = c.open_streams.get(flow.id)
        if st is None or st.done:
            return
        if st.sse is None and not flow.response.stream:
            self._chunk(c, st, "response_body_chunk", flow.response.raw_content or b"", False)
        if flow.response.status_code == 101:
            st.websocket = True
            return  # the exchange goes on as a WebSocket: completed at websocket_end
        self._complete(c, st, "complete")
        c.open_streams.pop(flow.id, None)

    def error(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is None:
            return
        st = c.open_streams.get(flow.id)
        if st is None or st.done:
            return
        msg = (flow.error.msg if flow.error else "") or ""
        low = msg.lower()
        if "timeout" in low or "timed out" in low:
            outcome, reason = "timeout", None
        elif "client" in low:
            outcome, reason = "client_aborted", None
        else:
            outcome = "upstream_aborted"
            reason = "upstream_reset" if "reset" in low else "upstream_eof"
        self._complete(c, st, outcome, reason)
        c.open_streams.pop(flow.id, None)

    # --- WebSocket ------------------------------------------------------------------------

    def websocket_start(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is not None:
            self._proto(c, "websocket")

    def websocket_message(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is None:
            return
        st = c.open_streams.get(flow.id)
        if st is None or st.done:
            return
        msg = flow.websocket.messages[-1]
        data = msg.content if isinstance(msg.content, bytes) else str(msg.content).encode()
        opcode = int(getattr(msg.type, "value", msg.type))
        take = min(len(data), self.cap, WS_CAPTURE_MAX)
        if msg.from_client:
            c.c2s += len(data)
        else:
            c.s2c += len(data)
        self._event(c, "ws_message", stream_id=st.sid,
                    direction="client_to_server" if msg.from_client else "server_to_client",
                    opcode=opcode, len=len(data),
                    data_b64=base64.b64encode(data[:take]).decode(), truncated=take < len(data))

    def websocket_end(self, flow):
        c = self.conns.get(flow.client_conn.id)
        if c is None:
            return
        st = c.open_streams.get(flow.id)
        if st is None:
            return
        self._complete(c, st, "complete")
        c.open_streams.pop(flow.id, None)


addons = [SothBridge()]
