"""Builds the optional C fast path; everything else is in setup.cfg.

``optional=True``: where no compiler (or no Python headers) is found the
build warns and goes on, and livemon runs its pure-Python path.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]

setup(
    ext_modules=[
        Extension(name, [path], optional=True, extra_compile_args=FLAGS)
        for name, path in (
            ("ringbuf._fastput", "ringbuf/_fastput.c"),
            ("livemon._fastpack", "livemon/_fastpack.c"),
        )
    ]
)
