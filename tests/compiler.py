"""
Whether this machine can build the compiled fast path: a C compiler and
Python's headers (setup.py skips the build without them).
"""

from __future__ import annotations

import os
import shutil
import sysconfig

HAS_COMPILER = bool(
    shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0])
    and os.path.exists(
        os.path.join(sysconfig.get_paths()["include"], "Python.h")
    )
)
