"""``wasmrun ldd``: the resolved dependency tree and unresolved symbols.

Decodes only (nothing is compiled), and keeps going past a missing library
so that one run shows every problem.
"""

from __future__ import annotations

import os

import attrs

from .cache import ModuleCache
from .errors import LoadError
from .plan import LinkOptions, Planner
from .search import SearchPath

_KINDS = {"pic": "dynamically linked", "nonpie": "non-PIE main", "plain": "not dynamic"}


@attrs.frozen
class LddReport:
    lines: list[str]
    missing_libraries: list[str]
    unresolved: list[tuple[str, str, str]]  # (module, symbol, kind)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing_libraries or self.unresolved or self.error)


def ldd(cache: ModuleCache, search: SearchPath, path: str) -> LddReport:
    root = cache.load(path, path)
    what = "program" if root.is_executable else "library"
    lines = [f"{path} ({what}, {_KINDS[root.kind]})"]
    missing: list[str] = []
    expanded: set[str] = set()

    def walk(image, depth: int, chain: tuple[str, ...]) -> None:
        rpath = image.dylink.runtime_path if image.dylink else ()
        for dep in image.needed:
            found = search.find(dep, image.path, rpath)
            pad = "    " * depth
            if found is None:
                lines.append(f"{pad}{dep} => not found")
                missing.append(dep)
                continue
            real = os.path.realpath(found)
            if real in chain:
                lines.append(f"{pad}{dep} => {found} (cycle)")
                continue
            if real in expanded:
                lines.append(f"{pad}{dep} => {found} (see above)")
                continue
            expanded.add(real)
            lines.append(f"{pad}{dep} => {found}")
            try:
                child = cache.load(found, dep)
            except LoadError as e:
                lines.append(f"{pad}    error: {e}")
                missing.append(dep)
                continue
            walk(child, depth + 1, (*chain, real))

    walk(root, 1, (os.path.realpath(path),))
    if missing:
        return LddReport(lines, missing, [])
    try:
        plan = Planner(cache, search, LinkOptions()).plan(path, strict=False)
    except LoadError as e:
        return LddReport(lines, [], [], str(e))
    return LddReport(lines, [], list(plan.unresolved))
