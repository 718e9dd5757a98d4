"""
Settings: flags beat LIVEMON_* beat the TOML file beat the defaults.
"""

from __future__ import annotations

import pytest

from livemon.config import DB_FILENAME, load_config
from livemon.exceptions import ConfigError


@pytest.fixture
def toml(tmp_path):
    """A config file with a ring, a lane count and a batch interval."""
    path = tmp_path / "livemon.toml"
    path.write_text(
        '[livemon]\nring = "from-file"\nlanes = 3\nbatch_interval_s = 0.5\n'
    )
    return str(path)


class TestPrecedence:
    def test_defaults(self, tmp_path):
        """With nothing set, the documented defaults apply."""
        config = load_config(env={"XDG_STATE_HOME": str(tmp_path)})
        assert config.ring == "livemon"
        assert config.db == str(tmp_path / "livemon" / DB_FILENAME)
        assert config.mode == 0o600

    def test_systemd_state_directory(self):
        """Under systemd the database goes to $STATE_DIRECTORY."""
        config = load_config(env={"STATE_DIRECTORY": "/var/lib/livemon"})
        assert config.db == "/var/lib/livemon/" + DB_FILENAME

    def test_file_then_env_then_flags(self, toml):
        """Each layer overrides the one below it, key by key."""
        env = {"LIVEMON_CONFIG": toml, "LIVEMON_LANES": "5"}
        config = load_config({"batch_records": 7}, env=env)
        assert (config.ring, config.lanes, config.batch_records) == (
            "from-file",
            5,
            7,
        )
        assert config.batch_interval_s == 0.5
        assert load_config({"ring": "flag"}, env=env).ring == "flag"

    def test_none_means_not_given(self, toml):
        """A flag left unset (None) does not hide the file's value."""
        config = load_config({"ring": None, "config": toml}, env={})
        assert config.ring == "from-file"


class TestErrors:
    @pytest.mark.parametrize(
        ("overrides", "env", "match"),
        [
            ({"lanes": 0}, {}, "lanes"),
            ({"ring": "a/b"}, {}, "ring"),
            ({"synchronous": "OFF"}, {}, "synchronous"),
            ({"db_min_free_bytes": -1}, {}, "db_min_free_bytes"),
            ({"lanes": "4"}, {}, "lanes must be a int"),
            ({"nonsense": 1}, {}, "unknown setting"),
            ({}, {"LIVEMON_LANES": "many"}, "LIVEMON_LANES"),
            ({}, {"LIVEMON_GROUP_ACCESS": "perhaps"}, "GROUP_ACCESS"),
            ({"config": "/nonexistent/livemon.toml"}, {}, "cannot read"),
        ],
    )
    def test_bad_settings_name_the_problem(self, overrides, env, match):
        """Every bad setting is a ConfigError that names it."""
        with pytest.raises(ConfigError, match=match):
            load_config(overrides, env=env)

    def test_unknown_key_in_file(self, tmp_path):
        """A typo in the file is reported with the known keys."""
        path = tmp_path / "bad.toml"
        path.write_text("lanez = 4\n")
        with pytest.raises(ConfigError, match="lanez"):
            load_config({"config": str(path)}, env={})

    def test_not_toml(self, tmp_path):
        """A file that is not TOML says so."""
        path = tmp_path / "bad.toml"
        path.write_text("this is = = not toml")
        with pytest.raises(ConfigError, match="not TOML"):
            load_config({"config": str(path)}, env={})
