#!/usr/bin/env python3
"""Client scenarios for observer's end-to-end tests.

Each scenario prints one JSON line with its pid and what it observed itself, then
"DONE", and stays alive (sockets and all) until its standard input is closed, so that the
test can query the daemon while the process exists. Meanwhile it takes commands on stdin:

  close      close every socket and session it keeps; answers "CLOSED"
  get URL    one more GET on the session it keeps; answers "GOT <status>"
"""
import json
import logging
import os
import socket
import sys


def requests_no_session(url, n):
    import requests
    for _ in range(int(n)):
        requests.get(url, timeout=5).raise_for_status()
    return {}


def requests_session(url, n):
    import requests
    s = requests.Session()
    for _ in range(int(n)):
        s.get(url, timeout=5).raise_for_status()
    KEEP.append(s)  # the pooled connection stays open
    return {}


def untrusted(url):
    """One GET that must fail the TLS handshake (the server's certificate is not trusted)."""
    import requests
    try:
        requests.get(url, timeout=5)
        return {"error": None}
    except requests.exceptions.SSLError as e:
        return {"error": "SSLError " + str(e)[:200]}


def retry_refused(url, total):
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=Retry(total=int(total), backoff_factor=0)))
    try:
        s.get(url, timeout=5)
        return {"error": None}
    except requests.exceptions.ConnectionError as e:
        return {"error": str(e)[:300]}


def connect_timeout(url, timeout, attempts):
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=Retry(total=int(attempts) - 1, backoff_factor=0)))
    try:
        s.get(url, timeout=(float(timeout), 5))
        return {"error": None}
    except requests.exceptions.ConnectTimeout as e:
        return {"error": "ConnectTimeout " + str(e)[:200]}
    except requests.exceptions.ConnectionError as e:
        return {"error": "ConnectionError " + str(e)[:200]}


def hold(host, port, n):
    """n connections that each send a request, read the answer, and are never closed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(int(n)):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect((host, int(port)))
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while b"ok" not in data:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        KEEP.append(c)
    return {}


def half_closed(n):
    """n connections to a listener of our own that accepts them and never closes them: each
    client sends one byte and shuts its sending side (FIN_WAIT2 for as long as we live; the
    server's side is in CLOSE_WAIT). Returns the listener's port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(int(n))
    port = listener.getsockname()[1]
    for _ in range(int(n)):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = listener.accept()
        c.sendall(b"q")
        c.shutdown(socket.SHUT_WR)
        s.recv(16)
        KEEP.extend([c, s])
    KEEP.append(listener)
    return {"port": port}


def pool_overflow(url, threads, per_thread, maxsize):
    """A urllib3 PoolManager with a pool smaller than the thread count. Returns what urllib3's
    own log says it did."""
    import threading
    import urllib3
    counts = {"started": 0, "discarded": 0}

    class Count(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("Starting new HTTP connection"):
                counts["started"] += 1
            elif msg.startswith("Connection pool is full, discarding connection"):
                counts["discarded"] += 1

    log = logging.getLogger("urllib3.connectionpool")
    log.setLevel(logging.DEBUG)
    log.addHandler(Count())
    pm = urllib3.PoolManager(maxsize=int(maxsize))
    threads, per_thread = int(threads), int(per_thread)
    start = threading.Barrier(threads)
    errors = []

    def work():
        start.wait()
        for _ in range(per_thread):
            r = pm.request("GET", url)
            if r.status != 200:
                errors.append(r.status)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    KEEP.append(pm)
    return {**counts, "requests": threads * per_thread, "errors": errors}


KEEP = []
def close_first_churn(seconds, limit):
    """A server that answers and closes first, and clients that hold each connection a while
    (the client's ACK of the server's FIN is delayed: it completes the server's close from a
    timer's softirq, which can interrupt observer's program running for another connection on
    the same CPU). At most `limit` connections over `seconds`; every socket is closed at the end.
    Returns how many connections were made."""
    import threading
    import time
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    stop = time.time() + float(seconds)
    made = [0]
    lock = threading.Lock()

    def serve():
        listener.settimeout(0.2)
        while True:
            try:
                s, _ = listener.accept()
            except socket.timeout:
                if time.time() > stop + 2:
                    return
                continue
            s.recv(16)
            s.send(b"x")
            s.close()

    def connect():
        held = []
        while time.time() < stop:
            with lock:
                if made[0] >= int(limit):
                    break
                made[0] += 1
            c = socket.create_connection(("127.0.0.1", port))
            c.send(b"q")
            # The answer, then the server's FIN: the server closed first.
            while c.recv(16):
                pass
            held.append(c)
            if len(held) >= 200:
                for h in held[:100]:
                    h.close()
                del held[:100]
        for h in held:
            h.close()

    server = threading.Thread(target=serve)
    server.start()
    clients = [threading.Thread(target=connect) for _ in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    server.join()
    listener.close()
    return {"connections": made[0], "port": port}


SCENARIOS = {
    "close_first_churn": close_first_churn,
    "requests_no_session": requests_no_session,
    "requests_session": requests_session,
    "retry_refused": retry_refused,
    "connect_timeout": connect_timeout,
    "hold": hold,
    "half_closed": half_closed,
    "pool_overflow": pool_overflow,
    "untrusted": untrusted,
}


def main():
    result = SCENARIOS[sys.argv[1]](*sys.argv[2:])
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    print("DONE", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "close":
            for kept in KEEP:
                kept.close()
            KEEP.clear()
            print("CLOSED", flush=True)
        elif cmd and cmd[0] == "get":
            session = next(k for k in KEEP if hasattr(k, "get"))
            print(f"GOT {session.get(cmd[1], timeout=5).status_code}", flush=True)


if __name__ == "__main__":
    main()
