"""Guest ``dlopen``: loading libraries into a running instance set.

The guest reaches this through the host module ``dyld`` (see
``toolchain/libdl/libdl.c`` for the C side):

* ``load_object(name_ptr, name_len, flags, handle_out) -> i32`` and
  ``resolve_symbol(handle, symtype, name_ptr, name_len, addr_out) -> i32``
  are toywasm's ABI (symtype 1 = function, a table index; 2 = data, an
  address; flags 0 = RTLD_NOW|RTLD_GLOBAL), so libdl builds for toywasm run
  unchanged;
* ``resolve_any``, ``close_object``, ``error`` and ``describe`` complete a
  real libdl: dlsym without knowing the kind, dlclose, dlerror, dladdr.

Return values are 0 for success or an errno value; the text of the last
failure is kept for ``error`` (dlerror).

What happens on load mirrors ld.so, and runs the linking core's phases
(:mod:`.core`, :mod:`.layout`) that start-up runs too: the library and the
NEEDED libraries not yet loaded are laid out in memory taken by *growing*
the memory (never memory the program's allocator owns, and never assuming
the size is unchanged since start); the binder the planner uses
(:class:`~.bind.Binder`, through :class:`_GroupSite`) decides what each of
their imports becomes, and :meth:`DynamicLinker._extern` makes each binding
a live extern; they are instantiated dependencies first, their GOT and PLT
filled, data relocations applied and constructors run. What is
this module's own: handles and reference counts, scopes, dlclose, dladdr,
dlerror. Symbols resolve through the global
scope (the program, its load-time libraries, RTLD_GLOBAL libraries) and then
the library's own dependency tree. RTLD_LOCAL libraries stay out of the
global scope. An RTLD_GLOBAL library can satisfy lazily bound functions that
were missing so far. ``dlclose`` at refcount zero runs the destructors the
library registered with ``__cxa_atexit``, removes its symbols from lookup and
returns its memory region to a free list for later loads.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Protocol, assert_never

import wasmtime

from . import codegen, debug
from .bind import (
    ATEXIT_TYPE,
    BindDirect,
    Binder,
    BindExport,
    BindGlobal,
    BindHost,
    Binding,
    BindMemory,
    BindPlt,
    BindTable,
    BindTag,
    BindTrap,
    BindWasi,
    TableFill,
)
from .cache import ModuleCache
from .core import (
    DYLD_FUNCTIONS,
    SCOPE_EXCLUDED,
    ImportRole,
    InitModule,
    canonical_slot,
    data_symbol_base,
    dependency_order,
    format_trap,
    initialize,
    lazy_trap_message,
    load_needed,
    scope_lookup,
    to_wasmtime_functype,
)
from .errors import LoadError, WasmrunError, wasmtime_message
from .layout import PAGE, place_memory, place_table, tls_block
from .limits import RunLimits
from .module import ModuleImage
from .plan import LinkPlan
from .search import SearchPath, file_identity
from .wasmbin import (
    KIND_FUNC,
    KIND_GLOBAL,
    Export,
    FuncType,
    signed_i32,
)
from .wasmtime_seam import get_export


class LinkedRun(Protocol):
    """What run-time loading needs from the instance set it loads into: its
    plan, store, shared memory and table, limits, and the exports of the
    generated instances (:class:`~.instance.InstanceSet` is one). dlopen
    reaches no further into the run."""

    plan: LinkPlan
    store: wasmtime.Store
    limits: RunLimits
    instances: list[wasmtime.Instance | None]

    @property
    def memory(self) -> wasmtime.Memory: ...

    @property
    def table(self) -> wasmtime.Table: ...

    def core_global(self, index: int) -> wasmtime.Global: ...

    def core_tag(self, index: int) -> wasmtime.Tag: ...

    def wasi_function(self, name: str) -> wasmtime.Func | None: ...

    def plt_table(self) -> wasmtime.Table | None: ...

    def generated_module(self, key: tuple, make: Callable[[], bytes]) -> wasmtime.Module: ...


RTLD_LAZY = 1
RTLD_NOW = 2
RTLD_NOLOAD = 4
RTLD_LOCAL = 8
RTLD_GLOBAL = 0x100
RTLD_NODELETE = 0x1000

SYMTYPE_FUNC = 1
SYMTYPE_DATA = 2


def _flag_names(flags: int) -> str:
    """dlopen flags as their RTLD_* names (WASMRUN_DEBUG=libs)."""
    names = [
        n
        for n, bit in (
            ("RTLD_LAZY", RTLD_LAZY),
            ("RTLD_NOW", RTLD_NOW),
            ("RTLD_NOLOAD", RTLD_NOLOAD),
            ("RTLD_LOCAL", RTLD_LOCAL),
            ("RTLD_GLOBAL", RTLD_GLOBAL),
            ("RTLD_NODELETE", RTLD_NODELETE),
        )
        if flags & bit
    ]
    return "|".join(names) or str(flags)


class DlError(WasmrunError):
    """A dlopen/dlsym failure: reported to the guest through dlerror."""

    def __init__(self, message: str, code: int = errno.ENOENT) -> None:
        super().__init__(message)
        self.code = code


class DynModule:
    """One module of the running program (load-time or dlopen'ed)."""

    def __init__(
        self,
        image: ModuleImage,
        instance: wasmtime.Instance | None,
        memory_base: int,
        table_base: int,
        tls_base: int | None,
        dynamic: bool,
    ) -> None:
        self.image = image
        self.instance = instance
        self.memory_base = memory_base
        self.table_base = table_base
        self.tls_base = tls_base
        self.dynamic = dynamic
        self.region: tuple[int, int] | None = None  # (start, size) of dlopen memory
        self.needed: list[int] = []
        self.closed = False
        self.dtors: list[tuple[int, int]] = []  # (function slot, argument)

    @property
    def dso_handle(self) -> int:
        return self.memory_base


class Handle:
    def __init__(self, root: int, local_scope: list[int], flags: int) -> None:
        self.root = root
        self.local_scope = local_scope
        self.refs = 1
        self.flags = flags
        self.is_global = bool(flags & RTLD_GLOBAL) or flags == 0


class _WeakHostCall:
    """A host function's Python side that does not keep its run alive.

    wasmtime-py keeps the callable of every ``wasmtime.Func`` in a global
    table until the Store is deleted. A bound method of the run's loader
    would make that table own the loader, its instance set and so the Store
    itself: nothing of the run (memory, the WASI context's open files) would
    ever be freed. Holding the loader weakly breaks that loop.
    """

    __slots__ = ("_loader", "_method")

    def __init__(self, loader: DynamicLinker, method: str) -> None:
        self._loader = weakref.ref(loader)
        self._method = method

    def __call__(self, *args: int) -> int:
        loader = self._loader()
        if loader is None:
            raise wasmtime.Trap("the run this function belonged to is over")
        return getattr(loader, self._method)(*args)


class _GroupSource:
    """The modules of a run as :func:`~.core.load_needed` walks them for one
    dlopen: the libraries it loads go into ``new``."""

    __slots__ = ("_linker", "_new")

    def __init__(self, linker: DynamicLinker, new: list[int]) -> None:
        self._linker = linker
        self._new = new

    def image(self, index: int) -> ModuleImage:
        return self._linker.modules[index].image

    def count(self) -> int:
        return len(self._linker.modules)

    def loaded_by_name(self, name: str) -> int | None:
        return self._linker._loaded_by_name(name)

    def find(self, name: str, requester: ModuleImage) -> str:
        return self._linker._find_needed(name, requester)

    def add(self, path: str, name: str) -> int:
        return self._linker._add_module(path, name, self._new)

    def link(
        self, index: int, name: str, path: str | None, dep: int | None, error: str | None
    ) -> None:
        needed = self._linker.modules[index].needed
        if dep is not None and dep not in needed:
            needed.append(dep)


class _GroupSite:
    """The libraries one dlopen loads, as the binder sees them
    (:class:`~.bind.BindSite`; the planner's ``_Resolver`` is the other
    site). What is dlopen's own here: symbols resolve through the global
    scope (skipping closed libraries and definers of another kind) and then
    the new library's own tree; a module is instantiated earlier if it
    already has an instance or comes earlier in the group; table slots are
    grown on the live table; a data address of an instantiated module is
    read from the run; a missing symbol is collected for one dlerror; only
    WASI functions the run already has can be given; ``__cxa_atexit`` is
    the linker's (destructors kept with their library, run by dlclose)."""

    __slots__ = (
        "_linker",
        "_modules",
        "_local",
        "_pos",
        "_bind_now",
        "_root",
        "_wasi",
        "nonpie",
        "symbols",
        "canonical",
        "tags",
        "missing",
        "fills",
    )

    def __init__(
        self, linker: DynamicLinker, order: list[int], local: list[int], bind_now: bool
    ) -> None:
        plan = linker.iset.plan
        self._linker = linker
        self._modules = linker.modules
        self._local = local
        self._pos = {mi: i for i, mi in enumerate(order)}
        self._bind_now = bind_now
        self._root = plan.root
        self._wasi = linker.wasi_types
        self.nonpie = plan.nonpie
        self.symbols = linker.layout_symbols
        self.canonical = linker.canonical
        self.tags = linker.tags
        self.missing: list[str] = []  # reported, for the dlerror
        self.fills: list[TableFill] = []  # table slots to fill once the group exists

    def image(self, index: int) -> ModuleImage:
        return self._modules[index].image

    def bases(self, index: int) -> tuple[int, int, int | None]:
        m = self._modules[index]
        return m.memory_base, m.table_base, m.tls_base

    def owner(self, name: str, kind: int, importer: int) -> int | None:
        return self._linker._lookup(name, self._local, kind)

    def ready(self, owner: int, importer: int) -> bool:
        pos = self._pos.get(owner)
        if pos is None:
            return self._modules[owner].instance is not None
        return pos < self._pos[importer]

    def lazy(self, role: ImportRole) -> bool:
        # As in ld.so, RTLD_LAZY defers calls only: an address (GOT.func)
        # is resolved at load.
        return not self._bind_now and role is ImportRole.FUNCTION

    def undefined(self, importer: int, name: str, kind: str, reported: bool) -> None:
        if reported:
            display = self._modules[importer].image.display
            self.missing.append(f"{display}: undefined symbol: {name} ({kind})")

    def new_slot(self, importer: int) -> int:
        return self._linker._new_table_slot(self._modules[importer].image.display)

    def fill(self, slot: int, target: tuple[int, str] | None, trap: int | None) -> None:
        if target is not None and self._modules[target[0]].instance is not None:
            # Now: a canonical slot must not stay empty if this load fails.
            self._linker._fill_slot(slot, *target)
        else:
            self.fills.append(TableFill(slot, target, trap))

    def late_address(self, owner: int, name: str) -> int | None:
        if self._modules[owner].instance is None:
            return None  # in this group: set once it is instantiated
        return self._linker._data_address(owner, name)

    def main_stack_pointer(self, importer: int) -> Binding:
        if "__stack_pointer" not in self._modules[self._root].image.info.exports:
            raise DlError(
                f"{self._modules[importer].image.display}: needs __stack_pointer, which the "
                "non-PIE main does not export",
                errno.ENOEXEC,
            )
        return BindExport(self._root, "__stack_pointer")

    def wasi_type(self, name: str, ft: FuncType) -> FuncType:
        prev = self._wasi.get(name)
        if prev is None:
            raise _no_wasi(name)
        return prev

    def interpose(self, importer: int, name: str, ft: FuncType) -> Binding | None:
        if name == "__cxa_atexit" and ft == ATEXIT_TYPE:
            return BindHost("__cxa_atexit")
        return None


_Extern = wasmtime.Func | wasmtime.Table | wasmtime.Memory | wasmtime.Global | wasmtime.Tag


class _LiveGroup(NamedTuple):
    """What a dlopen group's bindings index, made on the run."""

    globals: list[wasmtime.Global]
    traps: list[wasmtime.Func]
    plt: wasmtime.Instance | None


def _no_wasi(name: str) -> DlError:
    return DlError(
        f"WASI function {name} is not available to libraries loaded at run time "
        "(the program imports no WASI function of that name)",
        errno.ENOSYS,
    )


class DynamicLinker:
    """Run-time loading for one instance set. Not thread-safe (one run)."""

    def __init__(self, iset: LinkedRun, cache: ModuleCache, search: SearchPath) -> None:
        # Weak: the instance set owns this loader, not the other way round,
        # so dropping the instance set frees the run without waiting for gc.
        self._iset = weakref.ref(iset)
        self.cache = cache
        self.search = search
        self.store = iset.store
        plan = iset.plan
        self.modules = [
            DynModule(
                pm.image, iset.instances[i], pm.memory_base, pm.table_base, pm.tls_base, False
            )
            for i, pm in enumerate(plan.modules)
        ]
        for i, pm in enumerate(plan.modules):
            self.modules[i].needed = list(pm.needed)
        self.global_dynamic: list[int] = []  # RTLD_GLOBAL modules, in load order
        self.handles: dict[int, Handle] = {}
        self.handle_of_root: dict[int, int] = {}
        self.next_handle = 1
        self.canonical: dict[tuple[int, int], int] = dict(plan.canonical)
        self.by_file: dict[tuple[int, int], int] = {}
        for i, m in enumerate(self.modules):
            key = file_identity(m.image.path)
            if key is not None:
                self.by_file.setdefault(key, i)
        self.free_regions: list[tuple[int, int]] = []
        self.last_error: str | None = None
        self.lazy: dict[str, list[tuple[wasmtime.Table, int, FuncType]]] = {}
        self.tags: dict[str, FuncType] = dict(plan.tags)  # the plan's, then new ones
        self._new_tags: dict[int, wasmtime.Tag] = {}
        self.wasi_types: dict[str, FuncType] = dict(plan.wasi)
        self.layout_symbols = plan.layout_symbols
        self._host_funcs: dict[str, wasmtime.Func] = {}
        self._keep: list[object] = []  # PLT instances etc. kept alive with the run
        self._exit_hooked = False  # see _hook_exit
        self._register_lazy_from_plan()

    @property
    def iset(self) -> LinkedRun:
        iset = self._iset()
        if iset is None:
            raise DlError("the run this loader belonged to is over", errno.EIO)
        return iset

    # -- host functions -------------------------------------------------------

    def host_function(self, name: str) -> wasmtime.Func:
        """The ``dyld.<name>`` function bound to this run."""
        func = self._host_funcs.get(name)
        if func is None:
            if name == "__cxa_atexit":
                return self._atexit_func()
            if not callable(getattr(self, f"_dyld_{name}", None)):
                raise LoadError(f"unknown dyld function {name}")
            ft = DYLD_FUNCTIONS[name]
            wt = wasmtime.FuncType(
                [wasmtime.ValType.i32() for _ in ft.params], [wasmtime.ValType.i32()]
            )
            func = wasmtime.Func(self.store, wt, _WeakHostCall(self, f"_dyld_{name}"))
            self._host_funcs[name] = func
        return func

    def _mem(self) -> wasmtime.Memory:
        return self.iset.memory

    def _read_str(self, ptr: int, length: int) -> str:
        if length < 0 or length > 4096:
            raise DlError(f"invalid name length {length}", errno.EINVAL)
        raw = bytes(self._mem().read(self.store, ptr, ptr + length))
        return raw.decode("utf-8", "replace")

    def _write_u32(self, ptr: int, value: int) -> None:
        self._mem().write(self.store, (value & 0xFFFFFFFF).to_bytes(4, "little"), ptr)

    def _sync(self) -> None:
        """Pick up load-time instances created after this loader was (it is
        made while the program's modules are still being instantiated)."""
        for i, inst in enumerate(self.iset.instances):
            if self.modules[i].instance is None and inst is not None:
                self.modules[i].instance = inst

    def _guarded(self, fn: Callable[[], int]) -> int:
        """Run a dyld call: failures become an errno for the guest and a
        message for dlerror; a trap raised by guest code (a constructor) goes
        on to the guest."""
        self._sync()
        try:
            return fn()
        except DlError as e:
            self.last_error = str(e)
            return e.code
        except LoadError as e:
            self.last_error = str(e)
            return errno.ENOEXEC
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            raise  # a trap inside a constructor: the guest sees it as a trap
        except WasmrunError as e:
            self.last_error = str(e)
            return errno.EIO
        except Exception as e:  # a bug of ours must not kill the run silently
            self.last_error = f"internal error in the dynamic linker: {type(e).__name__}: {e}"
            return errno.EIO

    def _dyld_load_object(self, name_ptr: int, name_len: int, flags: int, out: int) -> int:
        def go() -> int:
            name = self._read_str(name_ptr, name_len)
            handle = self.dlopen(name, flags)
            self._write_u32(out, handle)
            return 0

        return self._guarded(go)

    def _dyld_resolve_symbol(self, handle: int, symtype: int, np: int, nl: int, out: int) -> int:
        def go() -> int:
            name = self._read_str(np, nl)
            if symtype not in (SYMTYPE_FUNC, SYMTYPE_DATA):
                raise DlError(f"invalid symbol type {symtype}", errno.EINVAL)
            self._write_u32(out, self.dlsym(handle, name, symtype))
            return 0

        return self._guarded(go)

    def _dyld_resolve_any(self, handle: int, np: int, nl: int, out: int) -> int:
        def go() -> int:
            self._write_u32(out, self.dlsym(handle, self._read_str(np, nl), None))
            return 0

        return self._guarded(go)

    def _dyld_close_object(self, handle: int) -> int:
        return self._guarded(lambda: self.dlclose(handle))

    def _dyld_error(self, buf: int, cap: int) -> int:
        if self.last_error is None:
            return 0
        raw = self.last_error.encode("utf-8")
        self.last_error = None
        if cap > 0:
            chunk = raw[: cap - 1] + b"\0"
            self._mem().write(self.store, chunk, buf)
        return len(raw)

    def _dyld_describe(
        self, addr: int, fbuf: int, fcap: int, sbuf: int, scap: int, out: int
    ) -> int:
        def go() -> int:
            found = self.dladdr(addr)
            if found is None:
                raise DlError(f"no loaded object contains address {addr:#x}", errno.ENOENT)
            fname, base, sname, saddr = found
            for text, ptr, cap in ((fname, fbuf, fcap), (sname or "", sbuf, scap)):
                if cap > 0:
                    self._mem().write(self.store, text.encode()[: cap - 1] + b"\0", ptr)
            self._write_u32(out, base)
            self._write_u32(out + 4, saddr)
            self._write_u32(out + 8, 1 if sname else 0)
            return 0

        return self._guarded(go)

    # -- lookup -----------------------------------------------------------------

    def _open_exports(self, index: int) -> dict[str, Export] | None:
        """A module's exports for the scope lookup; None once it is closed."""
        m = self.modules[index]
        return None if m.closed else m.image.info.exports

    def _scope_lookup(self, name: str, scope: list[int], want: int | None) -> int | None:
        return scope_lookup(name, want, {}, scope, self._open_exports)

    def _global_lookup(self, name: str, want: int | None) -> int | None:
        plan_scope = self.iset.plan.scope
        return scope_lookup(name, want, plan_scope, self.global_dynamic, self._open_exports)

    def _lookup(self, name: str, local: list[int], want: int | None) -> int | None:
        owner = self._global_lookup(name, want)
        return owner if owner is not None else self._scope_lookup(name, local, want)

    def _func_slot(self, owner: int, name: str) -> int:
        """The canonical table slot of an exported function (assigned on demand)."""
        m = self.modules[owner]
        return canonical_slot(
            self.canonical,
            owner,
            m.image.info.exports[name].index,
            lambda: self._new_table_slot(m.image.display),
            lambda slot: self._fill_slot(slot, owner, name),
        )

    def _fill_slot(self, slot: int, owner: int, name: str) -> None:
        self.iset.table.set(self.store, slot, self._export(owner, name))

    def _new_table_slot(self, who: str) -> int:
        """One more slot at the end of the indirect function table."""
        slot = self.iset.table.size(self.store)
        self._grow_table(1, who)
        return slot

    def _export(self, owner: int, name: str):
        inst = self.modules[owner].instance
        if inst is None:
            raise DlError(f"{self.modules[owner].image.display}: used before it is instantiated")
        return get_export(self.store, inst, name)

    def _data_address(self, owner: int, name: str) -> int:
        m = self.modules[owner]
        vt = m.image.global_export_type(name)
        if vt != "i32":
            raise DlError(
                f"{m.image.display}: symbol {name} is a {vt} global, not a data address",
                errno.ENOEXEC,
            )
        base = data_symbol_base(m.image, name, m.memory_base, m.tls_base) or 0
        value = m.image.export_value(name, base, m.table_base)
        if value is None:
            glob = self._export(owner, name)
            value = (glob.value(self.store) + base) & 0xFFFFFFFF
        return value

    # -- dlopen -------------------------------------------------------------------

    def _resolve_path(self, name: str) -> str:
        """ld.so rules, confined to the search roots: a bare name goes through
        the search path; a name with '/' is taken relative to each root and
        may not leave it."""
        if not name or "\0" in name:
            raise DlError("empty library name", errno.EINVAL)
        main = self.modules[self.iset.plan.root].image
        rpath = main.dylink.runtime_path if main.dylink else ()
        roots = self.search.candidates("", main.path, rpath)
        roots = [os.path.realpath(os.path.dirname(r) if r.endswith("/") else r) for r in roots]
        if "/" not in name:
            found = self.search.find(name, main.path, rpath)
            if found is None:
                raise DlError(f"{name}: cannot open shared object file: No such file or directory")
            if debug.LIBS:
                rule = self.search.rule_for(found, name, main.path, rpath)
                debug.trace("libs", f"{name} => {found} (dlopen; found via {rule})")
            return found
        parts = name.split("/")
        if ".." in parts:
            raise DlError(
                f"{name}: refusing a path with '..' (outside the library search path)", errno.EACCES
            )
        candidates = []
        for root in dict.fromkeys(roots):
            cand = os.path.realpath(name if os.path.isabs(name) else os.path.join(root, name))
            if cand == root or not cand.startswith(root.rstrip("/") + "/"):
                continue
            candidates.append(cand)
        if not candidates:
            raise DlError(f"{name}: refusing a path outside the library search path", errno.EACCES)
        for cand in candidates:
            if os.path.isfile(cand):
                if debug.LIBS:
                    debug.trace("libs", f"{name} => {cand} (dlopen; under a search directory)")
                return cand
        raise DlError(f"{name}: cannot open shared object file: No such file or directory")

    def dlopen(self, name: str, flags: int) -> int:
        """Load ``name`` (or find it loaded); returns its handle."""
        if not debug.LIBS:
            return self._dlopen(name, flags)
        call = f'dlopen("{name}", {_flag_names(flags)})'
        try:
            handle = self._dlopen(name, flags)
        except WasmrunError as e:
            debug.trace("libs", f"{call} failed: {e}")
            raise
        debug.trace("libs", f"{call} = handle {handle}")
        return handle

    def _dlopen(self, name: str, flags: int) -> int:
        if flags == 0:
            flags = RTLD_NOW | RTLD_GLOBAL  # toywasm's libdl passes 0
        path = self._resolve_path(name)
        key = file_identity(path)
        existing = self.by_file.get(key) if key is not None else None
        if existing is not None and not self.modules[existing].closed:
            return self._reopen(existing, flags)
        if flags & RTLD_NOLOAD:
            raise DlError(f"{name}: not loaded (RTLD_NOLOAD)")
        root = self._load_group(path, name, flags)
        return self._new_handle(root, flags)

    def _reopen(self, mi: int, flags: int) -> int:
        hid = self.handle_of_root.get(mi)
        if hid is None:
            local = self._local_scope(mi)
            return self._new_handle(mi, flags, local)
        h = self.handles[hid]
        h.refs += 1
        if flags & RTLD_NODELETE:
            h.flags |= RTLD_NODELETE
        if flags & RTLD_GLOBAL and not h.is_global:
            h.is_global = True  # promotion, as ld.so does
            for m in h.local_scope:
                if self.modules[m].dynamic and m not in self.global_dynamic:
                    self.global_dynamic.append(m)
            self._resolve_lazy()
        return hid

    def _new_handle(self, root: int, flags: int, local: list[int] | None = None) -> int:
        hid = self.next_handle
        self.next_handle += 1
        h = Handle(root, local if local is not None else self._local_scope(root), flags)
        self.handles[hid] = h
        self.handle_of_root[root] = hid
        if h.is_global:
            for m in h.local_scope:
                if self.modules[m].dynamic and m not in self.global_dynamic:
                    self.global_dynamic.append(m)
            self._resolve_lazy()
        return hid

    def _local_scope(self, root: int) -> list[int]:
        order, seen = [root], {root}
        i = 0
        while i < len(order):
            for d in self.modules[order[i]].needed:
                if d not in seen:
                    seen.add(d)
                    order.append(d)
            i += 1
        return order

    def _load_group(self, path: str, name: str, flags: int) -> int:
        first = len(self.modules)
        new: list[int] = []
        try:
            # 1. The closure of not-yet-loaded modules, breadth first.
            root = self._add_module(path, name, new)
            load_needed(_GroupSource(self, new), [root])
            # 2. Memory and table, instances, relocations, constructors.
            self._layout(new)
            order = dependency_order(
                [m.needed for m in self.modules], (root, *sorted(new)), within=set(new)
            )
            local = self._local_scope(root)
            self._instantiate_group(order, local, flags)
        except BaseException:
            self._forget(first, new)
            raise
        return root

    def _find_needed(self, dep: str, requester: ModuleImage) -> str:
        """The file of a NEEDED entry of a library being loaded (no search
        root confinement: the library's own RUNTIME_PATH applies)."""
        rpath = requester.dylink.runtime_path if requester.dylink else ()
        found = self.search.find(dep, requester.path, rpath)
        if found is None:
            raise DlError(
                f"{dep}: cannot open shared object file: No such file or "
                f"directory (needed by {requester.display})"
            )
        if debug.LIBS:
            rule = self.search.rule_for(found, dep, requester.path, rpath)
            why = f"needed by {requester.display}; found via {rule}"
            debug.trace("libs", f"{dep} => {found} ({why})")
        return found

    def _loaded_by_name(self, dep: str) -> int | None:
        """A NEEDED name that a loaded library already answers to: reused
        without a search, as at load time (see :class:`~.plan.Loader`) and
        as ld.so does, so a library without RUNTIME_PATH finds a sibling the
        program loaded through its own."""
        if "/" in dep:
            return None
        for i, m in enumerate(self.modules):
            if not m.closed and os.path.basename(m.image.name) == dep:
                return i
        return None

    def _forget(self, first: int, new: list[int]) -> None:
        """A failed load leaves nothing visible behind. If nothing of it was
        instantiated, its entries go entirely (so failed attempts do not use
        up ``max_libraries``); otherwise they stay, closed, since their
        instances live in the Store until the run ends."""
        for mi in new:
            m = self.modules[mi]
            m.closed = True
            key = file_identity(m.image.path)
            if key is not None and self.by_file.get(key) == mi:
                del self.by_file[key]
            if m.region is not None:
                self.free_regions.append(m.region)
                m.region = None
        if all(self.modules[mi].instance is None for mi in new):
            del self.modules[first:]
            for key in [k for k in self.canonical if k[0] >= first]:
                del self.canonical[key]
            for m in self.modules:
                m.needed = [j for j in m.needed if j < first]

    def _add_module(self, path: str, name: str, new: list[int]) -> int:
        key = file_identity(path)
        if key is not None and key in self.by_file and not self.modules[self.by_file[key]].closed:
            return self.by_file[key]
        options = self.iset.plan.options
        if len(self.modules) >= options.max_libraries:
            raise DlError(
                f"{name}: too many libraries: this run has loaded {len(self.modules)} "
                f"modules, the limit (max_libraries) is {options.max_libraries}",
                errno.EMFILE,
            )
        image = self.cache.load(path, name, options.max_file_size)
        if image.kind != "pic" or image.dylink is None:
            raise DlError(f"{path}: not a shared library (no dylink.0 section)", errno.ENOEXEC)
        image.module()
        mi = len(self.modules)
        self.modules.append(DynModule(image, None, 0, 0, None, True))
        if key is not None:
            self.by_file[key] = mi
        new.append(mi)
        return mi

    def _layout(self, new: list[int]) -> None:
        """Memory from a freed region or from growing memory; table slots
        from growing the table."""
        mem, table, store = self._mem(), self.iset.table, self.store
        limit = self.iset.limits.memory_bytes
        for mi in new:
            m = self.modules[mi]
            dl = m.image.dylink
            assert dl is not None
            tls = tls_block(m.image)
            tls_size, tls_align = (tls.size, tls.align) if tls is not None else (0, 1)
            # Room for the region and the TLS block wherever the aligned
            # bases fall (place_memory below puts them).
            align = max(1 << dl.mem_align, tls_align, 16)
            need = dl.mem_size + tls_size + 2 * align
            start = self._take_free(need)
            if start is None:
                old = mem.size(store) * PAGE
                pages = -(-need // PAGE)
                if limit is not None and old + pages * PAGE > limit:
                    raise DlError(
                        f"{m.image.display}: needs {need} bytes of memory, over the run's "
                        f"memory limit of {limit} bytes",
                        errno.ENOMEM,
                    )
                try:
                    mem.grow(store, pages)
                except wasmtime.WasmtimeError:
                    raise DlError(
                        f"{m.image.display}: cannot grow memory by {pages} pages", errno.ENOMEM
                    ) from None
                start = old
            m.region = (start, need)
            placed = place_memory(m.image, start)
            m.memory_base, m.tls_base = placed.memory_base, placed.tls_base
            t0 = table.size(store)
            m.table_base = place_table(m.image, t0)
            grow = m.table_base + dl.table_size - t0
            if grow:
                self._grow_table(grow, m.image.display)

    def _grow_table(self, n: int, who: str) -> None:
        """Grow the indirect function table, within the run's table limit."""
        try:
            self.iset.table.grow(self.store, n, None)
        except wasmtime.WasmtimeError:
            raise DlError(
                f"{who}: cannot grow the function table by {n} slots (the run's table "
                f"limit is {self.iset.limits.table_limit()} elements)",
                errno.ENOMEM,
            ) from None

    def _take_free(self, need: int) -> int | None:
        for i, (start, size) in enumerate(self.free_regions):
            if size >= need:
                del self.free_regions[i]
                if size > need:
                    self.free_regions.append((start + need, size - need))
                self._mem().write(self.store, bytes(need), start)  # zero, as for new memory
                return start
        return None

    # -- instantiation ------------------------------------------------------------

    def _instantiate_group(self, order: list[int], local: list[int], flags: int) -> None:
        """Bind the group's imports with the binder the planner uses
        (:class:`~.bind.Binder`), then make each binding a live extern
        (:meth:`_extern`), instantiate dependencies first, fill the group's
        table slots, PLT and late globals, and initialise."""
        store = self.store
        site = _GroupSite(self, order, local, bool(flags & RTLD_NOW) or flags == 0)
        binder = Binder(site, now="RTLD_NOW")
        binds: list[tuple[Binding, ...]] = []
        for mi in order:
            binds.append(binder.bind(mi))
            if site.missing:  # reported for the first module that misses any
                raise DlError("symbol lookup error: " + "; ".join(site.missing), errno.ENOEXEC)
        live = self._live_group(binder)
        for mi, mbinds in zip(order, binds, strict=True):
            m = self.modules[mi]
            image = m.image
            externs = [self._extern(b, live) for b in mbinds]
            try:
                m.instance = wasmtime.Instance(store, image.module(), externs)
            except wasmtime.Trap as e:
                if image.info.start is not None:
                    raise  # the start function's own trap: the guest's
                raise DlError(  # no guest code ran: its segments did not fit
                    f"{image.display}: cannot instantiate: {format_trap(e).message}",
                    errno.ENOEXEC,
                ) from None
            except wasmtime.WasmtimeError as e:
                msg = wasmtime_message(str(e))
                raise DlError(
                    f"{image.display}: cannot instantiate: {msg}", errno.ENOEXEC
                ) from None

        for fill in site.fills:
            if fill.target is not None:
                self._fill_slot(fill.slot, *fill.target)
            else:
                assert fill.trap is not None
                self.iset.table.set(store, fill.slot, live.traps[fill.trap])
        if live.plt is not None:
            plt_table = get_export(store, live.plt, "table")
            for k, stub in enumerate(binder.plt):
                if stub.target is not None:
                    plt_table.set(store, k, self._export(*stub.target))
                else:
                    message = lazy_trap_message(stub.importer, stub.symbol)
                    plt_table.set(store, k, self._trap(stub.type, message))
                    self.lazy.setdefault(stub.symbol, []).append((plt_table, k, stub.type))
        for i, g in enumerate(binder.globals):
            if g.late is not None:
                value = wasmtime.Val.i32(signed_i32(self._data_address(*g.late)))
                live.globals[i].set_value(store, value)

        inits = []
        for mi in order:
            m = self.modules[mi]
            assert m.instance is not None
            inits.append(InitModule(m.image, m.instance, m.tls_base))
        initialize(store, inits)

    def _live_group(self, binder: Binder) -> _LiveGroup:
        """What a group's bindings index, made on the run: its globals (the
        stack pointer is the run's own), trap functions and PLT."""
        store = self.store
        i32 = wasmtime.ValType.i32()
        plan = self.iset.plan
        globals_: list[wasmtime.Global] = []
        for key, g in zip(binder.global_keys, binder.globals, strict=True):
            if key == ("sp",):
                globals_.append(self.iset.core_global(plan.global_index[key]))
            else:
                v = wasmtime.Val.i32(signed_i32(g.value))
                globals_.append(wasmtime.Global(store, wasmtime.GlobalType(i32, g.mutable), v))
        traps = [self._trap(t.type, t.message) for t in binder.traps]
        plt = None
        if binder.plt:
            types = tuple(stub.type for stub in binder.plt)
            module = self.iset.generated_module(("plt", types), partial(codegen.plt_module, types))
            plt = wasmtime.Instance(store, module, [])
            self._keep.append(plt)
        return _LiveGroup(globals_, traps, plt)

    def _extern(self, b: Binding, live: _LiveGroup) -> _Extern:
        """A binding as the live extern it stands for on this run."""
        match b:
            case BindDirect(owner, name) | BindExport(owner, name):
                return self._export(owner, name)
            case BindGlobal(i):
                return live.globals[i]
            case BindPlt(i):
                assert live.plt is not None
                return get_export(self.store, live.plt, str(i))
            case BindTrap(i):
                return live.traps[i]
            case BindWasi(name):
                return self._wasi(name)
            case BindTag(i):
                return self._tag(i)
            case BindHost(name):
                return self.host_function(name)
            case BindMemory():
                return self._mem()
            case BindTable():
                return self.iset.table
        assert_never(b)

    def _wasi(self, name: str) -> wasmtime.Func:
        func = self.iset.wasi_function(name)
        if func is None:
            raise _no_wasi(name)
        return func

    def _tag(self, index: int) -> wasmtime.Tag:
        """Exception tag ``index`` of the run: the plan's, or one a library
        loaded at run time introduced (made once, shared by later ones)."""
        plan_tags = self.iset.plan.tags
        if index < len(plan_tags):
            return self.iset.core_tag(index)
        tag = self._new_tags.get(index)
        if tag is None:
            ft = list(self.tags.values())[index]
            tag = wasmtime.Tag(self.store, wasmtime.TagType(to_wasmtime_functype(ft)))
            self._new_tags[index] = tag
        return tag

    def _trap(self, ft: FuncType, message: str) -> wasmtime.Func:
        def trap(*_a):
            raise wasmtime.Trap(message)

        return wasmtime.Func(self.store, to_wasmtime_functype(ft), trap)

    def _atexit_func(self) -> wasmtime.Func:
        """``__cxa_atexit`` for libraries loaded at run time: destructors of a
        dlopen'ed library are kept with it and run by dlclose; others go to
        the C library as usual."""
        func = self._host_funcs.get("__cxa_atexit")
        if func is not None:
            return func
        wt = wasmtime.FuncType([wasmtime.ValType.i32()] * 3, [wasmtime.ValType.i32()])
        func = wasmtime.Func(self.store, wt, _WeakHostCall(self, "_cxa_atexit"))
        self._host_funcs["__cxa_atexit"] = func
        return func

    def _cxa_atexit(self, fn: int, arg: int, dso: int) -> int:
        for m in self.modules:
            if m.dynamic and not m.closed and m.dso_handle == dso:
                m.dtors.append((fn, arg))
                self._hook_exit()
                return 0
        owner = self._global_lookup("__cxa_atexit", KIND_FUNC)
        if owner is None:
            return 0
        return self._export(owner, "__cxa_atexit")(self.store, fn, arg, dso)

    def _run_destructors(self, modules: list[int]) -> None:
        """The destructors of ``modules``, module by module in that order,
        each module's in reverse registration order; each runs once (taken
        from its module before it runs), for dlclose and for exit alike."""
        for mi in modules:
            m = self.modules[mi]
            dtors, m.dtors = m.dtors, []
            for fn, arg in reversed(dtors):
                func = self.iset.table.get(self.store, fn)
                if isinstance(func, wasmtime.Func):
                    func(self.store, arg)

    def _hook_exit(self) -> None:
        """Have the program's exit run the destructors of libraries still
        open, as ld.so's exit does: when a dlopen'ed library first keeps a
        destructor here, one handler is registered with the C library's own
        ``__cxa_atexit``. It runs with the other exit handlers, before the C
        library flushes its streams, so what destructors print is not lost."""
        if self._exit_hooked:
            return
        self._exit_hooked = True
        owner = self._global_lookup("__cxa_atexit", KIND_FUNC)
        if owner is None:  # no C library to run exit handlers
            return
        wt = wasmtime.FuncType([wasmtime.ValType.i32()], [])
        func = wasmtime.Func(self.store, wt, _WeakHostCall(self, "_at_exit"))
        try:
            slot = self._new_table_slot("the exit handler of dlopen'ed libraries")
        except DlError:  # the table is at its limit: no destructors at exit
            return
        self.iset.table.set(self.store, slot, func)
        self._export(owner, "__cxa_atexit")(self.store, slot, 0, 0)

    def _at_exit(self, _arg: int) -> None:
        """The exit handler: libraries still open, last loaded first."""
        still_open = [
            mi for mi, m in enumerate(self.modules) if m.dynamic and not m.closed and m.dtors
        ]
        self._run_destructors(still_open[::-1])

    def _register_lazy_from_plan(self) -> None:
        """Load-time functions that were missing: a later RTLD_GLOBAL library
        may provide them."""
        plan = self.iset.plan
        table = self.iset.plt_table()
        if table is not None:
            for i, stub in enumerate(plan.plt):
                if stub.target is None:
                    self.lazy.setdefault(stub.symbol, []).append((table, i, stub.type))

    def _resolve_lazy(self) -> None:
        for name in list(self.lazy):
            owner = self._global_lookup(name, KIND_FUNC)
            if owner is None:
                continue
            om = self.modules[owner]
            eft = om.image.info.func_type(om.image.info.exports[name].index)
            remaining = []
            for table, slot, ft in self.lazy[name]:
                if ft == eft:
                    table.set(self.store, slot, self._export(owner, name))
                else:
                    remaining.append((table, slot, ft))
            if remaining:
                self.lazy[name] = remaining
            else:
                del self.lazy[name]

    # -- dlsym, dlclose, dladdr ---------------------------------------------------

    def dlsym(self, handle: int, name: str, symtype: int | None) -> int:
        """A symbol's address (a table slot for a function) from a handle's
        scope, or from the global scope for handle 0 (RTLD_DEFAULT)."""
        if not debug.SYMBOLS:
            return self._dlsym(handle, name, symtype)
        call = f'dlsym({handle or "RTLD_DEFAULT"}, "{name}")'
        try:
            value = self._dlsym(handle, name, symtype)
        except WasmrunError as e:
            debug.trace("symbols", f"{call} failed: {e}")
            raise
        debug.trace("symbols", f"{call} = {value:#x}")  # a table slot for a function
        return value

    def _dlsym(self, handle: int, name: str, symtype: int | None) -> int:
        want = {SYMTYPE_FUNC: KIND_FUNC, SYMTYPE_DATA: KIND_GLOBAL, None: None}[symtype]
        if handle == 0:
            owner = self._global_lookup(name, want)
            where = "the global scope"
        else:
            h = self.handles.get(handle)
            if h is None:
                raise DlError(f"invalid handle {handle}", errno.EINVAL)
            owner = self._scope_lookup(name, h.local_scope, want)
            where = self.modules[h.root].image.display
        if owner is None or name in SCOPE_EXCLUDED:
            what = {KIND_FUNC: " (function)", KIND_GLOBAL: " (data)", None: ""}[want]
            raise DlError(f"undefined symbol: {name}{what} in {where}")
        kind = self.modules[owner].image.info.exports[name].kind
        if kind == KIND_FUNC:
            return self._func_slot(owner, name)
        if kind == KIND_GLOBAL:
            return self._data_address(owner, name)
        raise DlError(
            f"symbol {name} in {self.modules[owner].image.display} is not a function or data"
        )

    def dlclose(self, handle: int) -> int:
        h = self.handles.get(handle)
        if h is None:
            raise DlError(f"invalid handle {handle}", errno.EINVAL)
        h.refs -= 1
        if h.refs > 0:
            return 0
        del self.handles[handle]
        self.handle_of_root.pop(h.root, None)
        if h.flags & RTLD_NODELETE:
            return 0
        still_needed = set()
        for other in self.handles.values():
            still_needed.update(other.local_scope)
        doomed = [
            mi
            for mi in h.local_scope
            if self.modules[mi].dynamic and mi not in still_needed and not self.modules[mi].closed
        ]
        self._run_destructors(doomed)  # dependents first
        for mi in doomed:
            m = self.modules[mi]
            m.closed = True
            if mi in self.global_dynamic:
                self.global_dynamic.remove(mi)
            key = file_identity(m.image.path)
            if key is not None and self.by_file.get(key) == mi:
                del self.by_file[key]
            if m.region is not None:
                self.free_regions.append(m.region)
        return 0

    def dladdr(self, addr: int) -> tuple[str, int, str | None, int] | None:
        """(file, base, symbol or None, symbol address) for a function
        pointer (table slot) or a data address."""
        # A function pointer is a table slot, a data pointer a memory address;
        # the two overlap as numbers, so a populated slot is tried first.
        if 0 < addr < self.iset.table.size(self.store):
            found = self._describe_function(addr)
            if found is not None:
                return found
        for m in self.modules:
            dl = m.image.dylink
            if m.closed or dl is None or m.instance is None:
                continue
            if m.memory_base <= addr < m.memory_base + max(dl.mem_size, 1):
                best: tuple[int, str] | None = None
                for name, exp in m.image.info.exports.items():
                    if exp.kind != KIND_GLOBAL or name in SCOPE_EXCLUDED:
                        continue
                    value = m.image.export_value(name, m.memory_base, m.table_base)
                    if value is not None and value <= addr and (best is None or value > best[0]):
                        best = (value, name)
                if best is None:
                    return (m.image.path, m.memory_base, None, 0)
                return (m.image.path, m.memory_base, best[1], best[0])
        return None

    def _describe_function(self, slot: int) -> tuple[str, int, str | None, int] | None:
        for (mi, funcidx), s in self.canonical.items():
            if s == slot:
                m = self.modules[mi]
                for name, exp in m.image.info.exports.items():
                    if exp.kind == KIND_FUNC and exp.index == funcidx:
                        return (m.image.path, m.memory_base, name, slot)
                return (m.image.path, m.memory_base, None, slot)
        for m in self.modules:
            dl = m.image.dylink
            if dl and not m.closed and m.table_base <= slot < m.table_base + dl.table_size:
                return (m.image.path, m.memory_base, None, slot)
        return None
