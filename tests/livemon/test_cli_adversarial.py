"""
Settings people get wrong, through the ``livemon`` command and
``load_config``: each is refused with one line naming it (no traceback, no
hang), and nothing a command would trip over later gets through.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from livemon import ipc
from livemon.config import load_config
from livemon.exceptions import ConfigError
from tests import other_users
from tests.livemon.helpers import synthetic_records, write_database


def livemon(env, *args, timeout=30):
    """Run the ``livemon`` command in a fresh interpreter; capture it."""
    return subprocess.run(
        [sys.executable, "-c", "from livemon.cli import cli; cli()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


@pytest.fixture
def env(tmp_path, ring_name):
    """An environment with its own ring and (missing) database."""
    return dict(
        os.environ,
        LIVEMON_RING=ring_name,
        LIVEMON_DB=str(tmp_path / "unified_monitoring.db"),
    )


def refused_in_one_line(result, *words):
    """Exit 2 (usage), a message with ``words``, no traceback."""
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text, text
    for word in words:
        assert word in text, text


class TestConfigFile:
    @pytest.mark.parametrize(
        ("content", "words"),
        [
            (b"livemon = 3\n", ("[livemon]", "table")),
            (b"\xff\xfe ring = 1\n", ("UTF-8",)),
            (
                b'ring = "beside"\n[livemon]\nlanes = 4\n',
                ("outside [livemon]", "ring"),
            ),
        ],
        ids=["livemon-not-a-table", "not-utf8", "keys-beside-the-table"],
    )
    def test_a_bad_file_is_one_line(self, tmp_path, env, content, words):
        """A ``livemon`` key that is no table, bytes that are not UTF-8,
        and keys beside ``[livemon]`` (silently ignored before) are
        refused, naming the file."""
        path = tmp_path / "livemon.toml"
        path.write_bytes(content)
        result = livemon(env, "report", "--config", str(path))
        refused_in_one_line(result, str(path), *words)

    def test_a_fifo_is_refused_not_waited_on(self, tmp_path, env):
        """Opening a FIFO blocks until a writer comes: the command (and a
        daemon rereading on SIGHUP) would hang for ever."""
        fifo = tmp_path / "livemon.toml"
        os.mkfifo(fifo)
        result = livemon(dict(env, LIVEMON_CONFIG=str(fifo)), "report")
        refused_in_one_line(result, str(fifo), "not a regular file")


class TestValues:
    @pytest.mark.parametrize(
        "name",
        ["db", "pidfile", "log_file", "status_file", "archive_dir", "ring"],
    )
    def test_a_nul_in_a_text_setting_is_refused(self, tmp_path, name):
        """TOML can hold a NUL; no path can (os calls raise ValueError
        later, in the daemon, as a traceback)."""
        path = tmp_path / "livemon.toml"
        path.write_text(f'{name} = "{tmp_path}/a\\u0000b"\n')
        with pytest.raises(ConfigError, match=f"{name}.*NUL"):
            load_config({"config": str(path)}, env={})

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("batch_interval_s", "inf"),
            ("health_interval_s", "inf"),
            ("integrity_check_interval_s", "1e300"),
            ("retention_days", "1e300"),
            ("retention_days", "inf"),
        ],
    )
    def test_an_endless_duration_is_refused(self, env, name, value):
        """inf and 1e300 passed 'positive', then overflowed in the daemon
        (threading's wait, timedelta): it crashed after saying ready."""
        result = livemon(
            dict(env, **{f"LIVEMON_{name.upper()}": value}), "report"
        )
        refused_in_one_line(result, name, "at most")

    def test_the_largest_durations_allowed_load(self):
        """The bounds themselves are valid settings."""
        config = load_config(
            {
                "db": "/tmp/x.db",
                "retention_days": 36500.0,
                "integrity_check_interval_s": 366 * 86400.0,
                "batch_interval_s": 60.0,
                "health_interval_s": 86400.0,
            },
            env={},
        )
        assert config.retention_days == 36500.0


@pytest.fixture
def stored(tmp_path):
    """A livemon database with 100 events (schema applied, WAL)."""
    path = str(tmp_path / "unified.db")
    records, labels = synthetic_records(100, 3, 1_790_000_000 * 10**9, 10**9)
    write_database(path, records, labels)
    return path


class TestOptions:
    @pytest.mark.parametrize(
        "args",
        [
            ["report", "--since", "1970-01-01", "--top", str(10**20)],
            ["tail", "-n", str(10**20)],
            ["tail", "-f", "-n", "0", "--interval", "1e308"],
            ["tail", "-f", "-n", "0", "--interval", "nan"],
            ["top", "--iterations", "2", "--interval", "inf"],
            ["top", "--iterations", "2", "--interval", "nan"],
        ],
        ids=["top-n", "lines", "tail-long", "tail-nan", "top-inf", "top-nan"],
    )
    def test_an_absurd_number_is_a_usage_error(self, env, stored, args):
        """Numbers past SQLite's integers or time_t were an OverflowError
        traceback, or 'cannot read the database: datatype mismatch' (it
        was fine); nan passed every range (all comparisons false) and
        crashed the sleep."""
        env = dict(env, LIVEMON_DB=stored)
        config = load_config(env=env)
        for spec in ipc.all_rings(config):  # for top (unlinked after)
            ipc.open_ring(config, spec).close()
        result = livemon(env, *args, timeout=20)
        refused_in_one_line(result, "Invalid value")


def test_top_facing_a_ring_of_root_is_one_line(env, ring_name):
    """Run as nobody against root's owner-only rings, top was a
    PermissionError traceback (stats said it in one line)."""
    if os.geteuid() != 0:
        pytest.fail("this test switches users: run it as root (CI is)")
    config = load_config(env=env)
    for spec in ipc.all_rings(config):
        ipc.open_ring(config, spec).close()
    result = other_users.run(
        65534,
        [
            "-c",
            "from livemon.cli import cli; cli()",
            "top",
            "--iterations",
            "1",
        ],
        env,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "permission denied" in result.stderr


class TestGroup:
    @pytest.mark.parametrize("group", [str(2**32 - 1), str(10**20)])
    def test_a_gid_no_system_has_is_refused_here(self, group):
        """Accepted by the configuration, it failed later in the ring's
        chown, in the detached daemon's log (and in each coordinator)."""
        with pytest.raises(ConfigError, match="group"):
            load_config({"db": "/tmp/x.db", "group": group}, env={})

    def test_a_non_ascii_digit_is_a_name_not_a_number(self):
        """'٣' passed str.isdigit and became gid 3: a group nobody
        named.  It is looked up as a name (and there is none)."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config({"db": "/tmp/x.db", "group": "\u0663"}, env={})


class TestEmptyFlags:
    @pytest.mark.parametrize("flag", ["--db", "--config"])
    def test_an_empty_flag_names_nothing(self, env, flag):
        """``--db "$UNSET"`` fell back to the default database (or
        LIVEMON_CONFIG's file) without a word: a command meant for one
        database read or changed another."""
        env = {k: v for k, v in env.items() if k != "LIVEMON_DB"}
        result = livemon(env, "report", flag, "")
        refused_in_one_line(result, flag.lstrip("-"), "empty")


def test_backup_timeout_nan_is_refused(env, stored, tmp_path):
    """nan passed the range (comparisons with it are false) and meant
    'never time out', silently."""
    copy = tmp_path / "copy.db"
    env = dict(env, LIVEMON_DB=stored)
    result = livemon(env, "backup", str(copy), "--timeout", "nan")
    refused_in_one_line(result, "Invalid value", "--timeout")
    assert not copy.exists()
