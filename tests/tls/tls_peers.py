#!/usr/bin/python3
"""Real TLS peers for tests/tls/test_failure.c (the failure-taxonomy fixture corpus).

  tls_peers.py gen DIR                 certificates: a test root, an intermediate, origin
                                       leaves (good, expired, wrong host, chain without its
                                       intermediate) and a self-signed one
  tls_peers.py server KIND DIR         serve one connection on 127.0.0.1:<port>; prints the
                                       port on the first line of stdout
  tls_peers.py client KIND PORT DIR    connect once to 127.0.0.1:PORT as KIND

Uses Debian's python3 (ssl, cryptography). Loopback only; every step is time-bounded.
"""
import datetime
import os
import socket
import ssl
import struct
import sys
import time

HOST = "origin.test"


def gen(d):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID

    now = datetime.datetime.utcnow()

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem, cert, k):
        with open(os.path.join(d, stem + ".pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(d, stem + ".key"), "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))

    def make(cn, k, issuer_cert, issuer_key, ca=False, sans=None, nb=None, na=None):
        b = (x509.CertificateBuilder()
             .subject_name(name(cn))
             .issuer_name(issuer_cert.subject if issuer_cert else name(cn))
             .public_key(k.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(nb or now - datetime.timedelta(days=1))
             .not_valid_after(na or now + datetime.timedelta(days=30)))
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                              False, False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]),
                                critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                critical=False)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),
                            critical=False)
        return b.sign(issuer_key or k, hashes.SHA256())

    rk = key()
    root = make("soth test root", rk, None, None, ca=True)
    save("root", root, rk)
    ik = key()
    inter = make("soth test intermediate", ik, root, rk, ca=True)
    save("inter", inter, ik)
    for stem, cn, sans, iss, nb, na in [
        ("good", HOST, [HOST], (root, rk), None, None),
        ("expired", HOST, [HOST], (root, rk), now - datetime.timedelta(days=60),
         now - datetime.timedelta(days=30)),
        ("wronghost", "other.test", ["other.test"], (root, rk), None, None),
        ("incomplete", HOST, [HOST], (inter, ik), None, None),
    ]:
        k = key()
        save(stem, make(cn, k, iss[0], iss[1], sans=sans, nb=nb, na=na), k)
    sk = key()
    save("selfsigned", make(HOST, sk, None, None, sans=[HOST]), sk)


def listen():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    s.settimeout(10)
    return s


def read_some(c, n=5, t=3):
    c.settimeout(t)
    try:
        return c.recv(n)
    except OSError:
        return b""


def rst(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def server(kind, d):
    s = listen()
    c, _ = s.accept()
    if kind in ("eof", "reset", "stall"):
        read_some(c, 4096)  # the ClientHello (or part of it)
        if kind == "eof":
            c.close()
        elif kind == "reset":
            rst(c)
        else:
            time.sleep(3)
            c.close()
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert = {"good": "good", "selfsigned": "selfsigned", "expired": "expired",
            "wronghost": "wronghost", "incomplete": "incomplete", "tls11": "good",
            "nocipher": "good", "clientcert": "good"}[kind]
    ctx.load_cert_chain(os.path.join(d, cert + ".pem"), os.path.join(d, cert + ".key"))
    if kind == "tls11":
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    elif kind == "nocipher":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256")  # CBC: not in our list
    elif kind == "clientcert":
        # TLS 1.2: the rejection comes inside the handshake (in TLS 1.3 it follows it)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(os.path.join(d, "root.pem"))
    c.settimeout(5)
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.recv(1)
        t.close()
    except (OSError, ssl.SSLError):
        pass


def client(kind, port, d):
    if kind == "resume":
        # two connections (to two worker contexts): the second resumes with the first's ticket
        ports = [int(p) for p in port.split(",")]
        ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
        sess = None
        for p in ports:
            with socket.create_connection(("127.0.0.1", p), timeout=5) as s:
                t = ctx.wrap_socket(s, server_hostname=HOST, session=sess)
                t.sendall(b"ping")
                t.recv(4)
                print("reused", t.session_reused, t.version(), flush=True)
                sess = t.session
                t.close()
        return
    port = int(port)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind in ("eof", "reset", "stall", "close_after_cert", "garbage"):
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "../../fuzz/corpus/clienthello/python_grpc_alpn.bin"), "rb") as f:
            hello = f.read()
        if kind == "garbage":
            # a hello whose extension block length lies
            bad = bytearray(hello)
            bad[5 + 4 + 2 + 32 + 1 + 32 + 2 + 60] ^= 0xff
            s.sendall(bytes(hello[:40]) + b"\x00" * 10 + bytes(bad[50:]))
            read_some(s, 4096)
            s.close()
        elif kind == "close_after_cert":
            s.sendall(hello)
            read_some(s, 16384)  # the server's flight, certificate included
            time.sleep(0.2)
            s.close()
        elif kind == "eof":
            s.sendall(hello[:100])
            time.sleep(0.2)
            s.close()
        elif kind == "reset":
            s.sendall(hello[:100])
            time.sleep(0.2)
            rst(s)
        else:
            time.sleep(3)
            s.close()
        return
    if kind == "default":
        ctx = ssl.create_default_context()  # system trust store only
        sni = HOST
    elif kind == "wronghost":
        ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
        sni = "not-the-leaf.test"
    elif kind == "tls11":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        sni = HOST
    elif kind == "nocipher":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
        sni = HOST
    elif kind == "trusting":
        ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
        sni = HOST
    else:
        raise SystemExit("unknown client kind " + kind)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(b"ping")
        print(t.recv(4).decode(), t.version(), flush=True)
        t.close()
    except ssl.SSLCertVerificationError as e:
        print("VERIFY", e.verify_message, flush=True)
        sys.exit(3)
    except (OSError, ssl.SSLError) as e:
        print("ERROR", e, flush=True)
        sys.exit(4)


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
    elif sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], sys.argv[4])
