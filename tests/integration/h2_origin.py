"""HTTP/2 test peers for the integration tests (python h2/hpack from Debian).

- H2Origin: a TLS origin speaking only h2 (ALPN), run as its own process (a GIL of its own)
  with a test CA the proxy trusts through tls.upstream_ca_file. Paths:
    /echo                 200, the request body back (trailers too with /echo?trailers=1)
    /gen/SEED/N           200, N deterministic bytes (body_for(SEED, N))
    /pair/K/N             200, N deterministic bytes each 2K or 2K+1 (pair_body(K, N), K < 128):
                          bodies of different K interleaved in one output can be told apart
    /hdrs                 200, the request's regular header names in order, one a line
    /big/N                200 with N bytes of response header fields (16 KiB each)
    /rst/CODE             RST_STREAM(CODE) as soon as the request head arrives
    /slow                 200 head at once, then nothing until the stream is reset
    /goaway               200 "bye", then GOAWAY(NO_ERROR) and the origin leaves (closes)
    /altsvc/KIND          200 "alt" with the Alt-Svc fields of ALT_SVC[KIND] (mixed, h3only)
  It writes what it saw, one JSON object a line, to its log file: {"ev": "request", "sid",
  "path", "body_len"}, {"ev": "reset", "sid", "path", "code"}, {"ev": "goaway", "code",
  "last"}, {"ev": "conn"}, {"ev": "closed"}.
- H2Client: a python h2 client through the proxy (CONNECT, then TLS with ALPN h2 trusting the
  proxy's CA) or straight to a TLS listener (reverse mode), driven until a condition holds.

    /usr/bin/python3 h2_origin.py serve CERT KEY LOGFILE     (prints "PORT n")
"""
import json
import os
import random
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

PY = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))


# Alt-Svc as an origin offering HTTP/3 sends it (test_altsvc.py)
ALT_SVC = {
    "mixed": [(b"alt-svc", b'h3=":443"; ma=86400, h2=":443"')],
    "h3only": [(b"alt-svc", b'h3=":443"; ma=86400')],
}


def body_for(seed, n):
    return random.Random(seed).randbytes(n)


def pair_body(k, n):
    """N bytes over the two values 2K and 2K+1 (K < 128), in a deterministic random order."""
    return bytes(2 * k + (x & 1) for x in random.Random(k).randbytes(n))


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_origin_pki(d, name="origin.test"):
    """A test CA and a leaf for `name` (P-256) in directory d; returns (ca, cert, key)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=h2 origin test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "o.key", "-out", "o.csr", "-subj", f"/CN={name}", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write(f"subjectAltName=DNS:{name},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return (os.path.join(d, "ca.pem"), os.path.join(d, "o.pem"), os.path.join(d, "o.key"))


class H2Origin:
    """The origin process; `port`, `ca`, `log()` (parsed log lines)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soth-h2origin-")
        self.ca, cert, key = make_origin_pki(self.dir)
        self.log_path = os.path.join(self.dir, "origin.log")
        with open(os.path.join(self.dir, "err"), "w") as err:
            self.proc = subprocess.Popen([PY, os.path.abspath(__file__), "serve", cert, key,
                                          self.log_path], stdout=subprocess.PIPE, stderr=err)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError("h2 origin did not start: " + self.stderr())
        self.port = int(line.split()[1])

    def stderr(self):
        with open(os.path.join(self.dir, "err")) as f:
            return f.read()

    def log(self):
        out = []
        try:
            with open(self.log_path) as f:
                for line in f:
                    if line.endswith("\n"):
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def wait_log(self, pred, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            hits = [e for e in self.log() if pred(e)]
            if hits:
                return hits
            time.sleep(0.02)
        return []

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the origin process


class _Conn:
    def __init__(self, sock, log):
        self.sock = sock
        self.log = log
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.c = h2.connection.H2Connection(cfg)
        self.c.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20,
        })
        self.st = {}  # sid -> dict(path, body, out, off, trailers, done)
        self.goaway_after = None

    def note(self, **kw):
        self.log.write(json.dumps(kw) + "\n")
        self.log.flush()

    def respond(self, sid):
        s = self.st[sid]
        path = s["path"]
        hdrs = [(b":status", b"200")]
        out = b""
        if path.startswith("/echo"):
            out = bytes(s["body"])
            s["trailers"] = "trailers=1" in path
        elif path.startswith("/gen/"):
            _, _, seed, n = path.split("/")
            out = body_for(int(seed), int(n))
        elif path.startswith("/pair/"):
            _, _, k, n = path.split("/")
            out = pair_body(int(k), int(n))
        elif path == "/hdrs":
            out = b"".join(n + b"\n" for n, _ in s["headers"] if not n.startswith(b":"))
        elif path.startswith("/big/"):
            n = int(path.split("/")[2])
            i = 0
            while n > 0:
                k = min(n, 16384)
                hdrs.append((b"x-big-%d" % i, b"b" * k))
                n -= k
                i += 1
            out = b"after a big head"
        elif path == "/goaway":
            out = b"bye"
            self.goaway_after = sid
        elif path.startswith("/altsvc/"):
            hdrs += ALT_SVC[path.split("/")[2]]
            out = b"alt"
        hdrs.append((b"content-length", str(len(out)).encode()))
        self.c.send_headers(sid, hdrs)
        s["out"], s["off"] = out, 0

    def pump_out(self):
        for sid, s in list(self.st.items()):
            if s.get("out") is None or s.get("done"):
                continue
            try:
                while s["off"] < len(s["out"]):
                    n = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size,
                            len(s["out"]) - s["off"])
                    if n <= 0:
                        break
                    self.c.send_data(sid, s["out"][s["off"]:s["off"] + n])
                    s["off"] += n
                if s["off"] == len(s["out"]):
                    if s.get("trailers"):
                        self.c.send_headers(sid, [(b"x-sum", str(len(s["out"])).encode())],
                                            end_stream=True)
                    else:
                        self.c.end_stream(sid)
                    s["done"] = True
                    if self.goaway_after == sid:
                        self.c.close_connection(last_stream_id=sid)
                        self.note(ev="goaway_sent")
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                s["done"] = True

    def run(self):
        self.note(ev="conn")
        self.c.initiate_connection()
        self.c.increment_flow_control_window(1 << 24)
        out = bytearray(self.c.data_to_send())
        inbuf = bytearray()
        preface = False
        self.sock.setblocking(False)
        try:
            while True:
                if not self.sock.pending():
                    rd, wr, _ = select.select([self.sock], [self.sock] if out else [], [], 30)
                    if not rd and not wr:
                        continue
                    while out and wr:
                        try:
                            n = self.sock.send(out[:1 << 16])
                        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                            break
                        del out[:n]
                    if not rd:
                        continue
                try:
                    data = self.sock.recv(1 << 16)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue
                if not data:
                    break
                inbuf += data
                try:
                    events = []
                    if not preface:
                        if len(inbuf) < 24:
                            continue
                        events += self.c.receive_data(bytes(inbuf[:24]))
                        del inbuf[:24]
                        preface = True
                    # One frame at a time: a graceful GOAWAY (see event()) is handled before
                    # the frames behind it.
                    while len(inbuf) >= 9:
                        n = 9 + int.from_bytes(inbuf[:3], "big")
                        if len(inbuf) < n:
                            break
                        frame = bytes(inbuf[:n])
                        del inbuf[:n]
                        for ev in self.c.receive_data(frame):
                            events.append(ev)
                            self.event(ev)
                except h2.exceptions.ProtocolError as e:
                    self.note(ev="protocol_error", what=str(e))
                    out += self.c.data_to_send()
                    break
                self.pump_out()
                out += self.c.data_to_send()
                if self.goaway_after is not None and self.st[self.goaway_after].get("done"):
                    break
        except OSError:
            pass
        finally:
            try:
                self.sock.settimeout(5)
                self.sock.sendall(bytes(out))
            except OSError:
                pass
            self.note(ev="closed")
            try:
                self.sock.close()
            except OSError:
                pass

    def event(self, ev):
        c = self.c
        if isinstance(ev, h2.events.RequestReceived):
            hd = list(ev.headers)
            path = dict(hd).get(b":path", b"").decode()
            self.st[ev.stream_id] = {"path": path, "body": bytearray(), "headers": hd}
            size = sum(len(n) + len(v) + 32 for n, v in hd)
            self.note(ev="head", sid=ev.stream_id, path=path, size=size)
            if path.startswith("/rst/"):
                c.reset_stream(ev.stream_id, int(path.split("/")[2]))
                self.st[ev.stream_id]["done"] = True
            elif path == "/slow":
                c.send_headers(ev.stream_id, [(b":status", b"200")])
        elif isinstance(ev, h2.events.DataReceived):
            s = self.st.get(ev.stream_id)
            if s is not None:
                s["body"] += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            s = self.st.get(ev.stream_id)
            if s is None or s.get("done"):
                return
            self.note(ev="request", sid=ev.stream_id, path=s["path"], body_len=len(s["body"]))
            if s["path"] != "/slow":
                self.respond(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            s = self.st.get(ev.stream_id, {})
            s["done"] = True
            self.note(ev="reset", sid=ev.stream_id, path=s.get("path"), code=int(ev.error_code))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.note(ev="goaway", code=int(ev.error_code), last=ev.last_stream_id)
            if ev.error_code == 0:
                # Streams in flight may finish after a graceful GOAWAY (RFC 9113 6.8); python
                # h2 would refuse every later frame: keep its state machine open.
                c.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN


def serve(cert, key, log_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    log = open(log_path, "a")
    lock = threading.Lock()

    class Locked:
        def write(self, s):
            with lock:
                log.write(s)

        def flush(self):
            with lock:
                log.flush()

    sys.stdout.write(f"PORT {ls.getsockname()[1]}\n")
    sys.stdout.flush()

    def one(raw):
        try:
            s = ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        _Conn(s, Locked()).run()

    while True:
        raw, _ = ls.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=one, args=(raw,), daemon=True).start()


# ---- the client


class H2Client:
    """python h2 client. Through a regular-mode proxy: H2Client(proxy_addr, ca, host, port).
    Straight to a TLS listener (reverse mode): H2Client(addr, ca, host, None)."""

    def __init__(self, addr, ca, host, port, timeout=20, settings=None, alpn=("h2",),
                 connect_headers=""):
        self.raw = socket.create_connection(addr, timeout=timeout)
        if port is not None:
            # connect_headers: more header lines for the CONNECT, each ending in CRLF
            self.raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                             f"{connect_headers}\r\n".encode())
            buf = b""
            while not buf.endswith(b"\r\n\r\n"):
                d = self.raw.recv(1)
                if not d:
                    raise ConnectionError("proxy closed during CONNECT")
                buf += d
            if not buf.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(buf.decode(errors="replace"))
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(list(alpn))
        self.sock = ctx.wrap_socket(self.raw, server_hostname=host)
        self.alpn = self.sock.selected_alpn_protocol()
        self.sock.setblocking(False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.host = host
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.c = h2.connection.H2Connection(cfg)
        self.c.local_settings = h2.settings.Settings(client=True, initial_values=dict({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        }, **(settings or {})))
        self.c.initiate_connection()
        self.c.increment_flow_control_window(1 << 24)
        self.sock.sendall(self.c.data_to_send())
        self.r = {}  # sid -> dict(status, headers, body, trailers, ended, reset)
        self.pending = {}  # sid -> [body, off, trailers]
        self.hold = set()  # streams whose received data is not acknowledged (see release())
        self.held = {}
        self.goaway = None
        self.closed = False

    def request(self, method, path, body=b"", headers=(), trailers=None):
        sid = self.c.get_next_available_stream_id()
        hd = [(b":method", method.encode()), (b":scheme", b"https"),
              (b":authority", self.host.encode()), (b":path", path.encode())]
        hd += [(n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v)
               for n, v in headers]
        end = not body and trailers is None
        self.c.send_headers(sid, hd, end_stream=end)
        self.r[sid] = {"status": None, "headers": [], "body": bytearray(), "trailers": None,
                       "ended": False, "reset": None}
        if not end:
            self.pending[sid] = [body, 0, trailers]
        self.flush()
        return sid

    def pump_out(self):
        for sid, p in list(self.pending.items()):
            body, off, trailers = p
            try:
                while off < len(body):
                    n = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size,
                            len(body) - off)
                    if n <= 0:
                        break
                    self.c.send_data(sid, body[off:off + n])
                    off += n
                p[1] = off
                if off == len(body):
                    if trailers:
                        self.c.send_headers(sid, trailers, end_stream=True)
                    else:
                        self.c.end_stream(sid)
                    del self.pending[sid]
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                del self.pending[sid]

    def flush(self):
        self.pump_out()
        self.out += self.c.data_to_send()
        self.try_send()

    def try_send(self):
        """Send what the socket takes now: a peer that blocks writing while the other side
        waits for it to read deadlocks, so writes never block."""
        while self.out:
            try:
                n = self.sock.send(self.out[:1 << 16])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            except OSError:
                self.out.clear()
                self.closed = True
                return
            del self.out[:n]

    def release(self, sid):
        """Acknowledge what a held stream received and stop holding it."""
        self.hold.discard(sid)
        n = self.held.pop(sid, 0)
        if n and not self.done(sid):
            self.c.acknowledge_received_data(n, sid)
        self.flush()

    def reset(self, sid, code):
        self.c.reset_stream(sid, code)
        self.pending.pop(sid, None)
        self.flush()

    def done(self, sid):
        r = self.r[sid]
        return r["ended"] or r["reset"] is not None

    def run_until(self, pred, timeout=30):
        deadline = time.time() + timeout
        while not pred():
            if self.closed:
                return pred()
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("h2 client: condition not met in time")
            if not self.sock.pending():
                rd, wr, _ = select.select([self.sock], [self.sock] if self.out else [], [],
                                          min(left, 1.0))
                if wr:
                    self.try_send()
                if not rd:
                    continue
            try:
                data = self.sock.recv(1 << 16)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                continue
            except (ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                continue
            # One frame at a time, so that a graceful GOAWAY (see event()) is handled before
            # the frames behind it.
            self.inbuf += data
            while len(self.inbuf) >= 9:
                n = 9 + int.from_bytes(self.inbuf[:3], "big")
                if len(self.inbuf) < n:
                    break
                frame, self.inbuf = bytes(self.inbuf[:n]), self.inbuf[n:]
                for ev in self.c.receive_data(frame):
                    self.event(ev)
            self.flush()
        return True

    def event(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            r = self.r.get(ev.stream_id)
            if r is not None:
                r["headers"] = list(ev.headers)
                r["status"] = int(dict(ev.headers)[b":status"])
        elif isinstance(ev, h2.events.DataReceived):
            r = self.r.get(ev.stream_id)
            if r is not None:
                r["body"] += ev.data
            if ev.stream_id in self.hold:
                # the application "does not read" this stream: its window stays shut
                self.held[ev.stream_id] = self.held.get(ev.stream_id, 0) + \
                    ev.flow_controlled_length
            else:
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.r[ev.stream_id]["trailers"] = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self.r[ev.stream_id]["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self.r:
                self.r[ev.stream_id]["reset"] = int(ev.error_code)
            self.pending.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), ev.last_stream_id)
            if ev.error_code == 0:
                # A graceful GOAWAY lets the streams up to last_stream_id finish (RFC 9113
                # 6.8), but python h2 closes its state machine on any GOAWAY and refuses the
                # frames that follow: keep it open to read them.
                self.c.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    def close(self):
        try:
            self.c.close_connection()
            self.flush()
            self.sock.settimeout(5)
            self.sock.sendall(bytes(self.out))
        except Exception:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
