"""A TCP proxy on 127.0.0.1 that adds a fixed one-way delay: a server "across the network" for benchmarks.

Why: on loopback a Vault request is mostly CPU time on this machine's two
cores, so what a design saves in *round trips* (a token cache, two reads at
once) cannot show. Production Vault is never on the worker's loopback; a
round trip within a region is about 0.2-1 ms. This proxy makes that
measurable without root (no ``tc netem``): every chunk is forwarded
``one_way_ms`` after it arrived, in order, in both directions, and a new
connection waits one round trip before its first byte goes through (the TCP
handshake a real network would cost). Used by benchmarks only, never by
tests; it listens on 127.0.0.1 and stops with :meth:`LatencyProxy.stop`.
"""

from __future__ import annotations

import heapq
import socket
import threading
import time


class LatencyProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` with ``one_way_ms`` added each way."""

    def __init__(self, target_host: str, target_port: int, one_way_ms: float) -> None:
        self.target = (target_host, target_port)
        self.delay = one_way_ms / 1000.0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="latency-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LatencyProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        for sock in [self._listener, *self._sockets]:
            try:
                sock.close()
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            handshake_done = time.monotonic() + 2 * self.delay
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, handshake_done), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, not_before: float) -> None:
        """Copy ``src`` to ``dst``, each chunk sent ``delay`` after it arrived (never before ``not_before``)."""
        queue: list[tuple[float, int, bytes]] = []
        seq = 0
        cond = threading.Condition()
        done = threading.Event()

        def sender() -> None:
            while True:
                with cond:
                    while not queue and not done.is_set():
                        cond.wait(0.5)
                    if not queue and done.is_set():
                        break
                    due, _, chunk = heapq.heappop(queue)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    dst.sendall(chunk)
                except OSError:
                    break
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        out = threading.Thread(target=sender, daemon=True)
        out.start()
        while not self._stopped.is_set():
            try:
                chunk = src.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            with cond:
                heapq.heappush(queue, (max(time.monotonic() + self.delay, not_before), seq, chunk))
                seq += 1
                cond.notify()
        done.set()
        with cond:
            cond.notify()
        out.join(timeout=5)
