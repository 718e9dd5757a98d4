"""
Fixtures for the coordinator side: monitors on fresh rings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from livemon import Monitor


@pytest.fixture
def monitor(ring_name: str) -> Iterator[Monitor]:
    """A default-mode monitor on a fresh ring, closed after the test."""
    with Monitor(ring_name) as mon:
        yield mon


@pytest.fixture
def strict(ring_name: str) -> Iterator[Monitor]:
    """A strict monitor on a fresh ring, closed after the test."""
    with Monitor(ring_name, strict=True) as mon:
        yield mon
