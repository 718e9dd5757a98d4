"""
What a destination raises when it cannot take a batch, and when the
forwarder tries again: exponential backoff with jitter, capped.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from daemon.exceptions import DaemonError

__all__ = ["Backoff", "DestinationError"]


class DestinationError(DaemonError, ConnectionError):
    """A destination refused or failed to take a batch.

    Nothing is lost: the batch stays in the outbox and is shipped again.

    Attributes:
        retry_after: seconds the destination asked us to wait (None: ours).
        permanent: retrying soon cannot help (bad credentials, a missing
            client library); retried at the slow cap and shown in status
            until someone fixes what the message says.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent

    def __reduce__(
        self,
    ) -> tuple[type[DestinationError], tuple[str, float | None, bool]]:
        # type(self): a subclass with the same arguments pickles as itself.
        return (type(self), (str(self), self.retry_after, self.permanent))


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between retries: exponential with jitter, capped.

    Attributes:
        base_s: the first delay.
        cap_s: the longest delay for a failure that may pass.
        permanent_s: the delay after a permanent failure (the slow cap).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    permanent_s: float = 300.0

    def delay_s(
        self,
        failures: int,
        error: BaseException,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """How long to wait after the ``failures``-th failure in a row.

        Half the exponential delay is fixed and half random ("equal
        jitter"), so many hosts that failed together do not retry
        together; a destination's ``retry_after`` is honoured (up to the
        slow cap).
        """
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if isinstance(error, DestinationError) and error.permanent:
            return self.permanent_s
        exp: float = min(
            self.cap_s, self.base_s * 2.0 ** min(failures - 1, 32)
        )
        delay = exp / 2 + exp / 2 * rand()
        if isinstance(error, DestinationError) and error.retry_after:
            delay = max(delay, min(error.retry_after, self.permanent_s))
        return delay
