"""
The network addresses a person configures for the daemon's sinks and
metrics, parsed and checked once (``Config`` refuses a bad one at start,
on the terminal, rather than a detached daemon failing in its log).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse

from livemon.exceptions import ConfigError

__all__ = ["REMOTE_PREFIX", "Endpoint", "hide_password", "parse_address"]

REMOTE_PREFIX = "remote:"
"""Written before ``metrics_address`` to serve beyond loopback on purpose."""
# Characters a request target may hold as they are (RFC 3986 pchar, '/',
# '?' and an existing '%' escape); anything else is percent-encoded once.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_PASSWORD = re.compile(r"(//[^/?#@:]*):.*@")  # to the last @: over, not under


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
        """Parse and check ``url``; a path with spaces or non-ASCII is
        percent-encoded (``http.client`` refuses it raw, on every POST).

        Raises:
            ValueError: not an http(s) URL with a host; the message names
                ``what`` (the setting) and says what a valid one looks like.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:  # a bad port, or a '[' without its ']'
            parts, port = urllib.parse.urlsplit(""), -1
        if parts.scheme not in ("http", "https") or not parts.hostname:
            port = -1
        credentials = parts.username is not None or parts.password is not None
        if port == -1 or credentials or parts.fragment:
            shown = "" if secret_path else f" {hide_password(url)!r}"
            raise ValueError(
                f"{what}{shown} is not an http:// or https:// URL with a "
                "host (no user name or password, no fragment), e.g. "
                "http://127.0.0.1:4318"
            )
        path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + urllib.parse.quote(parts.query, safe=_QUERY_SAFE)
        return cls(parts.scheme, parts.hostname or "", port, path, secret_path)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = "/..." if self.secret_path else self.path
        return f"{self.scheme}://{host}{port}{path}"


def parse_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) to bind; None when empty.

    Raises:
        ConfigError: not HOST:PORT, or a host that is not loopback
            without the ``remote:`` prefix; the message says what to do.
    """
    remote = text.startswith(REMOTE_PREFIX)
    spec = text.removeprefix(REMOTE_PREFIX).strip()
    if not spec:
        if remote:
            raise ConfigError("metrics_address 'remote:' names no address")
        return None
    host, colon, port_text = spec.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port_text.isdigit():
        raise ConfigError(
            f"metrics_address {text!r} is not HOST:PORT: write e.g. "
            "127.0.0.1:9464 or [::1]:9464"
        )
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"metrics_address {text!r}: port above 65535")
    if not remote and not _is_loopback(host):
        raise ConfigError(
            f"metrics_address {text!r} is not a loopback address, and the "
            "metrics name agents and errors to whoever can connect: bind "
            "127.0.0.1 (reach it through a proxy or an SSH tunnel), or "
            f"write {REMOTE_PREFIX}{spec} to serve beyond this machine "
            "on purpose"
        )
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it could resolve to anything


def hide_password(url: str) -> str:
    """``url`` with its password (if any) as ``***``, for messages; by
    pattern, so a URL too broken to parse is masked too."""
    return _PASSWORD.sub(r"\1:***@", url)
