#!/usr/bin/env python3
"""Client scenarios for observer's end-to-end tests.

Each scenario prints one JSON line with its pid and what it observed itself, then
"DONE", and stays alive (sockets and all) until its standard input is closed, so that the
test can query the daemon while the process exists.
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


KEEP = []
SCENARIOS = {
    "requests_no_session": requests_no_session,
    "requests_session": requests_session,
    "retry_refused": retry_refused,
    "connect_timeout": connect_timeout,
    "hold": hold,
}


def main():
    result = SCENARIOS[sys.argv[1]](*sys.argv[2:])
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    print("DONE", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
