"""
Every shared surface of a configuration comes from ``livemon.ipc``: the
three rings' names, dtypes and capacities, and the daemon's status file.
"""

from __future__ import annotations

import json

import pytest

from livemon import ipc
from livemon.config import load_config
from livemon.record import FEEDBACK_DTYPE, LABEL_DTYPE, RECORD_DTYPE


@pytest.fixture
def config(ring_name, tmp_path):
    """A configuration of its own ring and database."""
    return load_config(
        {"ring": ring_name, "db": str(tmp_path / "u.db"), "lanes": 3}
    )


class TestRings:
    def test_names_dtypes_capacities(self, config):
        """Events, labels, feedback: one name each, from the ring's."""
        events, labels, feedback = ipc.all_rings(config)
        assert (events.name, labels.name, feedback.name) == (
            config.ring,
            config.ring + ".labels",
            config.ring + ".feedback",
        )
        assert (events.dtype, labels.dtype, feedback.dtype) == (
            RECORD_DTYPE,
            LABEL_DTYPE,
            FEEDBACK_DTYPE,
        )
        assert events.capacity_records == config.capacity_records
        assert labels.capacity_records == config.label_capacity_records

    def test_open_creates_then_attach_finds(self, config):
        """``open_rings`` creates with the config's geometry; readers
        attach to exactly those segments."""
        events, labels = ipc.open_rings(config)
        try:
            assert events.lanes == labels.lanes == 3
            with ipc.attach_ring(ipc.events_ring(config)) as again:
                assert again.epoch == events.epoch
        finally:
            events.close()
            labels.close()


class TestStatusFile:
    def test_missing_or_garbage_is_none(self, config):
        """No daemon, or a torn file: no figures, no error."""
        assert ipc.read_status(config) is None
        path = ipc.status_file(config)
        with open(path, "w") as file:
            file.write('{"drained": 1')
        assert ipc.read_status(config) is None
        with open(path, "w") as file:
            json.dump({"drained": 7}, file)
        assert ipc.read_status(config) == {"drained": 7}
