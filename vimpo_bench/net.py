"""Is a server there? One TCP connection under a deadline that covers the name lookup too, for the
checks that must fail fast instead of letting a client retry for minutes (the MLflow tracking server,
the Hugging Face hub)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit


def connect_url(url: str, timeout: float) -> None:
    """Open (and close) a TCP connection to `url`'s host and port (80/443 by scheme when none is given)
    within about `timeout` seconds in all; raise OSError (TimeoutError past the deadline) otherwise."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    connect_any(resolve(parts.hostname or "localhost", port, timeout), deadline)


def resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """socket.getaddrinfo(host, port) for TCP, or TimeoutError after `timeout` seconds. The lookup runs in a
    daemon thread because getaddrinfo cannot be interrupted: a hung lookup is left behind, not waited for
    (and never keeps the process alive at exit)."""
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"looking up the host name {host!r} took over {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["addresses"]


def connect_any(addresses: list[tuple], deadline: float) -> None:
    """Open (and close) a TCP connection to the first of `addresses` that accepts one before `deadline`."""
    error: OSError = TimeoutError("timed out")
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
            return
        except OSError as exc:
            error = exc
    raise error
