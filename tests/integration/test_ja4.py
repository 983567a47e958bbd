"""JA4 / JA4S through the proxy (docs/tls.md, "Fingerprints"): curl's and python's JA4 on
tls_handshake_started (side client) and the origin's JA4S on tls_handshake_succeeded (side
upstream) equal an independent computation, written here from FoxIO's published
specification, over the ClientHello / ServerHello bytes captured by small TCP relays (one in
front of the proxy, one in front of the origin)."""
import hashlib
import os
import socket
import ssl
import subprocess
import threading
import unittest

from harness import Proxy, by_flow
from test_tls import TLSOrigin

PY = "/usr/bin/python3"


def grease(v):
    return (v & 0x0f0f) == 0x0a0a and (v >> 8) == (v & 0xff)


VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
            0x0002: "s2", 0xfeff: "d1", 0xfefd: "d2", 0xfefc: "d3"}


def alpn_chars(v):
    if not v:
        return "00"
    alnum = lambda b: chr(b).isascii() and chr(b).isalnum()  # noqa: E731
    if alnum(v[0]) and alnum(v[-1]):
        return chr(v[0]) + chr(v[-1])
    h = v.hex()
    return h[0] + h[-1]


def h12(s):
    return hashlib.sha256(s.encode()).hexdigest()[:12] if s else "000000000000"


def records_payload(data, content_type=22):
    """The concatenated bodies of the leading TLS records of one content type."""
    out = b""
    i = 0
    while i + 5 <= len(data):
        ct, ln = data[i], int.from_bytes(data[i + 3:i + 5], "big")
        if i + 5 + ln > len(data):
            break
        if ct == content_type:
            out += data[i + 5:i + 5 + ln]
        i += 5 + ln
    return out


def parse_exts(b):
    exts = []
    while b:
        t, ln = int.from_bytes(b[:2], "big"), int.from_bytes(b[2:4], "big")
        exts.append((t, b[4:4 + ln]))
        b = b[4 + ln:]
    return exts


def ja4(hello):
    """hello: the ClientHello handshake message."""
    body = hello[4:4 + int.from_bytes(hello[1:4], "big")]
    version = int.from_bytes(body[:2], "big")
    p = 34
    p += 1 + body[p]
    n = int.from_bytes(body[p:p + 2], "big")
    ciphers = [int.from_bytes(body[p + 2 + i:p + 4 + i], "big") for i in range(0, n, 2)]
    p += 2 + n
    p += 1 + body[p]
    exts = parse_exts(body[p + 2:]) if p < len(body) else []
    ciphers = [c for c in ciphers if not grease(c)]
    exts = [(t, d) for t, d in exts if not grease(t)]
    types = [t for t, _ in exts]
    sigs, alpn = [], b""
    for t, d in exts:
        if t == 0x2b:
            vs = [int.from_bytes(d[1 + i:3 + i], "big") for i in range(0, d[0], 2)]
            vs = [v for v in vs if not grease(v)]
            if vs:
                version = max(vs)
        elif t == 0x0d:
            sigs = [int.from_bytes(d[2 + i:4 + i], "big")
                    for i in range(0, int.from_bytes(d[:2], "big"), 2)]
            sigs = [s for s in sigs if not grease(s)]
        elif t == 0x10 and len(d) > 2:
            alpn = d[3:3 + d[2]]
    a = "t" + VERSIONS.get(version, "00") + ("d" if 0 in types else "i") + \
        "%02d" % min(len(ciphers), 99) + "%02d" % min(len(types), 99) + alpn_chars(alpn)
    b = h12(",".join("%04x" % c for c in sorted(ciphers)))
    sorted_exts = ",".join("%04x" % t for t in sorted(types) if t not in (0, 0x10))
    c_in = sorted_exts + ("_" + ",".join("%04x" % s for s in sigs) if sigs else "")
    c = h12(c_in) if sorted_exts else "000000000000"
    return f"{a}_{b}_{c}"


def ja4s(hello):
    """hello: the ServerHello handshake message."""
    body = hello[4:4 + int.from_bytes(hello[1:4], "big")]
    version = int.from_bytes(body[:2], "big")
    p = 34
    p += 1 + body[p]
    cipher = int.from_bytes(body[p:p + 2], "big")
    p += 3
    exts = [(t, d) for t, d in (parse_exts(body[p + 2:]) if p < len(body) else [])
            if not grease(t)]
    alpn = b""
    for t, d in exts:
        if t == 0x2b:
            version = int.from_bytes(d[:2], "big")
        elif t == 0x10:
            alpn = d[3:3 + d[2]]
    a = "t" + VERSIONS.get(version, "00") + "%02d" % min(len(exts), 99) + alpn_chars(alpn)
    return f"{a}_{cipher:04x}_{h12(','.join('%04x' % t for t, _ in exts))}"


class Relay:
    """Forwards 127.0.0.1:port to a target, keeping the first bytes of each direction of
    every connection (fwd: towards the target, back: from it)."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.conns = []
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
            u = socket.create_connection(self.target)
            rec = {"fwd": bytearray(), "back": bytearray()}
            self.conns.append(rec)
            threading.Thread(target=self._pump, args=(c, u, rec["fwd"]), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, rec["back"]), daemon=True).start()

    @staticmethod
    def _pump(a, b, keep):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                if len(keep) < 65536:
                    keep += d
                b.sendall(d)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.sock.close()


def first_handshake_message(stream):
    hs = records_payload(stream)
    return hs[:4 + int.from_bytes(hs[1:4], "big")]


class JA4Tests(unittest.TestCase):
    def setUp(self):
        self.origin = TLSOrigin()
        self.origin_relay = Relay(self.origin.port)

    def tearDown(self):
        self.origin_relay.close()
        self.origin.close()

    def run_client(self, client):
        config = {"policy": {"default": "intercept"},
                  "resolve": {"origin.test": "127.0.0.1"},
                  "tls": {"upstream_ca_file": self.origin.ca}}
        with Proxy(config=config) as p:
            front = Relay(p.port)
            ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            url = f"https://origin.test:{self.origin_relay.port}/ja4"
            client(front.port, ca, url)
            evs = p.checked_events()
            front.close()
        flows = list(by_flow(evs).values())
        self.assertEqual(len(flows), 1)
        fl = flows[0]
        started = [e for e in fl if e["type"] == "tls_handshake_started"]
        done = [e for e in fl if e["type"] == "tls_handshake_succeeded"]
        self.assertEqual([e["side"] for e in started], ["upstream", "client"])
        self.assertEqual([e["side"] for e in done], ["upstream", "client"])
        self.assertNotIn("ja4", started[0])
        self.assertNotIn("ja4s", done[1])
        # Independent computation over the bytes the relays saw.
        fwd = bytes(front.conns[0]["fwd"])
        tls_bytes = fwd[fwd.index(b"\r\n\r\n") + 4:]
        want_ja4 = ja4(first_handshake_message(tls_bytes))
        sh = first_handshake_message(bytes(self.origin_relay.conns[0]["back"]))
        want_ja4s = ja4s(sh)
        self.assertEqual(started[1]["ja4"], want_ja4)
        self.assertEqual(done[0]["ja4s"], want_ja4s)
        return want_ja4, want_ja4s

    def test_curl(self):
        def client(port, ca, url):
            out = subprocess.run(["curl", "-sS", "--cacert", ca, "-x",
                                  f"http://127.0.0.1:{port}", url],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, self.origin.body)

        j4, j4s = self.run_client(client)
        # curl (OpenSSL 3) over TLS 1.3 to a name, offering ALPN h2 first; the python origin
        # answers TLS 1.3 without ALPN.
        self.assertTrue(j4.startswith("t13d") and j4[8:10] == "h2", j4)
        self.assertTrue(j4s.startswith("t13") and j4s[5:7] == "00", j4s)

    def test_python(self):
        def client(port, ca, url):
            host_port = url.split("/")[2]
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(f"CONNECT {host_port} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            self.assertIn(b" 200 ", head)
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["http/1.1"])
            t = ctx.wrap_socket(s, server_hostname="origin.test")
            t.sendall(b"GET /ja4 HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                d = t.recv(65536)
                if not d:
                    break
                data += d
            self.assertIn(self.origin.body, data)
            t.close()

        j4, _ = self.run_client(client)
        self.assertTrue(j4.startswith("t13d") and j4[8:10] == "h1", j4)


if __name__ == "__main__":
    unittest.main()
