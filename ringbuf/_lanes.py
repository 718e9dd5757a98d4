"""
The view of a mapped ring that the consumer (Ring) and the producers
(RingWriter) share: segment, geometry, record dtype and the lanes' slots.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ringbuf import _lanelock, _layout, _shm
from ringbuf._layout import Geometry
from ringbuf.exceptions import LaneIndexError, RingClosed


class Lanes:
    """A mapped ring's lanes, as slot arrays and header words.

    Attributes:
        name: the ring's name.
        dtype: the record dtype.
        geometry: the segment's shape.
        raw: ``V<record_bytes>``, the dtype slots are copied as.
        segment: the mapping; closing it ends every use of this object.
        group: the gid trusted besides ours, as given to create/attach.
    """

    def __init__(
        self,
        segment: _shm.Segment,
        dtype: np.dtype[np.void],
        geometry: Geometry,
        group: int | None,
    ) -> None:
        self.name = segment.name
        self.group = group
        self.segment = segment
        self.dtype = dtype
        self.geometry = geometry
        # Slots as opaque fixed-size bytes: numpy copies those with one
        # memcpy, where a structured dtype with sub-arrays is copied field
        # by field (measured ~15x slower for livemon's record).
        self.raw = np.dtype(f"V{geometry.record_bytes}")
        # These arrays do not pin the mapping (numpy takes no buffer
        # export): close() must drop them before the segment is unmapped.
        self._slots = [
            np.ndarray(
                (geometry.capacity_records,),
                self.raw,
                segment.buf,
                geometry.slots_offset(lane),
            )
            for lane in range(geometry.lanes)
        ]

    @property
    def closed(self) -> bool:
        """True once the mapping is closed."""
        return self.segment.closed

    def close(self) -> None:
        """Drop the slot arrays, then unmap. Idempotent."""
        self._slots = []
        self.segment.close()

    def closed_error(self) -> RingClosed:
        """The error to raise for a use after ``close()``."""
        return RingClosed(
            f"ring {self.name!r} is closed: attach to it again to use it"
        )

    def open_lock_file(self) -> int:
        """Open the ring's lock file, recreating it like the segment if gone.

        Raises:
            RingUntrusted: a symlink, or a file another user may own.
        """
        return _lanelock.open_file(
            _layout.lock_path(self.name),
            self.segment.mode,
            self.segment.gid if self.group is not None else None,
            allowed_group=self.group,
        )

    def words(self) -> memoryview:
        """The u64 view of the whole segment.

        Raises:
            RingClosed: the ring was closed.
        """
        words = self.segment.words
        if words is None:
            raise self.closed_error()
        return words

    def buf(self) -> memoryview:
        """The byte view of the whole segment.

        Raises:
            RingClosed: the ring was closed.
        """
        buf = self.segment.buf
        if buf is None:
            raise self.closed_error()
        return buf

    def slots(self, lane: int) -> npt.NDArray[np.void]:
        """A lane's slots, as ``raw`` records (index with ``seq % cap``).

        Raises:
            RingClosed: the ring was closed.
        """
        if self.closed:
            raise self.closed_error()
        return self._slots[lane]

    def lane_word(self, lane: int) -> int:
        """Index in ``words()`` of a lane's first header word.

        Raises:
            LaneIndexError: no such lane.
        """
        if not 0 <= lane < self.geometry.lanes:
            raise LaneIndexError(
                f"lane {lane} out of range 0..{self.geometry.lanes - 1}"
            )
        return self.geometry.lane_offset(lane) // 8

    def copy_into(
        self, out: npt.NDArray[np.void], lane: int, low: int, high: int
    ) -> None:
        """Copy seqs ``low..high-1`` of a lane, raw, to the head of ``out``.

        Raises:
            RingClosed: the ring was closed.
        """
        slots = self.slots(lane)
        cap = self.geometry.capacity_records
        start, count = low % cap, high - low
        first = min(count, cap - start)
        out[:first] = slots[start : start + first]
        out[first:count] = slots[: count - first]

    def records(self, lane: int, low: int, high: int) -> npt.NDArray[np.void]:
        """Return a copy of seqs ``low..high-1`` of a lane, in the dtype."""
        out = np.empty(high - low, self.raw)
        self.copy_into(out, lane, low, high)
        return out.view(self.dtype)

    def recent(
        self, per_lane: int
    ) -> tuple[
        npt.NDArray[np.void], npt.NDArray[np.uint32], npt.NDArray[np.uint64]
    ]:
        """Copy up to ``per_lane`` most recent records of every lane.

        Returns:
            (records, lanes, seqs): the dtype [n], uint32[n], uint64[n],
            without the slots a producer may have overwritten meanwhile.

        Raises:
            RingClosed: the ring was closed.
        """
        cap = self.geometry.capacity_records
        step = _layout.publish_step(cap)
        w = self.words()
        # One output array: fresh pages cost a fault each, so allocating
        # per lane and concatenating would more than double the time.
        out = np.empty(self.geometry.lanes * min(per_lane, cap), self.raw)
        lane_of = np.empty(len(out), np.uint32)
        seqs = np.empty(len(out), np.uint64)
        size = 0
        for lane in range(self.geometry.lanes):
            head_word = self.lane_word(lane) + _layout.L_HEAD
            head = w[head_word]
            low = max(head - min(per_lane, cap), 0)
            self.copy_into(out[size:], lane, low, head)
            # Re-read head after the copy: x86-64 keeps load->load order,
            # so it is at least the head of any slot bytes we copied.  A
            # producer now at head' may be writing seqs up to head' +
            # step - 1 (put_many publishes every step slots; put, every
            # one) into the slots of seqs from head' + step - cap: keep only
            # seqs it cannot have touched.  (A lapped copy keeps nothing.)
            touched = w[head_word] + step - cap
            first_safe = min(head, max(low, touched))
            kept = head - first_safe
            if first_safe > low:
                skip = size + first_safe - low
                out[size : size + kept] = out[skip : skip + kept].copy()
            lane_of[size : size + kept] = lane
            seqs[size : size + kept] = np.arange(first_safe, head)
            size += kept
        records = out[:size].view(self.dtype)
        return records, lane_of[:size], seqs[:size]
