"""What each import of a module becomes: one binder for start-up and dlopen.

musl's ldso/dynlink.c relocates the program's libraries at start-up and a
library the program ``dlopen``s with one routine; :class:`Binder` is that
routine here. For every import of a module it takes the role
(:func:`~.core.import_role`) and applies the linking rules, once, for both
callers:

* a function: directly to its definer if that is instantiated earlier,
  through a PLT stub if later, to a trap if it is weak and undefined, an
  error under bind-now (``--bind-now``, ``RTLD_NOW``), else a lazily bound
  PLT stub that traps until someone defines it (``__cxa_atexit`` of a
  library loaded at run time is interposed, see :meth:`BindSite.interpose`);
* ``GOT.mem``: a layout symbol, the definer's data address (its
  ``__memory_base`` or TLS block plus the export), 0 for a weak undefined
  symbol, an error for a missing one;
* ``GOT.func``: the function's canonical table slot
  (:func:`~.core.canonical_slot`), 0 if weak and undefined, a slot that
  traps if missing and bound lazily, else an error;
* ``env`` globals: the one stack pointer, the module's own
  ``__memory_base``/``__table_base``/``__tls_base``, layout symbols, and
  globals exported by modules instantiated earlier;
* exception tags (one per name for the run, with one type), WASI functions
  (one type per name), ``dyld`` host functions, the memory and the table.

The result is a tuple of typed ``Bind*`` records per module, plus the side
tables they index (:attr:`Binder.globals`, :attr:`Binder.plt`,
:attr:`Binder.traps`): at start-up these become the
:class:`~.plan.LinkPlan` that a recipe replays per run (:mod:`.recipe`,
:mod:`.instance`); on dlopen a fragment for the new group that
:mod:`.dlopen` turns into live externs at once. What the two callers do
differently -- where a symbol is looked up, what "instantiated earlier"
means, how table slots are allocated and filled, how a missing symbol is
reported, what dlopen takes from the live run -- is behind the small
:class:`BindSite` protocol, which ``plan._Resolver`` and ``dlopen._GroupSite``
implement.

The records live here rather than in :mod:`.plan`, which uses the binder
and so cannot be imported by it (a cycle); :mod:`.plan` re-exports them.
"""

from __future__ import annotations

from typing import Final, NamedTuple, Protocol

from . import debug
from .core import (
    FuncHow,
    ImportRole,
    canonical_slot,
    check_data_export,
    data_symbol_base,
    import_role,
    module_global_value,
    resolve_function,
)
from .errors import LoadError, SymbolError
from .layout import LAYOUT_SYMBOLS, LayoutSymbols
from .module import ModuleImage
from .wasmbin import KIND_FUNC, KIND_GLOBAL, FuncType, GlobalType

# Bindings: what each import of a module is bound to, one per import, in
# import order. A closed set of small records rather than (tag, payload)
# pairs, so that the recipe builder and the type checker both see which
# payload goes with which kind. NamedTuples, for import time (ten attrs
# classes cost ~3 ms at every start); tell them apart by type (match or
# isinstance), never with ==, since tuples of equal fields compare equal.


class BindMemory(NamedTuple):
    """The shared linear memory."""


class BindTable(NamedTuple):
    """The shared indirect function table."""


class BindGlobal(NamedTuple):
    """A global the linker makes: ``globals[glob]`` of the plan (a global
    of the generated core module) or of a dlopen group."""

    glob: int


class BindDirect(NamedTuple):
    """A function export of a module instantiated earlier: a direct call."""

    owner: int
    name: str


class BindExport(NamedTuple):
    """A non-function export (a global) of a module instantiated earlier."""

    owner: int
    name: str


class BindPlt(NamedTuple):
    """PLT stub ``plt[stub]`` (a back-edge, a later definer, or a lazily
    missing function)."""

    stub: int


class BindWasi(NamedTuple):
    """A WASI preview 1 function (an export of the shim)."""

    name: str


class BindTag(NamedTuple):
    """Exception tag ``tags[tag]``, shared by the run."""

    tag: int


class BindTrap(NamedTuple):
    """A function that traps with ``traps[stub].message``."""

    stub: int


class BindHost(NamedTuple):
    """A host function of the run: a ``dyld`` function (guest dlopen), or
    for a library loaded at run time the linker's ``__cxa_atexit``."""

    name: str


Binding = (
    BindMemory
    | BindTable
    | BindGlobal
    | BindDirect
    | BindExport
    | BindPlt
    | BindWasi
    | BindTag
    | BindTrap
    | BindHost
)
BIND_MEMORY: Final = BindMemory()
BIND_TABLE: Final = BindTable()


class PltStub(NamedTuple):
    type: FuncType
    target: tuple[int, str] | None  # None: unresolved, the slot traps
    symbol: str
    importer: str


class TrapStub(NamedTuple):
    """A host function standing in for a function that does not exist."""

    type: FuncType
    message: str


class PlannedGlobal(NamedTuple):
    mutable: bool
    value: int
    # For a data symbol whose address is only known after instantiation:
    late: tuple[int, str] | None = None


class TableFill(NamedTuple):
    slot: int
    target: tuple[int, str] | None  # (module, export) or None: slot traps
    trap: int | None = None  # index into traps when target is None


# Keys of the globals holding a module's own bases (one per module).
_MODULE_GLOBAL_KEYS: Final = {"__memory_base": "mb", "__table_base": "tb", "__tls_base": "tls"}

# The type of ``__cxa_atexit(func, arg, dso)``.
ATEXIT_TYPE: Final = FuncType((b"\x7f",) * 3, (b"\x7f",))


class BindSite(Protocol):
    """What the binder needs from its caller: the planner (``plan._Resolver``,
    the whole program before any run) or dlopen (``dlopen._GroupSite``, the
    libraries one dlopen adds to a live run). Module indices are the
    caller's."""

    @property
    def nonpie(self) -> bool:
        """The main defines memory, table and stack pointer (not PIE)."""
        ...

    @property
    def symbols(self) -> LayoutSymbols:
        """The layout symbols' values (stack bounds, heap)."""
        ...

    @property
    def canonical(self) -> dict[tuple[int, int], int]:
        """(module, function index) -> its one table slot, updated in place."""
        ...

    @property
    def tags(self) -> dict[str, FuncType]:
        """The run's exception tags in index order, updated in place."""
        ...

    def image(self, index: int) -> ModuleImage:
        """Module ``index``."""
        ...

    def bases(self, index: int) -> tuple[int, int, int | None]:
        """Module ``index``'s memory base, table base and TLS base."""
        ...

    def owner(self, name: str, kind: int, importer: int) -> int | None:
        """The module whose export ``name`` (of ``kind``) the importer binds
        to, None if none; the caller's scope and kind rules."""
        ...

    def ready(self, owner: int, importer: int) -> bool:
        """Whether ``owner`` is instantiated before ``importer``."""
        ...

    def lazy(self, role: ImportRole) -> bool:
        """Whether a missing, non-weak function import of ``role``
        (FUNCTION or GOT_FUNC) is bound lazily, to a slot that traps when
        called, rather than reported."""
        ...

    def undefined(self, importer: int, name: str, kind: str, reported: bool) -> None:
        """A non-weak symbol (``kind`` "function" or "data") is missing:
        ``reported`` as an error, or bound lazily."""
        ...

    def new_slot(self, importer: int) -> int:
        """A new slot of the indirect function table."""
        ...

    def fill(self, slot: int, target: tuple[int, str] | None, trap: int | None) -> None:
        """Make table ``slot`` point at export ``target`` (module, name), or
        when None at trap stub ``trap``."""
        ...

    def late_address(self, owner: int, name: str) -> int | None:
        """The address of data symbol ``name`` of ``owner`` whose export is
        not a constant, if it can be read now (dlopen, from an instantiated
        module); None: a late global, set once ``owner`` is instantiated."""
        ...

    def main_stack_pointer(self, importer: int) -> Binding:
        """A non-PIE main's exported ``__stack_pointer`` (its own error if
        the main does not export it)."""
        ...

    def wasi_type(self, name: str, ft: FuncType) -> FuncType:
        """The type the run's WASI function ``name`` has (or gets: ``ft``);
        the caller's own error if it cannot have one."""
        ...

    def interpose(self, importer: int, name: str, ft: FuncType) -> Binding | None:
        """A function import the caller binds itself instead of through the
        scope (dlopen: ``__cxa_atexit``), or None."""
        ...


class Binder:
    """Binds the imports of modules (:meth:`bind`) and collects what the
    bindings index: ``globals`` (deduplicated by key, ``global_keys``), PLT
    stubs (``plt``, by target) and trap stubs (``traps``). One binder per
    plan, or per dlopen group. ``now`` names bind-now in traces."""

    def __init__(self, site: BindSite, now: str = "bind-now") -> None:
        self.site = site
        self.now = now
        self.globals: list[PlannedGlobal] = []
        self.global_keys: dict[tuple, int] = {}
        self.plt: list[PltStub] = []
        self._plt_keys: dict[tuple, int] = {}
        self.traps: list[TrapStub] = []

    # -- what the bindings index ------------------------------------------

    def global_(
        self, key: tuple, mutable: bool, value: int, late: tuple[int, str] | None = None
    ) -> int:
        """The global for ``key``, made with ``value`` the first time."""
        index = self.global_keys.get(key)
        if index is None:
            index = self.global_keys[key] = len(self.globals)
            self.globals.append(PlannedGlobal(mutable, value & 0xFFFFFFFF, late))
        return index

    def trap(self, ft: FuncType, message: str) -> int:
        self.traps.append(TrapStub(ft, message))
        return len(self.traps) - 1

    def plt_stub(
        self, ft: FuncType, target: tuple[int, str] | None, name: str, importer: str
    ) -> int:
        """One stub per target and type (per importer for a missing one)."""
        key = (target, name, ft) if target is not None else (None, name, importer, ft)
        index = self._plt_keys.get(key)
        if index is None:
            index = self._plt_keys[key] = len(self.plt)
            self.plt.append(PltStub(ft, target, name, importer))
        return index

    # -- the rules ----------------------------------------------------------

    def bind(self, mi: int) -> tuple[Binding, ...]:
        """The binding of every import of module ``mi``, in import order."""
        image = self.site.image(mi)
        binds: list[Binding] = []
        for imp in image.info.imports:
            name, desc = imp.name, imp.desc
            role = import_role(image, imp)
            if role is ImportRole.FUNCTION:
                assert isinstance(desc, FuncType)
                binds.append(self._func(mi, name, desc))
            elif role is ImportRole.GOT_MEM:
                assert isinstance(desc, GlobalType)
                binds.append(BindGlobal(self._got_mem(mi, name, desc.mutable)))
            elif role is ImportRole.GOT_FUNC:
                assert isinstance(desc, GlobalType)
                binds.append(BindGlobal(self._got_func(mi, name, desc.mutable)))
            elif role is ImportRole.ENV_GLOBAL:
                assert isinstance(desc, GlobalType)
                binds.append(self._env_global(mi, name, desc))
            elif role is ImportRole.MEMORY:
                binds.append(BIND_MEMORY)
            elif role is ImportRole.TABLE:
                binds.append(BIND_TABLE)
            elif role is ImportRole.TAG:
                assert isinstance(desc, FuncType)
                binds.append(self._tag(image, name, desc))
            elif role is ImportRole.DYLD:
                binds.append(BindHost(name))
            else:  # ImportRole.WASI
                assert isinstance(desc, FuncType)
                prev = self.site.wasi_type(name, desc)
                if prev != desc:
                    raise SymbolError(
                        f"{image.display}: WASI function {name} imported with type {desc}, "
                        f"another module uses {prev}"
                    )
                binds.append(BindWasi(name))
        if debug.BINDINGS:
            for imp, b in zip(image.info.imports, binds, strict=True):
                what = self.describe(mi, imp.module, imp.name, b)
                debug.trace("bindings", f"{image.display}: {imp.module}.{imp.name} => {what}")
        return tuple(binds)

    def _weak(self, image: ModuleImage, mod: str, name: str) -> bool:
        return image.dylink is not None and image.dylink.is_weak_import(mod, name)

    def _data_owner(self, name: str, mi: int) -> int | None:
        """The definer of data symbol (or ``env`` global) ``name``: an i32
        global, an address."""
        owner = self.site.owner(name, KIND_GLOBAL, mi)
        if owner is not None:
            check_data_export(self.site.image(mi), name, self.site.image(owner))
        return owner

    def _func(self, mi: int, name: str, ft: FuncType) -> Binding:
        site = self.site
        own = site.interpose(mi, name, ft)
        if own is not None:
            return own
        image = site.image(mi)
        owner = site.owner(name, KIND_FUNC, mi)
        res = resolve_function(
            image,
            name,
            ft,
            owner,
            None if owner is None else site.image(owner),
            owner is not None and site.ready(owner, mi),
        )
        if owner is not None and res.how is FuncHow.DIRECT:
            return BindDirect(owner, name)
        if owner is not None and res.how is FuncHow.DEFERRED:
            return BindPlt(self.plt_stub(ft, (owner, name), name, image.display))
        if res.how is FuncHow.WEAK:
            return BindTrap(self.trap(ft, res.message))
        if not site.lazy(ImportRole.FUNCTION):
            site.undefined(mi, name, "function", True)
            return BindTrap(self.trap(ft, "unreachable"))
        site.undefined(mi, name, "function", False)
        return BindPlt(self.plt_stub(ft, None, name, image.display))

    def _got_mem(self, mi: int, name: str, mutable: bool) -> int:
        site = self.site
        image = site.image(mi)
        if name in LAYOUT_SYMBOLS:
            key = ("dso", mi) if name == "__dso_handle" else ("layout", name)
            here = site.symbols.value(name, site.bases(mi)[0])
            return self.global_((*key, mutable), mutable, here)
        owner = self._data_owner(name, mi)
        if owner is None:
            if not self._weak(image, "GOT.mem", name):
                site.undefined(mi, name, "data", True)
            return self.global_(("zero", mutable), mutable, 0)
        exporter = site.image(owner)
        memory_base, table_base, tls_base = site.bases(owner)
        base = data_symbol_base(exporter, name, memory_base, tls_base)
        if base is None:
            raise LoadError(
                f"{exporter.path}: TLS symbol {name} but the module has no __wasm_init_tls"
            )
        value: int | None = exporter.export_value(name, base, table_base)
        if value is None:
            value = site.late_address(owner, name)
        if value is None:
            return self.global_(("late", name, mutable), mutable, 0, late=(owner, name))
        return self.global_(("GOT.mem", name, mutable), mutable, value)

    def _got_func(self, mi: int, name: str, mutable: bool) -> int:
        site = self.site
        image = site.image(mi)
        owner = site.owner(name, KIND_FUNC, mi)
        if owner is None:
            if self._weak(image, "GOT.func", name):
                return self.global_(("zero", mutable), mutable, 0)
            if not site.lazy(ImportRole.GOT_FUNC):
                site.undefined(mi, name, "function", True)
                return self.global_(("zero", mutable), mutable, 0)
            site.undefined(mi, name, "function", False)
            key = ("GOT.func.missing", name, mutable)
            index = self.global_keys.get(key)
            if index is None:
                slot = site.new_slot(mi)
                trap = self.trap(
                    FuncType((), ()),
                    f"symbol lookup error: {image.display}: undefined symbol: {name}",
                )
                site.fill(slot, None, trap)
                index = self.global_(key, mutable, slot)
            return index
        funcidx = site.image(owner).info.exports[name].index
        slot = canonical_slot(
            site.canonical,
            owner,
            funcidx,
            lambda: site.new_slot(mi),
            lambda s: site.fill(s, (owner, name), None),
        )
        return self.global_(("GOT.func", owner, funcidx, mutable), mutable, slot)

    def _env_global(self, mi: int, name: str, gt: GlobalType) -> Binding:
        site = self.site
        if name == "__stack_pointer":
            if site.nonpie:
                return site.main_stack_pointer(mi)
            return BindGlobal(self.global_(("sp",), True, site.symbols.stack_high))
        if name in LAYOUT_SYMBOLS:
            return BindGlobal(self._got_mem(mi, name, gt.mutable))
        memory_base, table_base, tls_base = site.bases(mi)
        value = module_global_value(name, memory_base, table_base, tls_base, site.symbols)
        if value is not None:  # __memory_base, __table_base, __tls_base
            key = (_MODULE_GLOBAL_KEYS[name], mi, gt.mutable)
            return BindGlobal(self.global_(key, gt.mutable, value))
        owner = self._data_owner(name, mi)
        if owner is not None and site.ready(owner, mi):
            return BindExport(owner, name)
        raise SymbolError(
            f"{site.image(mi).display}: cannot resolve global import env.{name}"
            + (" (its definer is instantiated later)" if owner is not None else "")
        )

    def _tag(self, image: ModuleImage, name: str, ft: FuncType) -> Binding:
        tags = self.site.tags
        prev = tags.setdefault(name, ft)
        if prev != ft:
            raise SymbolError(
                f"{image.display}: tag {name} has type {ft}, another module uses {prev}"
            )
        return BindTag(list(tags).index(name))

    # -- tracing ------------------------------------------------------------

    def describe(self, mi: int, mod: str, name: str, b: Binding) -> str:
        """A binding of an import of module ``mi`` in words
        (WASMRUN_DEBUG=bindings), the same for start-up and dlopen."""
        site = self.site
        image = site.image(mi)
        match b:
            case BindDirect(owner, _):
                return f"{site.image(owner).display} (direct)"
            case BindPlt(i):
                target = self.plt[i].target
                if target is None:
                    return "undefined (lazy: PLT slot that traps if called)"
                return f"{site.image(target[0]).display} (PLT: instantiated later)"
            case BindTrap(_):
                if self._weak(image, mod, name):
                    return "undefined weak (traps if called)"
                return f"undefined (reported: {self.now})"
            case BindExport(owner, _):
                return f"{site.image(owner).display} (its global)"
            case BindGlobal(i):
                g = self.globals[i]
                if mod in ("GOT.mem", "GOT.func") and name not in LAYOUT_SYMBOLS:
                    definer = site.owner(name, KIND_FUNC if mod == "GOT.func" else KIND_GLOBAL, mi)
                    if definer is None:
                        if self._weak(image, mod, name):
                            return "0 (weak-zero)"
                        if g.value == 0:
                            return "undefined (reported)"
                        return f"slot {g.value:#x} (undefined: traps if called)"
                    where = site.image(definer).display
                    if g.late is not None:
                        return f"{where} (address known after instantiation)"
                    what = "slot" if mod == "GOT.func" else "address"
                    return f"{what} {g.value:#x} in {where}"
                return f"{g.value:#x} (linker-defined)"
            case BindWasi(_):
                return "WASI (host)"
            case BindHost(host):
                if host == "__cxa_atexit":
                    return "the linker's (destructors kept with the library)"
                return "dyld (host)"
            case BindTag(i):
                return f"exception tag {i} (shared)"
            case BindMemory():
                return "the shared memory"
            case BindTable():
                return "the shared table"
        return "?"
