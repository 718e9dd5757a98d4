"""
Every shared surface of one configuration, in one place: the rings
(events, labels, feedback, agents: their names, record dtypes, capacities
and group), the feedback decisions segment, the spill root and its
writers' options, and the file where the daemon publishes its figures.
Coordinators, the daemon and the views all open them through here, so
they always agree.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

import ringbuf
from livemon import record as rec
from livemon.config import (
    AGENTS_RING_SUFFIX,
    FEEDBACK_RING_SUFFIX,
    LABELS_RING_SUFFIX,
    Config,
)
from livemon.config_file import read_regular
from livemon.feedback.decisions import verdicts_name
from livemon.spill.lane import default_spill_dir

FEEDBACK_CAPACITY_RECORDS = 1024


@dataclasses.dataclass(frozen=True)
class RingSpec:
    """One ring of a configuration: its name, record dtype and lane size."""

    name: str
    dtype: np.dtype[np.void]
    capacity_records: int
    group: int | None = None  # the configured group's gid, if any


def events_ring(config: Config) -> RingSpec:
    """The ring of request records."""
    return RingSpec(
        config.ring, rec.RECORD_DTYPE, config.capacity_records, config.gid
    )


def labels_ring(config: Config) -> RingSpec:
    """The ring that carries label texts, drained before the events."""
    return RingSpec(
        config.ring + LABELS_RING_SUFFIX,
        rec.LABEL_DTYPE,
        config.label_capacity_records,
        config.gid,
    )


def agents_ring(config: Config) -> RingSpec:
    """The ring of agent runs, one record per agent a request ran."""
    return RingSpec(
        config.ring + AGENTS_RING_SUFFIX,
        rec.AGENT_RUN_DTYPE,
        config.capacity_records,
        config.gid,
    )


def feedback_ring(config: Config) -> RingSpec:
    """The ring that carries the feedback loop's actions and alerts."""
    return RingSpec(
        config.ring + FEEDBACK_RING_SUFFIX,
        rec.FEEDBACK_DTYPE,
        FEEDBACK_CAPACITY_RECORDS,
        config.gid,
    )


def all_rings(config: Config) -> tuple[RingSpec, RingSpec, RingSpec]:
    """Every ring of ``config``: events, labels, feedback."""
    return events_ring(config), labels_ring(config), feedback_ring(config)


def every_ring(config: Config) -> tuple[RingSpec, ...]:
    """Every ring of ``config``, the agents ring too: events, labels,
    feedback, agents (``all_rings`` keeps the first three, which the
    daemon opens together)."""
    return (*all_rings(config), agents_ring(config))


def segments(config: Config) -> tuple[str, ...]:
    """The name of every shared-memory segment ``config`` uses: each
    ring's, then the feedback decisions segment (``<ring>.verdicts``).

    ``ringbuf.unlink`` removes each with its lock file.
    """
    return (
        *(spec.name for spec in every_ring(config)),
        verdicts_name(config),
    )


def open_ring(config: Config, spec: RingSpec) -> ringbuf.Ring:
    """Attach to ring ``spec``, creating it with ``config``'s geometry.

    Raises:
        ringbuf.RingError: it exists with another layout, or is damaged.
        OSError: shared memory cannot be opened (permissions, limits).
    """
    return ringbuf.Ring.open(
        spec.name,
        spec.dtype,
        config.lanes,
        spec.capacity_records,
        mode=config.mode,
        group=spec.group,
    )


def attach_ring(spec: RingSpec) -> ringbuf.Ring:
    """Attach to an existing ring ``spec`` (readers never create one).

    Raises:
        ringbuf.RingNotFound: no such ring exists.
        ringbuf.RingError: it has another layout, or is damaged.
    """
    return ringbuf.Ring.attach(spec.name, spec.dtype, group=spec.group)


def open_ring_created(
    config: Config, spec: RingSpec
) -> tuple[ringbuf.Ring, bool]:
    """``open_ring``, and whether this call created the ring.

    A daemon refused at start removes what it created, and only that.
    """
    try:
        return attach_ring(spec), False
    except ringbuf.RingNotFound:
        pass
    try:
        ring = ringbuf.Ring.create(
            spec.name,
            spec.dtype,
            config.lanes,
            spec.capacity_records,
            mode=config.mode,
            group=spec.group,
        )
    except ringbuf.RingExists:
        return attach_ring(spec), False
    return ring, True


def open_rings(config: Config) -> tuple[ringbuf.Ring, ringbuf.Ring]:
    """Attach to (or create) the events ring and the labels ring."""
    events = open_ring(config, events_ring(config))
    try:
        labels = open_ring(config, labels_ring(config))
    except BaseException:
        events.close()
        raise
    return events, labels


def geometry_mismatch(
    config: Config, rings: tuple[ringbuf.Ring, ringbuf.Ring]
) -> str | None:
    """What differs between the events and labels rings and ``config``.

    An existing ring keeps the geometry it was created with; None when
    both match the config.
    """
    wanted = (
        (config.lanes, config.capacity_records),
        (config.lanes, config.label_capacity_records),
    )
    found = [
        f"ring {ring.name!r} has {ring.lanes} lanes of "
        f"{ring.capacity_records} records, the config says {lanes} of "
        f"{capacity}"
        for ring, (lanes, capacity) in zip(rings, wanted, strict=True)
        if (ring.lanes, ring.capacity_records) != (lanes, capacity)
    ]
    return "; ".join(found) or None


def spill_root(config: Config) -> str:
    """Where full lanes spill: ``spill_dir``, else spill/ beside the db."""
    return config.spill_dir or default_spill_dir(config.db)


def spill_options(config: Config) -> dict[str, Any]:
    """``SpillWriter`` keywords for ``config``'s caps, sync and mode."""
    return {
        "segment_bytes": config.spill_segment_bytes,
        "lane_cap_bytes": config.spill_lane_cap_bytes,
        "total_cap_bytes": config.spill_total_cap_bytes,
        "min_free_bytes": config.spill_min_free_bytes,
        "sync_interval_ms": config.spill_sync_interval_ms or None,
        "mode": config.mode,
    }


def status_file(config: Config) -> str:
    """Where the running daemon publishes its figures each second."""
    return config.status_file


def read_status(config: Config) -> dict[str, Any] | None:
    """The running daemon's last published figures: None when there are
    none, or the status file holds no JSON object (damaged, foreign, a
    FIFO: never a hang)."""
    try:
        data = json.loads(read_regular(status_file(config)))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
