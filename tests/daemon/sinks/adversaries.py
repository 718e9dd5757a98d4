"""
Misbehaving servers on loopback for the adversarial sink tests: a raw TCP
server that runs a scripted handler per connection (answer at once,
trickle, never answer, reset), and a proxy that resets a connection to a
real server after so many bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

Handler = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A TCP server on loopback that runs ``handler`` on each connection
    (in its own thread) and counts the requests it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(
                target=self._serve, args=(conn,), daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self._accepter.join(2)
        self.sock.close()
        for thread in self._threads:
            thread.join(2)


@contextlib.contextmanager
def raw_server(handler: Handler) -> Iterator[RawServer]:
    server = RawServer(handler)
    try:
        yield server
    finally:
        server.close()


def read_request(conn: socket.socket) -> bytes:
    """The whole request (headers and a Content-Length body)."""
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head


def answering(status: str, body: bytes, *extra: str) -> Handler:
    """A handler that reads one request and answers it at once."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
        head += [*extra, "Connection: close", "", ""]
        conn.sendall("\r\n".join(head).encode() + body)

    return handle


class CuttingProxy:
    """A TCP proxy to ``upstream`` that resets the connection once
    ``cut_up`` bytes went up (client to server) or ``cut_down`` came down:
    a ClickHouse whose connection drops mid-insert or mid-answer."""

    def __init__(self, upstream: int, cut_up: int, cut_down: int) -> None:
        self.upstream, self.cuts = upstream, {"up": cut_up, "down": cut_down}
        self.server = RawServer(self._handle)

    def _handle(self, client: socket.socket, stop: threading.Event) -> None:
        with socket.create_connection(("127.0.0.1", self.upstream)) as up:
            done = threading.Event()
            pipes = [
                threading.Thread(
                    target=self._pipe, args=(a, b, self.cuts[d], done)
                )
                for a, b, d in ((client, up, "up"), (up, client, "down"))
            ]
            for pipe in pipes:
                pipe.start()
            done.wait(10)
            for sock in (client, up):  # a reset, not a clean close
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
                )
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            for pipe in pipes:
                pipe.join(5)

    @staticmethod
    def _pipe(
        src: socket.socket, dst: socket.socket, cut: int, done: threading.Event
    ) -> None:
        left = cut
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := src.recv(min(65536, left))):
                dst.sendall(chunk)
                left -= len(chunk)
        done.set()
