"""
The sd_notify protocol, spoken directly: datagrams to ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Tells systemd about readiness, status, liveness and shutdown.

    Without ``NOTIFY_SOCKET`` (not run by systemd) every call is a no-op.
    A name starting with ``@`` is in the abstract namespace.  With
    ``WATCHDOG_USEC`` set, ``watchdog`` pings at half that interval.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = (
            "\0" + address[1:] if address.startswith("@") else address
        )
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
            )
        watchdog_usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        watchdog_pid = int(env.get("WATCHDOG_PID", "0") or 0)
        if watchdog_pid and watchdog_pid != os.getpid():
            watchdog_usec = 0  # meant for another process
        self.watchdog_interval_s = watchdog_usec / 2e6
        self._next_ping = 0.0

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return self._socket is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines; False without a socket or on failure."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        """Report that the ring and database are open."""
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        """Report live figures (shown by ``systemctl status``)."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping the watchdog if enabled and due."""
        if not self.watchdog_interval_s:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval_s

    def stopping(self) -> None:
        """Report that shutdown has begun."""
        self.send("STOPPING=1", "STATUS=draining and stopping")

    def close(self) -> None:
        """Close the socket. Idempotent."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
