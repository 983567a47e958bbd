#!/usr/bin/python3
"""Capture the first client flight of a real QUIC client (ngtcp2's gtlsclient, Debian package
ngtcp2-client) into files.

gtlsclient sends the host it connects to as SNI (an IP literal becomes "localhost"), so each
client runs in its own mount namespace (unshare -m, util-linux) where /etc/hosts is a temporary
file naming the test hosts as 127.0.0.1; the machine's /etc/hosts is never touched. A loopback
UDP socket receives what the client sends (nothing answers), keeps the
datagrams of the first flight (those within 0.5 s of the first; retransmissions come later)
and writes them to OUTDIR/<name>.bin, each datagram as a 2-byte big-endian length and its
bytes: the format of fuzz/fuzz_quic_initial.c and tests/tls/test_quic_initial.c, which use them
as seeds and test data. Usage: capture_quic_initial.py OUTDIR
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

HOSTS = "127.0.0.1 quic.example.net split.example.org draft.example.com\n"

CASES = [
    # name, gtlsclient arguments (PORT is replaced), expected datagrams
    ("ngtcp2_h3", ["quic.example.net", "PORT", "https://quic.example.net/"], 1),
    # A 1024-byte FFDHE8192 key share makes the ClientHello span two Initial packets, sent in two
    # datagrams.
    ("ngtcp2_split",
     ["--groups=-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519", "split.example.org", "PORT",
      "https://split.example.org/"], 2),
    # The withdrawn draft of QUIC v2 (0x709a50c4): a version the proxy does not read.
    ("ngtcp2_v2draft", ["-v", "v2draft", "draft.example.com", "PORT", "https://draft.example.com/"],
     1),
]


def capture(args, hosts):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = str(sock.getsockname()[1])
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             'mount --bind "$0" /etc/hosts && exec gtlsclient "$@"', hosts,
                             "-q", "--timeout=3s"] + [a.replace("PORT", port) for a in args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    got = []
    sock.settimeout(5)
    try:
        first = None
        while True:
            data, _ = sock.recvfrom(65536)
            now = time.monotonic()
            if first is None:
                first = now
                sock.settimeout(0.5)
            if now - first > 0.5:
                break
            got.append(data)
    except socket.timeout:
        pass
    finally:
        proc.kill()
        proc.wait()
        sock.close()
    return got


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    hosts = tempfile.NamedTemporaryFile("w", suffix=".hosts")
    hosts.write(HOSTS)
    hosts.flush()
    for name, args, want in CASES:
        dgrams = capture(args, hosts.name)
        if len(dgrams) != want:
            sys.exit("%s: %d datagrams, expected %d" % (name, len(dgrams), want))
        with open(os.path.join(outdir, name + ".bin"), "wb") as f:
            for d in dgrams:
                f.write(len(d).to_bytes(2, "big") + d)
        print("%s: %s" % (name, " ".join(str(len(d)) for d in dgrams)))


if __name__ == "__main__":
    main()
