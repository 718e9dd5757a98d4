"""
The settings the daemon's files and permissions come from
(``livemon.config``): per-database files, the group, the system instance;
and the pidfile's identity (``daemon.proc``).
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys

import pytest

from daemon import proc
from livemon import config as settings
from livemon.config import load_config
from livemon.exceptions import ConfigError


class TestFilesPerDatabase:
    def test_defaults_are_named_after_the_database(self, tmp_path):
        """Two databases in one directory never share a pid, status or
        log file."""
        a = load_config({"db": str(tmp_path / "a.db")}, env={})
        b = load_config({"db": str(tmp_path / "b.db")}, env={})
        assert a.pidfile == f"{tmp_path}/a.db.pid"
        assert a.status_file == f"{tmp_path}/a.db.status.json"
        assert a.log_file == f"{tmp_path}/a.db.log"
        assert {a.pidfile, a.status_file, a.log_file}.isdisjoint(
            {b.pidfile, b.status_file, b.log_file}
        )

    def test_an_explicit_pidfile_keeps_its_status_file_beside_it(
        self, tmp_path
    ):
        """LIVEMON_PIDFILE=x gives x.status.json, as before."""
        config = load_config(
            env={"LIVEMON_DB": "/d/u.db", "LIVEMON_PIDFILE": "/run/x.pid"}
        )
        assert config.status_file == "/run/x.pid.status.json"


class TestGroup:
    def test_no_group_is_owner_only(self):
        """Default: mode 0600 and no gid."""
        config = load_config(env={"LIVEMON_DB": "/d/u.db"})
        assert config.mode == 0o600 and config.gid is None

    def test_a_group_name_resolves_and_opens_the_group_bits(self):
        """LIVEMON_GROUP=<name>: its gid, mode 0660."""
        name = grp.getgrgid(os.getgid()).gr_name
        config = load_config(
            env={"LIVEMON_DB": "/d/u.db", "LIVEMON_GROUP": name}
        )
        assert config.gid == os.getgid() and config.mode == 0o660

    def test_group_access_still_works_alone(self):
        """LIVEMON_GROUP_ACCESS=true (older setups): 0660 as before."""
        config = load_config(
            env={"LIVEMON_DB": "/d/u.db", "LIVEMON_GROUP_ACCESS": "true"}
        )
        assert config.mode == 0o660 and config.gid is None

    def test_unknown_group_is_a_config_error(self):
        """A group this machine lacks is refused when the settings are
        read (misconfiguration: never later, inside a request), saying how
        to create it."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(
                env={"LIVEMON_DB": "/d/u.db", "LIVEMON_GROUP": "no-such-grp-x"}
            )


class TestSystemInstance:
    def test_readers_find_the_system_database(self, tmp_path, monkeypatch):
        """No database of one's own, the service's exists: use it (only
        when asked: the daemon's start never does)."""
        system = tmp_path / "var-lib-livemon"
        system.mkdir()
        (system / settings.DB_FILENAME).touch()
        monkeypatch.setattr(settings, "SYSTEM_STATE_DIR", system)
        env = {"XDG_STATE_HOME": str(tmp_path / "home-state")}
        found = load_config(env=env, find_system=True)
        assert found.db == str(system / settings.DB_FILENAME)
        assert load_config(env=env).db.startswith(str(tmp_path / "home"))
        own = tmp_path / "home-state" / "livemon" / settings.DB_FILENAME
        own.parent.mkdir(parents=True)
        own.touch()
        assert load_config(env=env, find_system=True).db == str(own)


class TestIdentity:
    def test_start_ticks_is_exact_and_needs_no_proc_stat(self):
        """Field 22 of /proc/<pid>/stat: equal for the same process, and
        different for a process started later."""
        child = subprocess.Popen(
            [sys.executable, "-c", "input()"], stdin=subprocess.PIPE
        )
        try:
            assert proc.start_ticks(child.pid) == proc.start_ticks(child.pid)
            assert proc.start_ticks(child.pid) >= proc.start_ticks(os.getpid())
        finally:
            child.communicate(b"\n", timeout=10)
        with pytest.raises(ProcessLookupError):
            proc.start_ticks(child.pid)

    def test_pidfile_round_trip_and_legacy_form(self, tmp_path):
        """The pidfile names this process; an old psutil-time pidfile of
        this pid with a wrong time is stale."""
        pidfile = proc.Pidfile(str(tmp_path / "x.pid"))
        pidfile.write()
        assert pidfile.process() is not None
        assert pidfile.read() == (os.getpid(), proc.start_ticks(os.getpid()))
        (tmp_path / "x.pid").write_text(f"{os.getpid()}\n12345.0\n")
        assert pidfile.process() is None
