#!/usr/bin/python3
"""Record the bridge replay fixtures: every case of the native TLS failure corpus
(tests/tls/test_failure.c, FIX; the peers are tests/tls/tls_peers.py) run through a real
mitmdump with soth-mitm's addon (dist/mitmproxy/soth_bridge.py), the addon's lines recorded by a
small Unix-socket listener into tests/bridge/fixtures/<case>.jsonl, untouched.

    tests/bridge/record_fixtures.py [OUTDIR]

Two mitmdumps serve all cases (each starts in 2-3 s):
  - client cases: reverse mode to https://origin.test:9 with upstream_cert off and the lazy
    connection strategy, so mitmproxy handshakes with the client without any upstream; the peer
    client connects to it directly, as it connects to soth-mitm's server conn natively;
  - origin cases: regular mode, upstream verification against the corpus' test root
    (ssl_verify_upstream_trusted_ca); curl -k asks for https://origin.test:PORT/ through it and
    the addon's `resolve` sends origin.test to 127.0.0.1.
A case's lines are the lines of the conns that appeared while it ran. fixtures/index.json lists
every case with its file, the side and class test_failure.c expects, and whether mitmproxy can
produce that case at all (covered) and why not. Loopback only; every step is time-bounded.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ADDON = os.path.join(REPO, "dist", "mitmproxy", "soth_bridge.py")
PEERS = os.path.join(REPO, "tests", "tls", "tls_peers.py")
FAILURE_C = os.path.join(REPO, "tests", "tls", "test_failure.c")

# What mitmproxy cannot produce, by case name (test_failure.c FIX): why.
UNCOVERED = {
    "client wants another name": "mitmproxy mints its leaf for whatever name the client asks "
                                 "for, so the client gets the name it wants and succeeds",
    "client EOF mid-hello": "mitmproxy reports a client that hangs up during the handshake with "
                            "one text (\"The client disconnected during the handshake\"), "
                            "which docs/bridge.md classifies as the common cause, unknown_ca",
    "client RST mid-hello": "as client EOF mid-hello: a reset reads the same as any hang-up",
    "client stalls": "mitmproxy has no TLS handshake timeout: it waits until the client "
                     "closes, and a close without a ClientHello is no TLS failure to it",
    "origin no shared cipher": "mitmproxy's OpenSSL offers the CBC cipher the origin insists "
                               "on: the handshake succeeds",
    "origin RST mid-handshake": "mitmproxy reports a reset as \"connection closed\", like an EOF",
    "origin stalls": "mitmproxy has no TLS handshake timeout: it reports the origin's close "
                     "3 s later (\"connection closed\") instead",
}


def cases():
    """(name, expected class, upstream?, peer argument) from test_failure.c's FIX table."""
    text = open(FAILURE_C).read()
    out = []
    for m in re.finditer(r'\{"([^"]+)",\s*(OK_CLASS|SOTH_TLS_FAIL_(\w+)),\s*(true|false),\s*'
                         r'((?:[^{}]|"[^"]*")*?),\s*(\d+)\}', text):
        name, cls, up, arg = m.group(1), m.group(3), m.group(4) == "true", m.group(5)
        out.append((name, "ok" if cls is None else cls.lower(), up, arg))
    return out


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Recorder:
    """The bridge end: accepts the addon's connection(s), keeps every line in arrival order."""

    def __init__(self, path):
        self.path = path
        self.lines = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = b""
        while True:
            d = c.recv(65536)
            if not d:
                return
            buf += d
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                with self.lock:
                    self.lines.append(line.decode())

    def count(self):
        with self.lock:
            return len(self.lines)

    def since(self, n):
        with self.lock:
            return list(self.lines[n:])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_mitmdump(args, port, log):
    p = subprocess.Popen(["mitmdump", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                          "-s", ADDON, "--set", "flow_detail=0"] + args,
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError("mitmdump exited: %d" % p.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("mitmdump did not listen within 30 s")


def wait_closed(rec, n0, timeout):
    """Until every conn seen since n0 has its stream_closed (or timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        conns, closed = set(), set()
        for line in rec.since(n0):
            o = json.loads(line)
            conns.add(o["conn"])
            if o.get("kind") == "event" and o.get("type") == "stream_closed":
                closed.add(o["conn"])
        if conns and conns == closed:
            time.sleep(0.2)
            return
        time.sleep(0.1)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "fixtures")
    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="soth-fixtures-")
    procs = []
    try:
        peer_dir = os.path.join(tmp, "peers")
        os.mkdir(peer_dir)
        subprocess.run(["/usr/bin/python3", PEERS, "gen", peer_dir], check=True, timeout=60)
        conf = os.path.join(tmp, "conf")
        policy = os.path.join(tmp, "policy.json")
        with open(policy, "w") as f:
            json.dump({"resolve": {"origin.test": "127.0.0.1"}}, f)
        rec = Recorder(os.path.join(tmp, "bridge.sock"))
        common = ["--set", "confdir=" + conf, "--set", "soth_bridge=" + rec.path,
                  "--set", "soth_policy=" + policy]
        log = open(os.path.join(tmp, "mitmdump.log"), "w")
        cport, oport = free_port(), free_port()
        procs.append(start_mitmdump(common + [
            "--mode", "reverse:https://origin.test:9", "--set", "soth_mode=reverse:https://origin.test:9",
            "--set", "upstream_cert=false", "--set", "connection_strategy=lazy"], cport, log))
        procs.append(start_mitmdump(common + [
            "--set", "ssl_verify_upstream_trusted_ca=" + os.path.join(peer_dir, "root.pem")],
            oport, log))
        # the start-up probes' conns end before the first case
        wait_closed(rec, 0, 10)
        # the clients' CA: mitmproxy's, generated in confdir at its first start
        shutil.copy(os.path.join(conf, "mitmproxy-ca-cert.pem"), os.path.join(peer_dir, "ca.pem"))

        index = []
        for name, cls, upstream, arg in cases():
            n0 = rec.count()
            if upstream:
                kind = arg.strip().strip('"')
                srv = subprocess.Popen(["/usr/bin/python3", PEERS, "server", kind, peer_dir],
                                       stdout=subprocess.PIPE, text=True)
                port = int(srv.stdout.readline())
                subprocess.run(["curl", "-s", "-k", "-o", "/dev/null", "--max-time", "8",
                                "-x", "http://127.0.0.1:%d" % oport,
                                "https://origin.test:%d/" % port], timeout=20)
                try:
                    srv.wait(15)
                except subprocess.TimeoutExpired:
                    srv.kill()
                    srv.wait()
            else:
                # the C table's format: "PEERS ..." or a literal command, %d = port, %s = dir
                fmt = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', arg))
                fmt = fmt.replace("PEERS", "").replace("%1$d", "%d").replace("%2$s", "%s")
                if arg.strip().startswith("PEERS"):
                    fmt = "/usr/bin/python3 " + PEERS + fmt
                cmd = fmt.replace("%d", str(cport), 1).replace("%d", str(cport)) \
                    .replace("%s", peer_dir)
                subprocess.run(cmd, shell=True, timeout=30, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            wait_closed(rec, n0, 10)
            lines = rec.since(n0)
            fname = slug(name) + ".jsonl"
            with open(os.path.join(outdir, fname), "w") as f:
                f.write("".join(line + "\n" for line in lines))
            entry = {"case": name, "file": fname, "side": "upstream" if upstream else "client",
                     "expect": cls, "covered": name not in UNCOVERED}
            if name in UNCOVERED:
                entry["why"] = UNCOVERED[name]
            index.append(entry)
            fails = [json.loads(x).get("error") for x in lines
                     if json.loads(x).get("hook", "").startswith("tls_failed")]
            print("%-40s %-15s %3d lines  %s" % (name, cls, len(lines), fails), flush=True)
        with open(os.path.join(outdir, "index.json"), "w") as f:
            json.dump({"source": "tests/tls/test_failure.c (FIX)",
                       "recorded_with": subprocess.run(["mitmdump", "--version"],
                                                       capture_output=True, text=True)
                       .stdout.splitlines()[0],
                       "cases": index}, f, indent=2)
            f.write("\n")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
