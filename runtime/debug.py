"""``WASMRUN_DEBUG``: what the linker does, on stderr, like glibc's ``LD_DEBUG``.

``WASMRUN_DEBUG`` is a comma- (or colon-, or space-) separated list of:

* ``libs``: each library's file and the search rule that found it (or
  that it was already loaded), for the program's libraries and for every
  ``dlopen`` with its result;
* ``bindings``: each import's binding: direct, through a PLT slot, lazy
  (undefined, traps if called), weak (undefined), or a GOT entry's value
  (weak-zero for an undefined weak one);
* ``symbols``: each ``dlsym`` (and each symbol the embedding API looks up)
  with its result;
* ``all``: all of the above; ``help``: print this list (and trace nothing).

Lines go to stderr as ``wasmrun[PID]: CATEGORY: message``. The variable is
read once, when wasmrun is imported. Off, it costs nothing on a run's path:
the checks sit where links are planned and where dlopen/dlsym are called,
never where a cached plan is replayed. With ``libs`` or ``bindings`` on,
:meth:`~.api.Runtime.plan` plans afresh each time rather than replaying a
cached plan silently.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Final, NamedTuple

from .errors import one_line

ENV_DEBUG: Final = "WASMRUN_DEBUG"
CATEGORIES: Final = ("libs", "bindings", "symbols")

HELP: Final = """\
Valid options for the WASMRUN_DEBUG environment variable are:

  libs        each library's file and the search rule that found it; dlopen
  bindings    each import's binding (direct, PLT, lazy, weak, GOT values)
  symbols     each dlsym and symbol lookup with its result
  all         all of the above
  help        display this help message

Several options are separated by commas, e.g. WASMRUN_DEBUG=libs,bindings
"""


class DebugFlags(NamedTuple):
    """Which categories are traced."""

    libs: bool = False
    bindings: bool = False
    symbols: bool = False
    help: bool = False
    unknown: tuple[str, ...] = ()


def parse(value: str | None) -> DebugFlags:
    """The flags a ``WASMRUN_DEBUG`` value asks for."""
    words = [w for w in re.split(r"[,:\s]+", (value or "").strip().lower()) if w]
    wanted = set(CATEGORIES) if "all" in words else {w for w in words if w in CATEGORIES}
    unknown = tuple(w for w in words if w not in CATEGORIES and w not in ("all", "help"))
    return DebugFlags(
        libs="libs" in wanted,
        bindings="bindings" in wanted,
        symbols="symbols" in wanted,
        help="help" in words,
        unknown=unknown,
    )


# The switches the linker tests (module attributes: one lookup when off).
LIBS = False
BINDINGS = False
SYMBOLS = False


def _to_stderr(text: str) -> None:
    sys.stderr.write(text)


# Where trace lines go: this process's stderr, unless a host that runs
# linking for someone else (a daemon's worker) passes its own writer.
_write: Callable[[str], None] = _to_stderr


def configure(value: str | None, write: Callable[[str], None] | None = None) -> DebugFlags:
    """Switch tracing to what ``value`` asks for (done at import from the
    environment; a daemon's worker and tests call it directly), writing
    lines with ``write`` (default: ``sys.stderr``). ``help`` and unknown
    options print the list of options."""
    global LIBS, BINDINGS, SYMBOLS, _write
    flags = parse(value)
    LIBS, BINDINGS, SYMBOLS = flags.libs, flags.bindings, flags.symbols
    _write = write if write is not None else _to_stderr
    if flags.unknown:
        _write(f"wasmrun: warning: unknown {ENV_DEBUG} option(s): {', '.join(flags.unknown)}\n")
    if flags.help or flags.unknown:
        _write(HELP)
    return flags


def trace(category: str, message: str) -> None:
    """One trace line (names from files kept on one line)."""
    _write(f"wasmrun[{os.getpid()}]: {category}: {one_line(message)}\n")


if os.environ.get(ENV_DEBUG):
    configure(os.environ[ENV_DEBUG])
