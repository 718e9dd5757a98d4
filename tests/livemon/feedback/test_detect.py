"""
The per-agent change detector: fast on real drops below the threshold,
silent on stable agents just above it, and principled on the way back.
"""

from __future__ import annotations

import random

import pytest

from livemon.exceptions import ConfigError
from livemon.feedback.detect import Detector, DetectorSettings, wilson_bounds
from livemon.feedback.rules import Policy

SETTINGS = DetectorSettings(h=13.0, z=2.0)


def feed(detector: Detector, p: float, count: int, rng: random.Random) -> int:
    """Observe ``count`` outcomes at success ``p``; return when the
    verdict first changed (count if never)."""
    before = detector.low
    for i in range(count):
        if detector.observe(rng.random() < p) != before:
            return i + 1
    return count


class TestDrops:
    @pytest.mark.parametrize(("after", "within"), [(0.5, 80), (0.7, 400)])
    def test_demotes_after_a_drop(self, after, within):
        """0.90 -> 0.50 / 0.70 after a stable history: demoted, soon."""
        rng = random.Random(1)
        detector = Detector(SETTINGS)
        assert feed(detector, 0.9, 500, rng) == 500 and not detector.low
        delay = feed(detector, after, 2000, rng)
        assert detector.low and delay < within
        assert detector.bound < SETTINGS.threshold
        assert detector.segment >= 1 and detector.statistic < 0.8

    def test_bad_from_the_start_is_demoted(self):
        """No healthy history at all: the baseline is the threshold."""
        detector = Detector(SETTINGS)
        feed(detector, 0.4, 300, random.Random(2))
        assert detector.low

    def test_no_verdict_before_min_samples(self):
        """Every outcome a failure, but fewer than min_samples: nothing."""
        detector = Detector(SETTINGS)
        for _ in range(SETTINGS.min_samples - 1):
            detector.observe(False)
        assert not detector.low


class TestStable:
    @pytest.mark.parametrize("p", [0.82, 0.85, 0.90])
    def test_stable_agents_are_never_demoted(self, p):
        """20,000 outcomes at a stable rate above 0.80: no change."""
        detector = Detector(SETTINGS)
        feed(detector, p, 20_000, random.Random(3))
        assert detector.changes == 0

    def test_a_drop_that_stays_above_the_threshold_rebaselines(self):
        """0.97 -> 0.86: a change, but not below 0.80: never demoted."""
        rng = random.Random(4)
        detector = Detector(SETTINGS)
        feed(detector, 0.97, 1000, rng)
        feed(detector, 0.86, 5000, rng)
        assert detector.changes == 0
        assert detector.baseline() < 0.9  # the new level became the baseline


class TestRecovery:
    def demoted(self, rng: random.Random) -> Detector:
        detector = Detector(SETTINGS)
        feed(detector, 0.9, 500, rng)
        feed(detector, 0.5, 500, rng)
        assert detector.low
        return detector

    def test_recovers_once_back_above(self):
        """Back at 0.95: recovered, confirmed by the lower bound."""
        rng = random.Random(5)
        detector = self.demoted(rng)
        feed(detector, 0.95, 2000, rng)
        assert not detector.low and detector.changes == 2
        assert detector.bound >= SETTINGS.threshold

    @pytest.mark.parametrize("p", [0.5, 0.78])
    def test_stays_demoted_below_the_threshold(self, p):
        """Still bad, or just below 0.80: no recovery, no flapping."""
        rng = random.Random(6)
        detector = self.demoted(rng)
        feed(detector, p, 5000, rng)
        assert detector.low and detector.changes == 1

    def test_demote_starts_from_a_standing_decision(self):
        """demote(): a new leader keeps what the previous one decided."""
        detector = Detector(SETTINGS)
        detector.demote()
        assert detector.low
        feed(detector, 0.95, 3000, random.Random(7))
        assert not detector.low


class TestSettings:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"change_drops": ()},
            {"change_drops": (0.9,)},
            {"cusum_h": 0},
            {"confirm_z": -1},
            {"baseline_memory": 0},
        ],
    )
    def test_bad_tuning_is_refused(self, kwargs):
        """A detector that cannot work is refused when the Policy is built."""
        with pytest.raises(ConfigError, match="Policy"):
            Policy(**kwargs)

    def test_wilson_bounds(self):
        """Known values; no trials means nothing is known."""
        low, high = wilson_bounds(80, 100, 1.959963984540054)
        assert low == pytest.approx(0.7112, abs=1e-4)
        assert high == pytest.approx(0.8666, abs=1e-4)
        assert wilson_bounds(0, 0, 2.0) == (0.0, 1.0)
