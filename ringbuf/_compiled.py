"""
The optional compiled put (``ringbuf/_fastput.c``), and when to use it.

setup.py builds it where a C compiler and Python's headers are found;
elsewhere the build skips it and the Python put runs alone.  Setting
``LIVEMON_PURE_PYTHON`` (any value) runs the Python path even when built:
the switch of the whole distribution, livemon's packer included.
"""

from __future__ import annotations

import os
import sys

PURE_PYTHON_ENV = "LIVEMON_PURE_PYTHON"


def gil_enabled() -> bool:
    """Whether the GIL is on, which both compiled parts rely on.

    A free-threaded build runs without it (3.13t; ``PYTHON_GIL=0``):
    then this says False and the Python path runs.
    """
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13+
    return is_enabled is None or bool(is_enabled())


def compiled_allowed() -> bool:
    """Whether the compiled parts may run here: not switched off by
    ``LIVEMON_PURE_PYTHON``, and the GIL on."""
    return not os.environ.get(PURE_PYTHON_ENV) and gil_enabled()


# Loaded only when allowed: loading a module that declares no Py_mod_gil
# slot turns a free-threaded interpreter's GIL on, with a warning.  Read
# at import, as the stdlib decides on its C accelerators.
if compiled_allowed():
    try:
        from ringbuf import _fastput  # type: ignore[attr-defined]
    except ImportError:  # not built: no compiler at install
        _fastput = None
else:
    _fastput = None


def install_put(writer: type, retired_word: int, clock_every: int) -> bool:
    """Make the compiled put ``writer.put``; return whether it is.

    As the stdlib's C accelerators replace their Python versions.  It
    stores the common case itself and hands anything else to the Python
    put (``writer._put_python``), so every check, count and error stays
    in Python and both paths keep one protocol.  Not installed: pure
    Python asked for, the GIL off, not built, or built for another
    layout than ``retired_word`` and ``clock_every`` say (``pip install
    -e .`` rebuilds it).
    """
    if _fastput is None or not compiled_allowed():
        return False
    if (
        retired_word != _fastput.RETIRED_WORD
        or clock_every != _fastput.CLOCK_EVERY
    ):
        return False
    writer.put = _fastput.method_for(writer)  # type: ignore[attr-defined]
    return True
