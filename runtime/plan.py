"""The link plan: everything about a program's linking that does not depend on
a particular run.

Given the root module (a program or a library) and options, the planner
loads the NEEDED closure, fixes the order of the global symbol scope and of
instantiation, lays out memory and table, resolves every import to a binding,
assigns GOT and PLT slots, and records what must be filled after
instantiation. A run (see :mod:`.instance`) only replays the plan: it never
looks a symbol up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Final, NamedTuple

import attrs

from . import debug

# The bindings and the records they index are bind.py's (one binder for
# start-up and dlopen); re-exported for the recipe and other callers.
from .bind import BIND_MEMORY as BIND_MEMORY
from .bind import BIND_TABLE as BIND_TABLE
from .bind import BindDirect as BindDirect
from .bind import Binder
from .bind import BindExport as BindExport
from .bind import BindGlobal as BindGlobal
from .bind import BindHost as BindHost
from .bind import Binding as Binding
from .bind import BindMemory as BindMemory
from .bind import BindPlt as BindPlt
from .bind import BindTable as BindTable
from .bind import BindTag as BindTag
from .bind import BindTrap as BindTrap
from .bind import BindWasi as BindWasi
from .bind import PlannedGlobal as PlannedGlobal
from .bind import PltStub as PltStub
from .bind import TableFill as TableFill
from .bind import TrapStub as TrapStub
from .cache import ModuleCache
from .core import (
    ImportRole,
    dependency_order,
    global_scope,
    load_needed,
    scope_lookup,
)
from .errors import LimitError, LoadError, SymbolError
from .layout import (
    NULL_GUARD,
    PAGE,
    Layout,
    LayoutSymbols,
    align,
    place_memory,
    place_table,
)
from .module import ModuleImage
from .search import SearchPath, file_identity
from .wasmbin import (
    KIND_MEMORY,
    KIND_NAMES,
    KIND_TABLE,
    Export,
    FuncType,
    Limits,
    TableType,
)

DEFAULT_MAX_FILE_SIZE: Final = 256 << 20
DEFAULT_MAX_LIBRARIES: Final = 1024


@attrs.frozen
class LinkOptions:
    """Options that change the plan (and so are part of its identity).

    ``max_file_size``: a program or library file larger than this is refused
    before it is read (LimitError naming the file and the limit), at load
    time and on guest dlopen. ``max_libraries``: how many modules one run
    may load, the program and its load-time libraries plus every library
    the guest dlopens (a dlclose'd library still counts: its instance lives
    as long as the run).
    """

    bind_now: bool = False
    stack_size: int = 1 << 20
    max_memory: int = 1 << 32  # bytes the memory may grow to
    preload: tuple[str, ...] = ()
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_libraries: int = DEFAULT_MAX_LIBRARIES


class PlannedModule(NamedTuple):
    image: ModuleImage
    memory_base: int
    table_base: int
    tls_base: int | None
    needed: tuple[int, ...]  # indices of resolved NEEDED modules
    binds: tuple[Binding, ...] = ()


@attrs.define
class LinkPlan:
    root: int
    modules: list[PlannedModule]  # in global-scope (load) order
    inst_order: list[int]
    nonpie: bool
    memory_pages: int
    memory_max_pages: int | None
    table_size: int
    stack_low: int
    stack_high: int
    heap_base: int
    heap_end: int
    globals: list[PlannedGlobal]
    table_fills: list[TableFill]
    plt: list[PltStub]
    traps: list[TrapStub]
    wasi: list[tuple[str, FuncType]]
    tags: list[tuple[str, FuncType]]
    scope: dict[str, int]
    unresolved: list[tuple[str, str, str]]  # (importer, symbol, kind) non-weak misses
    canonical: dict[tuple[int, int], int]  # (module, function index) -> table slot
    global_index: dict[tuple, int]  # planned-global key -> index (e.g. ("sp",))
    options: LinkOptions
    recipe: object = None  # the Recipe built from this plan (see recipe.py), cached
    misses: list[str] = attrs.field(factory=list)  # search paths that held nothing
    timings: dict[str, float] = attrs.field(factory=dict)

    @property
    def root_module(self) -> PlannedModule:
        return self.modules[self.root]

    @property
    def layout_symbols(self) -> LayoutSymbols:
        """The layout symbols' values, for libraries loaded at run time."""
        return LayoutSymbols(self.stack_low, self.stack_high, self.heap_base, self.heap_end)


def _file_key(path: str) -> tuple[int, int] | str:
    return file_identity(path) or os.path.abspath(path)


@attrs.frozen
class NeededEdge:
    """How one NEEDED entry of a module was resolved (for ``wasmrun ldd``)."""

    name: str  # as written in the NEEDED entry
    path: str | None  # the file it resolved to; None: not found
    index: int | None  # the loaded module; None: not found or failed to load
    error: str | None = None  # why the file found could not be loaded


class Loader:
    """Loads the NEEDED closure breadth-first (the global scope order).

    The one place library names become files: the planner uses it, and so
    does ``wasmrun ldd`` (non-strict, recording failures instead of raising),
    so that ldd shows exactly what a run would load. A NEEDED name already
    loaded (by file name) is reused without a search, as ld.so does: a
    library without RUNTIME_PATH finds a sibling the program loaded through
    its own RUNTIME_PATH.
    """

    def __init__(
        self, cache: ModuleCache, search: SearchPath, options: LinkOptions | None = None
    ) -> None:
        self.cache = cache
        self.search = search
        self.options = options or LinkOptions()
        self.images: list[ModuleImage] = []
        self.needed: list[list[int]] = []
        self.edges: list[list[NeededEdge]] = []
        self.by_file: dict[tuple[int, int] | str, int] = {}
        self.by_name: dict[str, int] = {}
        # Paths tried and not found before each hit: if one appears later, a
        # cached plan is stale (the search would now find another file).
        self.misses: list[str] = []
        self.load_seconds = 0.0

    def add(self, path: str, name: str) -> int:
        key = _file_key(path)
        if key in self.by_file:
            return self.by_file[key]
        limit = self.options.max_libraries
        if len(self.images) >= limit:
            raise LimitError(
                f"{name}: too many libraries: the program and its libraries are over the "
                f"limit of {limit} modules in one run (max_libraries)"
            )
        t0 = time.perf_counter()
        image = self.cache.load(path, name, self.options.max_file_size)
        self.load_seconds += time.perf_counter() - t0
        if image.kind == "plain" and self.images:
            raise LoadError(
                f"{image.path}: not a shared library (it has no dylink.0 section), "
                f"needed by {self.images[0].display}"
            )
        if image.kind == "nonpie" and self.images:
            raise LoadError(
                f"{image.path}: not a shared library (it defines its own memory instead of "
                f"importing env.memory), needed by {self.images[0].display}"
            )
        idx = len(self.images)
        self.images.append(image)
        self.needed.append([])
        self.edges.append([])
        self.by_file[key] = idx
        self.by_name.setdefault(os.path.basename(name), idx)
        return idx

    def resolve(self, name: str, requester: ModuleImage, preload: bool = False) -> str:
        rpath = requester.dylink.runtime_path if requester.dylink else ()
        found, tried = self.search.lookup(name, requester.path, rpath)
        self.misses.extend(tried)
        if debug.LIBS:
            why = "preloaded" if preload else f"needed by {requester.display}"
            if found is None:
                debug.trace("libs", f"{name} => not found ({why})")
            else:
                rule = self.search.rule_for(found, name, requester.path, rpath)
                debug.trace("libs", f"{name} => {found} ({why}; found via {rule})")
        if found is None:
            where = (
                f"; searched {', '.join(os.path.dirname(t) or '.' for t in tried)}"
                if tried
                else ("; no library path set: use -L DIR or WASMRUN_LIBRARY_PATH")
            )
            raise LoadError(
                f"error while loading shared libraries: {name}: cannot open shared object "
                f"file: No such file or directory (needed by {requester.display}{where})"
            )
        return found

    # The NEEDED walk itself is core.load_needed's (dlopen's too); these
    # are the source it walks (core.NeededSource).

    def image(self, index: int) -> ModuleImage:
        return self.images[index]

    def count(self) -> int:
        return len(self.images)

    def loaded_by_name(self, name: str) -> int | None:
        return None if "/" in name else self.by_name.get(name)

    def find(self, name: str, requester: ModuleImage) -> str:
        return self.resolve(name, requester)

    def link(
        self, index: int, name: str, path: str | None, dep: int | None, error: str | None
    ) -> None:
        self.edges[index].append(NeededEdge(name, path, dep, error))
        if dep is not None and dep not in self.needed[index]:
            self.needed[index].append(dep)

    def closure(self, root_path: str, preload: Sequence[str], strict: bool = True) -> list[int]:
        """Load root, preloads and every NEEDED library; returns preload indices.

        With ``strict=False`` a library that is missing or fails to load is
        recorded in ``edges`` and the walk goes on."""
        root = self.add(root_path, root_path)
        if debug.LIBS:
            debug.trace("libs", f"{root_path}: {self.images[root].kind} module, loaded first")
        pre = []
        for p in preload:
            pre.append(self.add(self.resolve(p, self.images[root], preload=True), p))
        load_needed(self, range(len(self.images)), strict)
        return pre


def _check_nonpie_root(image: ModuleImage, has_libraries: bool) -> None:
    """A main that is not position-independent defines the memory and table
    everyone shares; it cannot also import them (there would be nothing to
    import them from)."""
    for imp in image.info.imports:
        if imp.module == "env" and imp.kind in (KIND_MEMORY, KIND_TABLE):
            what = "memory" if imp.kind == KIND_MEMORY else "table"
            if image.dylink is None:
                raise LoadError(
                    f"{image.path}: imports its {what} (env.{imp.name}) but has no dylink.0 "
                    "section, so it cannot be linked as a position-independent module"
                )
            raise LoadError(f"{image.path}: a non-PIE main must define its {what}, not import it")


def _check_nonpie_exports(plan: LinkPlan) -> None:
    """What a run takes from a non-PIE (or plain WASI) main's exports."""
    image = plan.root_module.image
    exports = image.info.exports
    needs_memory = len(plan.modules) > 1 or bool(plan.wasi)
    memory = exports.get("memory")
    if needs_memory and (memory is None or memory.kind != KIND_MEMORY):
        raise LoadError(
            f"{image.path}: does not export its memory as 'memory' "
            "(needed by its libraries and by WASI)"
        )
    needs_table = bool(plan.table_fills or plan.plt) or any(
        isinstance(b, BindTable) for pm in plan.modules for b in pm.binds
    )
    table = exports.get("__indirect_function_table")
    if needs_table and (table is None or table.kind != KIND_TABLE):
        raise LoadError(
            f"{image.path}: non-PIE main does not export __indirect_function_table "
            "(link it with --export-table --growable-table)"
        )


class Planner:
    """Builds a :class:`LinkPlan`; one planner per plan."""

    def __init__(self, cache: ModuleCache, search: SearchPath, options: LinkOptions) -> None:
        self.cache = cache
        self.search = search
        self.options = options

    def plan(self, root_path: str, strict: bool = True) -> LinkPlan:
        """Build the plan; with ``strict=False`` unresolved symbols are only
        recorded in ``plan.unresolved`` (for ``wasmrun ldd``)."""
        t0 = time.perf_counter()
        loader = Loader(self.cache, self.search, self.options)
        preload = loader.closure(root_path, self.options.preload)
        images = loader.images
        root = 0
        # A plain WASI program (no dylink.0) defines its memory like a non-PIE main.
        nonpie = images[root].kind in ("nonpie", "plain")
        if nonpie:
            rest = dependency_order(loader.needed, [*preload, *loader.needed[root]])
            inst_order = [root, *(i for i in rest if i != root)]
        else:
            inst_order = dependency_order(loader.needed, [*preload, root])
        if nonpie:
            _check_nonpie_root(images[root], len(images) > 1)
        layout = self._layout(images, nonpie)
        resolver = _Resolver(images, loader.needed, inst_order, layout, nonpie, self.options)
        plan = resolver.run(strict)
        if nonpie:
            _check_nonpie_exports(plan)
        plan.misses = loader.misses
        plan.timings = {
            "load": loader.load_seconds,
            "link": time.perf_counter() - t0 - loader.load_seconds,
        }
        return plan

    def _layout(self, images: list[ModuleImage], nonpie: bool) -> Layout:
        opts = self.options
        mem_bases: list[int] = []
        table_bases: list[int] = []
        tls_bases: list[int | None] = []
        main_heap: tuple[int | None, int | None] = (None, None)
        mem_min = 0
        if nonpie:
            main = images[0]
            stack_low = main.export_value("__stack_low", 0, 0) or 0
            stack_high = main.export_value("__stack_high", 0, 0) or 0
            mem_min = main.info.memories[0].minimum * PAGE if main.info.memories else 0
            main_heap = (
                main.export_value("__heap_base", 0, 0),
                main.export_value("__heap_end", 0, 0),
            )
            # Libraries go into memory grown above the main's initial pages:
            # its data, stack and heap (__heap_base..__heap_end, which the C
            # library's malloc takes as its first region) all lie below.
            addr = max(mem_min, main_heap[0] or 0, main_heap[1] or 0, NULL_GUARD)
            tbase = main.info.tables[0].limits.minimum if main.info.tables else 1
        else:
            stack_low = NULL_GUARD
            stack_high = align(stack_low + opts.stack_size, 4)
            addr = stack_high
            tbase = 1  # slot 0 stays null: a null function pointer traps
        for i, image in enumerate(images):
            dl = image.dylink
            if nonpie and i == 0:
                mem_bases.append(0)
                table_bases.append(0)
                tls_bases.append(None)
                continue
            if dl is None:
                raise LoadError(f"{image.path}: not a shared library (no dylink.0 section)")
            placed = place_memory(image, addr)
            mem_bases.append(placed.memory_base)
            tls_bases.append(placed.tls_base)
            addr = placed.end
            if addr > opts.max_memory:
                raise LimitError(
                    f"{image.path}: needs {dl.mem_size} bytes of memory (dylink.0 MEM_INFO), "
                    f"which exceeds the memory limit of {opts.max_memory} bytes"
                )
            tbase = place_table(image, tbase)
            table_bases.append(tbase)
            tbase += dl.table_size
            if tbase > 10_000_000:
                raise LimitError(
                    f"{image.path}: needs {dl.table_size} table slots (dylink.0 MEM_INFO), "
                    "which exceeds the table limit of 10000000"
                )
        libraries_end = align(addr, 4)
        limits = [
            imp.desc
            for im in images
            for imp in im.info.imports
            if imp.kind == KIND_MEMORY and isinstance(imp.desc, Limits)
        ]
        if nonpie:
            limits.extend(images[0].info.memories[:1])
        min_pages = max([lim.minimum for lim in limits] or [0])
        pages = max(-(-libraries_end // PAGE), min_pages, 1)
        # The heap the layout symbols describe: after the libraries, to the
        # end of the initial memory; a non-PIE main's own, if it has one, so
        # that libraries (malloc in libc.so) see what the main sees.
        heap_base, heap_end = libraries_end, pages * PAGE
        if main_heap[0] is not None:
            heap_base = main_heap[0]
            heap_end = main_heap[1] if main_heap[1] is not None else max(heap_base, mem_min)
        maxes = [lim.maximum for lim in limits if lim.maximum is not None]
        max_pages = min([*maxes, opts.max_memory // PAGE])
        if pages > max_pages:
            raise LimitError(
                f"{images[0].path}: the program needs {pages} pages of memory, "
                f"over the limit of {max_pages} pages"
            )
        return Layout(
            mem_bases=tuple(mem_bases),
            table_bases=tuple(table_bases),
            tls_bases=tuple(tls_bases),
            symbols=LayoutSymbols(stack_low, stack_high, heap_base, heap_end),
            pages=pages,
            max_pages=max_pages,
            table_end=tbase,
        )


class _Resolver:
    """Resolves every import of every module to a binding: the planner's
    side of the one binder (:class:`~.bind.Binder`, through
    :class:`~.bind.BindSite`). It looks symbols up in the precomputed
    global scope (a definer of the wrong kind is an error), orders by
    instantiation position, allocates table slots after the layout's, and
    records what is missing (for ``--bind-now`` and for ``wasmrun ldd``);
    nothing of a run exists yet, so a data address that is not a constant
    is filled once its module is instantiated (a late global)."""

    def __init__(
        self,
        images: list[ModuleImage],
        needed: list[list[int]],
        inst_order: list[int],
        layout: Layout,
        nonpie: bool,
        options: LinkOptions,
    ) -> None:
        self.images = images
        self.needed = needed
        self.inst_order = inst_order
        self.inst_pos = {m: i for i, m in enumerate(inst_order)}
        self.layout = layout
        self.nonpie = nonpie
        self.options = options
        self.binder = Binder(self)
        self.table_fills: list[TableFill] = []
        self.table_end: int = layout.table_end
        self.canonical: dict[tuple[int, int], int] = {}
        self.wasi: dict[str, FuncType] = {}
        self.tags: dict[str, FuncType] = {}
        self.errors: list[str] = []
        self.unresolved: list[tuple[str, str, str]] = []
        self.scope = global_scope(images)
        self._index_elements()

    def _index_elements(self) -> None:
        """Record where each module's own element segments put functions, so
        that GOT.func entries reuse those slots: one address per function."""
        for idx, image in enumerate(self.images):
            names = image.info.imported_global_names()
            env = {
                g: self.layout.table_bases[idx]
                for g, n in names.items()
                if n == ("env", "__table_base")
            }
            for seg in image.info.elements:
                if seg.table != 0:
                    continue
                off = seg.offset.eval_i32(env)
                if off is None:
                    continue
                for k, f in enumerate(seg.funcs):
                    if f is not None:
                        self.canonical.setdefault((idx, f), off + k)

    # -- the binder's site (bind.BindSite) ------------------------------------

    @property
    def symbols(self) -> LayoutSymbols:
        return self.layout.symbols

    def image(self, index: int) -> ModuleImage:
        return self.images[index]

    def bases(self, index: int) -> tuple[int, int, int | None]:
        L = self.layout
        return L.mem_bases[index], L.table_bases[index], L.tls_bases[index]

    def _exports(self, index: int) -> dict[str, Export]:
        return self.images[index].info.exports

    def owner(self, name: str, kind: int, importer: int) -> int | None:
        owner = scope_lookup(name, None, self.scope, (), self._exports)
        if owner is None:
            return None
        exp = self.images[owner].info.exports[name]
        if exp.kind != kind:
            raise SymbolError(
                f"{self.images[importer].display}: symbol {name} is imported as a "
                f"{KIND_NAMES[kind]} but {self.images[owner].display} exports a "
                f"{KIND_NAMES[exp.kind]}"
            )
        return owner

    def ready(self, owner: int, importer: int) -> bool:
        return self.inst_pos[owner] < self.inst_pos[importer]

    def lazy(self, role: ImportRole) -> bool:
        return not self.options.bind_now

    def undefined(self, importer: int, name: str, kind: str, reported: bool) -> None:
        display = self.images[importer].display
        self.unresolved.append((display, name, kind))
        if reported:
            self.errors.append(f"{display}: undefined symbol: {name} ({kind})")

    def new_slot(self, importer: int) -> int:
        slot = self.table_end
        self.table_end += 1
        return slot

    def fill(self, slot: int, target: tuple[int, str] | None, trap: int | None) -> None:
        self.table_fills.append(TableFill(slot, target, trap))

    def late_address(self, owner: int, name: str) -> int | None:
        return None  # no run yet: a late global

    def main_stack_pointer(self, importer: int) -> Binding:
        if "__stack_pointer" not in self.images[0].info.exports:
            raise LoadError(
                f"{self.images[0].path}: non-PIE main does not export __stack_pointer "
                f"(needed by {self.images[importer].display}; "
                "link it with --export=__stack_pointer)"
            )
        return BindExport(0, "__stack_pointer")

    def wasi_type(self, name: str, ft: FuncType) -> FuncType:
        return self.wasi.setdefault(name, ft)

    def interpose(self, importer: int, name: str, ft: FuncType) -> Binding | None:
        return None

    def run(self, strict: bool = True) -> LinkPlan:
        if not self.nonpie:
            # Always there, even when no load-time module imports it: a
            # library dlopen'ed later may.
            self.binder.global_(("sp",), True, self.layout.symbols.stack_high)
        planned = []
        for mi, image in enumerate(self.images):
            planned.append(
                PlannedModule(
                    image=image,
                    memory_base=self.layout.mem_bases[mi],
                    table_base=self.layout.table_bases[mi],
                    tls_base=self.layout.tls_bases[mi],
                    needed=tuple(self.needed[mi]),
                    binds=self.binder.bind(mi),
                )
            )
        if self.errors and self.options.bind_now and strict:
            raise SymbolError("symbol lookup error: " + "; ".join(self.errors))
        data_missing = [e for e in self.errors if e.endswith("(data)")]
        if data_missing and strict:
            raise SymbolError("symbol lookup error: " + "; ".join(data_missing))
        table_imports = [
            imp.desc.limits.minimum
            for im in self.images
            for imp in im.info.imports
            if imp.kind == KIND_TABLE and isinstance(imp.desc, TableType)
        ]
        return LinkPlan(
            root=0,
            modules=planned,
            inst_order=self.inst_order,
            nonpie=self.nonpie,
            memory_pages=self.layout.pages,
            memory_max_pages=self.layout.max_pages,
            table_size=max([self.table_end, *table_imports]),
            stack_low=self.layout.symbols.stack_low,
            stack_high=self.layout.symbols.stack_high,
            heap_base=self.layout.symbols.heap_base,
            heap_end=self.layout.symbols.heap_end,
            globals=self.binder.globals,
            table_fills=self.table_fills,
            plt=self.binder.plt,
            traps=self.binder.traps,
            wasi=sorted(self.wasi.items()),
            tags=list(self.tags.items()),
            scope=self.scope,
            unresolved=self.unresolved,
            canonical=self.canonical,
            global_index=self.binder.global_keys,
            options=self.options,
        )
