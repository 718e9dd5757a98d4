"""
This process's label cache: the id of every text it announced, packed
lists of them, and the texts held for a retry when the labels lane was
full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from livemon.record import MAX_NAME_BYTES, encode_text, label_id

__all__ = ["MAX_PENDING_LABELS", "LabelCache", "LabelCounts"]

MAX_PENDING_LABELS = 1024
"""Most texts held for a retry; beyond, the oldest is given up."""


class LabelCounts(Protocol):
    """Where a ``LabelCache`` counts texts held and given up."""

    labels_dropped: int
    labels_lost: int


class LabelCache:
    """This process's label ids by text, and packed lists of them.

    A text is announced once (``announce`` stores its label record and
    says whether that worked); one that could not be is held, and
    ``flush`` retries the held texts, oldest first, before later records.

    Attributes:
        ids: label id by name (a non-empty text of at most
            ``MAX_NAME_BYTES``) for every name announced; the hot path
            reads it, so a text held here is always a valid name.
        texts: label id by any other text announced (long, or empty).
        lists: packed id lists by tuple of names, all of them announced.
        pending: texts held for a retry, oldest first (at most
            ``MAX_PENDING_LABELS``).

    These dicts are cleared in place, never replaced: a ``Sink`` holds
    ``ids`` and ``lists`` themselves.
    """

    def __init__(
        self,
        announce: Callable[[str], bool],
        counters: LabelCounts,
        max_texts: int = 100_000,
        max_chars: int = 2**24,
    ) -> None:
        # Threads of one coordinator share the cache: the hot path only
        # reads ``ids`` and ``lists`` (single dict lookups, atomic under
        # the GIL); a new text's announcement and the retries are rare
        # and take the lock, so two threads never hold or drop a text
        # twice.
        self._lock = threading.Lock()
        self.ids: dict[str, int] = {}
        self.texts: dict[str, int] = {}
        self.lists: dict[tuple[str, ...], bytes] = {}
        self.pending: dict[str, None] = {}
        self._announce = announce
        self._counters = counters
        # Texts run to MAX_TEXT_BYTES (4 KiB): bounded by count alone,
        # 100,000 distinct errors would hold ~400 MB; by characters too,
        # the cache stays near 16 Mi characters (and forgets sooner).
        self._max_texts = max_texts
        self._max_chars = max_chars
        self._chars = 0

    def intern(self, text: str) -> int:
        """Return the label id of ``text``, announcing it once."""
        label = self.ids.get(text)
        if label is None:
            label = self.texts.get(text)
        if label is not None:
            return label
        label = label_id(text)
        with self._lock:
            if self._announce(text):
                self.pending.pop(text, None)
                self._remember(text, label)
            elif text not in self.pending:
                self._counters.labels_dropped += 1
                self.pending[text] = None
                if len(self.pending) > MAX_PENDING_LABELS:
                    self.pending.pop(next(iter(self.pending)))
                    self._counters.labels_lost += 1
        return label

    def flush(self) -> None:
        """Announce the held texts until one fails again."""
        with self._lock:
            for text in list(self.pending):
                if not self._announce(text):
                    return
                self.pending.pop(text, None)
                self._remember(text, label_id(text))

    def clear(self) -> None:
        """Forget every text: each is announced again when next used."""
        with self._lock:
            self._forget()
            self.pending.clear()

    def _forget(self) -> None:
        """Empty the caches (the caller holds the lock or is alone)."""
        self.ids.clear()
        self.texts.clear()
        self.lists.clear()
        self._chars = 0

    def after_fork_in_child(self) -> None:
        """Forget every text, with a new lock: a thread of the parent may
        have held the old one at the fork, and it does not exist here."""
        self._lock = threading.Lock()
        self.clear()

    def _remember(self, text: str, label: int) -> None:
        full = len(self.ids) + len(self.texts) >= self._max_texts
        if full or self._chars + len(text) > self._max_chars:
            self._forget()
        self._chars += len(text)
        if text and len(encode_text(text)) <= MAX_NAME_BYTES:
            self.ids[text] = label
        else:
            self.texts[text] = label
