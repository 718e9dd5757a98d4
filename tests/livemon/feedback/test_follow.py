"""
The leader reads only what a ring gained since its last look (real shared
memory): busy lanes beyond its usual step, lapped lanes counted as missed,
a replaced ring followed.
"""

from __future__ import annotations

import numpy as np

from livemon import ipc
from livemon.config import load_config
from livemon.feedback.follow import RingFollower
from livemon.record import RECORD_DTYPE


def records(count, start=0):
    out = np.zeros(count, RECORD_DTYPE)
    out["request_id"] = np.arange(start, start + count)
    out["timestamp_ns"] = out["request_id"] + 1
    return out


def setup(ring_name, capacity=4096):
    config = load_config(
        {"ring": ring_name, "lanes": 4, "capacity_records": capacity}
    )
    spec = ipc.events_ring(config)
    ring = ipc.open_ring(config, spec)
    return ring, [ring.writer() for _ in range(2)], spec


def ids(batch):
    return sorted(batch["request_id"].tolist())


def test_reads_each_record_once_whatever_the_lane(ring_name):
    """The warm read takes history; then only what is new, even a burst
    far beyond the usual step."""
    ring, (w0, w1), spec = setup(ring_name)
    w0.put_many(records(10))
    follower = RingFollower(spec, warm_per_lane=2048)
    assert ids(follower.read()) == list(range(10))
    assert len(follower.read()) == 0
    w1.put_many(records(5, start=10))
    w0.put_many(records(1000, start=15))  # far more than one step
    assert ids(follower.read()) == list(range(1015))[10:]
    assert follower.missed == 0
    follower.close()
    for w in (w0, w1):
        w.close()
    ring.close()


def test_a_lapped_lane_counts_what_it_lost(ring_name):
    """More new records than the lane holds: the rest counted missed."""
    ring, (w0, w1), spec = setup(ring_name, capacity=64)
    follower = RingFollower(spec, warm_per_lane=64)
    follower.read()
    for start in range(0, 300, 50):
        w0.put_many(records(50, start=start))
        ring.advance(w0.lane, ring.lane_state(w0.lane).head)  # drained
    got = follower.read()
    assert 0 < len(got) < 64
    assert follower.missed + len(got) == 300
    assert ids(got) == list(range(300 - len(got), 300))
    follower.close()
    for w in (w0, w1):
        w.close()
    ring.close()


def test_follows_a_replaced_ring(ring_name):
    """The ring unlinked and recreated: the new one is read from its
    start, except what producers carried over from the old one."""
    ring, (w0, w1), spec = setup(ring_name)
    follower = RingFollower(spec, warm_per_lane=2048)
    w0.put_many(records(20))
    assert len(follower.read()) == 20
    for w in (w0, w1):
        w.close()
    ring.unlink()
    ring.close()
    ring, (w0, w1), spec = setup(ring_name)
    w0.put_many(records(5, start=15))  # carried over: read already
    w1.put_many(records(3, start=100))
    assert ids(follower.read()) == [100, 101, 102]
    follower.close()
    for w in (w0, w1):
        w.close()
    ring.close()
