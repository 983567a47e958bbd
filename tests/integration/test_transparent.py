"""Transparent mode for real: a private network namespace (unshare -n), an nftables REDIRECT
rule sending the client's connections to the proxy, SO_ORIGINAL_DST recovering the target."""
import os
import shutil
import socket
import ssl
import subprocess
import sys
import unittest

from harness import EchoServer, Proxy, read_all
from test_core import HTTPOrigin
from test_tls import TLSOrigin

INNER = os.environ.get("SOTH_TRANSPARENT_INNER") == "1"
CLIENT_SRC = "127.0.0.3"  # only the client's connections are redirected (not the proxy's own)


def nft(rules):
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)


@unittest.skipUnless(INNER, "runs inside its own network namespace (see main)")
class TransparentTests(unittest.TestCase):
    def test_redirected_connection_reaches_original_destination(self):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        echo = EchoServer()  # listens on 127.0.0.1:<port>: the original destination
        with Proxy(mode="transparent", config={"policy": {"default": "tunnel"}}) as p:
            nft(f"""
table ip soth_test {{
    chain output {{
        type nat hook output priority -100; policy accept;
        ip saddr {CLIENT_SRC} tcp dport {echo.port} redirect to :{p.port}
    }}
}}
""")
            s = socket.socket()
            s.bind((CLIENT_SRC, 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", echo.port))
            payload = os.urandom(100000)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(read_all(s), payload)
            s.close()
            evs = p.checked_events()
        echo.close()
        rec = evs[0]
        self.assertEqual(rec["type"], "connect_received")
        self.assertEqual((rec["server_host"], rec["server_port"]), ("127.0.0.1", echo.port))
        self.assertEqual(rec["client_addr"].split(":")[0], CLIENT_SRC)
        self.assertEqual(evs[-1]["type"], "stream_closed")
        self.assertEqual(evs[-1]["bytes_client_to_server"], len(payload))

    def redirect(self, port, proxy_port):
        nft(f"""
table ip soth_test {{
    chain output {{
        type nat hook output priority -100; policy accept;
        ip saddr {CLIENT_SRC} tcp dport {port} redirect to :{proxy_port}
    }}
}}
""")

    def tearDown(self):
        subprocess.run(["nft", "delete", "table", "ip", "soth_test"], capture_output=True)

    def test_intercepted_plain_http_is_parsed(self):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        o = HTTPOrigin()
        with Proxy(mode="transparent", config={"policy": {"default": "intercept"}}) as p:
            self.redirect(o.port, p.port)
            s = socket.socket()
            s.bind((CLIENT_SRC, 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", o.port))
            s.sendall(b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            resp = read_all(s)
            s.close()
            evs = p.checked_events()
        o.close()
        self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp[:100])
        self.assertTrue(resp.endswith(o.body))
        req = [e for e in evs if e["type"] == "request_headers"]
        self.assertEqual(len(req), 1, evs)
        self.assertEqual((req[0]["method"], req[0]["path"], req[0]["scheme"]), ("GET", "/t", "http"))
        done = [e for e in evs if e["type"] == "exchange_completed"]
        self.assertEqual(done[0]["outcome"], "complete")

    def test_intercepted_tls_uses_the_sni(self):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        o = TLSOrigin()
        cfg = {"policy": {"default": "intercept"}, "tls": {"upstream_ca_file": o.ca}}
        with Proxy(mode="transparent", config=cfg) as p:
            self.redirect(o.port, p.port)
            ctx = ssl.create_default_context(cafile=os.path.join(p.tmp, "ca", "soth-mitm-ca.pem"))
            raw = socket.socket()
            raw.bind((CLIENT_SRC, 0))
            raw.settimeout(10)
            raw.connect(("127.0.0.1", o.port))
            s = ctx.wrap_socket(raw, server_hostname="origin.test")
            s.sendall(b"GET /s HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
            resp = read_all(s)
            s.close()
            evs = p.checked_events()
        o.close()
        self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp[:100])
        self.assertTrue(resp.endswith(o.body))
        started = [e for e in evs if e["type"] == "tls_handshake_started"]
        self.assertEqual([e["sni"] for e in started], ["origin.test", "origin.test"])
        req = [e for e in evs if e["type"] == "request_headers"]
        self.assertEqual((req[0]["scheme"], req[0]["authority"]), ("https", "origin.test"))

    def test_not_redirected_connection_is_refused_cleanly(self):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with Proxy(mode="transparent") as p:
            s = socket.create_connection(p.addr(), timeout=5)
            self.assertEqual(read_all(s), b"")
            s.close()
            evs = p.checked_events()
        self.assertEqual([e["type"] for e in evs], ["connect_parse_failed", "stream_closed"])


def main():
    if INNER:
        unittest.main(argv=[sys.argv[0], "-v"])
        return
    if shutil.which("unshare") is None or shutil.which("nft") is None:
        sys.exit("unshare and nft are required (ci/setup.sh installs them)")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        # The kernel or sandbox refuses network namespaces: say so loudly, do not pretend.
        print("SKIPPED: cannot create a network namespace here:", probe.stderr.decode().strip())
        sys.exit(77)
    env = dict(os.environ, SOTH_TRANSPARENT_INNER="1")
    rc = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__)],
                        env=env).returncode
    sys.exit(rc)


if __name__ == "__main__":
    main()
