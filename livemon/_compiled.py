"""
The optional compiled packer (``livemon/_fastpack.c``), and when to use it.

setup.py builds it where a C compiler and Python's headers are found;
elsewhere the build skips it and the Python path runs alone.  Setting
``LIVEMON_PURE_PYTHON`` (any value) runs the Python path even when built
(ringbuf's compiled put honours the same switch).
"""

from __future__ import annotations

from typing import Any

import ringbuf
from livemon import record as rec

# Loaded only when allowed (see ringbuf.compiled_allowed).
if ringbuf.compiled_allowed():
    try:
        from livemon import _fastpack  # type: ignore[attr-defined]
    except ImportError:  # not built: no compiler at install
        _fastpack = None
else:
    _fastpack = None

PURE_PYTHON_ENV = ringbuf.PURE_PYTHON_ENV


def compiled_pack() -> Any:
    """Return the compiled packer, or None: switched off or the GIL off
    (``ringbuf.compiled_allowed``), not built, or built for another
    record layout (``pip install -e .`` rebuilds it).

    ``pack(context, start_ns)`` returns the record's bytes for the common
    case and None for anything else, so it stands in front of
    ``RequestContext._scalars``/``_lists``: whatever it declines takes the
    Python path, which validates, counts or raises.
    """
    if _fastpack is None or not ringbuf.compiled_allowed():
        return None
    if (
        rec.SCALARS_STRUCT.format != _fastpack.SCALARS_FORMAT
        or rec.RECORD_DTYPE.itemsize != _fastpack.RECORD_BYTES
        or rec.MAX_DOMAINS != _fastpack.MAX_LIST
        or rec.MAX_AGENTS != _fastpack.MAX_LIST
    ):
        return None
    return _fastpack.pack
