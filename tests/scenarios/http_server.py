#!/usr/bin/env python3
"""A small HTTP/1.1 server for observer's end-to-end tests.

Modes:
  keepalive       HTTP/1.1 keep-alive: the client decides when to close.
  close           answers, then closes the connection itself (server closes first).
  idle:SECONDS    keep-alive, but closes connections idle for SECONDS.
  never-close     never calls close() on accepted sockets, even after the client hung up
                  (a server-side CLOSE_WAIT leak).
  delay:SECONDS   keep-alive, answering each request after SECONDS (so that concurrent
                  clients really overlap).
  prefork         keep-alive, served by a forked worker process that accepts on the parent's
                  listening socket (the nginx model); prints "WORKER <pid>" as well.

With --tls CERT KEY, connections are TLS (Python's ssl, OpenSSL; session tickets on).

Prints "LISTENING <pid> <port>" once it accepts connections.
"""
import argparse
import ctypes
import os
import signal
import socket
import ssl
import sys
import threading
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
leaked = []


def read_request(conn, buf):
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def handle(conn, mode, tls=None):
    buf = b""
    try:
        if tls:
            conn = tls.wrap_socket(conn, server_side=True)
        if mode.startswith("idle:"):
            conn.settimeout(float(mode.split(":", 1)[1]))
        while True:
            try:
                head, buf = read_request(conn, buf)
            except socket.timeout:
                break
            if head is None:
                if mode == "never-close":
                    leaked.append(conn)  # keep a reference: the fd stays open forever
                    return
                break
            if mode == "close":
                conn.sendall(RESPONSE_CLOSE)
                break
            if mode.startswith("delay:"):
                time.sleep(float(mode.split(":", 1)[1]))
            conn.sendall(RESPONSE)
    except OSError:
        pass
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="keepalive")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = ap.parse_args()
    tls = None
    if a.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*a.tls)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(1024)
    print(f"LISTENING {os.getpid()} {srv.getsockname()[1]}", flush=True)
    if a.mode == "prefork":
        worker = os.fork()
        if worker:
            print(f"WORKER {worker}", flush=True)
            os.waitpid(worker, 0)
            return
        # The worker dies with its parent (PR_SET_PDEATHSIG is not inherited across fork).
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        a.mode = "keepalive"
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, a.mode, tls), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
