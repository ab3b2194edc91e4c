"""Where libraries are found: the ld.so-style search path.

Order, first match wins: names containing ``/`` are paths (relative to the
current directory); otherwise the explicit ``-L``/``--library-path`` dirs,
then ``WASMRUN_LIBRARY_PATH``, then the requesting module's RUNTIME_PATH
(``$ORIGIN``/``${ORIGIN}`` = the requester's directory), then configured
defaults.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs

ENV_LIBRARY_PATH = "WASMRUN_LIBRARY_PATH"


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``: how a library loaded twice
    under two names (a diamond, a symlink, a dlopen of a loaded library) is
    recognised as one. None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    return (st.st_dev, st.st_ino)


def expand_origin(entry: str, origin_dir: str) -> str:
    return entry.replace("${ORIGIN}", origin_dir).replace("$ORIGIN", origin_dir)


def split_path_list(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


@attrs.frozen
class SearchPath:
    """The directories to search, fixed for one load."""

    explicit: tuple[str, ...] = ()
    from_env: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        library_path: Sequence[str] = (),
        env: dict[str, str] | None = None,
        defaults: Sequence[str] = (),
    ) -> SearchPath:
        environ = os.environ if env is None else env
        return cls(
            tuple(library_path),
            tuple(split_path_list(environ.get(ENV_LIBRARY_PATH))),
            tuple(defaults),
        )

    def candidates(self, name: str, requester_path: str, runtime_path: Sequence[str]) -> list[str]:
        """Every path tried for ``name``, in order (for messages and ldd)."""
        if "/" in name:
            return [name]
        origin = os.path.dirname(os.path.abspath(requester_path))
        dirs = [
            *self.explicit,
            *self.from_env,
            *(expand_origin(p, origin) for p in runtime_path),
            *self.defaults,
        ]
        return [os.path.join(d, name) for d in dict.fromkeys(dirs)]  # each directory once

    def rule_for(
        self, found: str, name: str, requester_path: str, runtime_path: Sequence[str]
    ) -> str:
        """Which search rule gave ``found`` for ``name`` (WASMRUN_DEBUG=libs)."""
        if "/" in name:
            return "a path"
        origin = os.path.dirname(os.path.abspath(requester_path))
        rules = [
            *((d, f"-L {d}") for d in self.explicit),
            *((d, f"{ENV_LIBRARY_PATH} {d}") for d in self.from_env),
            *((expand_origin(p, origin), f"RUNTIME_PATH {p}") for p in runtime_path),
            *((d, f"default path {d}") for d in self.defaults),
        ]
        for d, rule in rules:
            if os.path.join(d, name) == found:
                return rule
        return "search path"

    def find(self, name: str, requester_path: str, runtime_path: Sequence[str]) -> str | None:
        return self.lookup(name, requester_path, runtime_path)[0]

    def lookup(
        self, name: str, requester_path: str, runtime_path: Sequence[str]
    ) -> tuple[str | None, list[str]]:
        """The first existing candidate, and the candidates tried before it
        (a cached plan is stale if one of those appears later)."""
        misses: list[str] = []
        for cand in self.candidates(name, requester_path, runtime_path):
            if os.path.isfile(cand):
                return cand, misses
            misses.append(cand)
        return None, misses
