"""``wasmrun ldd``: the resolved dependency tree and unresolved symbols.

Decodes only (nothing is compiled), and keeps going past a missing library
so that one run shows every problem.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from .cache import ModuleCache
from .errors import LoadError, one_line
from .module import ModuleKind
from .plan import LinkOptions, Loader, NeededEdge, Planner
from .search import SearchPath

_KINDS: dict[ModuleKind, str] = {
    "pic": "dynamically linked",
    "nonpie": "non-PIE main",
    "plain": "not dynamic",
}


@attrs.frozen
class LddReport:
    lines: list[str]
    missing_libraries: list[str]
    unresolved: list[tuple[str, str, str]]  # (module, symbol, kind)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing_libraries or self.unresolved or self.error)


def ldd(
    cache: ModuleCache, search: SearchPath, path: str, options: LinkOptions | None = None
) -> LddReport:
    """The dependency tree as the loader resolves it (the planner's own
    :class:`~.plan.Loader`, not a second search), then the unresolved
    symbols of a plan built from the same files."""
    options = options or LinkOptions()
    loader = Loader(cache, search, options)
    loader.closure(path, (), strict=False)
    root = loader.images[0]
    what = "program" if root.is_executable else "library"
    lines = [f"{path} ({what}, {_KINDS[root.kind]})"]
    missing: list[str] = []
    expanded: set[int] = set()
    # Depth-first over the edges with an explicit stack (a long NEEDED chain
    # must not hit the recursion limit); a subtree is printed right under
    # its line. The depth of an entry is the height of the stack.
    stack: list[tuple[Iterator[NeededEdge], tuple[int, ...]]] = [(iter(loader.edges[0]), (0,))]
    while stack:
        edges, chain = stack[-1]
        edge = next(edges, None)
        if edge is None:
            stack.pop()
            continue
        pad = "    " * len(stack)
        edge = attrs.evolve(
            edge, name=one_line(edge.name)
        )  # a name from the file: keep it one line
        if edge.path is None:
            lines.append(f"{pad}{edge.name} => not found")
            missing.append(edge.name)
        elif edge.index is None:
            lines.append(f"{pad}{edge.name} => {edge.path}")
            lines.append(f"{pad}    error: {edge.error}")
            missing.append(edge.name)
        elif edge.index in chain:
            lines.append(f"{pad}{edge.name} => {edge.path} (cycle)")
        elif edge.index in expanded:
            lines.append(f"{pad}{edge.name} => {edge.path} (see above)")
        else:
            expanded.add(edge.index)
            lines.append(f"{pad}{edge.name} => {edge.path}")
            stack.append((iter(loader.edges[edge.index]), (*chain, edge.index)))
    if missing:
        return LddReport(lines, missing, [])
    try:
        plan = Planner(cache, search, options).plan(path, strict=False)
    except LoadError as e:
        return LddReport(lines, [], [], str(e))
    unresolved = [(one_line(m), one_line(n), k) for m, n, k in plan.unresolved]
    return LddReport(lines, [], unresolved)
