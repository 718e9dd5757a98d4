"""
Package layering: our ``daemon`` and ``ringbuf`` are the ones imported, and
each package imports only what its layer allows, stdlib included.
"""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRST_PARTY = frozenset({"daemon", "livemon", "ringbuf"})

# numpy is imported before the probe starts counting: what numpy itself
# loads (and that changes with numpy's version) is numpy's business.
_PROBE = """
import json, sys
import numpy
before = set(sys.modules)
for name in {modules!r}:
    __import__(name)
new = {{n.split('.')[0] for n in set(sys.modules) - before}}
print(json.dumps(sorted(n for n in new if not n.startswith('__'))))
"""

ALLOWED = {
    "ringbuf": {"ringbuf", "numpy"},
    "livemon": {"livemon", "ringbuf", "numpy"},
    "livemon.views": {"livemon", "ringbuf", "numpy"},
    "livemon.cli": {"livemon", "ringbuf", "numpy", "click"},
    "daemon": {"daemon", "livemon", "ringbuf", "numpy", "psutil"},
    "daemon.cli": {"daemon", "livemon", "ringbuf", "numpy", "click", "psutil"},
}

# Never loaded, not even indirectly: the hot path has no SQLite, no click
# and no psutil; the views are click-free so they can be reused.
FORBIDDEN = {
    "ringbuf": {"sqlite3", "_sqlite3", "click", "psutil"},
    "livemon": {"sqlite3", "_sqlite3", "click", "psutil"},
    "livemon.views": {"click", "psutil"},
    "livemon.cli": {"psutil"},
}

# The stdlib modules the hot path names in its own imports (beyond what
# numpy already loaded).  Anything else it loads must be pulled in by one
# of these.  The test tolerates exactly that closure, measured on the
# running interpreter, rather than a frozen list: which private helpers
# ``multiprocessing`` or ``importlib.metadata`` drag in differs between
# 3.11, 3.12 and 3.13, and that is not our layering.  A new stdlib import
# in ringbuf or livemon still fails here until it is added on purpose.
STDLIB = {
    "ringbuf": {
        "collections.abc",
        "contextlib",
        "errno",
        "fcntl",
        "hashlib",
        "mmap",
        "os",
        "platform",
        "re",
        "secrets",
        "stat",
        "struct",
        "sys",
        "threading",
        "time",
        "typing",
        "weakref",
    },
}
STDLIB["livemon"] = STDLIB["ringbuf"] | {
    "collections.abc",
    "copy",
    "dataclasses",
    # importlib.metadata.version() runs at import (__version__) and parses
    # the METADATA file with email; 3.13 loads email.message only then.
    "email.message",
    "email.parser",
    "enum",
    "grp",  # config: the configured group's gid
    "importlib.metadata",
    "itertools",
    "json",
    "logging",
    "math",
    "pathlib",
    "tomllib",
    "zlib",
}


@functools.cache
def loaded(*modules: str) -> frozenset[str]:
    """Import ``modules`` in a fresh interpreter (after numpy); return the
    top-level names of every module that loaded."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(modules=modules)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return frozenset(json.loads(out.stdout))


def stdlib(names: frozenset[str]) -> set[str]:
    """The standard-library names among ``names``."""
    return {n for n in names if n in sys.stdlib_module_names}


class TestLayering:
    @pytest.mark.parametrize("module", sorted(ALLOWED))
    def test_imports_only_what_its_layer_allows(self, module):
        """Each package pulls in only its allowed third-party packages."""
        third_party = loaded(module) - stdlib(loaded(module)) - {"numpy"}
        assert third_party <= ALLOWED[module]

    @pytest.mark.parametrize("module", sorted(FORBIDDEN))
    def test_never_loads_what_its_layer_forbids(self, module):
        """No SQLite, click or psutil behind the hot path or the views."""
        assert not loaded(module) & FORBIDDEN[module]

    @pytest.mark.parametrize("module", sorted(STDLIB))
    def test_stdlib_is_an_explicit_list(self, module):
        """The hot path loads only the stdlib it names (and what those
        load on this Python)."""
        tolerated = stdlib(loaded(*sorted(STDLIB[module])))
        assert stdlib(loaded(module)) - tolerated == set()

    @pytest.mark.parametrize(
        ("dependency", "allowed"),
        [
            ("click", ("livemon/cli/", "daemon/cli.py")),
            ("psutil", ("daemon/",)),
        ],
    )
    def test_only_importers(self, dependency, allowed):
        """click only in the two CLI layers; psutil only in the daemon."""
        for package in sorted(FIRST_PARTY):
            for path in (ROOT / package).rglob("*.py"):
                relative = path.relative_to(ROOT).as_posix()
                text = path.read_text()
                if relative.startswith(allowed):
                    continue
                assert f"import {dependency}" not in text, relative
                assert f"from {dependency}" not in text, relative

    def test_livemon_never_imports_daemon(self):
        """The dependency arrow runs ringbuf <- livemon <- daemon only."""
        forbidden = {"livemon": ("daemon",), "ringbuf": ("daemon", "livemon")}
        for package, names in forbidden.items():
            for path in (ROOT / package).rglob("*.py"):
                text = path.read_text()
                for name in names:
                    assert f"import {name}" not in text, path
                    assert f"from {name}" not in text, path


class TestOurPackages:
    @pytest.mark.parametrize("package", sorted(FIRST_PARTY))
    def test_resolves_to_this_repository(self, package):
        """PyPI's python-daemon or ringbuf must never shadow ours."""
        module = __import__(package)
        assert pathlib.Path(module.__file__).resolve().parent == ROOT / package

    @pytest.mark.parametrize("package", sorted(FIRST_PARTY))
    def test_installed_resolves_to_this_repository(self, package, tmp_path):
        """So does a fresh interpreter outside the tree (the install)."""
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import {package}; print({package}.__file__)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        path = pathlib.Path(out.stdout.strip()).resolve()
        assert path.parent == ROOT / package


class TestMain:
    @pytest.mark.parametrize("package", ["daemon", "livemon"])
    def test_importing_main_runs_nothing(self, package):
        """pydoc and autodoc may import ``__main__`` without running it."""
        result = subprocess.run(
            [sys.executable, "-c", f"import {package}.__main__"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert (result.returncode, result.stdout) == (0, "")

    @pytest.mark.parametrize(
        ("package", "prog"),
        [("daemon", "livemon-daemon"), ("livemon", "livemon")],
    )
    def test_python_m_runs_the_command(self, package, prog):
        """``python -m livemon`` and ``python -m daemon`` still work."""
        result = subprocess.run(
            [sys.executable, "-m", package, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: {prog} ")
