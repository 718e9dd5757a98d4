"""
Package layering: our ``daemon`` and ``ringbuf`` are the ones imported, and
each package imports only what its layer allows.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

_PROBE = """
import json, sys
before = set(sys.modules)
import {module}
new = {{name.split('.')[0] for name in set(sys.modules) - before}}
third_party = sorted(n for n in new if n not in sys.stdlib_module_names
                     and not n.startswith('_'))
print(json.dumps(third_party))
"""

ALLOWED = {
    "ringbuf": {"ringbuf", "numpy"},
    "livemon": {"livemon", "ringbuf", "numpy"},
    "livemon.cli": {"livemon", "ringbuf", "numpy", "click"},
    "daemon": {"daemon", "livemon", "ringbuf", "numpy", "psutil"},
    "daemon.cli": {"daemon", "livemon", "ringbuf", "numpy", "click", "psutil"},
}


def imported_third_party(module: str) -> set[str]:
    """Import ``module`` afresh; return the non-stdlib packages it loaded."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(json.loads(out.stdout))


class TestLayering:
    @pytest.mark.parametrize("module", sorted(ALLOWED))
    def test_imports_only_what_its_layer_allows(self, module):
        """Each package pulls in only its allowed third-party packages."""
        assert imported_third_party(module) <= ALLOWED[module]

    @pytest.mark.parametrize("package", ["daemon", "ringbuf", "livemon"])
    def test_resolves_to_this_repository(self, package):
        """PyPI's python-daemon or ringbuf must never shadow ours."""
        module = __import__(package)
        assert pathlib.Path(module.__file__).resolve().parent == ROOT / package

    def test_livemon_never_imports_daemon(self):
        """The dependency arrow runs ringbuf <- livemon <- daemon only."""
        forbidden = {"livemon": ("daemon",), "ringbuf": ("daemon", "livemon")}
        for package, names in forbidden.items():
            for path in (ROOT / package).rglob("*.py"):
                text = path.read_text()
                for name in names:
                    assert f"import {name}" not in text, path
                    assert f"from {name}" not in text, path
