#!/usr/bin/env python3
"""Records real TLS handshakes (Python's ssl module, OpenSSL) between an in-memory client and
server, as the byte chunks each side writes, for the unit tests of observer/src/tls.rs.

Run from this directory: python3 make.py (needs openssl to make a throw-away CA)."""
import json, os, ssl, subprocess, tempfile

tmp = tempfile.mkdtemp()
def run(*a): subprocess.run(a, check=True, capture_output=True, cwd=tmp)
run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "3650",
    "-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=api.example.test",
    "-addext", "subjectAltName=DNS:api.example.test")
cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")

def server_ctx(maxv=None, minv=None):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(cert, key)
    if maxv: c.maximum_version = maxv
    if minv: c.minimum_version = minv
    return c

def client_ctx(trust=True, maxv=None):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust: c.load_verify_locations(cert)
    if maxv: c.maximum_version = maxv
    return c

def session(cctx, sctx, session=None, request=True):
    """Returns (chunks from the client's point of view, client session)."""
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(ci, co, server_hostname="api.example.test", session=session)
    s = sctx.wrap_bio(si, so, server_side=True)
    chunks = []
    def pump():
        moved = False
        d = co.read()
        if d: chunks.append(["send", d.hex()]); si.write(d); moved = True
        d = so.read()
        if d: chunks.append(["recv", d.hex()]); ci.write(d); moved = True
        return moved
    cdone = sdone = False
    failed = False
    for _ in range(20):
        try:
            if not cdone: c.do_handshake(); cdone = True
        except ssl.SSLWantReadError: pass
        except ssl.SSLError: failed = True
        try:
            if not sdone: s.do_handshake(); sdone = True
        except ssl.SSLWantReadError: pass
        except ssl.SSLError: failed = True
        if not pump() and (cdone and sdone or failed): break
    if cdone and sdone and request:
        c.write(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n"); pump()
        try: s.read(1000)
        except ssl.SSLWantReadError: pass
        s.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); pump()
        try: c.read(1000)
        except ssl.SSLWantReadError: pass
        pump()
    return chunks, (c.session if cdone else None)

out = {}
sctx13 = server_ctx()
cctx = client_ctx()
out["tls13_full"], sess = session(cctx, sctx13)
out["tls13_resumed"], _ = session(cctx, sctx13, session=sess)
sctx12 = server_ctx(maxv=ssl.TLSVersion.TLSv1_2)
cctx12 = client_ctx(maxv=ssl.TLSVersion.TLSv1_2)
out["tls12_full"], sess12 = session(cctx12, sctx12)
out["tls12_resumed"], _ = session(cctx12, sctx12, session=sess12)
out["tls13_untrusted"], _ = session(client_ctx(trust=False), sctx13)
out["tls12_untrusted"], _ = session(client_ctx(trust=False, maxv=ssl.TLSVersion.TLSv1_2), sctx12)
out["version_refused"], _ = session(cctx12, server_ctx(minv=ssl.TLSVersion.TLSv1_3))
json.dump(out, open("handshakes.json", "w"), indent=0)
for k, v in out.items(): print(k, [(d, len(h)//2) for d, h in v])
