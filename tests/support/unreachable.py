"""Addresses on 127.0.0.1 that fail the two ways a real network does.

* ``closed_port``: nothing listens, the connection is refused at once.
* ``silent_server``: a socket that accepts connections and never says a
  word, like a firewalled or hung server; only a client-side timeout ends
  the wait. It proves "no hang" without touching any other network.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from support.postgres import free_port


@pytest.fixture
def closed_port() -> int:
    return free_port()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Port of a listener that accepts and then holds connections open, silently."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
