"""
The daemon's rings replaced under it (a cleanup script unlinked them,
``RemoveIPC=yes``, a coordinator recreated them), or by it (the config
asks for another geometry): drain the old segments to the end, then
consume the ones now under the names.
"""

from __future__ import annotations

import logging
import time

import ringbuf
from daemon import agent_runs
from daemon.drain import Drainer
from daemon.exceptions import DaemonError
from daemon.store import Store
from livemon import ipc
from livemon.config import Config

logger = logging.getLogger("livemon.daemon")

CHECK_INTERVAL_S = 1.0  # one stat per ring per second
DRAIN_OLD_S = 5.0  # longest the old segments are drained before the move


def replaced(drainer: Drainer) -> bool:
    """Whether any ring the drainer consumes is no longer under its name."""
    rings = (drainer.events, drainer.labels, drainer.feedback)
    return any(ring.replaced for ring in rings if ring is not None)


def follow(config: Config, drainer: Drainer) -> list[ringbuf.Ring]:
    """Move ``drainer`` to the rings now under the names; return the old.

    Producers still on an old segment keep writing there until they
    notice (within a second); what they wrote is drained first.  Once
    the daemon lets go of an old segment, a producer that finds no
    consumer on it carries its undrained records into the new ring, so
    nothing is lost and nothing is stored twice.

    Raises:
        ringbuf.RingError, OSError: the new rings cannot be opened (the
            caller retries at the next check; the old stay in use).
    """
    deadline = time.monotonic() + DRAIN_OLD_S
    while time.monotonic() < deadline and drainer.step():
        pass
    new = [ipc.open_ring(config, spec) for spec in ipc.all_rings(config)]
    if not new[0].lock_consumer():
        for ring in new:
            ring.close()
        raise ringbuf.RingError(
            f"ring {config.ring!r} was replaced, and another daemon now "
            "consumes the new one: stop one of the two"
        )
    old = [drainer.events, drainer.labels]
    if drainer.feedback is not None:
        old.append(drainer.feedback)
    drainer.events, drainer.labels, drainer.feedback = new
    old += follow_agents(config, drainer)
    logger.warning(
        "ring %r was replaced under the daemon (unlinked or recreated): "
        "drained the old segments, now consuming the new ones",
        config.ring,
    )
    return old


def regrow(config: Config, drainer: Drainer) -> list[ringbuf.Ring]:
    """Replace rings whose geometry is not ``config``'s; return the old.

    How ``lanes`` or ``capacity_records`` change on a running host: the
    daemon, restarted with the new config, puts new rings under the
    names and retires the old ones.  Each producer sees the retirement at
    its next record and moves to the new ring; the daemon drains the old
    ones to the end, so nothing is lost.  Returns [] when all match.

    Raises:
        ringbuf.RingError, OSError: the new rings cannot be made (the old
            ones stay in use, retired only once the new exist).
    """
    events = drainer.events
    if (events.lanes, events.capacity_records) == (
        config.lanes,
        config.capacity_records,
    ) and drainer.labels.lanes == config.lanes:
        return regrow_agents(config, drainer)
    old = [drainer.events, drainer.labels]
    if drainer.feedback is not None:
        old.append(drainer.feedback)
    for ring in old:
        ringbuf.unlink(ring.name)
    for spec in ipc.all_rings(config):
        ipc.open_ring(config, spec).close()
    for ring in old:
        ring.retire()
    _renew_agents(config, drainer)
    logger.warning(
        "ring %r had %d lanes of %d records, the config %d of %d: new "
        "rings made, coordinators move to them at their next record",
        config.ring,
        events.lanes,
        events.capacity_records,
        config.lanes,
        config.capacity_records,
    )
    return follow(config, drainer)


# -- the agents ring (issue 15): followed and regrown on its own, since
# coordinators create it at their first agent run, apart from the others.


def follow_agents(config: Config, drainer: Drainer) -> list[ringbuf.Ring]:
    """Move to the agents ring now under its name, if it was replaced;
    return the old one (drained to the end first, as the others)."""
    old = drainer.agents
    if old is None or not old.replaced:
        return []
    # Until its producers moved (they give their old lanes back): one
    # that saw this daemon still attached carries nothing over.  Idle
    # ones past the deadline find no consumer when they next write, and
    # carry their records along themselves.
    deadline = time.monotonic() + DRAIN_OLD_S
    while time.monotonic() < deadline:
        if not drainer.step():
            if not _held(old):
                break
            time.sleep(0.05)
    while drainer.step():  # what came before the last lane was let go
        pass
    new = agent_runs.open_agents_ring(config)
    if new is None:  # the old one stays in use; tried again next check
        return []
    drainer.agents = new
    logger.warning(
        "ring %r was replaced under the daemon: now consuming the new one",
        new.name,
    )
    return [old]


def _held(ring: ringbuf.Ring) -> bool:
    """Whether a live producer holds a lane of ``ring``."""
    return any(ring.lane_state(i).owned for i in range(ring.lanes))


def regrow_agents(config: Config, drainer: Drainer) -> list[ringbuf.Ring]:
    """``regrow`` for the agents ring alone; return the old one, if any."""
    agents = drainer.agents
    if agents is None or (agents.lanes, agents.capacity_records) == (
        config.lanes,
        config.capacity_records,
    ):
        return []
    _renew_agents(config, drainer)
    return follow_agents(config, drainer)


def _renew_agents(config: Config, drainer: Drainer) -> None:
    """Put a new agents ring of ``config``'s geometry under the name and
    retire the old one (its producers move at their next run)."""
    agents = drainer.agents
    if agents is None:
        return
    ringbuf.unlink(agents.name)
    ipc.open_ring(config, ipc.agents_ring(config)).close()
    agents.retire()


def _lent() -> Store:
    """Never called: a ``Retired`` drainer is lent the main one's store."""
    raise DaemonError("a retired ring's drainer opens no store")


class Retired:
    """Old segments drained alongside the new ones while producers hold
    lanes in them, then let go.

    A producer of this release moves to the new ring at its next record
    (and gives its old lane back); one of an older release never notices
    a retired or replaced ring (a rolling upgrade: the daemon first) and
    writes on into the old segment until it restarts.  Its records are
    drained from there, so a regrow or a replaced ring loses nothing.

    Args:
        config: the daemon's config (which names are which ring).
        rings: the old rings ``follow`` or ``regrow`` returned.
    """

    def __init__(self, config: Config, rings: list[ringbuf.Ring]) -> None:
        self.rings = rings
        by_name = {ring.name: ring for ring in rings}
        names = [spec.name for spec in ipc.all_rings(config)]
        events, labels, feedback = (by_name.get(n) for n in names)
        agents = by_name.get(ipc.agents_ring(config).name)
        self.drainer: Drainer | None = None
        if events is not None and labels is not None:
            self.drainer = Drainer(
                config,
                events,
                labels,
                _lent,  # the main drainer's store is lent per step
                feedback,
                agents=agents,
            )

    def step(self, main: Drainer) -> int:
        """Drain what the old segments hold into ``main``'s store; return
        the records moved (failures go to ``main``, which owns the store).
        """
        drainer = self.drainer
        if drainer is None or main.store is None:
            return 0
        drainer.store = main.store
        try:
            return drainer.drain_once()
        except Exception as exc:  # the drain loop's boundary, as step()
            main.handle_failure(exc)
            return 0

    def done(self) -> bool:
        """Whether no producer holds a lane and nothing waits: then the
        rings are closed (the caller forgets them)."""
        try:
            busy = any(
                state.owned or state.pending > 0
                for ring in self.rings
                for state in (ring.lane_state(i) for i in range(ring.lanes))
            )
        except ringbuf.RingError:
            busy = False  # closed or damaged: nothing more to drain there
        if busy and self.drainer is not None:
            return False
        self.close()
        return True

    def close(self) -> None:
        """Let go of the old segments (the store stays the main one's)."""
        for ring in self.rings:
            ring.close()
