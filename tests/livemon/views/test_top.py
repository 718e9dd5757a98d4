"""
``livemon top`` against a status file that is not the daemon's figures:
another process of the user may write anything there.
"""

from __future__ import annotations

import os

import pytest

from livemon import Monitor, ipc
from livemon.config import load_config
from livemon.views import top


@pytest.fixture
def config(tmp_path, ring_name):
    """A small configuration whose rings exist (a Monitor made them)."""
    config = load_config(
        {"ring": ring_name, "db": str(tmp_path / "u.db"), "lanes": 2},
        env={},
    )
    with Monitor(config=config) as monitor:
        monitor.request("q").end()
        yield config


def status_is(config, content: str | None) -> None:
    """Put ``content`` at the status file's path (None: a FIFO)."""
    path = ipc.status_file(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if content is None:
        os.mkfifo(path)
    else:
        with open(path, "w") as file:
            file.write(content)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('"a string"', "not running"),
        ("[1, 2]", "not running"),
        ("{not json", "not running"),
        (None, "not running"),  # a FIFO: read without blocking
        ('{"pid": 1}', "holds no figures of this livemon"),
        ('{"pid": 1, "drained": "many"}', "holds no figures of this livemon"),
    ],
    ids=["string", "list", "garbage", "fifo", "too-few-keys", "wrong-type"],
)
def test_a_foreign_status_file_is_said_in_a_line(config, content, said):
    status_is(config, content)
    lines = top.frame(config, lambda snap: str)
    daemon = next(line for line in lines if line.startswith("daemon"))
    assert said in daemon
    assert any(line.startswith("ring") for line in lines)
