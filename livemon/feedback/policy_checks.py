"""
What each ``Policy`` parameter may be, checked when the policy is built:
a wrong type, NaN, infinity or a value out of range is a ``ConfigError``
naming the parameter and what it may be.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NoReturn

from livemon.exceptions import ConfigError


def check_policy(policy: Any) -> None:
    """Refuse any setting of ``policy`` (a ``rules.Policy``) the loop
    cannot work with; store counts and drops as plain values.

    Raises:
        ConfigError: the message names the parameter and its range.
    """
    for name, (valid, what) in _RANGES.items():
        value = getattr(policy, name)
        if not (_is_number(value) and valid(value)):  # NaN fails too
            _refuse(name, value, what)
    for name in _COUNTS:
        value = getattr(policy, name)
        least = 0 if name == "window_per_lane" else 1
        integral = isinstance(value, numbers.Integral)
        if not integral or isinstance(value, bool) or value < least:
            _refuse(name, value, f"an int >= {least}")
        object.__setattr__(policy, name, int(value))  # a numpy int too
    if not policy.base_threshold <= policy.max_threshold:
        _refuse(
            "max_threshold", policy.max_threshold, "in [base_threshold, 1]"
        )
    if not policy.quality_recovered <= policy.quality_drop:
        _refuse(
            "quality_recovered", policy.quality_recovered, "<= quality_drop"
        )
    drops = policy.change_drops
    if not isinstance(drops, tuple | list) or not all(
        _is_number(d) for d in drops
    ):
        _refuse("change_drops", drops, "a tuple of numbers")
    object.__setattr__(policy, "change_drops", tuple(drops))  # hashable


# What each real-valued parameter may be: (predicate, said as).
_UNIT = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
_STEP = (lambda v: 0 < v <= 1, "a number in (0, 1]")
_POSITIVE = (lambda v: 0 < v < math.inf, "a finite number > 0")
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "success_threshold": _UNIT,
    "override_threshold": _UNIT,
    "exploration": _UNIT,
    "quality_drop": _UNIT,
    "quality_recovered": _UNIT,
    "min_multiplier": _UNIT,
    "base_threshold": _UNIT,
    "max_threshold": _UNIT,
    "confidence_step": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "threshold_step": _STEP,
    "slow_recover": _STEP,
    "interval_s": _POSITIVE,
    "z": _POSITIVE,
    "slow_mean_ms": _POSITIVE,
    "slow_p95_ms": _POSITIVE,
    "cusum_h": _POSITIVE,
    "confirm_z": _POSITIVE,
    "baseline_z": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
}
_COUNTS = (
    "recent",
    "baseline",
    "window_per_lane",
    "min_samples",
    "baseline_memory",
)


def _is_number(value: object) -> bool:
    """A real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _refuse(name: str, value: object, what: str) -> NoReturn:
    raise ConfigError(f"Policy.{name} must be {what}, got {value!r}")
