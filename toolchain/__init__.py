"""wasmrun's C/C++ toolchain: the ``wasmrun-cc``/``wasmrun-c++`` driver, the
sysroot it links against, and the corpus builder the tests use.

This module stays import-light: the runtime asks it where the sysroot is on
every start (``sysroot_lib_dir``), so it must not pull in zig or wasmtime.
"""

from __future__ import annotations

import os

__all__ = ["sysroot_lib_dir"]


def sysroot_lib_dir() -> str | None:
    """The directory holding the sysroot's ``libc.so``, or None if there is none.

    The runtime searches it last, after ``-L``, ``WASMRUN_LIBRARY_PATH`` and
    RUNTIME_PATH, the way ld.so falls back to /usr/lib.  ``$WASMRUN_SYSROOT``
    decides alone when it is set (so setting it to a missing directory turns
    the fallback off); otherwise the sysroot shipped in the wheel, then the
    per-user one that ``wasmrun-cc`` builds (``$XDG_CACHE_HOME/wasmrun-sysroot``).
    Only existence is checked here (cheap); freshness is the driver's job.
    """
    env = os.environ.get("WASMRUN_SYSROOT")
    if env:
        candidates = [os.path.join(env, "lib")]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        home_cache = os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.environ.get("XDG_CACHE_HOME") or home_cache
        candidates = [
            os.path.join(here, "sysroot", "lib"),
            os.path.join(cache, "wasmrun-sysroot", "lib"),
        ]
    for d in candidates:
        if os.path.isfile(os.path.join(d, "libc.so")):
            return d
    return None
