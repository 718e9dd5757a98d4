"""
Settings shared by coordinators and the daemon, so both find the same ring.

Each setting comes from, in order: an explicit argument (a CLI flag), the
``LIVEMON_<NAME>`` environment variable, the TOML file named by ``config`` or
``LIVEMON_CONFIG`` (keys at top level or under ``[livemon]``), the default.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any

from livemon.config_file import read_file
from livemon.endpoints import Endpoint, hide_password, parse_address
from livemon.exceptions import ConfigError
from ringbuf import (
    MAX_CAPACITY_RECORDS,
    MAX_LANES,
    RingNameError,
    validate_name,
)

DB_FILENAME = "unified_monitoring.db"
LABELS_RING_SUFFIX = ".labels"  # livemon.ipc names the rings
FEEDBACK_RING_SUFFIX = ".feedback"
AGENTS_RING_SUFFIX = ".agents"
SYSTEM_STATE_DIR = pathlib.Path("/var/lib/livemon")
"""The system service's ``StateDirectory=`` (systemd/livemon-daemon.service).
"""
_LONGEST = {
    "batch_interval_s": 60.0,
    "health_interval_s": 86400.0,
    "integrity_check_interval_s": 366 * 86400.0,
    "retention_days": 36500.0,
}
"""The durations' upper bounds: beyond, a typo (inf overflows the
daemon's waits and date arithmetic)."""
MAX_GID = 2**32 - 2  # (gid_t)-1 means "unchanged" to chown
MIN_BATCH_BYTES = 64 * 2**10  # *_batch_bytes: smaller is a typo, not a plan
MAX_BATCH_BYTES = 2**30


def dir_mode(file_mode: int) -> int:
    """A directory's permission bits for files of ``file_mode``: its bits
    plus x beside each r (a group that may read the files must be able to
    enter the directory)."""
    return file_mode | ((file_mode & 0o444) >> 2)


def default_state_dir(env: Mapping[str, str] = os.environ) -> pathlib.Path:
    """Where the database lives by default.

    systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``) when run by it,
    else ``$XDG_STATE_HOME/livemon``, else ``~/.local/state/livemon``.
    """
    if env.get("STATE_DIRECTORY"):
        return pathlib.Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return pathlib.Path(base) / "livemon"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every livemon setting, validated.

    Attributes:
        ring: shared-memory ring name (events; labels use ``<ring>.labels``).
        db: path of the unified SQLite database.
        lanes: producer processes that can write at once.
        capacity_records: event slots per lane.
        label_capacity_records: label slots per lane.
        group_access: make the ring and database group read-writable
            (implied by ``group``).
        group: the group (name or number) that may share the ring and
            read the database; empty: owner-only.
        synchronous: SQLite ``synchronous`` mode, NORMAL or FULL.
        batch_records: most records the daemon commits in one transaction.
        batch_interval_s: longest the daemon waits before committing.
        db_min_free_bytes: free space the database's filesystem must keep
            beyond the WAL before the daemon adds to the database: room for
            a transaction and for the checkpoint after it (at least twice
            the WAL one transaction of ``batch_records`` writes).
        health_interval_s: how often the daemon writes a health row.
        pidfile: the daemon's pidfile (default ``<db>.pid``: one per
            database, so two databases in a directory never mix up).
        log_file: the daemon's log file when detached (``<db>.log``).
        status_file: where the daemon publishes its figures (default
            ``<db>.status.json``, or ``<pidfile>.status.json`` when the
            pidfile is configured).
        integrity_check_interval_s: how often the daemon runs SQLite's
            ``quick_check`` on the database while it runs.
        retention_days: events older than this move to monthly archives.
        archive_dir: where those archives go (default: archive/ beside
            the database).
        spill: a full lane's records go to spill files (else dropped).
        spill_dir: the spill root (default: spill/ beside the database).
        spill_segment_bytes: size of one spill segment file.
        spill_lane_cap_bytes: most spill bytes one lane may hold.
        spill_total_cap_bytes: most spill bytes in all.
        spill_min_free_bytes: free space a new segment must leave.
        spill_sync_interval_ms: longest a spilled record waits for msync
            (0: the kernel's writeback).
        metrics_address: serve Prometheus metrics on this loopback
            ``HOST:PORT`` (``remote:HOST:PORT`` for any address, on
            purpose); empty: off.
        host: this machine's name in shared destinations (default the
            host name); it keeps hosts apart in ClickHouse.
        clickhouse_url: ship events and agent runs to this ClickHouse
            database (``clickhouse://host:9000/livemon``); empty: off.
        otlp_endpoint: OTLP/HTTP collector base URL; traces go to its
            ``/v1/traces`` (empty: off).
        alert_webhook_url: where alerts and adjustments are POSTed
            (empty: off).
        alert_webhook_format: ``auto`` (by URL), ``slack``,
            ``alertmanager`` or ``json``.
        clickhouse_batch_bytes: the estimated size (texts' lengths) at
            which a batch forwarded to ClickHouse stops.
        otlp_batch_bytes: the same for OTLP (below a collector's usual
            4 MiB body limit).
    """

    ring: str = "livemon"
    db: str = ""
    lanes: int = 64
    capacity_records: int = 16384
    label_capacity_records: int = 512
    group_access: bool = False
    group: str = ""
    synchronous: str = "NORMAL"
    batch_records: int = 20000
    batch_interval_s: float = 0.25
    db_min_free_bytes: int = 128 * 2**20
    health_interval_s: float = 5.0
    pidfile: str = ""
    log_file: str = ""
    status_file: str = ""
    integrity_check_interval_s: float = 3600.0
    retention_days: float = 90.0
    archive_dir: str = ""
    spill: bool = True
    spill_dir: str = ""
    spill_segment_bytes: int = 4 * 2**20
    spill_lane_cap_bytes: int = 512 * 2**20
    spill_total_cap_bytes: int = 2 * 2**30
    spill_min_free_bytes: int = 128 * 2**20
    spill_sync_interval_ms: int = 500
    # Prometheus metrics (daemon/metrics.py).
    metrics_address: str = ""
    # Forwarding to shared destinations (daemon/forward.py, daemon/sinks).
    host: str = ""
    clickhouse_url: str = ""
    # OTLP traces and alert webhooks (issue 17: daemon/sinks/otlp, webhook)
    otlp_endpoint: str = ""
    alert_webhook_url: str = ""
    alert_webhook_format: str = "auto"
    # Forwarded batches bounded in bytes too (daemon/forward.py, sinks).
    clickhouse_batch_bytes: int = 8 * 2**20
    otlp_batch_bytes: int = 3 * 2**20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            text = getattr(self, field.name)
            if isinstance(text, str) and "\0" in text:  # no path holds one
                raise ConfigError(f"{field.name} holds a NUL character")
        try:
            # The longest name made from it must be valid too.
            validate_name(self.ring + FEEDBACK_RING_SUFFIX)
        except RingNameError as exc:
            raise ConfigError(
                f"ring {self.ring!r}: {exc} (with its {FEEDBACK_RING_SUFFIX!r}"
                " ring)"
            ) from exc
        for name, low in (
            ("lanes", 1),
            ("capacity_records", 2),
            ("label_capacity_records", 2),
            ("batch_records", 1),
            ("db_min_free_bytes", 0),
        ):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}")
        for name, high in (
            ("lanes", MAX_LANES),
            ("capacity_records", MAX_CAPACITY_RECORDS),
            ("label_capacity_records", MAX_CAPACITY_RECORDS),
        ):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be at most {high}")
        self.gid  # noqa: B018  an unknown group is misconfiguration: now
        self._check_spill()
        self._check_forwarding()
        for name, most in _LONGEST.items():
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
            if not getattr(self, name) <= most:  # inf overflows timeouts
                raise ConfigError(f"{name} must be at most {most:g}")
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ConfigError("synchronous must be NORMAL or FULL")
        if not self.db:
            raise ConfigError(
                "db is empty: give a path, or use load_config(), which "
                "fills in the default"
            )
        db_dir = pathlib.Path(self.db).parent
        if not self.status_file:
            # Beside an explicit pidfile, as before per-database defaults.
            beside = self.pidfile or self.db
            object.__setattr__(self, "status_file", beside + ".status.json")
        if not self.pidfile:
            object.__setattr__(self, "pidfile", self.db + ".pid")
        if not self.log_file:
            object.__setattr__(self, "log_file", self.db + ".log")
        if not self.archive_dir:
            object.__setattr__(self, "archive_dir", str(db_dir / "archive"))
        self._check_sink_urls()

    def _check_spill(self) -> None:
        segment = self.spill_segment_bytes
        if not 64 * 2**10 <= segment <= 2**31:
            raise ConfigError("spill_segment_bytes must be 64 KiB to 2 GiB")
        if self.spill_lane_cap_bytes < segment:
            raise ConfigError(
                "spill_lane_cap_bytes must be at least spill_segment_bytes"
            )
        if self.spill_total_cap_bytes < self.spill_lane_cap_bytes:
            raise ConfigError(
                "spill_total_cap_bytes must be at least spill_lane_cap_bytes"
            )
        if self.spill_min_free_bytes < 0:
            raise ConfigError("spill_min_free_bytes must be at least 0")
        if not 0 <= self.spill_sync_interval_ms <= 60_000:
            raise ConfigError("spill_sync_interval_ms must be 0 to 60000")

    def _check_forwarding(self) -> None:
        if not self.host:
            object.__setattr__(self, "host", os.uname().nodename)
        if len(self.host) > 255 or not self.host.isprintable():
            raise ConfigError(
                "host must be printable and at most 255 characters"
            )
        if self.clickhouse_url and not _is_clickhouse_url(self.clickhouse_url):
            raise ConfigError(
                f"clickhouse_url {hide_password(self.clickhouse_url)!r} is "
                "not a ClickHouse "
                "URL: write clickhouse://[USER:PASSWORD@]HOST[:9000]/DATABASE "
                "(clickhouses:// for TLS; the database name of letters, "
                "digits and _)"
            )
        for name in ("clickhouse_batch_bytes", "otlp_batch_bytes"):
            if not MIN_BATCH_BYTES <= getattr(self, name) <= MAX_BATCH_BYTES:
                raise ConfigError(
                    f"{name} must be 64 KiB to 1 GiB ({MIN_BATCH_BYTES} to "
                    f"{MAX_BATCH_BYTES}): the size at which one forwarded "
                    "batch stops; leave it unset for the default"
                )

    def _check_sink_urls(self) -> None:
        for name in ("otlp_endpoint", "alert_webhook_url"):
            url = getattr(self, name)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{name} {url!r} must be an http:// or https:// URL, "
                    "e.g. http://127.0.0.1:4318 (empty: off)"
                )
            try:  # what the sink would refuse in the detached daemon
                if url:
                    Endpoint.parse(url, name, name == "alert_webhook_url")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        parse_address(self.metrics_address)
        formats = ("auto", "slack", "alertmanager", "json")
        if self.alert_webhook_format not in formats:
            raise ConfigError(f"alert_webhook_format must be one of {formats}")

    @property
    def mode(self) -> int:
        """Permission bits for the ring, lock files, database, logs."""
        return 0o660 if self.group_access or self.group else 0o600

    @property
    def gid(self) -> int | None:
        """The numeric id of ``group``; None when it is empty.

        Raises:
            ConfigError: no such group on this machine.
        """
        if not self.group:
            return None
        if self.group.isascii() and self.group.isdigit():  # not '٣'
            if int(self.group) > MAX_GID:
                raise ConfigError(
                    f"group {self.group}: a group number is at most {MAX_GID}"
                )
            return int(self.group)
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ConfigError(
                f"group {self.group!r} does not exist here: create it "
                "(groupadd, or systemd/livemon.sysusers.conf) or set "
                "LIVEMON_GROUP to an existing group"
            ) from None


def _is_clickhouse_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018  not a number or out of range: raises
    except ValueError:
        return False
    database = parts.path.strip("/")
    return (
        parts.scheme in ("clickhouse", "clickhouses")
        and bool(parts.hostname)
        and (not database or database.replace("_", "a").isalnum())
        and not database[:1].isdigit()
        and database.isascii()
    )


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    find_system: bool = False,
) -> Config:
    """Resolve every setting: overrides, then environment, file, default.

    Args:
        overrides: explicit values (None means "not given"); the key
            ``config`` names a TOML file.
        env: the environment to read ``LIVEMON_*`` from.
        find_system: for commands that look at a running instance (status,
            reports): when no database is named and the user's default
            holds none, use the system service's (``SYSTEM_STATE_DIR``)
            if it exists.  A root shell then finds the service's daemon.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, an
            unreadable or invalid TOML file; the message names it.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in ("db", "config"):  # else the default, silently
        if given.get(name) == "":
            raise ConfigError(
                f"{name} is empty (--{name} ''): name a file, or leave it "
                "out for the default"
            )
    path = given.pop("config", None) or env.get("LIVEMON_CONFIG")
    values: dict[str, Any] = read_file(path, _FIELDS) if path else {}
    for name in _FIELDS:
        raw = env.get("LIVEMON_" + name.upper())
        if raw is not None and raw != "":
            values[name] = _from_text(name, raw)
    for name, value in given.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = value
    for name, value in values.items():
        _check_type(name, value)
    if not values.get("db"):
        values["db"] = str(default_state_dir(env) / DB_FILENAME)
        system = SYSTEM_STATE_DIR / DB_FILENAME
        if (
            find_system
            and not os.path.exists(values["db"])
            and system.exists()
        ):
            values["db"] = str(system)
    return Config(**values)


def _from_text(name: str, raw: str) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"LIVEMON_{name.upper()}={raw!r} is not a valid {kind}"
        ) from None
    return raw


def _check_type(name: str, value: Any) -> None:
    kind = _FIELDS[name].type
    expected: tuple[type, ...] = {
        "bool": (bool,),
        "int": (int,),
        "float": (int, float),
        "str": (str,),
    }[str(kind)]
    if not isinstance(value, expected) or (
        kind != "bool" and isinstance(value, bool)
    ):
        raise ConfigError(
            f"{name} must be a {kind}, not {type(value).__name__}"
        )
