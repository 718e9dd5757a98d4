"""
A property of the forwarder: whatever the destination refuses and
whenever rows arrive, every outbox row reaches it, at least once, in
ascending id order per batch, and the stored mark ends at the last id.
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.forward import Backoff, DestinationError, read_marks
from daemon.forwarding import Forwarding
from daemon.store import Store
from tests.daemon.sinks.conftest import Recording, event_batch, label_batch


class Flaky(Recording):
    """Refuses the calls whose number is in ``refusals`` (a drawn plan)."""

    def __init__(self, refusals: set[int]) -> None:
        super().__init__()
        self.refusals = refusals

    def ship(self, source, rows) -> None:
        if self.attempts in self.refusals:
            self.attempts += 1
            raise DestinationError("refused by plan")
        super().ship(source, rows)


@settings(max_examples=15)
@given(
    waves=st.lists(st.integers(1, 120), min_size=1, max_size=4),
    batch_rows=st.integers(1, 70),
    refusals=st.sets(st.integers(0, 30), max_size=10),
)
def test_every_row_arrives_whatever_is_refused(
    tmp_path_factory, waves, batch_rows, refusals
):
    """Rows written in waves, batches of any size, refusals anywhere."""
    path = str(tmp_path_factory.mktemp("property") / "u.db")
    store = Store(path)
    store.write(1, [label_batch("coding", "coder")], [])
    dest = Flaky(refusals)
    group = Forwarding(
        path,
        [dest],
        batch_rows=batch_rows,
        backoff=Backoff(base_s=0.001, cap_s=0.004),
        idle_s=0.005,
    )
    group.start()
    try:
        seq = 0
        for lane, count in enumerate(waves):
            store.write(1, [], [event_batch(count, lane=lane, first_seq=seq)])
            seq += count
        total = sum(waves)
        deadline = time.monotonic() + 30
        while len(set(dest.ids())) < total:
            assert time.monotonic() < deadline, "rows never arrived"
            time.sleep(0.002)
        assert group.stop(5.0)
        group.save(store)
        ids = [r[0] for r in store.db.execute("SELECT id FROM events")]
        assert sorted(set(dest.ids())) == sorted(ids)
        for rows in dest.shipped["events"]:
            assert rows.columns["id"] == sorted(rows.columns["id"])
            assert len(rows) <= batch_rows
        assert read_marks(store.db, "recording") == {"events": max(ids)}
    finally:
        group.stop(5.0)
        store.close()
