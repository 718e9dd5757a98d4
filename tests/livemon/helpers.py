"""
Reading back what a Monitor wrote: events and label texts from the rings.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import ringbuf
from livemon.record import LABEL_DTYPE, RECORD_DTYPE


def labels_in(ring_name: str) -> dict[int, str]:
    """Every label text published in the labels ring, by id."""
    texts = {}
    with ringbuf.Ring.attach(ring_name + ".labels", LABEL_DTYPE) as ring:
        for lane in range(ring.lanes):
            for record in ring.pending(lane).records:
                raw = record["text"][: record["length"]].tobytes()
                texts[int(record["label_id"])] = raw.decode()
    return texts


def events_in(ring_name: str) -> npt.NDArray[np.void]:
    """Every event record pending in the events ring, lane by lane."""
    with ringbuf.Ring.attach(ring_name, RECORD_DTYPE) as ring:
        parts = [ring.pending(lane).records for lane in range(ring.lanes)]
    return np.concatenate(parts)


def names(ids: npt.NDArray[np.int64], labels: dict[int, str]) -> list[str]:
    """The texts of a padded list of label ids."""
    return [labels[int(i)] for i in ids if i]
