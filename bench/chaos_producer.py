"""
A chaos soak's producer: a coordinator process recording requests through
the real ``Monitor`` at a set rate, publishing what it sent and what it
counted dropped in a memory-mapped progress file that survives SIGKILL.

Run as ``python -m bench.chaos_producer PROGRESS RATE TOTAL STOP TEXTS``:
RATE requests per second (0: full speed), TOTAL requests (0: until the
file STOP exists), TEXTS 1 to give every request an error text of its own
(a label record each: the labels lane fills and spills too).  It prints
its ``Counters`` as JSON when it ends.

Progress file, little-endian u64 words (``WORDS``), then one word per
request the Monitor counted lost, ``n | reason << 56``, in request order.
A request's drop entry and the drop count are stored before ``ended``
moves past it, so a producer killed at any point has published, for every
request up to ``ended``, exactly whether it was lost and why: the soak
reconciles it against the database request by request, not by totals.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import sys
import time

MAGIC = 0x4C4D_4348_414F_5331  # "LMCHAOS1"
WORDS = ("magic", "base", "ended", "drops", "finished", "recorded", "spilled")
"""Header words: ``base`` is the request ids' process base (``id >> 32``),
``ended`` the requests ended so far (ids ``base << 32 | 1..ended``),
``drops`` the entries in the drop list, ``finished`` 1 after a clean end."""
HEADER_WORDS = 8
MAX_DROPS = 1 << 22
"""Drop entries kept (32 MiB, sparse): past it, only the count is exact."""
FILE_BYTES = (HEADER_WORDS + MAX_DROPS) * 8
REASONS = (
    "ring_full",
    "spill_cap",
    "disk_full",
    "io_error",
    "unavailable",
    "lanes_exhausted",
    "failed",
)
"""Why the Monitor lost a request, in drop entries (``reason << 56``)."""
_COUNTED = (
    "dropped_spill_cap",
    "dropped_disk_full",
    "dropped_io_error",
    "unavailable",
    "lanes_exhausted",
    "failed",
)
_ID_MASK = (1 << 32) - 1


def _reason(before: tuple[int, ...], after: tuple[int, ...]) -> int | None:
    """Which reason the request just ended was lost for, or None."""
    # before/after: (dropped, *_COUNTED); dropped alone means ring full.
    for i, name in enumerate(_COUNTED, start=1):
        if after[i] != before[i]:
            return REASONS.index(name.removeprefix("dropped_"))
    return 0 if after[0] != before[0] else None


def _snapshot(counters: object) -> tuple[int, ...]:
    return (
        counters.dropped,  # type: ignore[attr-defined]
        *(getattr(counters, name) for name in _COUNTED),
    )


def run(
    progress: str, rate: float, total: int, stop: str, texts: bool
) -> dict[str, int]:
    """Record requests, publishing each one's outcome; return counters."""
    from livemon import Monitor

    fd = os.open(progress, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, FILE_BYTES)
    mm = mmap.mmap(fd, FILE_BYTES)
    words = memoryview(mm).cast("Q")
    words[0] = MAGIC
    started = time.monotonic()
    ended = drops = 0
    with Monitor() as monitor:
        counters = monitor.counters
        while total == 0 or ended < total:
            if total == 0 and ended % 64 == 0 and os.path.exists(stop):
                break
            before = _snapshot(counters)
            with monitor.request("chaos", category="soak") as ctx:
                ctx.log_execution(
                    actual_agents=["coder"],
                    success=not texts,
                    error=f"error {ctx.request_id:x}" if texts else None,
                )
                request_id = ctx.request_id
            ended += 1
            if ended == 1:
                words[1] = request_id >> 32
            assert request_id & _ID_MASK == ended, "one request id each"
            reason = _reason(before, _snapshot(counters))
            if reason is not None:
                if drops < MAX_DROPS:
                    words[HEADER_WORDS + drops] = ended | reason << 56
                drops += 1
                words[3] = drops
            words[5] = counters.recorded
            words[6] = counters.spilled
            words[2] = ended  # last: publishes the request's outcome
            if rate:
                ahead = started + ended / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    words[4] = 1
    words.release()
    mm.close()
    os.close(fd)
    return dataclasses.asdict(monitor.counters)


def main(argv: list[str]) -> int:
    """The command line (see the module docstring)."""
    progress, rate, total, stop, texts = argv
    counters = run(progress, float(rate), int(total), stop, texts == "1")
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
