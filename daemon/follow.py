"""
The daemon's rings replaced under it (a cleanup script unlinked them,
``RemoveIPC=yes``, a coordinator recreated them): drain the old segments
to the end, then consume the ones now under the names.
"""

from __future__ import annotations

import logging
import time

import ringbuf
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
    logger.warning(
        "ring %r was replaced under the daemon (unlinked or recreated): "
        "drained the old segments, now consuming the new ones",
        config.ring,
    )
    return old
