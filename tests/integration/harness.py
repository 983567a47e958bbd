"""Shared harness for integration tests: runs the real soth-mitm binary on loopback, real
origins, and reads the event ring through the real soth-mitm-tail.

Environment: SOTH_BUILD_DIR (default: <repo>/build) holds soth-mitm and soth-mitm-tail.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import eventcheck
from eventcheck import check_events

by_flow = eventcheck.by_flow  # re-exported: tests import it from here

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SOTH_BUILD_DIR", os.path.join(REPO, "build"))
PROXY_BIN = os.path.join(BUILD, "soth-mitm")
TAIL_BIN = os.path.join(BUILD, "soth-mitm-tail")

READY_RE = re.compile(
    r"soth-mitm: listening on (\S+):(\d+) \(mode (\S+), (\d+) workers, events (\S+)\)")


class Proxy:
    """A running soth-mitm. Use as a context manager; stop() returns the exit status."""

    def __init__(self, mode="regular", workers=1, config=None, extra_args=(), env=None):
        self.tmp = tempfile.mkdtemp(prefix="soth-it-")
        self.ring = os.path.join(self.tmp, "events.ring")
        args = [PROXY_BIN, "--listen", "127.0.0.1:0", "--mode", mode, "--event-ring", self.ring,
                "--ca-dir", os.path.join(self.tmp, "ca")]
        if workers is not None:  # None: no --workers flag (--engine mitmproxy refuses one)
            args += ["--workers", str(workers)]
        # Tests of the byte relay use plain TCP origins: unless a test sets a policy, tunnel.
        # (Interception tests set {"policy": {"default": "intercept"}}.)
        config = dict(config or {})
        config.setdefault("policy", {"default": "tunnel"})
        self.body_capture_bytes = config.get("events", {}).get("body_capture_bytes", 4096)
        if config is not None:
            cfg_path = os.path.join(self.tmp, "config.json")
            with open(cfg_path, "w") as f:
                json.dump(config, f)
            args += ["--config", cfg_path]
        args += list(extra_args)
        penv = dict(os.environ)
        penv.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        if env:
            penv.update(env)
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self._stderr = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     env=penv)
        deadline = time.time() + 20
        self.port = None
        while time.time() < deadline:
            with open(self.stderr_path) as f:
                m = READY_RE.search(f.read())
            if m:
                self.port = int(m.group(2))
                self.workers = int(m.group(4))
                self.ring_path = m.group(5)
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("proxy did not start: " + self.stderr())

    def stderr(self):
        with open(self.stderr_path) as f:
            return f.read()

    def addr(self):
        return ("127.0.0.1", self.port)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("proxy did not exit after signal: " + self.stderr())
        return self.proc.returncode

    def events(self, settle=0.3):
        """Every event in the ring, parsed (after letting the telemetry thread catch up)."""
        time.sleep(settle)
        out = subprocess.run([TAIL_BIN, "--from-start", "--once", self.ring],
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr.decode(errors="replace")
        return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]

    def checked_events(self, settle=0.3, require_closed=True):
        evs = self.events(settle)
        check_events(evs, require_closed=require_closed,
                     body_capture_bytes=self.body_capture_bytes)
        return evs

    def diagnostics(self, n=40):
        """What to print when a test through this proxy fails: the tail of its log and of its
        event ring (a failure in CI is often all there is to go on)."""
        out = ["---- soth-mitm stderr (last 20 lines)"] + self.stderr().splitlines()[-20:]
        try:
            r = subprocess.run([TAIL_BIN, "--from-start", "--once", self.ring],
                               capture_output=True, timeout=30)
            lines = r.stdout.decode(errors="replace").splitlines()
            # how each earlier flow ended (a flow that ended before the tail is otherwise not
            # there to see)
            closed = [x for x in lines[:-n] if '"type":"stream_closed"' in x]
            if closed:
                out += [f"---- soth-mitm stream_closed events before those (last 20 of "
                        f"{len(closed)})"] + closed[-20:]
            out += [f"---- soth-mitm events (last {n})"] + lines[-n:]
        except (OSError, subprocess.SubprocessError) as e:
            out.append(f"(events unavailable: {e})")
        return "\n".join(out)

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            rc = self.stop()
        finally:
            self._stderr.close()
        try:
            if exc[0] is not None and issubclass(exc[0], Exception):
                print(self.diagnostics(), file=sys.stderr)
            if exc[0] is None:
                err = self.stderr()
                assert rc == 0, f"proxy exit status {rc}: {err}"
                assert "ERROR: AddressSanitizer" not in err, err
                assert "ERROR: LeakSanitizer" not in err, err
                assert "runtime error:" not in err, err
                # Every test's events, whether or not the test looked at them: after a clean
                # exit every flow has ended, so the whole ring must pass the shared checker.
                if os.path.exists(self.ring):
                    self.checked_events(settle=0)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def close_listener(sock):
    """Stop a listening socket for good. close() alone leaves a thread blocked in accept()
    holding the socket open: it stays in LISTEN and accepts one more connection, served by a
    closed test fixture (a stale origin answering for a newer one)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes accept() with EINVAL and leaves LISTEN
    except OSError:
        pass
    sock.close()


class EchoServer:
    """Threaded TCP echo origin on loopback; counts accepted connections."""

    def __init__(self, half_close=True):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepts = 0
        self._lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepts += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self._stop = True
        close_listener(self.sock)


def connect_tunnel(proxy, host, port, timeout=10):
    """Open a CONNECT tunnel; returns (socket, status line, leftover bytes)."""
    s = socket.create_connection(proxy.addr(), timeout=timeout)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = read_head(s)
    return s, head


def read_head(s):
    """Read exactly up to the blank line, leaving what follows (tunnel bytes) in the socket."""
    buf = b""
    while not buf.endswith(b"\r\n\r\n"):
        d = s.recv(1)
        if not d:
            break
        buf += d
    return buf


def read_all(s):
    out = []
    while True:
        d = s.recv(65536)
        if not d:
            break
        out.append(d)
    return b"".join(out)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    """Whether something accepts on 127.0.0.1:port within timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


NGINX = "/usr/sbin/nginx"


class Nginx:
    """Debian's nginx on a free loopback port, one worker, its files under `tmp`/`name`.

    By default plain HTTP/1.1 serving a 16-byte /s, keep-alive without a request limit. A test
    gives what it needs on top: `files` ({name: bytes} under www/), `listen` (after the
    address: "ssl http2"), `http` and `server` (directives of those blocks: certificates,
    keep-alive limits), `main` (top-level directives), `worker_connections`, and `log_format`
    (each request's line, nginx variables, written to `self.log`; off otherwise)."""

    def __init__(self, tmp, files=None, listen="", http="keepalive_requests 100000000;",
                 server="", main="", worker_connections=1024, log_format=None, name="nginx",
                 timeout=20):
        self.dir = d = os.path.join(tmp, name)
        os.makedirs(os.path.join(d, "www"))
        for fname, data in (files if files is not None else {"s": b"0123456789abcdef"}).items():
            with open(os.path.join(d, "www", fname), "wb") as f:
                f.write(data)
        self.log = os.path.join(d, "access.log") if log_format else None
        access = (f"log_format t '{log_format}';\n    access_log {self.log} t;"
                  if log_format else "access_log off;")
        self.port = free_port()
        self.error_log = os.path.join(d, "error.log")
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
daemon off;
master_process off;
worker_processes 1;
{main}
pid {d}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections {worker_connections}; }}
http {{
    {access}
    client_body_temp_path {d}/t_body;
    proxy_temp_path {d}/t_proxy;
    fastcgi_temp_path {d}/t_fcgi;
    uwsgi_temp_path {d}/t_uwsgi;
    scgi_temp_path {d}/t_scgi;
    default_type application/octet-stream;
    {http}
    server {{
        listen 127.0.0.1:{self.port} {listen};
        root {d}/www;
        {server}
    }}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-p", d, "-c", conf, "-e", self.error_log],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port, timeout):
            self.close()
            raise AssertionError("nginx did not start: " + self.errors())

    def errors(self):
        """What nginx wrote to its error log (start-up failures, warnings)."""
        try:
            with open(self.error_log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return "(no error log)"

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
