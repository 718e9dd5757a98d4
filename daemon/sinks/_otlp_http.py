"""
One bounded HTTP POST for the OTLP and webhook sinks, with the answer turned
into success or a ``DestinationError`` (retryable, ``Retry-After``, or
permanent): the stdlib's ``http.client``, no redirects, no proxies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import http.client
import socket
import threading
import time
from collections.abc import Iterator, Mapping

from daemon.forward import DestinationError
from livemon.endpoints import Endpoint

__all__ = [
    "Answer",
    "Endpoint",
    "PayloadTooLarge",
    "parse_retry_after",
    "post",
]

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
"""Statuses a later try may cure (OTLP/HTTP spec); any other 5xx is too."""
MAX_RETRY_AFTER_S = 3600.0
"""A ``Retry-After`` beyond an hour is taken as an hour."""
MAX_BODY_BYTES = 64 * 2**10  # of an answer: enough for any error message


class PayloadTooLarge(DestinationError):
    """The server answered 413: this body is above its limit.

    Permanent for this body; a sink that can split what it sends (OTLP)
    sends it in smaller parts instead.
    """


@dataclasses.dataclass(frozen=True)
class Answer:
    """A 2xx answer: its status and (at most ``MAX_BODY_BYTES`` of) body."""

    status: int
    body: bytes


def post(
    endpoint: Endpoint,
    body: bytes,
    *,
    content_type: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """POST ``body`` once; return the 2xx answer.

    ``timeout_s`` bounds the whole exchange, not each read: a server that
    trickles its answer a byte at a time is cut off at that deadline.

    Raises:
        DestinationError: no connection or no whole answer within
            ``timeout_s`` (retryable); 408, 429 or 5xx (retryable, with
            the server's ``Retry-After``); a redirect or any other
            status (permanent: the configured URL or the payload needs a
            person).
        PayloadTooLarge: 413 (permanent for this body; send less).
    """
    kind = (
        http.client.HTTPSConnection
        if endpoint.scheme == "https"
        else http.client.HTTPConnection
    )
    connection = kind(endpoint.host, endpoint.port, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    cut = threading.Event()
    try:
        for key, value in (headers or {}).items():  # before connecting
            key.encode("ascii"), value.encode("latin-1")
        connection.connect()  # bounded by timeout_s itself
        with _cut_at(connection, deadline, cut):
            connection.request(
                "POST",
                endpoint.path,
                body,
                {"Content-Type": content_type, **(headers or {})},
            )
            response = connection.getresponse()
            if cut.is_set():  # its headers may end where the cut was
                raise TimeoutError("cut at the deadline")
            data = _body(response)
        status, retry_after = (
            response.status,
            response.getheader("Retry-After"),
        )
        location = response.getheader("Location")
    except (OSError, http.client.HTTPException) as exc:
        if cut.is_set():
            raise DestinationError(
                f"POST {endpoint}: no whole answer within {timeout_s:g} s "
                "(timed out; the server trickled or stalled)"
            ) from exc
        raise DestinationError(f"POST {endpoint}: {exc!r}") from exc
    except UnicodeError as exc:  # a header http.client cannot encode
        raise DestinationError(
            f"POST {endpoint}: a header is not Latin-1 ({exc}): "
            "percent-encode it in OTEL_EXPORTER_OTLP_HEADERS",
            permanent=True,
        ) from exc
    finally:
        connection.close()
    if 200 <= status < 300:
        return Answer(status, data)
    said = data.decode("utf-8", "replace").strip()[:500]
    message = f"POST {endpoint}: HTTP {status} {said}".rstrip()
    if status in RETRYABLE_STATUSES or status >= 500:
        raise DestinationError(
            message, retry_after=parse_retry_after(retry_after)
        )
    if 300 <= status < 400:
        message += f" (redirected to {location}: configure that URL)"
    if status == 413:
        raise PayloadTooLarge(
            f"{message} (a body of {len(body)} bytes)", permanent=True
        )
    raise DestinationError(message, permanent=True)


@contextlib.contextmanager
def _cut_at(
    connection: http.client.HTTPConnection,
    deadline: float,
    cut: threading.Event,
) -> Iterator[None]:
    """Shut the connection's socket at ``deadline`` (monotonic), setting
    ``cut``: the blocked read then fails instead of waiting on a server
    that sends a byte just before each per-read timeout."""

    def shut() -> None:
        cut.set()
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), shut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _body(response: http.client.HTTPResponse) -> bytes:
    """At most ``MAX_BODY_BYTES`` of the answer's body.

    A 2xx whose body is torn (closed early, cut at the deadline) still
    says the server took the request: only a partial success's count is
    lost, where failing would post the same rows again.
    """
    try:
        return response.read(MAX_BODY_BYTES)
    except (OSError, http.client.HTTPException):
        if 200 <= response.status < 300:
            return b""
        raise


def parse_retry_after(
    value: str | None, now_s: float | None = None
) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait; None if absent/bad.

    Args:
        value: delay-seconds (``"120"``) or an HTTP date.
        now_s: the current time (``time.time()`` if None), for a date.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        return None
    now = time.time() if now_s is None else now_s
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER_S)
