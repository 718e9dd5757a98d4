"""
The label cache: texts held while the labels lane is full are announced
later, once each, by whichever thread writes next.
"""

from __future__ import annotations

import threading

from livemon.labels import LabelCache
from livemon.sink import Counters


class TestHeldLabels:
    def test_threads_flushing_together_announce_once(self):
        """Two request threads flushing the same held text: no error, one
        announcement (they used to race on the held set: KeyError)."""
        counters = Counters()
        announced: list[str] = []
        lane_free = threading.Event()

        def announce(text: str) -> bool:
            if lane_free.is_set():
                announced.append(text)
                threading.Event().wait(0.01)  # let the other thread run
            return lane_free.is_set()

        cache = LabelCache(announce, counters)
        cache.intern("agent_x")  # lane full: held
        lane_free.set()
        errors: list[BaseException] = []

        def flush() -> None:
            try:
                cache.flush()
            except BaseException as exc:  # the bug this test guards
                errors.append(exc)

        threads = [threading.Thread(target=flush) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert announced == ["agent_x"]
        assert cache.pending == {}
        assert "agent_x" in cache.ids
        assert counters.labels_dropped == 1


class TestBounds:
    def test_long_texts_are_bounded_by_characters_too(self):
        """4 KiB error texts, each new: the cache forgets once it holds
        ``max_chars`` characters, not only after ``max_texts`` texts (by
        count alone, 100,000 of them held ~400 MB), and a forgotten text
        is announced again when next used."""
        announced: list[str] = []
        cache = LabelCache(
            lambda t: announced.append(t) is None, Counters(), max_chars=40_000
        )
        texts = [f"{i:04d}" + "e" * 4092 for i in range(25)]
        for text in texts:
            cache.intern(text)
            assert sum(map(len, cache.texts)) <= 40_000
        assert len(cache.texts) < 10
        assert announced == texts
        cache.intern(texts[0])  # forgotten: announced again
        assert announced[-1] == texts[0] and len(announced) == 26
        cache.intern(texts[-1])  # still known: not again
        assert len(announced) == 26
