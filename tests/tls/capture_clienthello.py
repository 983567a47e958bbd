#!/usr/bin/python3
"""Capture real ClientHellos from openssl s_client, curl and python ssl into files.

A loopback listener accepts each client, reads until its ClientHello records are complete,
writes them to OUTDIR/<name>.bin and closes. Seeds for fuzz/corpus/clienthello and the data
of tests/tls/test_peek.c. Usage: capture_clienthello.py OUTDIR
"""
import os
import socket
import ssl
import subprocess
import sys
import threading


def read_hello(conn):
    data = b""
    need = None
    conn.settimeout(5)
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
        # walk records until the handshake message (4-byte header + length) is complete
        off, hs = 0, b""
        while off + 5 <= len(data):
            rlen = int.from_bytes(data[off + 3:off + 5], "big")
            if off + 5 + rlen > len(data):
                break
            hs += data[off + 5:off + 5 + rlen]
            off += 5 + rlen
            if len(hs) >= 4:
                need = 4 + int.from_bytes(hs[1:4], "big")
                if len(hs) >= need:
                    return data[:off]


def capture(outdir, name, client_cmd=None, client_fn=None):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    proc = None
    th = None
    if client_cmd:
        cmd = [a.replace("PORT", str(port)) for a in client_cmd]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    else:
        th = threading.Thread(target=client_fn, args=(port,), daemon=True)
        th.start()
    srv.settimeout(10)
    conn, _ = srv.accept()
    data = read_hello(conn)
    conn.close()
    srv.close()
    if proc:
        proc.kill()
        proc.wait()
    with open(os.path.join(outdir, name + ".bin"), "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")


def py_client(sni, alpn, maxver=None):
    def run(port):
        ctx = ssl.create_default_context()
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if maxver:
            ctx.maximum_version = maxver
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                ctx.wrap_socket(s, server_hostname=sni)
        except Exception:
            pass
    return run


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    capture(outdir, "openssl_sni_alpn",
            ["openssl", "s_client", "-connect", "127.0.0.1:PORT", "-servername",
             "www.example.com", "-alpn", "h2,http/1.1"])
    capture(outdir, "openssl_tls12_nosni",
            ["openssl", "s_client", "-connect", "127.0.0.1:PORT", "-noservername", "-tls1_2"])
    capture(outdir, "curl_h2",
            ["curl", "-s", "--max-time", "3", "--resolve", "api.example.org:PORT:127.0.0.1",
             "https://api.example.org:PORT/"])
    capture(outdir, "curl_http11",
            ["curl", "-s", "--http1.1", "--max-time", "3", "--resolve",
             "Mixed.Case.example:PORT:127.0.0.1", "https://Mixed.Case.example:PORT/"])
    capture(outdir, "python_grpc_alpn",
            client_fn=py_client("grpc.example.net", ["grpc-exp", "h2"]))
    capture(outdir, "python_tls12", client_fn=py_client("old.example.net", ["http/1.1"],
                                                         ssl.TLSVersion.TLSv1_2))


if __name__ == "__main__":
    main()
