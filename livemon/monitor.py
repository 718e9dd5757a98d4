"""
The coordinator's side: a ``Monitor`` per process, one ``RequestContext`` per
request, one fixed-width record written into the ring when it ends.

Nothing here raises into a request unless ``strict=True``: failures are
counted in ``Monitor.counters``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
import time
import weakref

import ringbuf
from livemon import ipc
from livemon import record as rec
from livemon.config import Config, load_config
from livemon.context import RequestContext
from livemon.exceptions import MonitoringUnavailable

_MAX_CACHED_LABELS = 100_000
_RETRY_RING_S = 5.0


@dataclasses.dataclass
class Counters:
    """What happened to this process's monitoring, never reset.

    Attributes:
        recorded: records stored in the ring.
        dropped: records lost because the lane was full.
        invalid: field values refused and stored as unknown.
        unavailable: records lost because no ring could be reached.
        failed: records lost to any other monitoring error.
        labels_dropped: label texts not stored (lane full); retried later.
    """

    recorded: int = 0
    dropped: int = 0
    invalid: int = 0
    unavailable: int = 0
    failed: int = 0
    labels_dropped: int = 0


class Monitor:
    """Records requests of this process into the shared ring.

    Args:
        ring: ring name; else ``config``, ``LIVEMON_RING``, the config
            file, the default ``livemon``.
        config: a resolved ``Config`` (overrides ``ring``'s lookup).
        strict: raise typed errors instead of counting failures.

    Raises:
        ConfigError: the settings are wrong (always raised: it is
            misconfiguration, found at construction).
        MonitoringUnavailable: (strict) the ring cannot be opened.
    """

    _events: ringbuf.RingWriter | None = None
    _labels: ringbuf.RingWriter | None = None
    _rings: tuple[ringbuf.Ring, ringbuf.Ring] | None = None

    def __init__(
        self,
        ring: str | None = None,
        *,
        config: Config | None = None,
        strict: bool = False,
    ) -> None:
        self.config = config or load_config({"ring": ring})
        self.strict = strict
        self.counters = Counters()
        self._label_ids: dict[str, int] = {}
        self._list_bytes: dict[tuple[str, ...], bytes] = {}
        self._retry_at = 0.0
        self._reset_identity()
        self._connect()
        method = weakref.WeakMethod(self._after_fork_in_child)

        def reinit() -> None:
            bound = method()
            if bound is not None:
                bound()

        os.register_at_fork(after_in_child=reinit)

    def request(
        self, query: str, *, category: str | None = None
    ) -> RequestContext:
        """Start monitoring one request.

        Use it as ``with monitor.request(q) as ctx:``, or, when the
        completion arrives in a callback, ``ctx = monitor.request(q)``
        and later ``ctx.end()``.

        Args:
            query: the user's query; only its hash is stored.
            category: the query's category, if known before classification.
        """
        return RequestContext(self, query, category)

    @property
    def available(self) -> bool:
        """Whether records currently reach a ring."""
        return self._events is not None

    def intern(self, text: str) -> int:
        """Return the label id of ``text``, announcing it once per process."""
        label = self._label_ids.get(text)
        if label is not None:
            return label
        label = rec.label_id(text)
        if self._labels is not None and self._put_label(text):
            if len(self._label_ids) >= _MAX_CACHED_LABELS:
                self._forget_labels()
            self._label_ids[text] = label
        return label

    def close(self) -> None:
        """Give back this process's lanes and detach. Idempotent."""
        for writer in (self._events, self._labels):
            if writer is not None:
                writer.close()
        self._events = self._labels = None
        if self._rings is not None:
            for ring in self._rings:
                ring.close()
            self._rings = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------

    def _write(self, packed: bytes) -> bool:
        events = self._events
        if events is None and not self._reconnect():
            self.counters.unavailable += 1
            return False
        try:
            stored = events.put(packed)  # type: ignore[union-attr]
        except (ringbuf.RingError, ValueError, OSError) as exc:
            self.counters.failed += 1
            if self.strict:
                raise MonitoringUnavailable(
                    f"cannot write to ring {self.config.ring!r}: {exc}"
                ) from exc
            return False
        if stored:
            self.counters.recorded += 1
            return True
        self.counters.dropped += 1
        if self.strict:
            raise MonitoringUnavailable(
                f"ring {self.config.ring!r} lane is full: is livemon-daemon "
                "running? (or raise capacity_records)"
            )
        return False

    def _put_label(self, text: str) -> bool:
        try:
            stored = self._labels.put(rec.label_record(text))  # type: ignore[union-attr]
        except (ringbuf.RingError, ValueError, OSError):
            stored = False
        if not stored:
            self.counters.labels_dropped += 1
        return stored

    def _connect(self) -> None:
        try:
            rings = ipc.open_rings(self.config)
        except (ringbuf.RingError, OSError) as exc:
            if self.strict:
                raise MonitoringUnavailable(
                    f"cannot open ring {self.config.ring!r}: {exc}"
                ) from exc
            self._retry_at = time.monotonic() + _RETRY_RING_S
            return
        try:
            self._events = rings[0].writer()
            self._labels = rings[1].writer()
        except ringbuf.RingError as exc:
            for ring in rings:
                ring.close()
            self._events = self._labels = None
            if self.strict:
                raise MonitoringUnavailable(str(exc)) from exc
            self._retry_at = time.monotonic() + _RETRY_RING_S
            return
        self._rings = rings

    def _reconnect(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        self.close()
        self._connect()
        return self._events is not None

    def _reset_identity(self) -> None:
        self.pid = os.getpid()
        self._request_ids = itertools.count((secrets.randbits(31) << 32) + 1)

    def _after_fork_in_child(self) -> None:
        # The child writes from its own lane; its labels are announced anew
        # so that nothing depends on records of the parent's lane.
        self._reset_identity()
        self._forget_labels()

    def _forget_labels(self) -> None:
        self._label_ids.clear()
        self._list_bytes.clear()
