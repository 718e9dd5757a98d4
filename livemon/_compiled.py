"""
The optional compiled packer (``livemon/_fastpack.c``), and when to use it.

setup.py builds it where a C compiler and Python's headers are found;
elsewhere the build skips it and the Python path runs alone.  Setting
``LIVEMON_PURE_PYTHON`` (any value) runs the Python path even when built
(ringbuf's compiled put honours the same switch).
"""

from __future__ import annotations

import os
from typing import Any

from livemon import record as rec
from ringbuf._compiled import gil_enabled

try:
    from livemon import _fastpack  # type: ignore[attr-defined]
except ImportError:  # not built: no compiler at install
    _fastpack = None

PURE_PYTHON_ENV = "LIVEMON_PURE_PYTHON"


def compiled_pack() -> Any:
    """The compiled packer, or None: pure Python, the GIL off (see
    ``ringbuf._compiled.gil_enabled``), not built, or built for
    another record layout (``pip install -e .`` rebuilds it).

    ``pack(context, start_ns)`` returns the record's bytes for
    the common case and None for anything else, so it stands in front of
    ``RequestContext._scalars``/``_lists``: whatever it declines takes the
    Python path, which validates, counts or raises.
    """
    if (
        _fastpack is None
        or os.environ.get(PURE_PYTHON_ENV)
        or not gil_enabled()
    ):
        return None
    if (
        rec.SCALARS_STRUCT.format != _fastpack.SCALARS_FORMAT
        or rec.RECORD_DTYPE.itemsize != _fastpack.RECORD_BYTES
    ):
        return None
    return _fastpack.pack
