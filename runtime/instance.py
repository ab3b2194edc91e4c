"""Instance sets: one run's fresh Store, memory, table, globals and WASI
context, built by replaying a :class:`~.plan.LinkPlan`.

Order (as ld.so does it, adapted to the DynamicLinking convention):
instantiate dependencies first; fill the table slots and PLT now that every
target exists; initialise TLS; ``__wasm_apply_data_relocs`` for every module;
``__wasm_call_ctors`` for every library, dependencies first; then the
program's ``_start`` (which runs the main module's own constructors).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

from . import codegen
from .errors import GuestTrap, LoadError, SymbolError
from .plan import (
    B_DIRECT,
    B_EXPORT,
    B_GLOBAL,
    B_MEMORY,
    B_PLT,
    B_TABLE,
    B_TAG,
    B_TRAP,
    B_WASI,
    LinkPlan,
)
from .wasmbin import FuncType

_VALTYPES = {
    0x7F: wasmtime.ValType.i32,
    0x7E: wasmtime.ValType.i64,
    0x7D: wasmtime.ValType.f32,
    0x7C: wasmtime.ValType.f64,
    0x70: wasmtime.ValType.funcref,
    0x6F: wasmtime.ValType.externref,
}


def to_wasmtime_functype(ft: FuncType) -> wasmtime.FuncType:
    try:
        return wasmtime.FuncType(
            [_VALTYPES[p[0]]() for p in ft.params], [_VALTYPES[r[0]]() for r in ft.results]
        )
    except KeyError:
        raise LoadError(f"unsupported value type in signature {ft}") from None


def get_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str):
    """One export by name, without building all exports (libc has ~1,700:
    ``Instance.exports`` would cost ~90 ms)."""
    item = ffi.wasmtime_extern_t()
    raw = name.encode("utf-8")
    ok = ffi.wasmtime_instance_export_get(
        store._context(),
        ctypes.byref(instance._instance),
        ctypes.create_string_buffer(raw),
        len(raw),
        ctypes.byref(item),
    )
    return wrap_extern(item) if ok else None


class GeneratedModules:
    """Compiled PLT and WASI-shim modules, by their shape (shared by runs).

    Keyed by the inputs of the generator, so a warm run neither re-encodes
    nor recompiles them.
    """

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._modules: dict[tuple, wasmtime.Module] = {}
        self._lock = threading.Lock()

    def _get(self, key: tuple, make) -> wasmtime.Module:
        with self._lock:
            mod = self._modules.get(key)
        if mod is None:
            mod = wasmtime.Module(self.engine, make())
            with self._lock:
                self._modules[key] = mod
        return mod

    def plt(self, stubs: tuple[FuncType, ...]) -> wasmtime.Module:
        return self._get(("plt", stubs), lambda: codegen.plt_module(stubs))

    def shim(
        self, functions: tuple[tuple[str, FuncType], ...], memory: tuple[int, int | None] | None
    ) -> wasmtime.Module:
        return self._get(
            ("shim", functions, memory), lambda: codegen.wasi_shim_module(functions, memory)
        )


def _trap_reason(text: str) -> str:
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
    return GuestTrap(_trap_reason(text), frames)


class InstanceSet:
    """The live instances of one run. Not thread-safe; one per run."""

    def __init__(
        self,
        plan: LinkPlan,
        engine: wasmtime.Engine,
        wasi_linker: wasmtime.Linker,
        generated: GeneratedModules,
        wasi: wasmtime.WasiConfig,
        store: wasmtime.Store | None = None,
    ) -> None:
        self.plan = plan
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.store = store if store is not None else wasmtime.Store(engine)
        self.store.set_wasi(wasi)
        self.instances: list[wasmtime.Instance | None] = [None] * len(plan.modules)
        self.shim: wasmtime.Instance | None = None
        self._engine = engine
        self._wasi_linker = wasi_linker
        self._generated = generated
        self._build()
        self.timings["instantiate"] = time.perf_counter() - t0

    # -- construction ---------------------------------------------------------

    def _build(self) -> None:
        plan, store = self.plan, self.store
        i32 = wasmtime.ValType.i32()
        self.memory: wasmtime.Memory | None = None
        self.table: wasmtime.Table | None = None
        if not plan.nonpie:
            mem_limits = (plan.memory_pages, plan.memory_max_pages)
            if plan.wasi:
                # The shim defines the memory; the linker binds WASI natively.
                shim_mod = self._generated.shim(tuple(plan.wasi), mem_limits)
                self.shim = self._wasi_linker.instantiate(store, shim_mod)
                self.memory = get_export(store, self.shim, "memory")
            else:
                self.memory = wasmtime.Memory(
                    store, wasmtime.MemoryType(wasmtime.Limits(*mem_limits))
                )
            self.table = wasmtime.Table(
                store,
                wasmtime.TableType(
                    wasmtime.ValType.funcref(), wasmtime.Limits(plan.table_size, None)
                ),
                None,
            )
        gtypes = {
            True: wasmtime.GlobalType(i32, True),
            False: wasmtime.GlobalType(i32, False),
        }
        self.globals = [
            wasmtime.Global(store, gtypes[g.mutable], wasmtime.Val.i32(_signed(g.value)))
            for g in plan.globals
        ]
        self.tags = [
            wasmtime.Tag(store, wasmtime.TagType(to_wasmtime_functype(ft))) for _, ft in plan.tags
        ]
        self.traps = [self._trap_func(t.type, t.message) for t in plan.traps]
        self.plt_table = None
        self.plt_funcs: list = []
        if plan.plt:
            plt_mod = self._generated.plt(tuple(s.type for s in plan.plt))
            plt = wasmtime.Instance(store, plt_mod, [])
            self.plt_table = get_export(store, plt, "table")
            self.plt_funcs = [get_export(store, plt, str(i)) for i in range(len(plan.plt))]
        if plan.nonpie:
            self._instantiate(plan.root)  # it defines the memory everyone shares
        if plan.wasi and self.shim is None:
            shim_mod = self._generated.shim(tuple(plan.wasi), None)
            wasi_funcs = [
                self._wasi_linker.get(store, "wasi_snapshot_preview1", name)
                for name, _ in plan.wasi
            ]
            self.shim = wasmtime.Instance(store, shim_mod, [self.memory, *wasi_funcs])
        for mi in plan.inst_order:
            if self.instances[mi] is None:
                self._instantiate(mi)
        self._fill_tables()
        for g_index, g in enumerate(plan.globals):
            if g.late is not None:
                owner, name = g.late
                glob = get_export(store, self.instances[owner], name)
                base = plan.modules[owner].memory_base
                self.globals[g_index].set_value(
                    store, wasmtime.Val.i32(_signed(glob.value(store) + base))
                )

    def _trap_func(self, ft: FuncType, message: str) -> wasmtime.Func:
        def trap(*_args):
            raise wasmtime.Trap(message)

        return wasmtime.Func(self.store, to_wasmtime_functype(ft), trap)

    def _instantiate(self, mi: int) -> None:
        plan, store = self.plan, self.store
        pm = plan.modules[mi]
        externs = []
        for kind, arg in pm.binds:
            if kind == B_DIRECT:
                owner, name = arg  # type: ignore[misc]
                externs.append(get_export(store, self.instances[owner], name))
            elif kind == B_GLOBAL:
                externs.append(self.globals[arg])  # type: ignore[index]
            elif kind == B_WASI:
                if self.shim is None:
                    # A main that exports its own memory calls WASI directly.
                    externs.append(self._wasi_linker.get(store, "wasi_snapshot_preview1", arg))
                else:
                    externs.append(get_export(store, self.shim, arg))  # type: ignore[arg-type]
            elif kind == B_PLT:
                externs.append(self.plt_funcs[arg])  # type: ignore[index]
            elif kind == B_MEMORY:
                externs.append(self.memory)
            elif kind == B_TABLE:
                externs.append(self.table)
            elif kind == B_TRAP:
                externs.append(self.traps[arg])  # type: ignore[index]
            elif kind == B_TAG:
                externs.append(self.tags[arg])  # type: ignore[index]
            elif kind == B_EXPORT:
                owner, name = arg  # type: ignore[misc]
                externs.append(get_export(store, self.instances[owner], name))
        module = pm.image.module()
        try:
            inst = wasmtime.Instance(store, module, externs)
        except wasmtime.Trap as e:
            raise format_trap(e) from None
        except wasmtime.WasmtimeError as e:
            msg = str(e).strip().splitlines()[0]
            raise SymbolError(f"{pm.image.display}: cannot instantiate: {msg}") from None
        self.instances[mi] = inst
        if mi == plan.root and plan.nonpie:
            self._adopt_nonpie_main(inst)

    def _adopt_nonpie_main(self, inst: wasmtime.Instance) -> None:
        """A non-PIE main defines memory and table: grow them to fit the
        libraries laid out after it."""
        plan, store = self.plan, self.store
        self.memory = get_export(store, inst, "memory")
        self.table = get_export(store, inst, "__indirect_function_table")
        if not isinstance(self.memory, wasmtime.Memory):
            raise LoadError(f"{plan.root_module.image.path}: non-PIE main does not export memory")
        if not isinstance(self.table, wasmtime.Table):
            if len(plan.modules) > 1 or plan.table_fills:
                raise LoadError(
                    f"{plan.root_module.image.path}: non-PIE main does not export "
                    "__indirect_function_table (link it with --export-table --growable-table)"
                )
            return
        pages = self.memory.size(store)
        if pages < plan.memory_pages:
            self.memory.grow(store, plan.memory_pages - pages)
        size = self.table.size(store)
        if size < plan.table_size:
            try:
                self.table.grow(store, plan.table_size - size, None)
            except wasmtime.WasmtimeError:
                raise LoadError(
                    f"{plan.root_module.image.path}: its table cannot grow to "
                    f"{plan.table_size} slots (link the main with --growable-table)"
                ) from None

    def _fill_tables(self) -> None:
        plan, store = self.plan, self.store
        for fill in plan.table_fills:
            if fill.target is None:
                func = self.traps[fill.trap]  # type: ignore[index]
            else:
                owner, name = fill.target
                func = get_export(store, self.instances[owner], name)
            self.table.set(store, fill.slot, func)  # type: ignore[union-attr]
        for i, stub in enumerate(plan.plt):
            if stub.target is None:
                func = self._lazy_missing(stub.type, stub.symbol, stub.importer)
            else:
                owner, name = stub.target
                func = get_export(store, self.instances[owner], name)
            self.plt_table.set(store, i, func)  # type: ignore[union-attr]

    def _lazy_missing(self, ft: FuncType, symbol: str, importer: str) -> wasmtime.Func:
        return self._trap_func(
            ft, f"symbol lookup error: {importer}: undefined symbol: {symbol} (called lazily)"
        )

    # -- start-up -------------------------------------------------------------

    def initialize(self) -> None:
        """TLS, data relocations, then library constructors (dependencies first)."""
        t0 = time.perf_counter()
        plan, store = self.plan, self.store
        try:
            for mi in plan.inst_order:
                pm = plan.modules[mi]
                if pm.tls_base is not None:
                    get_export(store, self.instances[mi], "__wasm_init_tls")(store, pm.tls_base)
            for mi in plan.inst_order:
                f = self._own_export(mi, "__wasm_apply_data_relocs")
                if f is not None:
                    f(store)
            for mi in plan.inst_order:
                if mi == plan.root and plan.modules[mi].image.is_executable:
                    continue  # _start runs the program's own constructors
                f = self._own_export(mi, "__wasm_call_ctors") or self._own_export(mi, "_initialize")
                if f is not None:
                    f(store)
        except wasmtime.ExitTrap:
            raise
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise format_trap(e) from None
        self.timings["init"] = time.perf_counter() - t0

    def _own_export(self, mi: int, name: str) -> wasmtime.Func | None:
        if name not in self.plan.modules[mi].image.info.exports:
            return None
        f = get_export(self.store, self.instances[mi], name)
        return f if isinstance(f, wasmtime.Func) else None

    def run_start(self) -> int:
        """Call the program's ``_start``; returns its exit status."""
        start = self._own_export(self.plan.root, "_start")
        if start is None:
            raise LoadError(
                f"{self.plan.root_module.image.path}: has no _start export (not a program)"
            )
        t0 = time.perf_counter()
        try:
            start(self.store)
            return 0
        except wasmtime.ExitTrap as e:
            return e.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise format_trap(e) from None
        finally:
            self.timings["run"] = time.perf_counter() - t0

    def lookup(self, symbol: str) -> wasmtime.Func | int | None:
        """A function, or the address of a data symbol, from the global scope."""
        owner = self.plan.scope.get(symbol)
        if owner is None:
            return None
        ext = get_export(self.store, self.instances[owner], symbol)
        if isinstance(ext, wasmtime.Global):
            return (ext.value(self.store) + self.plan.modules[owner].memory_base) & 0xFFFFFFFF
        return ext

    def call(self, symbol: str, args: Sequence[int | float] = ()) -> list[int | float]:
        """Call an exported function of the global scope with numeric args."""
        f = self.lookup(symbol)
        if not isinstance(f, wasmtime.Func):
            raise SymbolError(f"undefined symbol: {symbol} (function)")
        try:
            r = f(self.store, *args)
        except wasmtime.ExitTrap:
            raise
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise format_trap(e) from None
        if r is None:
            return []
        return list(r) if isinstance(r, tuple | list) else [r]


def _signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v
