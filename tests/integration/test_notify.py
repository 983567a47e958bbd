"""Readiness notification to a service manager (docs/operating.md, "Readiness notification"):
the proxy started with NOTIFY_SOCKET sends READY=1 once every listener serves, RELOADING=1
then READY=1 around a SIGHUP reload, STOPPING=1 when the drain begins, in that order; without
NOTIFY_SOCKET it sends nothing and runs as usual."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import PROXY_BIN, READY_RE, EchoServer


class NotifyTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="soth-notify-")
        self.config = os.path.join(self.tmp, "config.json")
        self.write_config({"policy": {"default": "tunnel"}})
        self.proc = None

    def tearDown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_config(self, cfg):
        with open(self.config, "w") as f:
            f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))

    def start(self, notify_socket, workers=2):
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if notify_socket is not None:
            env["NOTIFY_SOCKET"] = notify_socket
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.stderr_file = open(self.stderr_path, "w+")
        self.addCleanup(self.stderr_file.close)
        self.proc = subprocess.Popen(
            [PROXY_BIN, "--config", self.config, "--listen", "127.0.0.1:0", "--workers",
             str(workers), "--event-ring", os.path.join(self.tmp, "events.ring"), "--ca-dir",
             os.path.join(self.tmp, "ca")],
            stdout=subprocess.DEVNULL, stderr=self.stderr_file, env=env)

    def stderr(self):
        with open(self.stderr_path) as f:
            return f.read()

    def wait_ready_line(self):
        deadline = time.time() + 20
        while time.time() < deadline:
            m = READY_RE.search(self.stderr())
            if m:
                return int(m.group(2))
            self.assertIsNone(self.proc.poll(), self.stderr())
            time.sleep(0.02)
        self.fail("no readiness line: " + self.stderr())

    def recv(self, sock, timeout=20):
        sock.settimeout(timeout)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            self.fail("no notification within %ss; stderr: %s" % (timeout, self.stderr()))
        return dict(line.split("=", 1) for line in data.decode().split("\n") if line)

    def assert_silent(self, sock, wait=0.5):
        sock.settimeout(wait)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            return
        self.fail("unexpected notification %r" % data)

    def tunnel_works(self, port):
        """A CONNECT through the proxy is answered and relayed: the listeners serve."""
        echo = EchoServer()
        self.addCleanup(echo.close)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % echo.port)
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                self.assertTrue(d, head)
                head += d
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            c.sendall(b"ping")
            self.assertEqual(c.recv(4), b"ping")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        rc = self.proc.wait(30)
        self.assertEqual(rc, 0, self.stderr())

    def dgram(self, abstract):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        if abstract:
            name = "soth-notify-test-%d-%d" % (os.getpid(), time.monotonic_ns())
            s.bind("\0" + name)
            return s, "@" + name
        path = os.path.join(self.tmp, "notify.sock")
        s.bind(path)
        return s, path

    def test_ready_reloading_ready_stopping_in_order(self):
        sock, addr = self.dgram(abstract=False)
        self.start(addr)
        self.assertEqual(self.recv(sock), {"READY": "1"})
        # READY comes after the readiness line, and the listeners already serve.
        port = self.wait_ready_line()
        self.tunnel_works(port)
        self.assert_silent(sock, 0.2)

        # A good reload: RELOADING=1 (with the reload's start on CLOCK_MONOTONIC), READY=1.
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.write_config({"policy": {"default": "tunnel"}, "timeouts": {"idle_ms": 60000}})
        self.proc.send_signal(signal.SIGHUP)
        msg = self.recv(sock)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertEqual(msg.get("RELOADING"), "1", msg)
        self.assertTrue(before <= int(msg["MONOTONIC_USEC"]) <= after, (before, msg, after))
        self.assertEqual(self.recv(sock), {"READY": "1"})

        # A failed reload keeps the running config, so the service is ready again too.
        self.write_config("{ not json")
        self.proc.send_signal(signal.SIGHUP)
        self.assertEqual(self.recv(sock).get("RELOADING"), "1")
        self.assertEqual(self.recv(sock), {"READY": "1"})
        self.assertIn("reload failed", self.stderr())
        self.tunnel_works(port)

        self.stop(signal.SIGTERM)
        self.assertEqual(self.recv(sock), {"STOPPING": "1"})
        self.assert_silent(sock, 0.2)

    def test_abstract_socket_and_sigint(self):
        sock, addr = self.dgram(abstract=True)
        self.start(addr, workers=1)
        self.assertEqual(self.recv(sock), {"READY": "1"})
        self.stop(signal.SIGINT)
        self.assertEqual(self.recv(sock), {"STOPPING": "1"})
        self.assert_silent(sock, 0.2)

    def test_no_notify_socket_sends_nothing(self):
        # Unset (the usual run from a shell) and empty: nothing is sent, nothing is logged
        # about it, and the proxy starts, reloads and drains as usual.
        for value in (None, ""):
            with self.subTest(NOTIFY_SOCKET=value):
                self.start(value, workers=1)
                port = self.wait_ready_line()
                self.tunnel_works(port)
                self.proc.send_signal(signal.SIGHUP)
                time.sleep(0.3)
                self.stop()
                self.assertNotIn("NOTIFY_SOCKET", self.stderr())

    def test_unreachable_or_invalid_socket_is_logged_not_fatal(self):
        for value in (os.path.join(self.tmp, "nobody-listens.sock"), "relative.sock"):
            with self.subTest(NOTIFY_SOCKET=value):
                self.start(value, workers=1)
                port = self.wait_ready_line()
                self.tunnel_works(port)
                self.stop()
                self.assertIn("NOTIFY_SOCKET " + value, self.stderr())


if __name__ == "__main__":
    unittest.main()
