"""QUIC passthrough for real (docs/http3.md): a client namespace and an origin namespace joined
by a router namespace where soth-mitm runs in transparent mode, nftables' tproxy diverting the
client's UDP/443 to it. The client and origin are ngtcp2's HTTP/3 examples (gtlsclient,
gtlsserver); nftables counters in their namespaces count what each one really sent and got."""
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

from harness import Proxy, free_port

INNER = os.environ.get("SOTH_HTTP3_INNER") == "1"
# Addresses exist only inside the namespaces this test creates (and removes).
R_C, C_ADDR = "10.201.1.1", "10.201.1.2"
R_O, O_ADDR = "10.201.2.1", "10.201.2.2"
R_C6, C_ADDR6 = "fd77:201:1::1", "fd77:201:1::2"
R_O6, O_ADDR6 = "fd77:201:2::1", "fd77:201:2::2"
IDLE_MS = 1500
NS_C = NS_O = None  # set by Topology
UDP_HDR = 28  # IPv4 + UDP header bytes in an nftables byte counter


def sh(*cmd, ns=None, check=True, **kw):
    if ns:
        cmd = ("ip", "netns", "exec", ns) + cmd
    return subprocess.run(cmd, check=check, capture_output=True, **kw)


def nft(rules, ns=None):
    sh("nft", "-f", "-", ns=ns, input=rules.encode())


def counters(ns):
    """(packets, payload bytes) per counter name of the ns's soth_count table."""
    out = json.loads(sh("nft", "-j", "list", "table", "ip", "soth_count", ns=ns).stdout)
    res = {}
    for item in out["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        c = [e["counter"] for e in rule["expr"] if "counter" in e]
        name = rule.get("comment")
        if c and name:
            res[name] = (c[0]["packets"], c[0]["bytes"] - UDP_HDR * c[0]["packets"])
    return res


def count_rules(ns, port=443, peer_is_server=True):
    """Counters of UDP to/from port 443 in a namespace: what it sent and what it received."""
    if peer_is_server:
        sent, got = f"udp dport {port}", f"udp sport {port}"
    else:
        sent, got = f"udp sport {port}", f"udp dport {port}"
    nft(f"""
table ip soth_count {{
    chain out {{
        type filter hook output priority 0; policy accept;
        {sent} counter comment "sent"
    }}
    chain in {{
        type filter hook input priority 0; policy accept;
        {got} counter comment "got"
    }}
}}
""", ns=ns)


class Topology:
    """Client and origin namespaces around the router (this process's namespace)."""
    serial = 0

    def __init__(self):
        global NS_C, NS_O
        Topology.serial += 1
        # Fresh names each time: a deleted namespace goes away asynchronously.
        NS_C = f"sothq-c{os.getpid()}-{Topology.serial}"
        NS_O = f"sothq-o{os.getpid()}-{Topology.serial}"
        self.tmp = tempfile.mkdtemp(prefix="soth-h3-")
        self.server = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self):
        self.htdocs = os.path.join(self.tmp, "htdocs")
        os.mkdir(self.htdocs)
        sh("ip", "link", "set", "lo", "up")
        for dev in ("sqc0", "sqo0"):
            sh("ip", "link", "del", dev, check=False)
        # The client resolves the origin's names through its namespace's own hosts file
        # (ip netns exec mounts /etc/netns/NAME/hosts over /etc/hosts): gtlsclient sends the
        # host it connects to as the SNI ("localhost" for an address).
        self.etc = f"/etc/netns/{NS_C}"
        os.makedirs(self.etc, exist_ok=True)
        with open(os.path.join(self.etc, "hosts"), "w") as f:
            f.write(f"127.0.0.1 localhost\n{O_ADDR} origin.test blocked.test\n"
                    f"{O_ADDR6} origin6.test\n")
        for ns in (NS_C, NS_O):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, rdev, ndev, raddr, addr in ((NS_C, "sqc0", "sqc1", R_C, C_ADDR),
                                            (NS_O, "sqo0", "sqo1", R_O, O_ADDR)):
            sh("ip", "link", "add", rdev, "type", "veth", "peer", "name", ndev, "netns", ns)
            sh("ip", "addr", "add", raddr + "/24", "dev", rdev)
            sh("ip", "link", "set", rdev, "up")
            sh("ip", "-n", ns, "addr", "add", addr + "/24", "dev", ndev)
            sh("ip", "-n", ns, "link", "set", ndev, "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", raddr)
        for ns, rdev, ndev, raddr, addr in ((NS_C, "sqc0", "sqc1", R_C6, C_ADDR6),
                                            (NS_O, "sqo0", "sqo1", R_O6, O_ADDR6)):
            sh("ip", "addr", "add", raddr + "/64", "dev", rdev, "nodad")
            sh("ip", "-n", ns, "addr", "add", addr + "/64", "dev", ndev, "nodad")
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", raddr)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        # Policy routing for tproxy: marked packets are delivered locally (docs/http3.md).
        sh("ip", "rule", "add", "fwmark", "1", "lookup", "100")
        sh("ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        sh("ip", "-6", "rule", "add", "fwmark", "1", "lookup", "100")
        sh("ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
        key, cert = os.path.join(self.tmp, "key.pem"), os.path.join(self.tmp, "cert.pem")
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=origin.test",
           "-addext", "subjectAltName=DNS:origin.test,DNS:blocked.test,DNS:origin6.test")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", NS_O, "gtlsserver", "-q", "-d", self.htdocs, "*", "443",
             key, cert], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        count_rules(NS_C)
        count_rules(NS_O, peer_is_server=False)
        time.sleep(0.3)

    def divert(self, proxy_port):
        nft(f"""
table ip soth_quic {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        iifname "sqc0" udp dport 443 tproxy to :{proxy_port} meta mark set 1 accept
    }}
}}
table ip6 soth_quic6 {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        iifname "sqc0" udp dport 443 tproxy to :{proxy_port} meta mark set 1 accept
    }}
}}
""")

    def file(self, name, size):
        data = random.Random(size).randbytes(size)
        with open(os.path.join(self.htdocs, name), "wb") as f:
            f.write(data)
        return data

    def client(self, path, sni="origin.test", timeout="5s", extra=()):
        """Start one HTTP/3 GET from the client namespace; returns (process, download dir)."""
        d = tempfile.mkdtemp(dir=self.tmp)
        p = subprocess.Popen(
            ["ip", "netns", "exec", NS_C, "gtlsclient", "-q", "--exit-on-all-streams-close",
             *extra,
             "--timeout=" + timeout, "--handshake-timeout=" + timeout,
             "--download=" + d, sni, "443", f"https://{sni}{path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return p, d

    def get(self, path, sni="origin.test", timeout="5s", extra=()):
        p, d = self.client(path, sni, timeout, extra)
        _, err = p.communicate(timeout=60)
        f = os.path.join(d, os.path.basename(path))
        body = None
        if os.path.exists(f):
            with open(f, "rb") as fh:
                body = fh.read()
        return p.returncode, body, err

    def close(self):
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        sh("nft", "delete", "table", "ip", "soth_quic", check=False)
        sh("nft", "delete", "table", "ip6", "soth_quic6", check=False)
        sh("ip", "rule", "del", "fwmark", "1", "lookup", "100", check=False)
        sh("ip", "route", "flush", "table", "100", check=False)
        sh("ip", "-6", "rule", "del", "fwmark", "1", "lookup", "100", check=False)
        sh("ip", "-6", "route", "flush", "table", "100", check=False)
        for dev in ("sqc0", "sqo0"):
            sh("ip", "link", "del", dev, check=False)
        for ns in (NS_C, NS_O):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if getattr(self, "etc", None):
            shutil.rmtree(self.etc, ignore_errors=True)


def flows_of(evs):
    out = {}
    for e in evs:
        out.setdefault(e["flow_id"], []).append(e)
    return out


@unittest.skipUnless(INNER, "runs inside its own network namespace (see main)")
class HTTP3Tests(unittest.TestCase):
    def setUp(self):
        self.topo = Topology()

    def tearDown(self):
        self.topo.close()

    def proxy(self, workers=1, listen="0.0.0.0:0", **cfg):
        cfg.setdefault("policy", {"default": "intercept"})
        cfg.setdefault("quic", {"idle_ms": IDLE_MS})
        return Proxy(mode="transparent", workers=workers, config=cfg,
                     extra_args=["--listen", listen])

    def test_get_is_relayed_byte_exact_with_its_events(self):
        body = self.topo.file("f.bin", 150000)
        with self.proxy() as p:
            self.topo.divert(p.port)
            rc, got, err = self.topo.get("/f.bin")
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            time.sleep(IDLE_MS / 1000 + 0.5)
            evs = p.checked_events()
        cl, og = counters(NS_C), counters(NS_O)
        fl = flows_of(evs)
        self.assertEqual(len(fl), 1, evs)
        ev = list(fl.values())[0]
        self.assertEqual([e["type"] for e in ev],
                         ["connect_received", "quic_client_hello", "connect_decision",
                          "stream_closed"])
        self.assertTrue(all(e["protocol"] == "http3" for e in ev))
        self.assertEqual(ev[0]["target"], f"{O_ADDR}:443")
        self.assertEqual(ev[0]["client_addr"].split(":")[0], C_ADDR)
        hello = ev[1]
        self.assertEqual(hello["sni"], "origin.test")
        self.assertIn("h3", hello["alpn"])
        self.assertEqual(hello["quic_version"], "0x00000001")
        self.assertGreaterEqual(hello["initial_packets"], 1)
        self.assertEqual((ev[2]["decision"], ev[2]["reason"]), ("tunnel", "http3_passthrough"))
        sc = ev[3]
        self.assertEqual(sc["reason_code"], "idle_timeout")
        self.assertEqual(sc["server_host"], "origin.test")
        # What the client sent is what the proxy got and what the origin got, and back.
        self.assertEqual((sc["datagrams_client_to_server"], sc["bytes_client_to_server"]),
                         cl["sent"])
        self.assertEqual(og["got"], cl["sent"])
        self.assertEqual((sc["datagrams_server_to_client"], sc["bytes_server_to_client"]),
                         cl["got"])
        # The origin sends with UDP GSO (several datagrams per packet its counter sees): its
        # bytes are compared, its datagrams are counted where the client receives them.
        self.assertEqual(sc["bytes_server_to_client"], og["sent"][1])
        self.assertGreater(sc["bytes_server_to_client"], len(body))

    def test_ipv6_get_on_a_dual_stack_listener(self):
        body = self.topo.file("v6.bin", 20000)
        with self.proxy(listen="[::]:0") as p:
            self.topo.divert(p.port)
            rc, got, err = self.topo.get("/v6.bin", sni="origin6.test")
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            # And IPv4 through the same socket (v4-mapped addresses).
            rc, got, err = self.topo.get("/v6.bin")
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            self.assertEqual(p.stop(), 0)
            evs = p.checked_events(settle=0)
        fl = list(flows_of(evs).values())
        self.assertEqual(len(fl), 2)
        v6, v4 = fl
        self.assertEqual(v6[0]["target"], f"[{O_ADDR6}]:443")
        self.assertEqual(v6[0]["client_addr"].rsplit(":", 1)[0], f"[{C_ADDR6}]")
        self.assertEqual((v6[1]["sni"], v6[2]["reason"]), ("origin6.test", "http3_passthrough"))
        self.assertEqual(v4[0]["target"], f"{O_ADDR}:443")
        self.assertEqual(v4[1]["sni"], "origin.test")

    def test_client_hello_over_two_initial_packets(self):
        # A 1024-byte FFDHE8192 key share spreads the ClientHello over two Initial packets in
        # two datagrams; the origin still settles on X25519.
        body = self.topo.file("s.bin", 5000)
        with self.proxy(quic={"idle_ms": 30000}) as p:
            self.topo.divert(p.port)
            rc, got, err = self.topo.get(
                "/s.bin", extra=["--groups=-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519"])
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            # Stopped before quic.idle_ms: the flow ends with shutdown.
            self.assertEqual(p.stop(), 0)
            evs = p.checked_events(settle=0)
        ev = list(flows_of(evs).values())
        self.assertEqual(len(ev), 1)
        hello = ev[0][1]
        self.assertEqual((hello["type"], hello["sni"], hello["initial_packets"]),
                         ("quic_client_hello", "origin.test", 2))
        self.assertEqual(ev[0][-1]["reason_code"], "shutdown")

    def test_passthrough_off_receives_no_udp(self):
        def udp_ports():
            with open("/proc/net/udp") as f:
                return {int(line.split()[1].split(":")[1], 16) for line in f.readlines()[1:]}

        body = self.topo.file("f.bin", 1000)
        with self.proxy(workers=2) as p:
            self.assertIn(p.port, udp_ports())
        with self.proxy(http3_passthrough=False) as p:
            self.assertNotIn(p.port, udp_ports())
            self.topo.divert(p.port)
            # tproxy finds no socket, so the rule does not apply: QUIC passes the router
            # unseen (docs/http3.md says to drop it in nftables when forcing TCP).
            rc, got, err = self.topo.get("/f.bin")
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            evs = p.checked_events()
        self.assertEqual(evs, [])

    def test_blocked_sni_never_reaches_the_origin(self):
        self.topo.file("f.bin", 1000)
        cfg = {"policy": {"default": "intercept",
                          "rules": [{"host": "blocked.test:443", "action": "block"}]}}
        with self.proxy(**cfg) as p:
            self.topo.divert(p.port)
            _, got, _ = self.topo.get("/f.bin", sni="blocked.test", timeout="2s")
            time.sleep(IDLE_MS / 1000 + 0.5)
            evs = p.checked_events()
        self.assertIsNone(got)  # gtlsclient exits 0 after its handshake timeout
        og, cl = counters(NS_O), counters(NS_C)
        self.assertEqual(og["got"], (0, 0))
        self.assertGreater(cl["sent"][0], 0)
        fl = flows_of(evs)
        self.assertEqual(len(fl), 1, evs)
        ev = list(fl.values())[0]
        self.assertEqual([e["type"] for e in ev],
                         ["connect_received", "quic_client_hello", "connect_decision",
                          "stream_closed"])
        self.assertEqual(ev[1]["sni"], "blocked.test")
        self.assertEqual((ev[2]["decision"], ev[2]["reason"], ev[2]["rule"]),
                         ("block", "policy_rule", "0"))  # the rule's index: no id
        self.assertEqual(ev[3]["reason_code"], "blocked")
        self.assertEqual(ev[3]["datagrams_client_to_server"], cl["sent"][0])
        self.assertEqual(ev[3]["datagrams_server_to_client"], 0)

    def test_200_concurrent_flows(self):
        bodies = {f"/c{i}.bin": self.topo.file(f"c{i}.bin", 2000 + 97 * i) for i in range(200)}
        # 200 clients on two cores: an idle time as long as the clients' own (20 s), so none is
        # idle while it waits its turn. Two workers: the SO_REUSEPORT group spreads the flows,
        # each stays on its worker.
        with self.proxy(workers=2, quic={"idle_ms": 20000}) as p:
            self.topo.divert(p.port)
            procs = [(path,) + self.topo.client(path, timeout="20s") for path in bodies]
            for path, proc, d in procs:
                _, err = proc.communicate(timeout=120)
                self.assertEqual(proc.returncode, 0, err[-2000:])
                with open(os.path.join(d, path[1:]), "rb") as f:
                    self.assertEqual(f.read(), bodies[path], path)
            # Each flow ends quic.idle_ms after its last datagram. The idle timers fire on the
            # worker's loop: on a loaded 2-core machine a few late by a second or more, so wait
            # (bounded) until every flow has its stream_closed instead of a fixed 21 s.
            time.sleep(20)
            deadline = time.monotonic() + 20
            while True:
                evs = p.events()
                open_flows = [fid for fid, fe in flows_of(evs).items()
                              if not any(e["type"] == "stream_closed" for e in fe)]
                if not open_flows or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            evs = p.checked_events()
        fl = flows_of(evs)
        # One flow per client, unless a client that started late got the ephemeral port of one
        # that had finished within quic.idle_ms: the same address pair is the same flow (and is
        # relayed to the same origin). Client addresses are unique per flow either way.
        self.assertLessEqual(len(fl), 200)
        self.assertGreaterEqual(len(fl), 190)
        self.assertEqual(len({ev[0]["client_addr"] for ev in fl.values()}), len(fl))
        for ev in fl.values():
            closed = [e for e in ev if e["type"] == "stream_closed"]
            self.assertEqual(len(closed), 1)
            self.assertEqual(closed[0]["reason_code"], "idle_timeout")
            self.assertEqual(ev[2]["reason"], "http3_passthrough")
        cl = counters(NS_C)
        self.assertEqual(sum(e[-1]["datagrams_client_to_server"] for e in fl.values()),
                         cl["sent"][0])
        self.assertEqual({ev[0]["worker"] for ev in fl.values()}, {0, 1})

    def test_garbage_and_flood_leave_good_flows_relayed(self):
        body = self.topo.file("g.bin", 100000)
        mport = free_port()
        cfg = {"quic": {"idle_ms": IDLE_MS, "max_flows": 128},
               "policy": {"default": "intercept"}, "metrics": {"listen": f"127.0.0.1:{mport}"}}
        with self.proxy(**cfg) as p:
            self.topo.divert(p.port)
            flood = subprocess.Popen(
                ["ip", "netns", "exec", NS_C, sys.executable, os.path.abspath(__file__),
                 "--flood", O_ADDR], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(0.2)
            rc, got, err = self.topo.get("/g.bin", timeout="10s")
            out, ferr = flood.communicate(timeout=120)
            self.assertEqual(flood.returncode, 0, ferr)
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            # A table already full drops new flows (quic.max_flows) and keeps the old ones.
            with open(f"/proc/{p.proc.pid}/statm") as fh:
                rss = int(fh.read().split()[1]) * 4096
            self.assertLess(rss, 200 << 20)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                m = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines()
                         if line.startswith("soth_quic"))
            # Over quic.max_flows (128 at once), new flows are dropped and counted: the 64
            # flood ports stay open to the end, so of the 400 one-datagram sources at most
            # 128 - 64 - 1 find room. UDP may still lose a few under the flood (an ASan build
            # drains slowly), hence the margin: 335-336 read paced, CI saw 193 unpaced.
            self.assertGreater(int(m['soth_quic_flows_total{decision="dropped"}']), 250)
            # Most of the flood is relayed (policy.default); UDP may lose some under a flood.
            self.assertGreater(int(m['soth_quic_datagrams_total{direction="client_to_server"}']),
                               50000)
            time.sleep(IDLE_MS / 1000 + 1)
            rc, got, err = self.topo.get("/g.bin")
            self.assertEqual(rc, 0, err[-2000:])
            self.assertEqual(got, body)
            time.sleep(IDLE_MS / 1000 + 0.5)
            evs = p.checked_events()
        fl = flows_of(evs)
        invalid = [ev for ev in fl.values() if ev[0]["type"] == "connect_parse_failed"]
        self.assertGreater(len(invalid), 10)
        for ev in invalid:
            self.assertEqual(ev[0]["reason_code"], "quic_initial_invalid")
            self.assertEqual((ev[1]["decision"], ev[1]["reason"]), ("tunnel", "default"))
        good = [ev for ev in fl.values() if ev[0]["type"] == "connect_received"]
        # Two GETs, two client ports. A GET whose handshake falls silent for longer than
        # quic.idle_ms under the flood (its Initial lost, then the client's probe timeout
        # doubling past 1.5 s on a loaded machine) ends as one flow and goes on as a second
        # one from the same address when it sends its next Initial: seen once in CI.
        self.assertEqual(len({ev[0]["client_addr"] for ev in good}), 2)
        self.assertLessEqual(len(good), 4)
        for ev in good:
            self.assertEqual(ev[-1]["reason_code"], "idle_timeout")
            self.assertEqual(ev[2]["reason"], "http3_passthrough")
        # 64 flood ports, the good flow, and new flows only while fewer than 128 were open.
        self.assertLessEqual(len(fl), 128 + 64 + 2)


def flood(dst):
    """Garbage from the client namespace: random bytes, truncated and wrong-version Initials,
    then 100,000 random datagrams over 64 source ports, and one datagram from each of 400
    more ports (more flows than quic.max_flows)."""
    rnd = random.Random(7)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    # A long header: Initial (type 0) of QUIC v1, DCID 8, SCID 0, token 0, length, then junk.
    init = bytes([0xc3]) + struct.pack(">I", 1) + bytes([8]) + rnd.randbytes(8) + b"\x00\x00"
    cases = [b"", b"\x00", init[:7], init + b"\x44\xd0" + rnd.randbytes(1200),
             bytes([0xc3]) + struct.pack(">I", 0xdeadbeef) + rnd.randbytes(1200),
             bytes([0x40]) + rnd.randbytes(1200)]
    for i, c in enumerate(cases):
        socks[i].sendto(c, (dst, 443))
    for i in range(100000):
        s = socks[i % len(socks)]
        n = rnd.randrange(1, 1400)
        try:
            s.sendto(rnd.randbytes(n), (dst, 443))
        except OSError:
            time.sleep(0.001)
        if i % 2000 == 0:
            time.sleep(0.01)
    extra = []
    for i in range(400):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(rnd.randbytes(100), (dst, 443))
        extra.append(s)
        # Paced so the proxy's receive queue (still draining the flood under a slow ASan
        # build) does not overflow: a datagram the kernel drops is never a flow to count.
        if i % 10 == 9:
            time.sleep(0.005)
    for s in socks + extra:
        s.close()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--flood":
        flood(sys.argv[2])
        return
    if INNER:
        unittest.main(argv=[sys.argv[0], "-v"] + sys.argv[1:])
        return
    for tool in ("unshare", "nft", "ip", "gtlsclient", "gtlsserver", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (ci/setup.sh installs it)")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        print("SKIPPED: cannot create a network namespace here:", probe.stderr.decode().strip())
        sys.exit(77)
    env = dict(os.environ, SOTH_HTTP3_INNER="1")
    rc = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__)] +
                        sys.argv[1:], env=env).returncode
    sys.exit(rc)


if __name__ == "__main__":
    main()
