"""TLS interception soak, CI-sized: about 3,000 intercepted full handshakes (CONNECT, TLS with a
client that trusts the proxy CA, one GET, close) through the real binary; the proxy's RSS stays
flat after a warm-up and no descriptor leaks. Host names are drawn at random from more names than
the leaf cache holds, so minting, eviction and cache hits all run. In an ASan build the RSS
bound is not checked (the allocator's quarantine grows by design); leaks are then LeakSanitizer's
job at the proxy's exit (SIGTERM, exit 0 and a clean stderr: harness.Proxy.__exit__).

The 100,000-handshake version is bench/tls/soak.py."""
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from harness import BUILD, Proxy, free_port

NAMES = 48  # host names n0..n47.soak.test
CACHE = 16  # leaf_cache_size: smaller than NAMES
WARMUP = 600
TOTAL = 3000
STEP = 600
THREADS = 8
FILL_REQUESTS = 800  # x 16 KiB of headers: more than the 8 MiB event producer ring
BODY = b"soak ok\n"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def asan_build():
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            cache = f.read()
    except OSError:
        return False
    return "SOTH_SANITIZE:BOOL=ON" in cache or "SOTH_FUZZ:BOOL=ON" in cache


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Origin:
    """HTTPS origin for *.soak.test: answers every request with BODY and closes."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soth-soak-origin-")
        d = self.dir
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=soak test CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "o.key", "-out", "o.csr", "-subj", "/CN=soak.test", cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:*.soak.test\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", "o.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "o.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
        self.ca = os.path.join(d, "ca.pem")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "o.pem"), os.path.join(d, "o.key"))
        response = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY

        class H(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(20)
                try:
                    t = ctx.wrap_socket(self.request, server_side=True)
                    buf = b""
                    while True:  # keep-alive until "Connection: close" or EOF
                        while b"\r\n\r\n" not in buf:
                            d = t.recv(65536)
                            if not d:
                                return
                            buf += d
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        t.sendall(response)
                        if b"\r\nconnection: close" in head.lower():
                            break
                    t.close()
                except (OSError, ssl.SSLError):
                    pass

        class S(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self.srv = S(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


def name_index(i):
    """Names in random order (a hash of i): with a cache smaller than NAMES, cyclic order would
    make an LRU miss every time; random order gives hits, misses and evictions."""
    m = (1 << 64) - 1
    x = ((i ^ (i >> 30)) * 0xbf58476d1ce4e5b9) & m  # splitmix64's finaliser
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & m
    return (x ^ (x >> 31)) % NAMES


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def one_handshake(proxy_port, origin_port, name, ctx):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    try:
        s.sendall(f"CONNECT {name}:{origin_port} HTTP/1.1\r\nHost: {name}:{origin_port}\r\n\r\n"
                  .encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            d = s.recv(1)
            if not d:
                raise OSError("proxy closed during CONNECT")
            head += d
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"CONNECT answered {head!r}")
        t = ctx.wrap_socket(s, server_hostname=name)
        t.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        resp = b""
        while not resp.endswith(BODY):
            d = t.recv(4096)
            if not d:
                break
            resp += d
        if not (resp.startswith(b"HTTP/1.1 200") and resp.endswith(BODY)):
            raise OSError(f"bad response {resp[:200]!r}")
        t.close()
    finally:
        s.close()


def fill_event_ring(proxy_port, origin_port, ctx):
    """Touch every page of the worker's event producer ring (8 MiB, observe/telemetry.c
    PROD_RING_BYTES, written front to back until it wraps) with big request_headers events on
    one intercepted keep-alive connection, so that the ring's first pass does not read as RSS
    growth: about FILL_REQUESTS x 16 KiB of headers."""
    name = "n0.soak.test"
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    try:
        s.sendall(f"CONNECT {name}:{origin_port} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            d = s.recv(1)
            if not d:
                raise OSError("proxy closed during CONNECT")
            head += d
        t = ctx.wrap_socket(s, server_hostname=name)
        fill = "x" * 16000
        want = len(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + len(BODY)
        for i in range(FILL_REQUESTS):
            last = i == FILL_REQUESTS - 1
            t.sendall(f"GET /fill/{i} HTTP/1.1\r\nHost: {name}\r\nX-Fill: {fill}\r\n"
                      f"{'Connection: close' + chr(13) + chr(10) if last else ''}\r\n".encode())
            got = 0
            while got < want:
                d = t.recv(want - got)
                if not d:
                    raise OSError(f"EOF after {i} fill requests")
                got += len(d)
        t.close()
    finally:
        s.close()


class TLSSoakTests(unittest.TestCase):
    def setUp(self):
        self.origin = Origin()

    def tearDown(self):
        self.origin.close()

    def run_batch(self, p, ctx, start, count):
        """`count` handshakes from THREADS threads, numbered from `start`."""
        lock = threading.Lock()
        nxt = [start]
        errors = []

        def worker():
            while True:
                with lock:
                    i = nxt[0]
                    if i >= start + count or len(errors) > 5:
                        return
                    nxt[0] += 1
                try:
                    one_handshake(p.port, self.origin.port, f"n{name_index(i)}.soak.test", ctx)
                except (OSError, ssl.SSLError) as e:
                    with lock:
                        errors.append(f"handshake {i}: {e!r}")

        ths = [threading.Thread(target=worker) for _ in range(THREADS)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(300)
        self.assertEqual(errors, [], p.stderr()[-2000:])

    def settled_fds(self, p, want, timeout=5.0):
        """The proxy's open descriptors, once they are back to `want` (closes are async)."""
        deadline = time.time() + timeout
        n = p.fd_count()
        while n > want and time.time() < deadline:
            time.sleep(0.05)
            n = p.fd_count()
        return n

    def test_rss_flat_and_no_fd_leak_over_3000_intercepted_handshakes(self):
        asan = asan_build()
        mport = free_port()
        cfg = {"policy": {"default": "intercept"},
               "resolve": {f"n{i}.soak.test": "127.0.0.1" for i in range(NAMES)},
               "tls": {"upstream_ca_file": self.origin.ca, "leaf_cache_size": CACHE},
               # Small ring: its file pages are all resident after the warm-up.
               "events": {"ring_size_mb": 1},
               "metrics": {"listen": f"127.0.0.1:{mport}"}}
        t0 = time.time()
        with Proxy(config=cfg) as p:
            ctx = ssl.create_default_context(cafile=os.path.join(p.tmp, "ca",
                                                                 "soth-mitm-ca.pem"))
            pid = p.proc.pid
            fd0 = p.fd_count()
            fill_event_ring(p.port, self.origin.port, ctx)
            t_fill = time.time() - t0
            self.run_batch(p, ctx, 0, WARMUP)
            fd_warm = self.settled_fds(p, fd0)
            rss_warm = status_kib(pid, "VmRSS")
            samples = [(WARMUP, rss_warm, fd_warm)]
            done = WARMUP
            while done < TOTAL:
                self.run_batch(p, ctx, done, STEP)
                done += STEP
                samples.append((done, status_kib(pid, "VmRSS"), self.settled_fds(p, fd0)))
            print(f"\n{TOTAL} intercepted handshakes in {time.time() - t0 - t_fill:.1f} s"
                  f" (after {t_fill:.1f} s filling the event ring)"
                  f"{' (ASan build: RSS not bounded)' if asan else ''}; fds before {fd0};"
                  " (handshakes, VmRSS KiB, fds): " + ", ".join(map(str, samples)))
            hits = metric(mport, "soth_leaf_cache_hits_total")
            misses = metric(mport, "soth_leaf_cache_misses_total")
            print(f"leaf cache: {hits:.0f} hits, {misses:.0f} misses")
            self.assertGreater(hits, 0)
            self.assertGreater(misses, NAMES)  # evicted names were minted again
            for n, _, fds in samples:
                self.assertEqual(fds, fd0, f"descriptors after {n} handshakes: {samples}")
            if not asan:
                rss_max = max(s[1] for s in samples)
                bound = max(4 * 1024, rss_warm // 10)
                self.assertLessEqual(rss_max - rss_warm, bound,
                                     f"VmRSS grew after the warm-up (KiB): {samples}")
        # Leaving the with block stops the proxy with SIGTERM and asserts exit 0 and no
        # AddressSanitizer / LeakSanitizer / UBSan report on its stderr.


if __name__ == "__main__":
    unittest.main()
