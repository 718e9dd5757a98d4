"""
Shared benchmark fixtures, and a closing table of per-item medians with
each subject's ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Iterator

import pytest

import ringbuf

_RESULTS: dict[str, dict[str, float]] = {}
_BASELINES: dict[str, str] = {}


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A fresh ring name, unlinked (with its labels ring) afterwards."""
    name = f"lmbench-{uuid.uuid4().hex[:12]}"
    yield name
    for suffix in ("", ".labels", ".feedback", ".agents", ".verdicts"):
        ringbuf.unlink(name + suffix)


@pytest.fixture
def record(request):
    """Keep a benchmark's per-item median (and p99) for the closing table.

    Call as ``record(benchmark, items=N, baseline="name")``; the name is
    the test's own.  A baseline is another benchmark of the same group.
    """

    def keep(benchmark, items: int = 1, baseline: str | None = None):
        stats = benchmark.stats.stats
        data = sorted(stats.data)
        name = request.node.name
        _RESULTS[name] = {
            "median_us": stats.median / items * 1e6,
            "p99_us": data[int(0.99 * (len(data) - 1))] / items * 1e6,
            "rounds": len(data),
        }
        if baseline:
            _BASELINES[name] = baseline
        return _RESULTS[name]

    return keep


@pytest.fixture
def record_samples():
    """Keep a median and p99 of timings taken by hand (nanoseconds), for
    measurements that interleave subjects (pytest-benchmark times one
    function at a time).  Call as ``record_samples(name, samples_ns,
    baseline="name")``."""

    def keep(name: str, samples_ns, baseline: str | None = None):
        data = sorted(samples_ns)
        _RESULTS[name] = {
            "median_us": statistics.median(data) / 1e3,
            "p99_us": data[int(0.99 * (len(data) - 1))] / 1e3,
            "rounds": len(data),
        }
        if baseline:
            _BASELINES[name] = baseline
        return _RESULTS[name]

    return keep


def pytest_terminal_summary(terminalreporter) -> None:
    """Print medians per item and ratios against same-run baselines."""
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"{'benchmark':<52} {'median us':>11} {'p99 us':>10}  ratio")
    for name, result in _RESULTS.items():
        line = (
            f"{name:<52} {result['median_us']:>11.3f} "
            f"{result['p99_us']:>10.3f}"
        )
        base = _RESULTS.get(_BASELINES.get(name, ""))
        if base:
            ratio = base["median_us"] / result["median_us"]
            if ratio >= 1:
                line += f"  {ratio:.1f}x faster than {_BASELINES[name]}"
            else:
                line += f"  {1 / ratio:.1f}x slower than {_BASELINES[name]}"
        write(line)
