#!/usr/bin/env python3
"""Servers whose sockets outlive the process that opened them, for observer's end-to-end tests.

Each answers every line it reads ("PING") with one line ("PONG"), on every connection.

Modes:
  double-fork   listens (prints "LISTENING <pid> <port>"), accepts one connection and answers
                its first request; then daemonizes the classic way (fork, setsid, fork) and
                the original process and the intermediate exit. The grandchild prints
                "HEIR <pid>" and goes on serving the same connection and the listener.
  exec-child    systemd-style activation: listens (prints "LISTENING <pid> <port>"), starts a
                new program with the listening socket (LISTEN_FDS=1, fd 3) and exits; the child
                prints "HEIR <pid>" and serves.
  serve-fd FD   (internal) the exec'd child: serves the listening socket FD.

Every server exits by itself after --lifetime seconds (default 60).
"""
import argparse
import os
import socket
import sys
import threading
import time


def serve_conn(conn):
    f = conn.makefile("rwb", buffering=0)
    while True:
        line = f.readline()
        if not line:
            break
        conn.sendall(b"PONG\n")
    conn.close()


def serve(listener, lifetime):
    threading.Timer(lifetime, lambda: os._exit(0)).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def listen(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(64)
    say(f"LISTENING {os.getpid()} {s.getsockname()[1]}")
    return s


def double_fork(a):
    s = listen(a.host)
    conn, _ = s.accept()
    f = conn.makefile("rwb", buffering=0)
    f.readline()
    conn.sendall(b"PONG\n")
    # (An open makefile would keep the socket open past conn.close().)
    f.close()
    pid = os.fork()
    if pid > 0:
        # The original process: wait for the intermediate, then leave.
        os.waitpid(pid, 0)
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    # The grandchild, reparented: it holds the listener and the connection now.
    say(f"HEIR {os.getpid()}")
    threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()
    serve(s, a.lifetime)


def exec_child(a):
    s = listen(a.host)
    fd = s.fileno()
    os.set_inheritable(fd, True)
    if os.fork() == 0:
        os.dup2(fd, 3)
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID="")
        os.execve(sys.executable, [sys.executable, __file__, "serve-fd", "3", "--lifetime", str(a.lifetime)], env)
    # The activator leaves as soon as the service has its socket.
    os._exit(0)


def serve_fd(a):
    s = socket.socket(fileno=a.fd)
    say(f"HEIR {os.getpid()}")
    serve(s, a.lifetime)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["double-fork", "exec-child", "serve-fd"])
    ap.add_argument("fd", nargs="?", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--lifetime", type=float, default=60)
    a = ap.parse_args()
    {"double-fork": double_fork, "exec-child": exec_child, "serve-fd": serve_fd}[a.mode](a)


if __name__ == "__main__":
    main()
