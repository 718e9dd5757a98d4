"""
Change detection on each agent's own success baseline: a bank of Bernoulli
CUSUMs (log-likelihood-ratio increments) confirmed by a Wilson bound
against the success threshold, with a recovery CUSUM for the way back.

Plain Python floats, one ``observe`` per outcome: O(alternatives) each.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from livemon.exceptions import ConfigError

_MAX_BASELINE_P = 0.98  # a flawless record is not proof of 0.999: 5+ failures
_REFRESH = 16  # baseline outcomes between two updates of the increments


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """How each agent's detector is tuned (from ``Policy``).

    Attributes:
        threshold: the success rate below which an agent is demoted.
        drops: alternatives the CUSUM bank watches for, as points below
            ``threshold`` (0.10 and 0.30: 0.70 and 0.50 at 0.80).
        h: the CUSUM decision threshold, in nats of likelihood ratio.
        z: normal quantile of the one-sided Wilson confirmation bound.
        memory: samples the baseline remembers (geometric discount).
        baseline_z: the baseline is its Wilson lower bound at this z.
        min_samples: outcomes an agent needs before any verdict.
    """

    threshold: float = 0.80
    drops: tuple[float, ...] = (0.10, 0.30)
    h: float = 11.0
    z: float = 1.645
    memory: int = 1000
    min_samples: int = 30
    baseline_z: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(
                f"the success threshold must be in (0, 1), got "
                f"{self.threshold}"
            )
        if not self.drops or not all(
            0 < d < self.threshold for d in self.drops
        ):
            raise ConfigError(
                f"Policy.change_drops must be non-empty, each in (0, "
                f"threshold={self.threshold}), got {self.drops}"
            )
        if self.h <= 0 or self.z <= 0 or self.memory < 1:
            raise ConfigError(
                "Policy.cusum_h and confirm_z must be > 0, baseline_memory "
                f">= 1 (got {self.h}, {self.z}, {self.memory})"
            )


def wilson_bounds(
    successes: float, trials: float, z: float
) -> tuple[float, float]:
    """The Wilson score interval of ``successes / trials`` at quantile ``z``.

    Returns (0, 1) for no trials: nothing is known.
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    zz = z * z / trials
    centre = (p + zz / 2) / (1 + zz)
    half = z / (1 + zz) * math.sqrt(p * (1 - p) / trials + zz / (4 * trials))
    return centre - half, centre + half


class Detector:
    """One agent's verdict: healthy, or demoted below the threshold.

    Healthy: for each alternative ``p1 = threshold - drop`` a CUSUM
    ``S = max(0, S + ln P1(x)/P0(x))`` runs against the agent's own
    baseline ``p0`` (its discounted success rate, outside the segment
    being tested, floored at the threshold).  When one reaches ``h`` its
    segment (the outcomes since it last left 0, the estimated change
    point) must also have a Wilson upper bound under the threshold:
    then the agent is demoted.  If instead the segment's lower bound
    clears the threshold, the agent changed but is still fine: its
    baseline becomes the segment.  In between, it waits for evidence.

    Demoted: one CUSUM from the demoted level back to the pre-drop
    baseline, confirmed by the segment's lower bound clearing the
    threshold.  The gap between the two bounds is the hysteresis; each
    direction's false-alarm rate is the CUSUM's.

    Attributes:
        low: the verdict (demoted).
        samples: outcomes observed.
        statistic: the segment's success rate behind the last verdict.
        bound: the confirming bound behind the last verdict.
        segment: the segment's length behind the last verdict.
        changes: verdict changes so far.
    """

    __slots__ = (
        "_bad",
        "_bank",
        "_base",
        "_good_p",
        "_pending",
        "_recovery",
        "_s",
        "_stale",
        "_steps",
        "bound",
        "changes",
        "low",
        "samples",
        "segment",
        "statistic",
    )

    def __init__(self, settings: DetectorSettings) -> None:
        self._s = settings
        self.low = False
        self.samples = 0
        self.statistic = math.nan
        self.bound = math.nan
        self.segment = 0
        self.changes = 0
        # Baseline counts (discounted), seeded with a weak prior halfway
        # between the threshold and 1.
        prior = settings.threshold + (1 - settings.threshold) / 2
        self._base = [4 * prior, 4.0]
        # Per alternative: [S, segment trials, segment successes].
        self._pending: collections.deque[bool] = collections.deque()
        self._bad = [0.0, 0.0]
        self._good_p = prior
        self._recovery = [0.0, 0, 0]
        self._reset_bank()

    def demote(self) -> None:
        """Start demoted (a standing decision this detector did not see)."""
        if not self.low:
            self._enter_low(0, 0, self._s.threshold - min(self._s.drops))

    def observe(self, ok: bool) -> bool:
        """Take one outcome (success or failure); return the verdict."""
        self.samples += 1
        if self.low:
            self._observe_low(ok)
        else:
            self._observe_healthy(ok)
        return self.low

    # -- healthy --------------------------------------------------------

    def baseline(self) -> float:
        """The success rate the healthy CUSUMs compare against."""
        # The lower bound, not the estimate: a short or lucky baseline
        # must not make a merely average agent look changed.
        s, n = self._base
        low, _ = wilson_bounds(s, n, self._s.baseline_z)
        return min(_MAX_BASELINE_P, max(self._s.threshold, low))

    def _reset_bank(self) -> None:
        self._bank = [[0.0, 0, 0] for _ in self._s.drops]
        self._pending.clear()
        self._refresh_steps()

    def _refresh_steps(self) -> None:
        """Each CUSUM's increments (success, failure) for the baseline now.

        Recomputed every ``_REFRESH`` baseline outcomes, not each one: the
        baseline remembers ``memory`` outcomes, so a few more barely move
        it, and the increments cost two logarithms each.
        """
        s = self._s
        p0 = self.baseline()
        self._steps = [
            (math.log(p1 / p0), math.log((1 - p1) / (1 - p0)))
            for p1 in (s.threshold - d for d in s.drops)
        ]
        self._stale = 0

    def _observe_healthy(self, ok: bool) -> None:
        s = self._s
        self._pending.append(ok)
        longest = 0
        alarm: list[float] | None = None
        for cusum, (up, down) in zip(self._bank, self._steps, strict=True):
            cusum[0] += up if ok else down
            cusum[1] += 1
            cusum[2] += ok
            if cusum[0] <= 0:
                cusum[0], cusum[1], cusum[2] = 0.0, 0, 0
            longest = max(longest, int(cusum[1]))
            if cusum[0] >= s.h and (alarm is None or cusum[1] > alarm[1]):
                alarm = cusum
        # Outcomes outside every open segment join the baseline.
        while len(self._pending) > longest:
            self._commit(self._pending.popleft())
        if alarm is None or self.samples < s.min_samples:
            return
        n, k = int(alarm[1]), int(alarm[2])
        low, high = wilson_bounds(k, n, s.z)
        if high < s.threshold:
            self._good_p = self.baseline()
            self._enter_low(n, k, high)
        elif low >= s.threshold:
            # Changed, but still above the threshold: a new baseline.
            self._base = [float(k), float(n)]
            self._reset_bank()

    def _commit(self, ok: bool) -> None:
        keep = 1 - 1 / self._s.memory
        self._base[0] = self._base[0] * keep + ok
        self._base[1] = self._base[1] * keep + 1
        self._stale += 1
        if self._stale >= _REFRESH:
            self._refresh_steps()

    def _enter_low(self, n: int, k: int, bound: float) -> None:
        self.low = True
        self.changes += 1
        self._bad = [float(k), float(n)]
        self._recovery = [0.0, 0, 0]
        self._verdict(n, k, bound)

    # -- demoted ----------------------------------------------------------

    def _observe_low(self, ok: bool) -> None:
        s = self._s
        keep = 1 - 1 / s.memory
        self._bad[0] = self._bad[0] * keep + ok
        self._bad[1] = self._bad[1] * keep + 1
        # From the demoted level (at most the lowest alternative above
        # it, never above the threshold) back to the pre-drop baseline.
        low_p = s.threshold - min(s.drops)
        pb = min(low_p, (self._bad[0] + low_p) / (self._bad[1] + 1))
        pg = max(self._good_p, s.threshold + (1 - s.threshold) / 2)
        r = self._recovery
        r[0] += math.log(pg / pb) if ok else math.log((1 - pg) / (1 - pb))
        r[1] += 1
        r[2] += ok
        if r[0] <= 0:
            r[0], r[1], r[2] = 0.0, 0, 0
            return
        if r[0] < s.h:
            return
        n, k = int(r[1]), int(r[2])
        low, _ = wilson_bounds(k, n, s.z)
        if low >= s.threshold:
            self.low = False
            self.changes += 1
            self._base = [float(k), float(n)]
            self._reset_bank()
            self._verdict(n, k, low)

    def _verdict(self, n: int, k: int, bound: float) -> None:
        self.segment = n
        self.statistic = k / n if n else math.nan
        self.bound = bound
