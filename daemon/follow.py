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
    deadline = time.monotonic() + DRAIN_OLD_S
    while time.monotonic() < deadline and drainer.step():
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
