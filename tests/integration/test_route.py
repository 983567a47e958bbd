"""Routes (docs/config.md "Routes"): flows reach their target through an upstream HTTP proxy.
A real squid from Debian (its own config in a temp dir, loopback only, no bumping) carries
intercepted, tunnelled and plain HTTP flows; a small proxy stub shows the credentials arrive as
Proxy-Authorization; a closed port and a squid that denies a host give 502 naming the proxy."""
import base64
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (PROXY_BIN, EchoServer, Proxy, by_flow, close_listener, connect_tunnel,
                     free_port, read_all, read_head)
from test_tls import TLSOrigin

SQUID = "/usr/sbin/squid"


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


class Squid:
    """squid -N with everything in a temp dir: an http_port on a free loopback port, no cache,
    origin names from its own hosts file, `refused.test` denied (403), an access log."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soth-squid-")
        os.chmod(self.dir, 0o777)  # squid drops to cache_effective_user when run as root
        self.port = free_port()
        self.access = os.path.join(self.dir, "access.log")
        d = self.dir
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write("127.0.0.1 origin.test plain.test refused.test egress.test\n")
        user = "proxy" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        conf = f"""http_port 127.0.0.1:{self.port}
icp_port 0
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{self.access}
cache deny all
coredump_dir {d}
hosts_file {d}/hosts
dns_nameservers 127.0.0.1
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
logfile_rotate 0
cache_effective_user {user}
acl refused dstdomain refused.test
http_access deny refused
http_access allow all
"""
        self.conf = os.path.join(d, "squid.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        # A service name of its own: squid names its shared-memory segments after it
        # (/dev/shm/<name>-cf__*.shm), so no other squid on the machine shares or owns them.
        # Its output: where it writes when it cannot write its cache.log.
        with open(os.path.join(d, "squid.out"), "w") as out:
            self.proc = subprocess.Popen([SQUID, "-N", "-n", f"sothsq{self.port}", "-f",
                                          self.conf], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc, "squid")
        except RuntimeError as e:
            tail = ""
            for name in ("cache.log", "squid.out"):
                try:
                    with open(os.path.join(d, name)) as f:
                        tail += f"{name}:\n" + "".join(f.readlines()[-8:])
                except OSError:
                    tail += f"(no {name})\n"
            self.close()
            raise RuntimeError(f"{e}; how its logs end:\n{tail}") from None

    def route(self):
        return f"upstream:http://127.0.0.1:{self.port}"

    def log(self, want, timeout=10):
        """The access log, once a line holds `want` (squid writes at transaction end)."""
        deadline = time.time() + timeout
        text = ""
        while time.time() < deadline:
            try:
                with open(self.access) as f:
                    text = f.read()
            except OSError:
                text = ""
            if want in text:
                break
            time.sleep(0.1)
        return text

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class PlainOrigin:
    """A plain HTTP origin answering every GET with its path in the body."""

    def __init__(self):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = f"plain origin saw {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class StubProxy:
    """A minimal upstream proxy: records each request head; CONNECT gets `answer` (a 2xx
    opens a tunnel to 127.0.0.1 at the target's port), a plain request a fixed 200."""

    def __init__(self, answer=b"HTTP/1.1 200 Connection established\r\n\r\n"):
        self.answer = answer
        self.heads = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def route(self, userinfo=""):
        return f"upstream:http://{userinfo}127.0.0.1:{self.port}"

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                if not d:
                    return
                head += d
            head, _, rest = head.partition(b"\r\n\r\n")
            self.heads.append(head.decode())
            line = head.split(b"\r\n")[0].split(b" ")
            while line[0] != b"CONNECT":
                # plain requests (no bodies here): answered, keep-alive unless asked to close
                body = b"stub proxy answer\n"
                close = b"connection: close" in head.lower()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n"
                          % (len(body), b"Connection: close\r\n" if close else b"") + body)
                if close:
                    return
                while b"\r\n\r\n" not in rest:
                    d = c.recv(4096)
                    if not d:
                        return
                    rest += d
                head, _, rest = rest.partition(b"\r\n\r\n")
                self.heads.append(head.decode())
                line = head.split(b"\r\n")[0].split(b" ")
            c.sendall(self.answer)
            if self.answer[9:10] != b"2":  # not a 2xx: no tunnel
                return
            port = int(line[1].rsplit(b":", 1)[1])
            up = socket.create_connection(("127.0.0.1", port), timeout=10)
            if rest:
                up.sendall(rest)

            def pump(a, b):
                try:
                    while True:
                        d = a.recv(65536)
                        if not d:
                            break
                        b.sendall(d)
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

            t = threading.Thread(target=pump, args=(up, c), daemon=True)
            t.start()
            pump(c, up)
            t.join(10)
            up.close()
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        close_listener(self.sock)


def stream_closed(evs):
    return [e for e in evs if e["type"] == "stream_closed"]


class SquidRouteTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.squid = Squid()

    @classmethod
    def tearDownClass(cls):
        cls.squid.close()

    def test_intercepted_https_through_squid(self):
        origin = TLSOrigin()
        try:
            # The rule's route applies; the default stays direct.
            cfg = {"policy": {"default": "intercept", "rules": [
                       {"host": "origin.test", "action": "intercept",
                        "route": self.squid.route()}]},
                   "tls": {"upstream_ca_file": origin.ca}}
            with Proxy(config=cfg) as p:
                ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
                url = f"https://origin.test:{origin.port}/x"
                out = subprocess.run(["curl", "-sS", "--cacert", ca, "-x",
                                      f"http://127.0.0.1:{p.port}", url, url],
                                     capture_output=True, timeout=60)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, origin.body * 2)
                evs = p.checked_events()
            log = self.squid.log(f"CONNECT origin.test:{origin.port}")
            self.assertIn(f"CONNECT origin.test:{origin.port}", log)
            fl = list(by_flow(evs).values())[0]
            types = [e["type"] for e in fl]
            self.assertEqual(types[:2], ["connect_received", "connect_decision"])
            self.assertEqual(fl[1]["decision"], "intercept")
            self.assertEqual(types.count("exchange_completed"), 2)
            self.assertIn(fl[-1]["reason_code"], ("client_eof", "relay_eof"))
        finally:
            origin.close()

    def test_tunnelled_flow_through_squid(self):
        echo = EchoServer()
        try:
            cfg = {"policy": {"default": "tunnel", "default_route": self.squid.route()}}
            with Proxy(config=cfg) as p:
                s, head = connect_tunnel(p, "127.0.0.1", echo.port)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                payload = os.urandom(200000)
                s.sendall(payload)
                # squid ends a tunnel on the first FIN (no half-close): read the echo first
                got = b""
                while len(got) < len(payload):
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                self.assertEqual(got, payload)
                s.close()
                evs = p.checked_events()
            self.assertIn(f"CONNECT 127.0.0.1:{echo.port}",
                          self.squid.log(f"CONNECT 127.0.0.1:{echo.port}"))
            self.assertEqual(echo.accepts, 1)
            closed = stream_closed(evs)
            self.assertEqual(len(closed), 1)
            self.assertIn(closed[0]["reason_code"], ("client_eof", "relay_eof"))
        finally:
            echo.close()

    def test_plain_http_in_absolute_form_through_squid(self):
        origin = PlainOrigin()
        try:
            cfg = {"policy": {"default": "intercept", "default_route": self.squid.route()}}
            with Proxy(config=cfg) as p:
                url = f"http://plain.test:{origin.port}/abs?q=1"
                out = subprocess.run(["curl", "-sS", "-x", f"http://127.0.0.1:{p.port}", url],
                                     capture_output=True, timeout=60)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, b"plain origin saw /abs?q=1\n")
                evs = p.checked_events()
            # squid logs the URL without its query (strip_query_terms)
            logged = f"GET http://plain.test:{origin.port}/abs"
            self.assertIn(logged, self.squid.log(logged))
            req = [e for e in evs if e["type"] == "request_headers"]
            self.assertEqual(len(req), 1)
            self.assertEqual(req[0]["path"], "/abs?q=1")
        finally:
            origin.close()

    def test_bundle_rule_route_through_squid(self):
        # docs/bundles.md: a bundle rule's route and defaults.route compile into the policy.
        echo = EchoServer()
        d = tempfile.mkdtemp(prefix="soth-route-bundle-")
        try:
            path = os.path.join(d, "bundle.json")
            with open(path, "w") as f:
                json.dump({"bundle_version": 1, "bundle_id": "route-it",
                           "rules": [{"id": "egress", "hosts": ["egress.test"],
                                      "action": "tunnel", "route": self.squid.route()}],
                           "defaults": {"action": "tunnel", "route": "direct"}}, f)
            cfg = {"resolve": {"direct.test": "127.0.0.1"}}
            with Proxy(config=cfg, extra_args=["--bundle", path]) as p:
                for host in ("egress.test", "direct.test"):
                    s, head = connect_tunnel(p, host, echo.port)
                    self.assertTrue(head.startswith(b"HTTP/1.1 200"), (host, head))
                    s.sendall(host.encode())
                    got = b""
                    while len(got) < len(host):
                        chunk = s.recv(100)
                        if not chunk:
                            break
                        got += chunk
                    self.assertEqual(got, host.encode())
                    s.close()
                p.checked_events()
            # the CONNECT names egress.test, which squid resolves through its own hosts file
            log = self.squid.log(f"CONNECT egress.test:{echo.port}")
            self.assertIn(f"CONNECT egress.test:{echo.port}", log)
            self.assertNotIn("direct.test", log)
        finally:
            echo.close()
            shutil.rmtree(d, ignore_errors=True)

    def test_squid_denying_the_target_gives_502_naming_it(self):
        cfg = {"policy": {"default": "tunnel", "default_route": self.squid.route()}}
        with Proxy(config=cfg) as p:
            s, head = connect_tunnel(p, "refused.test", 443)
            body = read_all(s)
            s.close()
            evs = p.checked_events()
        self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway"), head)
        self.assertIn(f"upstream proxy {self.squid.route()}: refused CONNECT refused.test:443: "
                      f"403 Forbidden".encode(), body)
        self.assertIn("TCP_DENIED/403", self.squid.log("TCP_DENIED/403"))
        closed = stream_closed(evs)
        self.assertEqual([c["reason_code"] for c in closed], ["upstream_proxy_failed"])


class StubRouteTests(unittest.TestCase):
    USER, PASSWORD = "alice", "s3cr@t:x"
    USERINFO = "alice:s3cr%40t%3Ax@"

    def secret_free(self, p, evs):
        """Neither the password nor the encoded credentials in events or the proxy's log."""
        token = base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
        blob = repr(evs) + p.stderr()
        for s in (self.PASSWORD, "s3cr%40t", "s3cr", token):
            self.assertNotIn(s, blob)

    def test_credentials_go_as_proxy_authorization_and_nowhere_else(self):
        stub = StubProxy()
        echo = EchoServer()
        try:
            cfg = {"policy": {"default": "tunnel",
                              "default_route": stub.route(self.USERINFO)}}
            with Proxy(config=cfg, extra_args=("--log-level", "debug")) as p:
                s, head = connect_tunnel(p, "127.0.0.1", echo.port)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                s.sendall(b"ping through the stub")
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(read_all(s), b"ping through the stub")
                s.close()
                # plain HTTP: absolute-form, our credentials, the client's Proxy-* dropped
                c = socket.create_connection(p.addr(), timeout=10)
                c.sendall(b"GET http://plain.test:8081/p?x=1 HTTP/1.1\r\nHost: plain.test:8081\r\n"
                          b"Proxy-Authorization: Basic Y2xpZW50OmNsaWVudA==\r\n"
                          b"Connection: close\r\n\r\n")
                answer = read_all(c)
                c.close()
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer)
                self.assertTrue(answer.endswith(b"stub proxy answer\n"), answer)
                evs = p.checked_events()
                self.secret_free(p, evs)
            token = base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
            self.assertEqual(len(stub.heads), 2, stub.heads)
            connect = stub.heads[0].split("\r\n")
            self.assertEqual(connect[0], f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1")
            self.assertIn(f"Host: 127.0.0.1:{echo.port}", connect)
            self.assertIn(f"Proxy-Authorization: Basic {token}", connect)
            get = stub.heads[1].split("\r\n")
            self.assertEqual(get[0], "GET http://plain.test:8081/p?x=1 HTTP/1.1")
            self.assertIn(f"Proxy-Authorization: Basic {token}", get)
            self.assertNotIn("Proxy-Authorization: Basic Y2xpZW50OmNsaWVudA==", get)
            self.assertIn("Host: plain.test:8081", get)
        finally:
            echo.close()
            stub.close()

    def test_refused_upstream_proxy_gives_502_naming_it(self):
        port = free_port()  # nothing listens there
        route = f"upstream:http://{self.USERINFO}127.0.0.1:{port}"
        shown = f"upstream:http://127.0.0.1:{port}"
        cfg = {"policy": {"default": "intercept", "default_route": route}}
        with Proxy(config=cfg) as p:
            for target in ("https://origin.test:443/", "http://plain.test/"):
                out = subprocess.run(["curl", "-sS", "-k", "-o", "-", "-w", "%{http_code}",
                                      "-x", f"http://127.0.0.1:{p.port}", target],
                                     capture_output=True, timeout=30)
                if target.startswith("https"):
                    # curl reports the CONNECT answer's status itself
                    self.assertIn(b"502", out.stderr + out.stdout, out)
                else:
                    self.assertTrue(out.stdout.endswith(b"502"), out)
                    self.assertIn(f"upstream proxy {shown}: cannot connect: ".encode(),
                                  out.stdout)
            s, head = connect_tunnel(p, "origin.test", 443)
            body = read_all(s)
            s.close()
            self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway"), head)
            self.assertIn(f"soth-mitm: upstream proxy {shown}: cannot connect: ".encode(), body)
            evs = p.checked_events()
            self.secret_free(p, evs)
        self.assertEqual([c["reason_code"] for c in stream_closed(evs)],
                         ["upstream_proxy_failed"] * 3)

    def socks_connect(self, p, host, port):
        s = socket.create_connection(p.addr(), timeout=10)
        s.sendall(b"\x05\x01\x00")
        self.assertEqual(s.recv(2), b"\x05\x00")
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() +
                  port.to_bytes(2, "big"))
        reply = b""
        while len(reply) < 10:
            d = s.recv(10 - len(reply))
            if not d:
                break
            reply += d
        return s, reply

    def test_socks5_flow_through_the_stub(self):
        stub = StubProxy()
        echo = EchoServer()
        try:
            cfg = {"policy": {"default": "tunnel", "default_route": stub.route()}}
            with Proxy(mode="socks5", config=cfg) as p:
                s, reply = self.socks_connect(p, "echo.test", echo.port)
                self.assertEqual(reply[:2], b"\x05\x00", reply)
                s.sendall(b"socks through the stub")
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(read_all(s), b"socks through the stub")
                s.close()
            self.assertEqual(stub.heads[0].split("\r\n")[0],
                             f"CONNECT echo.test:{echo.port} HTTP/1.1")
            # a route to a closed port: SOCKS5 general failure
            cfg["policy"]["default_route"] = f"upstream:http://127.0.0.1:{free_port()}"
            with Proxy(mode="socks5", config=cfg) as p:
                s, reply = self.socks_connect(p, "echo.test", echo.port)
                s.close()
                evs = p.checked_events()
            self.assertEqual(reply[:2], b"\x05\x01", reply)
            self.assertEqual([c["reason_code"] for c in stream_closed(evs)],
                             ["upstream_proxy_failed"])
        finally:
            echo.close()
            stub.close()

    def test_reverse_mode_through_the_stub(self):
        stub = StubProxy()
        origin = PlainOrigin()
        try:
            cfg = {"policy": {"default": "intercept", "default_route": stub.route()}}
            with Proxy(mode=f"reverse:http://origin.test:{origin.port}", config=cfg) as p:
                out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{p.port}/rev"],
                                     capture_output=True, timeout=30)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, b"plain origin saw /rev\n")
            self.assertEqual(stub.heads[0].split("\r\n")[0],
                             f"CONNECT origin.test:{origin.port} HTTP/1.1")
        finally:
            origin.close()
            stub.close()

    def test_bytes_after_the_proxy_answer_reach_a_tunnel_client(self):
        # The proxy's 2xx and the origin's first bytes in one segment (a server that speaks
        # first): the client gets our 200, then those bytes, then the relay goes on.
        stub = StubProxy(b"HTTP/1.0 200 Connection established\r\nVia: stub\r\n\r\nHELLO ")
        echo = EchoServer()
        try:
            cfg = {"policy": {"default": "tunnel", "default_route": stub.route()}}
            with Proxy(config=cfg) as p:
                s, head = connect_tunnel(p, "origin.test", echo.port)
                self.assertEqual(head, b"HTTP/1.1 200 Connection Established\r\n\r\n")
                s.sendall(b"world")
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(read_all(s), b"HELLO world")
                s.close()
        finally:
            echo.close()
            stub.close()

    def test_reload_changes_routes_of_new_connections_only(self):
        stub = StubProxy()
        echo = EchoServer()
        try:
            # plain HTTP intercepted (each request through the HTTP layer), the echo tunnelled
            pol = {"default": "intercept", "rules": [{"host": "127.0.0.1", "action": "tunnel"}]}
            cfg = {"policy": dict(pol, default_route=stub.route(self.USERINFO))}
            with Proxy(config=cfg) as p:
                # an open plain keep-alive connection through the proxy...
                c = socket.create_connection(p.addr(), timeout=10)
                req = b"GET http://plain.test:8081/%d HTTP/1.1\r\nHost: plain.test:8081\r\n\r\n"
                c.sendall(req % 1)
                self.assertTrue(read_head(c).startswith(b"HTTP/1.1 200 OK"))
                self.assertEqual(c.recv(100), b"stub proxy answer\n")
                # ...then a reload to direct
                with open(os.path.join(p.tmp, "config.json"), "w") as f:
                    json.dump({"policy": pol}, f)
                p.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while "SIGHUP" not in p.stderr() and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(0.3)  # the worker switches at its next wake-up
                s, head = connect_tunnel(p, "127.0.0.1", echo.port)
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                s.sendall(b"direct now")
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(read_all(s), b"direct now")
                s.close()
                # the open connection keeps its route and credentials
                c.sendall(req % 2)
                self.assertTrue(read_head(c).startswith(b"HTTP/1.1 200 OK"))
                self.assertEqual(c.recv(100), b"stub proxy answer\n")
                c.close()
                p.checked_events()
            token = base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
            self.assertEqual(len(stub.heads), 2, stub.heads)
            self.assertEqual(echo.accepts, 1)
            second = stub.heads[1].split("\r\n")
            self.assertEqual(second[0], "GET http://plain.test:8081/2 HTTP/1.1")
            self.assertIn(f"Proxy-Authorization: Basic {token}", second)
        finally:
            echo.close()
            stub.close()

    def test_check_config_prints_routes_without_passwords(self):
        d = tempfile.mkdtemp(prefix="soth-route-cfg-")
        try:
            path = os.path.join(d, "c.json")
            with open(path, "w") as f:
                json.dump({"policy": {"default_route": "upstream:" + "http://" + self.USERINFO +
                                      "p.test:3128", "rules": [
                                          {"host": "a.test", "action": "tunnel",
                                           "route": "direct"}]}}, f)
            out = subprocess.run([PROXY_BIN, "--check-config", path], capture_output=True,
                                 timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            text = out.stdout.decode()
            self.assertIn('"default_route": "upstream:http://alice:(set)@p.test:3128"', text)
            self.assertIn('"route": "direct"', text)
            self.assertNotIn("s3cr", text)
            # a bad route: the error names the key, never the value
            with open(path, "w") as f:
                json.dump({"policy": {"default_route": "upstream:http://alice:s3cr%zz@p:1"}}, f)
            out = subprocess.run([PROXY_BIN, "--check-config", path], capture_output=True,
                                 timeout=30)
            self.assertEqual(out.returncode, 2)
            self.assertEqual(out.stderr.decode().strip(),
                             "config: policy.default_route: password: only unreserved "
                             "characters, sub-delims and %XX escapes (no control bytes) are "
                             "allowed")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_bad_and_silent_answers_give_502(self):
        for answer, want in ((b"SSH-2.0-nope\r\n\r\n", b"bad answer to CONNECT origin.test:443"),
                             (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                              b"Proxy-Authenticate: Basic realm=x\r\n\r\n",
                              b"refused CONNECT origin.test:443: 407 Proxy Authentication"),
                             (None, b"no answer to CONNECT origin.test:443 within 500 ms")):
            with self.subTest(answer=answer):
                silent = socket.socket()
                silent.bind(("127.0.0.1", 0))
                silent.listen(8)
                stub = StubProxy(answer) if answer else None
                port = stub.port if stub else silent.getsockname()[1]
                cfg = {"policy": {"default": "tunnel",
                                  "default_route": f"upstream:http://127.0.0.1:{port}"},
                       "timeouts": {"connect_ms": 500}}
                try:
                    with Proxy(config=cfg) as p:
                        s, head = connect_tunnel(p, "origin.test", 443)
                        body = read_all(s)
                        s.close()
                        evs = p.checked_events()
                finally:
                    silent.close()
                    if stub:
                        stub.close()
                self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway"), head)
                self.assertIn(want, body)
                self.assertEqual([c["reason_code"] for c in stream_closed(evs)],
                                 ["upstream_proxy_failed"])


if __name__ == "__main__":
    unittest.main()
