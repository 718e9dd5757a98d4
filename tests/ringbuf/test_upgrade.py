"""
A rolling upgrade: the previous release (cd12de8) and this one share
rings both ways, and the old one ignores the new header words.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import ringbuf
from tests import previous_release
from tests.ringbuf.records import TEST_DTYPE, intact, make_records

ROOT = pathlib.Path(__file__).resolve().parents[2]

_OLD_WRITES = """
import sys, numpy as np, ringbuf
sys.path.insert(0, sys.argv[2])
from records import TEST_DTYPE, make_records
assert ringbuf.__file__.startswith(sys.argv[3]), ringbuf.__file__
with ringbuf.Ring.attach(sys.argv[1], TEST_DTYPE) as ring:
    writer = ring.writer()
    assert writer.put_many(make_records(1, 0, 3)) == 3
    writer.close()
"""

_OLD_CREATES = """
import sys, ringbuf
sys.path.insert(0, sys.argv[2])
from records import TEST_DTYPE
ringbuf.Ring.create(sys.argv[1], TEST_DTYPE, 2, 16).close()
"""

_OLD_READS = """
import sys, ringbuf
sys.path.insert(0, sys.argv[2])
from records import TEST_DTYPE
with ringbuf.Ring.attach(sys.argv[1], TEST_DTYPE) as ring:
    print(sum(len(ring.pending(i).records) for i in range(ring.lanes)))
"""


@pytest.fixture(scope="module")
def old_release(tmp_path_factory):
    """The previous release's ringbuf package, extracted from git."""
    where = tmp_path_factory.mktemp("old")
    return previous_release.extract(where, "ringbuf")


def run_old(old_release, code: str, name: str) -> str:
    """Run ``code`` with the old ringbuf first on the path."""
    env = {**os.environ, "PYTHONPATH": str(old_release)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            name,
            str(ROOT / "tests" / "ringbuf"),
            str(old_release),
        ],
        cwd=old_release,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestRollingUpgrade:
    """Old and new processes on one ring, in either role."""

    def test_old_producer_on_a_new_ring(self, make_ring, old_release):
        """An old producer writes into a ring this release created."""
        ring = make_ring(TEST_DTYPE, lanes=2, capacity=16)
        ring.retire()  # a word the old release does not know: ignored
        run_old(old_release, _OLD_WRITES, ring.name)
        batch = next(
            b for b in (ring.pending(i) for i in range(2)) if len(b.records)
        )
        assert intact(batch.records)
        assert np.array_equal(batch.records, make_records(1, 0, 3))

    def test_new_producer_on_an_old_ring(self, ring_name, old_release):
        """This release attaches to and writes into an old ring."""
        run_old(old_release, _OLD_CREATES, ring_name)
        with ringbuf.Ring.attach(ring_name, TEST_DTYPE) as ring:
            writer = ring.writer()
            assert writer.put_many(make_records(2, 0, 4)) == 4
            with pytest.raises(ringbuf.LanesExhausted):
                [ring.writer(), ring.writer()]
            assert ring.refused_claims == 1
            assert run_old(old_release, _OLD_READS, ring_name) == "4\n"
            writer.close()
