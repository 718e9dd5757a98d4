"""
What a ``Monitor`` hands to each ``RequestContext``: a ``Sink`` with the
process's counters, label cache and write, and the ``Counters`` an
operator reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
from collections.abc import Callable

from livemon.labels import LabelCache

__all__ = ["Counters", "Sink"]


@dataclasses.dataclass
class Counters:
    """What happened to this process's monitoring, never reset.

    Attributes:
        recorded: records stored in the ring.
        spilled: records the ring's full lane refused, stored instead in
            this process's spill files (the daemon replays them): not
            lost, not counted in ``recorded``.
        dropped: records lost because the lane was full (and the spill
            refused them too, or spilling is off); the total of every
            such loss, whatever the reason below.
        dropped_spill_cap: of ``dropped``, those the spill refused for
            its byte caps (per lane, or of the whole spill directory).
        dropped_disk_full: of ``dropped``, those the spill refused for a
            full disk (ENOSPC, EDQUOT, or below its free-space floor).
        dropped_io_error: of ``dropped``, those the spill refused for any
            other error (spill directory missing or not writable, a
            segment that cannot be created, a record it would not take).
        invalid: field values refused and stored as unknown (wrong type,
            NaN, inf, out of range, a bool where a number is meant, None
            inside a list, an error whose ``str()`` raises).
        unavailable: records lost because no ring could be reached, or
            ended after ``Monitor.close()``.
        lanes_exhausted: records lost because every lane of the ring was
            held by another live process (more processes than lanes).
        failed: records lost to any other monitoring error.
        labels_dropped: label texts that could not be stored at first
            (labels lane full, or no ring); held and retried before the
            next records.
        labels_spilled: label texts the full labels lane refused, stored
            in the spill files instead (so not in ``labels_dropped``).
        labels_lost: held label texts given up (more than 1024 waiting):
            records that use them show the id without its text.
        texts_escaped: texts holding lone surrogates, stored with
            ``\\udXXX`` escapes (counted once per text while it is cached).
        logged_after_end: ``log_*`` calls after ``end()``, ignored.
        agent_runs_recorded: agent runs (``log_agent``) stored in the
            agents ring.
        agent_runs_spilled: agent runs its full lane refused, stored in
            the spill files instead (replayed by the daemon).
        agent_runs_dropped: agent runs lost because the lane was full and
            the spill refused them too (or spilling is off).
        agent_runs_unavailable: agent runs lost because the agents ring
            could not be reached (or after ``Monitor.close()``).
        agent_runs_failed: agent runs lost to any other error (a value
            whose own methods raised).
        agent_runs_over_limit: ``log_agent`` calls beyond
            ``MAX_AGENT_RUNS`` in one request, not recorded.
        ended_in_forked_child: requests started before a fork and ended
            in the child, not written there: the parent's copy is the
            request's record (and its agent runs').
    """

    recorded: int = 0
    spilled: int = 0
    dropped: int = 0
    dropped_spill_cap: int = 0
    dropped_disk_full: int = 0
    dropped_io_error: int = 0
    invalid: int = 0
    unavailable: int = 0
    lanes_exhausted: int = 0
    failed: int = 0
    labels_dropped: int = 0
    labels_spilled: int = 0
    labels_lost: int = 0
    texts_escaped: int = 0
    logged_after_end: int = 0
    # Agent runs (issue 15).
    agent_runs_recorded: int = 0
    agent_runs_spilled: int = 0
    agent_runs_dropped: int = 0
    agent_runs_unavailable: int = 0
    agent_runs_failed: int = 0
    agent_runs_over_limit: int = 0
    # A request inherited over fork (the API's adversarial pass).
    ended_in_forked_child: int = 0


class Sink:
    """All a ``RequestContext`` needs of its ``Monitor``, and no more.

    The Monitor owns one and hands it to each context it starts.

    Attributes:
        strict: raise typed errors instead of counting.
        counters: the Monitor's counters.
        labels: the Monitor's label cache.
        label_ids, label_lists: its ``ids`` and ``lists`` dicts (cleared
            in place, never replaced): the hot path reads them with one
            attribute load fewer, and one object fewer to bring into a
            cold cache.
        write: stores one packed record; returns whether it was stored.
        agents: stores a request's packed agent runs; returns how many
            were stored (None: no agents ring, the runs are counted lost).
        pid: this process's id, renewed in a forked child.
        request_ids: request ids, from a random base per process.
    """

    __slots__ = (
        "agents",
        "counters",
        "label_ids",
        "label_lists",
        "labels",
        "pid",
        "request_ids",
        "strict",
        "write",
    )

    def __init__(
        self,
        *,
        strict: bool,
        counters: Counters,
        labels: LabelCache,
        write: Callable[[bytes], bool],
        agents: Callable[[list[bytes]], int] | None = None,
    ) -> None:
        self.strict = strict
        self.counters = counters
        self.labels = labels
        self.label_ids = labels.ids
        self.label_lists = labels.lists
        self.write = write
        self.agents = agents
        self.renew_identity()

    def renew_identity(self) -> None:
        """Take this process's pid and a fresh run of request ids."""
        self.pid = os.getpid()
        self.request_ids = itertools.count((secrets.randbits(31) << 32) + 1)
