"""Recipes: a link plan turned into what a run replays with no symbol work.

A plan says *what* each import binds to; a recipe says *where to fetch it*
at run time: for every import of every module, a (source instance, export
name) pair, the name already encoded. A run then fills each module's import
array with one ``wasmtime_instance_export_get`` call per import (a hash
lookup inside wasmtime) and instantiates; it resolves no symbol and builds no
Python object per import. (``export_nth`` would avoid the name, but wasmtime
walks the export list to find the n-th, which is quadratic for big modules.)

Everything a run creates besides the program's own modules comes from
generated modules, each one instantiation:

* **core**: the stack pointer, per-module ``__memory_base``/``__table_base``,
  every GOT entry (as globals with their planned values), exception tags,
  the indirect function table, and the memory when no WASI shim defines it;
* **shim**: the WASI wrappers (and the memory);
* the module that defines the memory also carries the **memory image**: the
  active data segments of every module whose data lands at its
  ``__memory_base`` plus a constant, at the addresses the plan gave them.
  wasmtime maps such a module's data copy-on-write from one image per
  compiled module, as ld.so maps a library's segments from its file, so a
  run no longer copies libc.so's 220 KiB of data into fresh pages (about
  55 page faults and 0.1 ms a run); those modules are instantiated from a
  variant with their active segments emptied
  (:meth:`ModuleImage.module_without_data`). Relocations
  (``__wasm_apply_data_relocs``) still run and write their pages as before.
  Not for a non-PIE main (it defines the memory itself) nor for modules
  loaded by a guest ``dlopen`` (their address is known only then);
* **plt**: PLT stubs and their table;
* **stubs**: functions that trap with a message (missing symbols);
* **filler**: active element segments writing GOT.func slots and PLT slots,
  instantiated after every module exists.
"""

from __future__ import annotations

from typing import Final, assert_never

import attrs
import wasmtime

from .core import lazy_trap_message
from .plan import (
    BindDirect,
    BindExport,
    BindGlobal,
    BindHost,
    BindMemory,
    BindPlt,
    BindTable,
    BindTag,
    BindTrap,
    BindWasi,
    LinkPlan,
    PlannedModule,
)
from .wasmbin import MAX_DATA_SEGMENTS, FuncType

# Source slots of the per-run instance list; module j is MODULE0 + j.
SRC_HOST_WASI: Final = -1  # a WASI host function from the linker (non-PIE main only)
SRC_DYLD: Final = -2  # a per-run dyld host function (guest dlopen)
SRC_CORE: Final = 0
SRC_SHIM: Final = 1
SRC_PLT: Final = 2
SRC_STUBS: Final = 3
MODULE0: Final = 4

# Bytes of data a plan's memory image holds at most: the generated module
# carrying it is compiled, cached and (in wasmrund) sent between processes
# like any module; libraries past this copy their own data, as without one.
# Its segments are bounded too, by what wasmtime accepts in one module.
MAX_IMAGE_BYTES: Final = 64 << 20

# (source slot, export name); host sources (negative slots) name a host function.
Source = tuple[int, bytes]


@attrs.frozen
class Recipe:
    core_globals: tuple[tuple[bool, int], ...]
    core_tags: tuple[FuncType, ...]
    core_table: int | None
    core_memory: tuple[int, int | None] | None
    wasi: tuple[tuple[str, FuncType], ...]
    shim_memory: tuple[int, int | None] | None  # None: the shim imports env.memory
    plt_types: tuple[FuncType, ...]
    stubs: tuple[tuple[FuncType, str], ...]
    imports: tuple[tuple[Source, ...], ...]  # per module, per import
    filler_tables: tuple[Source, ...]
    filler_functions: tuple[tuple[FuncType, Source], ...]
    filler_fills: tuple[tuple[int, int, int], ...]
    late_globals: tuple[tuple[int, int, str, int], ...]  # (global, module, export, base)
    # The memory image: (module, address, file offset, size) per segment,
    # and per module whether it is instantiated without its data.
    image: tuple[tuple[int, int, int, int], ...] = ()
    dataless: tuple[bool, ...] = ()
    # What identifies the image's content, for the generated modules' cache:
    # (file digest, address, file offset, size) per segment.
    image_key: tuple[tuple[str, int, int, int], ...] = ()

    def image_data(self, modules: list[PlannedModule]) -> list[tuple[int, bytes]]:
        """The image as (address, bytes) segments, for the code generator."""
        return [(a, modules[mi].image.data_bytes(o, n)) for mi, a, o, n in self.image]


def compiled_module(plan: LinkPlan, mi: int) -> wasmtime.Module:
    """The compiled module a run of ``plan`` instantiates for module ``mi``:
    without its data when the memory image holds it."""
    image = plan.modules[mi].image
    return image.module_without_data() if recipe_for(plan).dataless[mi] else image.module()


def recipe_for(plan: LinkPlan) -> Recipe:
    """The plan's recipe, built on first use and kept with the plan."""
    # The plan holds it as an opaque object: plan.py cannot name Recipe
    # without importing this module, which imports plan.py.
    cached = plan.recipe
    if isinstance(cached, Recipe):
        return cached
    recipe = build_recipe(plan)
    plan.recipe = recipe
    return recipe


def build_recipe(plan: LinkPlan) -> Recipe:
    """Turn a plan into a recipe (once per plan)."""
    root = plan.root
    nonpie = plan.nonpie
    mem_limits = (plan.memory_pages, plan.memory_max_pages)
    has_shim = bool(plan.wasi)

    core_table = None if nonpie else plan.table_size
    core_memory = None if (nonpie or has_shim) else mem_limits

    # Stubs: the plan's trap functions, then one per lazily missing PLT target.
    stubs: list[tuple[FuncType, str]] = [(t.type, t.message) for t in plan.traps]
    lazy_stub: dict[int, int] = {}
    for i, stub in enumerate(plan.plt):
        if stub.target is None:
            lazy_stub[i] = len(stubs)
            stubs.append((stub.type, lazy_trap_message(stub.importer, stub.symbol)))

    def module_export(owner: int, name: str) -> Source:
        assert name in plan.modules[owner].image.info.exports
        return (MODULE0 + owner, name.encode())

    def memory_source() -> Source:
        if nonpie:
            return module_export(root, "memory")
        if has_shim:
            return (SRC_SHIM, b"memory")
        return (SRC_CORE, b"memory")

    def table_source() -> Source:
        if nonpie:
            return module_export(root, "__indirect_function_table")
        return (SRC_CORE, b"table")

    imports: list[tuple[Source, ...]] = []
    for mi, pm in enumerate(plan.modules):
        srcs: list[Source] = []
        for b in pm.binds:
            match b:
                case BindDirect(owner, name) | BindExport(owner, name):
                    srcs.append(module_export(owner, name))
                case BindGlobal(index):
                    srcs.append((SRC_CORE, f"g{index}".encode()))
                case BindWasi(name):
                    if nonpie and mi == root:
                        srcs.append((SRC_HOST_WASI, name.encode()))
                    else:
                        srcs.append((SRC_SHIM, name.encode()))
                case BindPlt(plt_index):
                    srcs.append((SRC_PLT, str(plt_index).encode()))
                case BindTrap(trap_index):
                    srcs.append((SRC_STUBS, str(trap_index).encode()))
                case BindMemory():
                    srcs.append(memory_source())
                case BindTable():
                    srcs.append(table_source())
                case BindTag(index):
                    srcs.append((SRC_CORE, f"t{index}".encode()))
                case BindHost(name):
                    srcs.append((SRC_DYLD, name.encode()))
                case _:  # pragma: no cover - the planner produces only the kinds above
                    assert_never(b)
        imports.append(tuple(srcs))

    # The filler: GOT.func slots into the main table, PLT targets into the PLT table.
    filler_tables: list[Source] = []
    functions: list[tuple[FuncType, Source]] = []
    fn_index: dict[Source, int] = {}
    fills: list[tuple[int, int, int]] = []

    def function(ft: FuncType, src: Source) -> int:
        if src not in fn_index:
            fn_index[src] = len(functions)
            functions.append((ft, src))
        return fn_index[src]

    def target_type(owner: int, name: str) -> FuncType:
        info = plan.modules[owner].image.info
        ft = info.func_type(info.exports[name].index)
        assert ft is not None
        return ft

    if plan.table_fills or plan.plt:
        filler_tables.append(table_source())
        for fill in plan.table_fills:
            if fill.target is None:
                assert fill.trap is not None
                ft = plan.traps[fill.trap].type
                f = function(ft, (SRC_STUBS, str(fill.trap).encode()))
            else:
                owner, name = fill.target
                f = function(target_type(owner, name), module_export(owner, name))
            fills.append((0, fill.slot, f))
        if plan.plt:
            filler_tables.append((SRC_PLT, b"table"))
            for i, stub in enumerate(plan.plt):
                if stub.target is None:
                    f = function(stub.type, (SRC_STUBS, str(lazy_stub[i]).encode()))
                else:
                    f = function(stub.type, module_export(*stub.target))
                fills.append((1, i, f))

    image: list[tuple[int, int, int, int]] = []
    dataless = [False] * len(plan.modules)
    image_bytes = 0
    if not nonpie:
        for mi, pm in enumerate(plan.modules):
            segments = pm.image.relocatable_data()
            if segments is None:
                continue
            size = sum(n for _, _, n in segments)
            if (
                image_bytes + size > MAX_IMAGE_BYTES
                or len(image) + len(segments) > MAX_DATA_SEGMENTS
            ):
                continue  # this module copies its own data, as without an image
            image_bytes += size
            dataless[mi] = True
            image += [(mi, pm.memory_base + off, at, n) for off, at, n in segments]

    late = tuple(
        (gi, g.late[0], g.late[1], plan.modules[g.late[0]].memory_base)
        for gi, g in enumerate(plan.globals)
        if g.late is not None
    )
    return Recipe(
        core_globals=tuple((g.mutable, g.value) for g in plan.globals),
        core_tags=tuple(ft for _, ft in plan.tags),
        core_table=core_table,
        core_memory=core_memory,
        wasi=tuple(plan.wasi),
        shim_memory=None if nonpie else mem_limits,
        plt_types=tuple(s.type for s in plan.plt),
        stubs=tuple(stubs),
        imports=tuple(imports),
        filler_tables=tuple(filler_tables),
        filler_functions=tuple(functions),
        filler_fills=tuple(fills),
        late_globals=late,
        image=tuple(image),
        dataless=tuple(dataless),
        image_key=tuple((plan.modules[mi].image.digest, a, o, n) for mi, a, o, n in image),
    )
