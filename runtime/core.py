"""The linking core: the phases that loading a program and guest ``dlopen``
both go through, after musl's ldso/dynlink.c (load, map, relocate, init).

* **Closure and order** (:func:`load_needed`, :func:`dependency_order`):
  the NEEDED walk, breadth-first and de-duplicated, then dependencies
  first, a cycle's back-edge left to a PLT.
* **Scope** (:func:`global_scope`, :func:`scope_lookup`): which module's
  export a symbol resolves to.
* **Layout** (:mod:`.layout`): where a module's data, TLS block and table
  slots go, and the layout symbols.
* **Symbol resolution** (:func:`import_role`, :func:`resolve_function`, :func:`data_symbol_base`,
  :func:`module_global_value`, :func:`check_data_export`,
  :func:`canonical_slot`): how a function
  import binds (directly, through a PLT slot, to a weak trap, or not at
  all), what a data symbol's address is relative to, the values of a
  module's own ``env`` globals; with the messages for what goes wrong.
  :mod:`.bind` applies them to every import of a module, for both paths.
* **Initialisation** (:func:`initialize`): TLS set-up, then data relocations
  of every module, then constructors, dependencies first.

The start-up path (:mod:`.plan`, :mod:`.instance`) runs these phases once
per program and caches what it can; :mod:`.dlopen` runs them on the running
instance set for each library the guest loads, through the narrow view of
the run that :class:`~.dlopen.LinkedRun` describes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Final, NamedTuple, Protocol

import wasmtime

from . import debug
from .errors import GuestTrap, LoadError, SymbolError
from .layout import LAYOUT_SYMBOLS, LayoutSymbols
from .module import HOUSEKEEPING_EXPORTS, ModuleImage
from .wasmbin import (
    KIND_FUNC,
    KIND_GLOBAL,
    KIND_MEMORY,
    KIND_NAMES,
    KIND_TABLE,
    KIND_TAG,
    Export,
    FuncType,
    GlobalType,
    Import,
)
from .wasmtime_seam import call_void, get_export

# -- closure and order ------------------------------------------------------------


def dependency_order(
    needed: Sequence[Sequence[int]],
    roots: Sequence[int],
    within: Collection[int] | None = None,
) -> list[int]:
    """Modules in dependency order (DFS post-order from each root in turn,
    dependencies in NEEDED order): a module comes after what it needs,
    except along a cycle's back-edge (bound through a PLT). With ``within``,
    only those modules are visited (dlopen: the libraries not loaded yet).

    Iterative: a NEEDED chain may be longer than the recursion limit."""
    order: list[int] = []
    seen: set[int] = set()
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, 0)]
        while stack:
            node, k = stack.pop()
            deps = needed[node]
            if k < len(deps):
                stack.append((node, k + 1))
                d = deps[k]
                if d not in seen and (within is None or d in within):
                    seen.add(d)
                    stack.append((d, 0))
            else:
                order.append(node)
    return order


class NeededSource(Protocol):
    """What the NEEDED walk needs from whoever loads (the planner's
    :class:`~.plan.Loader`, dlopen's group): its modules by index, its own
    rules for finding and loading a file, and its own error messages."""

    def image(self, index: int) -> ModuleImage:
        """The decoded module ``index``."""
        ...

    def count(self) -> int:
        """How many modules there are; a module loaded next gets this index."""
        ...

    def loaded_by_name(self, name: str) -> int | None:
        """A loaded module that NEEDED name ``name`` is reused for, without a
        search (a bare name a loaded library answers to), or None."""
        ...

    def find(self, name: str, requester: ModuleImage) -> str:
        """The file NEEDED name ``name`` of ``requester`` resolves to; raises
        (the source's own error) if there is none."""
        ...

    def add(self, path: str, name: str) -> int:
        """Load ``path`` (NEEDED ``name``), or find it loaded by file identity
        (:func:`~.search.file_identity`); its index. Raises the source's own
        errors (limits, not a shared library)."""
        ...

    def link(
        self, index: int, name: str, path: str | None, dep: int | None, error: str | None
    ) -> None:
        """Record how NEEDED ``name`` of module ``index`` resolved: to file
        ``path`` and module ``dep``; ``dep`` None (non-strict only): not
        found, or ``error`` says why it failed to load."""
        ...


def load_needed(source: NeededSource, start: Sequence[int], strict: bool = True) -> None:
    """The load phase's NEEDED walk, the same at start-up and on dlopen:
    breadth-first from ``start``, each NEEDED name reused if a loaded module
    answers to it, else found and loaded (a file loaded already, by
    identity, is reused); modules loaded by the walk are walked in turn,
    modules that existed before it are not. With ``strict=False`` (ldd) a
    library that is missing or fails to load (a :class:`LoadError`) is
    recorded through ``link`` and the walk goes on."""
    queue = list(start)
    i = 0
    while i < len(queue):
        mi = queue[i]
        image = source.image(mi)
        for dep in image.needed:
            j = source.loaded_by_name(dep)
            if j is not None:
                found = source.image(j).path
                if debug.LIBS:
                    why = f"needed by {image.display}; already loaded"
                    debug.trace("libs", f"{dep} => {found} ({why})")
            else:
                try:
                    found = source.find(dep, image)
                except LoadError:
                    if strict:
                        raise
                    source.link(mi, dep, None, None, None)
                    continue
                before = source.count()
                try:
                    j = source.add(found, dep)
                except LoadError as e:
                    if strict:
                        raise
                    source.link(mi, dep, found, None, str(e))
                    continue
                if j >= before:
                    queue.append(j)
            source.link(mi, dep, found, j, None)
        i += 1


# -- the symbol scope ---------------------------------------------------------------

# Exports that never enter a symbol scope: per-module housekeeping, the
# names the linker defines itself, and a program's entry and data bounds.
SCOPE_EXCLUDED: Final = (
    HOUSEKEEPING_EXPORTS
    | LAYOUT_SYMBOLS
    | {
        "__data_end",
        "__global_base",
        "_start",
    }
)


def global_scope(images: Sequence[ModuleImage]) -> dict[str, int]:
    """The load-time global scope, precomputed: each name to the first
    module in load order that exports it (of any kind), as in ELF."""
    scope: dict[str, int] = {}
    for idx, image in enumerate(images):
        for name in image.info.exports:
            if name not in SCOPE_EXCLUDED and name not in scope:
                scope[name] = idx
    return scope


def scope_lookup(
    name: str,
    want: int | None,
    table: Mapping[str, int],
    later: Iterable[int],
    exports: Callable[[int], Mapping[str, Export] | None],
) -> int | None:
    """Which module ``name`` resolves to, the one lookup rule of start-up
    and dlopen: the precomputed ``table`` (:func:`global_scope`) first,
    then the modules of ``later`` in order (dlopen's RTLD_GLOBAL libraries,
    or an RTLD_LOCAL scope). A module must export ``name`` as a ``want``
    kind (None: any); one of another kind is passed over. ``exports`` gives
    a module's exports, None for one that is closed (skipped)."""
    if name in SCOPE_EXCLUDED:
        return None
    owner = table.get(name)
    if owner is not None:
        ex = exports(owner)
        exp = None if ex is None else ex.get(name)
        if exp is not None and (want is None or exp.kind == want):
            return owner
    for mi in later:
        ex = exports(mi)
        if ex is None:
            continue
        exp = ex.get(name)
        if exp is not None and (want is None or exp.kind == want):
            return mi
    return None


# -- symbol values -----------------------------------------------------------------


def data_symbol_base(
    image: ModuleImage, name: str, memory_base: int, tls_base: int | None
) -> int | None:
    """What the exported data symbol ``name`` is relative to: the module's
    TLS block for a TLS symbol (None if the module has none), else its
    ``__memory_base``."""
    if image.dylink is not None and image.dylink.is_tls_export(name):
        return tls_base
    return memory_base


# -- symbol resolution -------------------------------------------------------------


# The dyld host module: toywasm's ABI (load_object, resolve_symbol) and ours.
I32: Final = b"\x7f"
DYLD_FUNCTIONS: Final = {
    "load_object": FuncType((I32, I32, I32, I32), (I32,)),
    "resolve_symbol": FuncType((I32, I32, I32, I32, I32), (I32,)),
    "resolve_any": FuncType((I32, I32, I32, I32), (I32,)),
    "close_object": FuncType((I32,), (I32,)),
    "error": FuncType((I32, I32), (I32,)),
    "describe": FuncType((I32, I32, I32, I32, I32, I32), (I32,)),
}


class ImportRole(enum.Enum):
    """What an import asks the linker for, whoever links it."""

    MEMORY = "env memory"  # the shared linear memory
    TABLE = "env table"  # the shared indirect function table
    TAG = "env tag"  # an exception tag, shared by the run
    ENV_GLOBAL = "env global"  # stack pointer, bases, layout symbols, others' globals
    FUNCTION = "env function"  # a function of the symbol scope
    GOT_MEM = "GOT.mem"  # a data symbol's address
    GOT_FUNC = "GOT.func"  # a function's table slot
    WASI = "WASI"  # a WASI preview 1 function
    DYLD = "dyld"  # a dyld host function (guest dlopen)


def import_role(importer: ModuleImage, imp: Import) -> ImportRole:
    """Classify one import; a :class:`SymbolError` for one no linker
    provides (an unknown module, a dyld function of the wrong type)."""
    mod, kind = imp.module, imp.kind
    if mod == "env":
        if kind == KIND_MEMORY:
            return ImportRole.MEMORY
        if kind == KIND_TABLE:
            return ImportRole.TABLE
        if kind == KIND_TAG and isinstance(imp.desc, FuncType):
            return ImportRole.TAG
        if kind == KIND_GLOBAL and isinstance(imp.desc, GlobalType):
            return ImportRole.ENV_GLOBAL
        if kind == KIND_FUNC and isinstance(imp.desc, FuncType):
            return ImportRole.FUNCTION
    elif mod in ("GOT.mem", "GOT.func") and isinstance(imp.desc, GlobalType):
        return ImportRole.GOT_MEM if mod == "GOT.mem" else ImportRole.GOT_FUNC
    elif mod == "dyld" and kind == KIND_FUNC:
        if DYLD_FUNCTIONS.get(imp.name) != imp.desc:
            raise SymbolError(
                f"{importer.display}: unknown dyld function {imp.name} with type {imp.desc}"
            )
        return ImportRole.DYLD
    elif mod == "wasi_snapshot_preview1" and kind == KIND_FUNC:
        return ImportRole.WASI
    raise SymbolError(
        f"{importer.display}: unknown import {mod}.{imp.name} ({KIND_NAMES.get(kind, '?')})"
    )


def module_global_value(
    name: str,
    memory_base: int,
    table_base: int,
    tls_base: int | None,
    symbols: LayoutSymbols,
) -> int | None:
    """The value the linker gives a module's own ``env`` global import:
    ``__memory_base``, ``__table_base``, ``__tls_base`` (0 without a TLS
    block) or a layout symbol; None for any other name (the stack pointer
    and other modules' globals are bound, not computed)."""
    if name == "__memory_base":
        return memory_base
    if name == "__table_base":
        return table_base
    if name == "__tls_base":
        return tls_base or 0
    if name in LAYOUT_SYMBOLS:
        return symbols.value(name, memory_base)
    return None


def check_data_export(importer: ModuleImage, name: str, owner: ModuleImage) -> None:
    """A data symbol must be an i32 global (an address), not another global."""
    vt = owner.global_export_type(name)
    if vt != "i32":
        raise SymbolError(
            f"{importer.display}: symbol {name} is imported as data but "
            f"{owner.display} exports it as a {vt} global, not an address"
        )


class FuncHow(enum.Enum):
    """How a function import binds."""

    DIRECT = "direct"  # to the definer's instance: a plain wasm call
    DEFERRED = "deferred"  # the definer is not instantiated yet: a PLT slot
    WEAK = "weak"  # weak and undefined: a function that traps if called
    UNDEFINED = "undefined"  # missing: an error now (bind-now) or a lazy PLT trap


class FunctionResolution(NamedTuple):
    """How one function import resolves."""

    how: FuncHow
    owner: int | None = None
    message: str = ""  # the trap's text (weak) or the error (undefined)


def resolve_function(
    importer: ModuleImage,
    name: str,
    ft: FuncType,
    owner: int | None,
    owner_image: ModuleImage | None,
    owner_ready: bool,
) -> FunctionResolution:
    """Resolve a function import to its definer ``owner`` (None: the scope
    has none), which is ``owner_ready`` if already instantiated. A type
    mismatch is a :class:`SymbolError` showing both types."""
    if owner is None or owner_image is None:
        weak = importer.dylink is not None and importer.dylink.is_weak_import("env", name)
        if weak:
            return FunctionResolution(
                FuncHow.WEAK,
                message=f"call to undefined weak function {name} (imported by {importer.display})",
            )
        return FunctionResolution(
            FuncHow.UNDEFINED, message=f"{importer.display}: undefined symbol: {name} (function)"
        )
    eft = owner_image.info.func_type(owner_image.info.exports[name].index)
    if eft != ft:
        raise SymbolError(
            f"{importer.display}: symbol {name} has type {ft} but "
            f"{owner_image.display} defines it as {eft}"
        )
    return FunctionResolution(FuncHow.DIRECT if owner_ready else FuncHow.DEFERRED, owner)


def lazy_trap_message(importer_display: str, name: str) -> str:
    """What calling a missing, lazily bound function says."""
    return f"symbol lookup error: {importer_display}: undefined symbol: {name} (called lazily)"


def canonical_slot(
    canonical: dict[tuple[int, int], int],
    owner: int,
    funcidx: int,
    allocate: Callable[[], int],
    fill: Callable[[int], None],
) -> int:
    """The one table slot of function ``funcidx`` of module ``owner``, so
    that a function pointer compares equal whichever module takes it: the
    slot it already has (an earlier GOT.func entry or dlsym, or its module's
    own element segment), else a new one from ``allocate`` that ``fill``
    makes point at the function (now, or once the module is instantiated)."""
    slot = canonical.get((owner, funcidx))
    if slot is None:
        slot = allocate()
        canonical[(owner, funcidx)] = slot
        fill(slot)
    return slot


# -- initialisation ------------------------------------------------------------------


class InitModule(NamedTuple):
    """One instantiated module to initialise. ``constructors=False`` for a
    program, whose ``_start`` runs its own constructors."""

    image: ModuleImage
    instance: wasmtime.Instance
    tls_base: int | None
    constructors: bool = True


def _own_func(store: wasmtime.Store, m: InitModule, name: str) -> wasmtime.Func | None:
    if name not in m.image.info.exports:
        return None
    f = get_export(store, m.instance, name)
    return f if isinstance(f, wasmtime.Func) else None


def _nothing(_what: str) -> None:
    return None


def initialize(
    store: wasmtime.Store,
    modules: Sequence[InitModule],
    running: Callable[[str], None] = _nothing,
) -> None:
    """TLS set-up (``__wasm_init_tls``) of every module that has a TLS
    block, then ``__wasm_apply_data_relocs`` of every module, then
    constructors (``__wasm_call_ctors``, else ``_initialize``), each phase
    in the given (dependency) order: relocations must all be applied before
    any constructor runs, since a constructor may read any module's data.

    ``running`` is told what guest code is about to run (for the message of
    an ``exit()`` or a trap)."""
    for m in modules:
        if m.tls_base is not None:
            init_tls = _own_func(store, m, "__wasm_init_tls")
            if init_tls is None:
                raise LoadError(f"{m.image.display}: has a TLS block but no __wasm_init_tls")
            running(f"TLS set-up of {m.image.display}")
            call_void(store, init_tls, m.tls_base)
    for m in modules:
        f = _own_func(store, m, "__wasm_apply_data_relocs")
        if f is not None:
            running(f"data relocation of {m.image.display}")
            call_void(store, f)
    for m in modules:
        if not m.constructors:
            continue
        f = _own_func(store, m, "__wasm_call_ctors") or _own_func(store, m, "_initialize")
        if f is not None:
            running(f"constructor of {m.image.display}")
            call_void(store, f)


# -- types -----------------------------------------------------------------------------

_VALTYPES = {
    0x7F: wasmtime.ValType.i32,
    0x7E: wasmtime.ValType.i64,
    0x7D: wasmtime.ValType.f32,
    0x7C: wasmtime.ValType.f64,
    0x70: wasmtime.ValType.funcref,
    0x6F: wasmtime.ValType.externref,
}


def to_wasmtime_functype(ft: FuncType) -> wasmtime.FuncType:
    """A decoded signature as wasmtime's (for host functions and tags)."""
    try:
        return wasmtime.FuncType(
            [_VALTYPES[p[0]]() for p in ft.params], [_VALTYPES[r[0]]() for r in ft.results]
        )
    except KeyError:
        raise LoadError(f"unsupported value type in signature {ft}") from None


# -- traps ------------------------------------------------------------------------------


def trap_reason(text: str) -> str:
    """The cause of a trap, without wasmtime's embedded backtrace."""
    if "Caused by:" in text:
        causes = [ln.strip() for ln in text.split("Caused by:", 1)[1].splitlines() if ln.strip()]
        if causes:
            reason = causes[-1]
            return reason.removeprefix("wasm trap: ")
    first = text.strip().splitlines()[0] if text.strip() else "trap"
    return first.removeprefix("wasm trap: ")


def format_trap(err: BaseException) -> GuestTrap:
    """A wasmtime trap (or runtime error) as its reason plus a wasm backtrace."""
    text = err.message if isinstance(err, wasmtime.Trap) else str(err)
    frames: list[str] = []
    if isinstance(err, wasmtime.Trap):
        for fr in err.frames:
            fn = fr.func_name or f"<func {fr.func_index}>"
            mod = fr.module_name or "<module>"
            frames.append(f"{mod}!{fn} (offset {fr.module_offset:#x})")
    else:
        for ln in text.splitlines():
            head, sep, where = ln.strip().partition(" - ")
            if sep and head.split(":")[0].isdigit():
                frames.append(f"{where} (offset {head.split()[-1]})")
    return GuestTrap(trap_reason(text), frames)
