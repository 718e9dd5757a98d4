"""
Fixtures shared by every test: unique ring names, rings that clean up, and
a reaper for any child process a test left behind.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import psutil
import pytest
from hypothesis import settings

import ringbuf
from livemon import ipc
from livemon.config import load_config
from tests import mounts

settings.register_profile("livemon", deadline=None, max_examples=60)
settings.load_profile("livemon")


@pytest.fixture(autouse=True, scope="session")
def reap_children() -> Iterator[None]:
    """Kill and reap whatever child processes the test run leaves behind."""
    yield
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.ZombieProcess:
            pass  # exited, never waited for: reap it below
        except psutil.NoSuchProcess:
            continue  # gone while we looked
        children.append(child)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory, monkeypatch) -> None:
    """Default databases and spill files go under a temporary state home,
    for this process and the processes it starts, never to ~/.local."""
    home = tmp_path_factory.mktemp("state-home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))


@pytest.fixture
def tmpfs(tmp_path):
    """A real 1 MiB tmpfs, unmounted afterwards (needs root)."""
    with mounts.tmpfs(tmp_path / "tmpfs", "1m") as mount:
        yield mount


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A fresh ring name; whatever was created under it is unlinked after."""
    name = f"lmtest-{uuid.uuid4().hex[:12]}"
    yield name
    unlink_rings(name)


def unlink_rings(ring: str) -> None:
    """Unlink every segment (and lock file) a configuration of ``ring``
    uses, as ``livemon.ipc.segments`` names them."""
    for name in ipc.segments(load_config({"ring": ring}, env={})):
        ringbuf.unlink(name)


@pytest.fixture
def make_ring(ring_name: str) -> Iterator[Callable[..., ringbuf.Ring]]:
    """Create rings under ``ring_name``; close them all after the test."""
    made: list[ringbuf.Ring] = []

    def make(
        dtype: np.dtype[np.void], lanes: int = 4, capacity: int = 64
    ) -> ringbuf.Ring:
        ring = ringbuf.Ring.create(ring_name, dtype, lanes, capacity)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        ring.close()
