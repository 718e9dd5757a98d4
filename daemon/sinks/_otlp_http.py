"""
One bounded HTTP POST for the OTLP and webhook sinks, with the answer turned
into success or a ``DestinationError`` (retryable, ``Retry-After``, or
permanent): the stdlib's ``http.client``, no redirects, no proxies.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import time
import urllib.parse
from collections.abc import Mapping

from daemon.forward import DestinationError

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
"""Statuses a later try may cure (OTLP/HTTP spec); any other 5xx is too."""
MAX_RETRY_AFTER_S = 3600.0
"""A ``Retry-After`` beyond an hour is taken as an hour."""
MAX_BODY_BYTES = 64 * 2**10  # of an answer: enough for any error message


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A parsed ``http(s)://host[:port]/path`` to POST to."""

    scheme: str
    host: str
    port: int | None
    path: str
    secret_path: bool = False
    """Show the path as ``/...`` in messages (a Slack webhook's path is
    its credential: it must not reach logs or the status file)."""

    @classmethod
    def parse(cls, url: str, what: str, secret_path: bool = False) -> Endpoint:
        """Parse and check ``url``.

        Raises:
            ValueError: not an http(s) URL with a host; the message names
                ``what`` (the setting) and says what a valid one looks like.
        """
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname:
            port = -1
        if port == -1 or parts.username or parts.fragment:
            shown = "" if secret_path else f" {url!r}"
            raise ValueError(
                f"{what}{shown} is not an http:// or https:// URL with a "
                "host (no user name, no fragment), e.g. "
                "http://127.0.0.1:4318"
            )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname or "", port, path, secret_path)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = "/..." if self.secret_path else self.path
        return f"{self.scheme}://{host}{port}{path}"


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

    Raises:
        DestinationError: no connection or no answer within ``timeout_s``
            (retryable); 408, 429 or 5xx (retryable, with the server's
            ``Retry-After``); a redirect or any other status (permanent:
            the configured URL or the payload needs a person).
    """
    kind = (
        http.client.HTTPSConnection
        if endpoint.scheme == "https"
        else http.client.HTTPConnection
    )
    connection = kind(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        connection.request(
            "POST",
            endpoint.path,
            body,
            {"Content-Type": content_type, **(headers or {})},
        )
        response = connection.getresponse()
        data = response.read(MAX_BODY_BYTES)
        status, retry_after = (
            response.status,
            response.getheader("Retry-After"),
        )
        location = response.getheader("Location")
    except (OSError, http.client.HTTPException) as exc:
        raise DestinationError(f"POST {endpoint}: {exc!r}") from exc
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
    raise DestinationError(message, permanent=True)


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
