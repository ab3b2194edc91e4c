"""Instance sets: one run's fresh Store, memory, table, globals and WASI
context, built by replaying a :class:`~.plan.LinkPlan`.

Order (as ld.so does it, adapted to the DynamicLinking convention):
instantiate dependencies first; fill the table slots and PLT now that every
target exists; initialise TLS; ``__wasm_apply_data_relocs`` for every module;
``__wasm_call_ctors`` for every library, dependencies first; then the
program's ``_start`` (which runs the main module's own constructors).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import wasmtime

from . import codegen, debug
from .core import InitModule, format_trap, initialize, scope_lookup, trap_reason
from .dlopen import DynamicLinker
from .errors import (
    GuestExit,
    LimitError,
    LoadError,
    RunInterrupted,
    SymbolError,
    WasmrunError,
    wasmtime_message,
)
from .limits import EpochTicker, RunControl, RunLimits, install_epoch_check
from .module import ModuleBytes, module_bytes
from .plan import LinkPlan
from .recipe import (
    MODULE0,
    SRC_CORE,
    SRC_HOST_WASI,
    SRC_PLT,
    SRC_SHIM,
    SRC_STUBS,
    Source,
    compiled_module,
    recipe_for,
)
from .wasmbin import signed_i32
from .wasmtime_seam import (
    EXTERN_SIZE,
    call_void,
    copy_func_extern,
    fill_exports,
    get_export,
    instance_ref,
    new_extern_array,
    new_instance,
)

# Bytes of generated modules a runtime keeps (see GeneratedModules).
GENERATED_BUDGET: Final = 64 << 20
# Names the encoding of a memory image (codegen.data_section) in the cache
# names of the modules that carry one: change it if that encoding changes.
_IMAGE_FORMAT: Final = "wasmrun memory image: active segments at i32.const, v1"


def _image_size(identity: tuple) -> int:
    """Bytes of data in a memory image, from its identity (see Recipe.image_key)."""
    return sum(size for *_, size in identity)


class GeneratedModules:
    """Compiled generated modules (PLT, shim, core, stubs, filler), keyed by
    the generator's inputs, so a warm run neither re-encodes nor recompiles
    them. Shared by runs and threads.

    Least recently used modules are dropped past ``budget_bytes`` of module
    bytes, or past ``max_modules`` modules: the core module is one per plan,
    and the module defining the memory carries the plan's memory image
    (libc.so's data: 220 KiB), so a long-lived runtime that sees many
    programs must not keep them all (and in wasmrund's workers each one
    holds a descriptor: see :class:`~wasmrun.runtime.cache.ModuleCache`)."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        compiler: Callable[[str, ModuleBytes], wasmtime.Module] | None = None,
        budget_bytes: int = GENERATED_BUDGET,
        max_modules: int | None = None,
    ) -> None:
        self.engine = engine
        self.max_modules = max_modules
        # The module cache's compiler: a fresh process deserializes generated
        # modules from the disk cache like any other, compiling nothing.
        self._compiler = compiler
        self.budget_bytes = budget_bytes
        self._modules: collections.OrderedDict[tuple, tuple[wasmtime.Module, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def get(
        self,
        key: tuple,
        make: Callable[[], bytes],
        image: tuple[tuple, Callable[[], Sequence[tuple[int, bytes]]]] | None = None,
    ) -> wasmtime.Module:
        """The module ``make()`` generates, compiled once per ``key``.

        ``image``, for the module that defines the memory: (what identifies
        the memory image, a function returning its segments). Its data
        section is appended to ``make()``'s bytes only if the module must be
        compiled; its cache name comes from ``make()``'s bytes and that
        identity, so a disk cache hit neither builds nor hashes megabytes of
        data (a library with 4 MiB of data: ~15 ms per process)."""
        with self._lock:
            entry = self._modules.get(key)
            if entry is not None:
                self._modules.move_to_end(key)
                return entry[0]
        head = make()
        data: ModuleBytes
        if image is None:
            digest = hashlib.sha256(head).hexdigest()
            data, size = head, len(head)
        else:
            identity, segments = image
            digest = hashlib.sha256(
                f"{_IMAGE_FORMAT} {hashlib.sha256(head).hexdigest()} {identity!r}".encode()
            ).hexdigest()

            def data() -> bytes:
                return head + codegen.data_section(segments())

            size = len(head) + _image_size(identity)
        if self._compiler is not None:
            mod = self._compiler(digest, data)
        else:
            mod = wasmtime.Module(self.engine, module_bytes(data))
        with self._lock:
            if key not in self._modules:
                self._modules[key] = (mod, size)
                self._bytes += size
                while len(self._modules) > 1 and (
                    self._bytes > self.budget_bytes
                    or (self.max_modules is not None and len(self._modules) > self.max_modules)
                ):
                    _, (_, dropped) = self._modules.popitem(last=False)
                    self._bytes -= dropped
        return mod

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def bytes(self) -> int:
        """Bytes of the generated modules kept."""
        return self._bytes


def _trap_host(caller: wasmtime.Caller, offset: int, length: int) -> None:
    """``wasmrun.trap``: raise a trap whose text lives in the stub module."""
    mem = caller.get("msgs")
    text = "trap"
    if isinstance(mem, wasmtime.Memory):
        raw = mem.read(caller, offset, offset + length)
        text = bytes(raw).decode("utf-8", "replace")
    raise wasmtime.Trap(text)


def make_host_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """The store-independent host functions every run shares: WASI preview 1
    and ``wasmrun.trap``."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.define_func(
        "wasmrun",
        "trap",
        wasmtime.FuncType([wasmtime.ValType.i32(), wasmtime.ValType.i32()], []),
        _trap_host,
        access_caller=True,
    )
    return linker


class InstanceSet:
    """The live instances of one run. Not thread-safe; one per run."""

    def __init__(
        self,
        plan: LinkPlan,
        engine: wasmtime.Engine,
        host_linker: wasmtime.Linker,
        generated: GeneratedModules,
        wasi: wasmtime.WasiConfig | None,
        store: wasmtime.Store | None = None,
        limits: RunLimits | None = None,
        control: RunControl | None = None,
        ticker: EpochTicker | None = None,
        fuel: bool = False,
        loader: tuple | None = None,
    ) -> None:
        self.plan = plan
        self.recipe = recipe_for(plan)
        self.timings: dict[str, float] = {}
        self._closed = False
        t0 = time.perf_counter()
        self.store = store if store is not None else wasmtime.Store(engine)
        if wasi is not None:  # None: a spare, given its run's context by attach()
            self.store.set_wasi(wasi)
        self.limits = limits or RunLimits()
        self.control = control
        self._ticker = ticker
        self._epoch_callback: object | None = None  # kept alive while the store runs
        self._loader = loader  # (ModuleCache, SearchPath) for guest dlopen
        self._dynamic: DynamicLinker | None = None
        self._running = "start-up"  # what guest code runs now, for GuestExit
        self._apply_limits(fuel)
        self.instances: list[wasmtime.Instance | None] = [None] * len(plan.modules)
        self._engine = engine
        self._host = host_linker
        self._generated = generated
        self._sources: list[wasmtime.Instance | None] = [None] * MODULE0
        try:
            self._build()
        except wasmtime.Trap as e:
            self.close()
            raise self._failure(e) from None
        except wasmtime.WasmtimeError as e:
            self.close()
            if self.limits.memory_bytes is not None and "limit" in str(e):
                need = plan.memory_pages * 65536
                raise LimitError(
                    f"{plan.root_module.image.display}: needs {need} bytes of memory at start, "
                    f"over the run's memory limit of {self.limits.memory_bytes} bytes"
                ) from None
            raise SymbolError(f"cannot instantiate: {wasmtime_message(str(e))}") from None
        except BaseException:
            self.close()
            raise
        self.timings["instantiate"] = time.perf_counter() - t0

    def attach(
        self,
        wasi: wasmtime.WasiConfig,
        control: RunControl | None,
        loader: tuple | None,
    ) -> None:
        """Give a spare (built with ``wasi=None`` and no controller, before
        its request existed) the request's WASI context, controller and
        search path. No guest code has run in it: instantiation runs none
        (spares are only built for plans without start functions), so it is
        as fresh as a set built now, only earlier."""
        self.store.set_wasi(wasi)
        self.control = control
        if control is not None:
            self._epoch_callback = install_epoch_check(self.store, control)
        self._loader = loader
        if self._dynamic is not None and loader is not None:
            # Built already (libc.so imports dyld): later dlopens search the
            # request's path, not the one the spare was built with.
            self._dynamic.search = loader[1]

    # -- end of the run -------------------------------------------------------

    def close(self) -> None:
        """Free the run now: its Store (memory, tables, instances), the files
        its WASI context opened, and the host functions wasmtime-py keeps
        for the Store in a global table.

        Dropping the last reference does the same, but a traceback or a
        caller's variable can keep an instance set alive for a while; a
        daemon serving thousands of runs must not hold their descriptors
        until the garbage collector comes by. Idempotent; using the set
        afterwards raises ``ValueError`` from wasmtime-py.
        """
        self._dynamic = None
        self.instances = [None] * len(self.instances)
        self._sources = [None] * len(self._sources)
        store = self.store
        if store is not None:
            store.close()
        self._epoch_callback = None
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (its Store is gone)."""
        return self._closed

    def __enter__(self) -> InstanceSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- construction ---------------------------------------------------------

    def _apply_limits(self, fuel: bool) -> None:
        store, limits = self.store, self.limits
        tables = limits.table_limit()
        if self.plan.table_size > tables:
            raise LimitError(
                f"{self.plan.root_module.image.display}: needs {self.plan.table_size} table "
                f"slots at start, over the run's table limit of {tables} elements"
            )
        # The memory limit holds for each memory: the run may create only the
        # memories its plan has, or a plugin defining a memory of its own per
        # dlopen could take the limit again each time. (Slack for safety.)
        r = self.recipe
        memories = (
            (r.core_memory is not None)
            + (bool(r.wasi) and r.shim_memory is not None)
            + bool(r.stubs)
            + sum(len(pm.image.info.memories) for pm in self.plan.modules)
            + 2
        )
        store.set_limits(
            memory_size=-1 if limits.memory_bytes is None else limits.memory_bytes,
            table_elements=tables,
            memories=memories,
        )
        if fuel:
            store.set_fuel(limits.fuel if limits.fuel is not None else (1 << 63) - 1)
        if self.control is not None:
            self._epoch_callback = install_epoch_check(store, self.control)
        else:
            store.set_epoch_deadline(1 << 62)  # never, whatever the epoch

    def _guest(self):
        """Context for guest execution: while in it, a run that can be
        interrupted is stopped at its deadline or on cancellation."""
        if self.control is not None and self._ticker is not None:
            return self._ticker.guest(self.control)
        return contextlib.nullcontext()

    def _failure(self, err: BaseException, during: str | None = None) -> WasmrunError:
        """The error to raise for a trap: an interruption if the controller
        asked for one, otherwise the guest's own trap; an ``exit()`` becomes
        :class:`GuestExit` naming ``during`` (what was running).

        The original exception is cut from its traceback: wasmtime-py's
        frames and the exception refer to each other, and that cycle would
        keep this instance set alive until the garbage collector runs.
        """
        _drop_tracebacks(err)
        if isinstance(err, WasmrunError):
            return err
        if isinstance(err, wasmtime.ExitTrap):
            return GuestExit(err.code, during or "the program")
        if not isinstance(err, wasmtime.WasmtimeError | wasmtime.Trap):
            return WasmrunError(f"internal error: {type(err).__name__}: {err}")
        reason = self.control.reason if self.control is not None else None
        if reason is not None:
            return RunInterrupted(reason, trap_reason(str(err)))
        trap = format_trap(err)
        if self.limits.fuel is not None and "all fuel consumed" in trap.message:
            return RunInterrupted("fuel", f"run ran out of fuel ({self.limits.fuel} units)")
        return trap

    def _build(self) -> None:
        plan, store, r, gen = self.plan, self.store, self.recipe, self._generated
        src = self._sources
        # The memory image goes with the module that defines the memory.
        image = (r.image_key, lambda: r.image_data(plan.modules)) if r.image_key else None
        core_image = image if r.core_memory is not None else None
        core = gen.get(
            (
                "core",
                r.core_globals,
                r.core_tags,
                r.core_table,
                r.core_memory,
                core_image and r.image_key,
            ),
            lambda: codegen.core_module(r.core_globals, r.core_tags, r.core_table, r.core_memory),
            core_image,
        )
        src[SRC_CORE] = wasmtime.Instance(store, core, [])
        if r.plt_types:
            plt = gen.get(("plt", r.plt_types), lambda: codegen.plt_module(r.plt_types))
            src[SRC_PLT] = wasmtime.Instance(store, plt, [])
        if r.stubs:
            stubs = gen.get(("stubs", r.stubs), lambda: codegen.stubs_module(r.stubs))
            src[SRC_STUBS] = self._host.instantiate(store, stubs)
        if plan.nonpie:
            self._instantiate(plan.root)  # it defines the memory everyone shares
        if r.wasi:
            shim_image = image if r.shim_memory is not None else None
            shim = gen.get(
                ("shim", r.wasi, r.shim_memory, shim_image and r.image_key),
                lambda: codegen.wasi_shim_module(r.wasi, r.shim_memory),
                shim_image,
            )
            if r.shim_memory is not None:
                # The shim defines the memory; the host linker binds WASI natively.
                src[SRC_SHIM] = self._host.instantiate(store, shim)
            else:
                linker = wasmtime.Linker(self._engine)
                linker.define_wasi()
                linker.define(store, "env", "memory", self.memory)
                src[SRC_SHIM] = linker.instantiate(store, shim)
        for mi in plan.inst_order:
            if self.instances[mi] is None:
                self._instantiate(mi)
        if r.filler_tables:
            self._fill_tables()
        for gi, owner, name, base in r.late_globals:
            glob = get_export(store, self.module_instance(owner), name)
            core_g = get_export(store, self._source(SRC_CORE), f"g{gi}")
            core_g.set_value(store, wasmtime.Val.i32(signed_i32(glob.value(store) + base)))

    @property
    def dynamic(self):
        """The run-time loader (guest dlopen) of this instance set.

        Created on first use; its module is imported eagerly all the same,
        since libc.so imports ``dyld`` (its dlopen) and so nearly every run
        needs it (dlopen.py does not import this module: no cycle)."""
        if self._dynamic is None:
            if self._loader is None:
                raise LoadError("this instance set was created without a loader")
            self._dynamic = DynamicLinker(self, *self._loader)
        return self._dynamic

    def core_global(self, index: int) -> wasmtime.Global:
        """Planned global ``index`` (``LinkPlan.globals``) of this run."""
        return get_export(self.store, self._source(SRC_CORE), f"g{index}")

    def core_tag(self, index: int) -> wasmtime.Tag:
        """Exception tag ``index`` (``LinkPlan.tags``) shared by this run."""
        return get_export(self.store, self._source(SRC_CORE), f"t{index}")

    def wasi_function(self, name: str) -> wasmtime.Func | None:
        """The WASI shim's wrapper of ``name`` (None: the program imports no
        such WASI function, so the shim has no wrapper for it)."""
        shim = self._sources[SRC_SHIM]
        func = get_export(self.store, shim, name) if shim is not None else None
        return func if isinstance(func, wasmtime.Func) else None

    def plt_table(self) -> wasmtime.Table | None:
        """The load-time PLT's table (None: the plan has no PLT)."""
        plt = self._sources[SRC_PLT]
        table = get_export(self.store, plt, "table") if plt is not None else None
        return table if isinstance(table, wasmtime.Table) else None

    def generated_module(self, key: tuple, make: Callable[[], bytes]) -> wasmtime.Module:
        """A generated module compiled once per shape (shared by all runs)."""
        return self._generated.get(key, make)

    @property
    def memory(self) -> wasmtime.Memory:
        """The program's linear memory."""
        memory = self._extern_at(self._memory_source())
        assert isinstance(memory, wasmtime.Memory)
        return memory

    @property
    def table(self) -> wasmtime.Table:
        """The indirect function table."""
        if self.plan.nonpie:
            table = get_export(
                self.store, self.module_instance(self.plan.root), "__indirect_function_table"
            )
        else:
            table = self._extern_at((SRC_CORE, b"table"))
        assert isinstance(table, wasmtime.Table)
        return table

    def _memory_source(self) -> tuple[int, bytes]:
        if self.plan.nonpie:
            return (MODULE0 + self.plan.root, b"memory")
        return (SRC_SHIM if self.recipe.wasi else SRC_CORE, b"memory")

    def _extern_at(self, source: tuple[int, bytes]):
        return get_export(self.store, self._source(source[0]), source[1].decode())

    def _source(self, slot: int) -> wasmtime.Instance:
        inst = self._sources[slot] if slot < MODULE0 else self.instances[slot - MODULE0]
        assert inst is not None, f"source {slot} used before it exists"
        return inst

    def module_instance(self, mi: int) -> wasmtime.Instance:
        """The instance of the plan's module ``mi`` (it must exist by now)."""
        inst = self.instances[mi]
        assert inst is not None, f"module {mi} used before it is instantiated"
        return inst

    def _fill_array(self, sources: Sequence[Source]) -> ctypes.Array:
        """One ``export_get`` per import, written straight into the array
        wasmtime reads: no Python object and no symbol resolution per import."""
        arr = new_extern_array(len(sources))
        refs = {
            slot: instance_ref(self._source(slot))
            for slot in {slot for slot, _ in sources}
            if slot >= 0
        }
        entries = []
        for i, (slot, name) in enumerate(sources):
            if slot >= 0:
                entries.append((i, refs[slot], name))
                continue
            if slot == SRC_HOST_WASI:
                func = self._host.get(self.store, "wasi_snapshot_preview1", name.decode())
            else:  # SRC_DYLD
                func = self.dynamic.host_function(name.decode())
            assert isinstance(func, wasmtime.Func)
            copy_func_extern(func, ctypes.addressof(arr) + i * EXTERN_SIZE)
        missing = fill_exports(self.store, arr, entries)
        if missing >= 0:
            slot, name = sources[missing]
            raise LoadError(f"internal error: export {name!r} of source {slot} is missing")
        return arr

    def _instantiate(self, mi: int) -> None:
        plan, store = self.plan, self.store
        pm = plan.modules[mi]
        sources = self.recipe.imports[mi]
        arr = self._fill_array(sources)
        module = compiled_module(plan, mi)
        try:
            inst = new_instance(store, module, arr, len(sources))
        except wasmtime.ExitTrap as e:  # the module's start function called exit()
            raise GuestExit(e.code, f"start function of {pm.image.display}") from None
        except wasmtime.Trap as e:
            trap = format_trap(e)
            if pm.image.info.start is None:  # no guest code ran: its segments did not fit
                raise LoadError(f"{pm.image.display}: cannot instantiate: {trap.message}") from None
            raise trap from None
        except wasmtime.WasmtimeError as e:
            msg = wasmtime_message(str(e))
            raise SymbolError(f"{pm.image.display}: cannot instantiate: {msg}") from None
        self.instances[mi] = inst
        if mi == plan.root and plan.nonpie:
            self._adopt_nonpie_main(inst)

    def _adopt_nonpie_main(self, inst: wasmtime.Instance) -> None:
        """A non-PIE main defines memory and table: grow them to fit the
        libraries laid out after it."""
        plan, store = self.plan, self.store
        memory = get_export(store, inst, "memory")
        table = get_export(store, inst, "__indirect_function_table")
        if not isinstance(memory, wasmtime.Memory):
            raise LoadError(f"{plan.root_module.image.path}: non-PIE main does not export memory")
        pages = memory.size(store)
        if pages < plan.memory_pages:
            memory.grow(store, plan.memory_pages - pages)
        if not isinstance(table, wasmtime.Table):
            if len(plan.modules) > 1 or plan.table_fills:
                raise LoadError(
                    f"{plan.root_module.image.path}: non-PIE main does not export "
                    "__indirect_function_table (link it with --export-table --growable-table)"
                )
            return
        size = table.size(store)
        if size < plan.table_size:
            try:
                table.grow(store, plan.table_size - size, None)
            except wasmtime.WasmtimeError:
                raise LoadError(
                    f"{plan.root_module.image.path}: its table cannot grow to "
                    f"{plan.table_size} slots (link the main with --growable-table; "
                    f"the run's table limit is {self.limits.table_limit()} elements)"
                ) from None

    def _fill_tables(self) -> None:
        r = self.recipe
        filler = self._generated.get(
            (
                "filler",
                r.filler_tables and len(r.filler_tables),
                r.filler_functions,
                r.filler_fills,
            ),
            lambda: codegen.filler_module(
                len(r.filler_tables), [ft for ft, _ in r.filler_functions], r.filler_fills
            ),
        )
        sources = [*r.filler_tables, *(s for _, s in r.filler_functions)]
        arr = self._fill_array(sources)
        try:
            new_instance(self.store, filler, arr, len(sources))
        except wasmtime.WasmtimeError as e:
            msg = wasmtime_message(str(e))
            raise LoadError(f"cannot fill the function tables: {msg}") from None

    # -- start-up -------------------------------------------------------------

    def initialize(self) -> None:
        """TLS, data relocations, then library constructors (dependencies first)."""
        t0 = time.perf_counter()
        self._running = "start-up"
        try:
            with self._guest():
                self._initialize()
        except Exception as e:  # traps, exit(), and errors raised by host functions
            raise self._failure(e, self._running) from None
        self.timings["init"] = time.perf_counter() - t0

    def _initialize(self) -> None:
        plan = self.plan

        def running(what: str) -> None:
            self._running = what

        initialize(
            self.store,
            [
                InitModule(
                    plan.modules[mi].image,
                    self.module_instance(mi),
                    plan.modules[mi].tls_base,
                    # A program's _start runs its own constructors.
                    constructors=not (mi == plan.root and plan.modules[mi].image.is_executable),
                )
                for mi in plan.inst_order
            ],
            running,
        )

    def _own_export(self, mi: int, name: str) -> wasmtime.Func | None:
        if name not in self.plan.modules[mi].image.info.exports:
            return None
        f = get_export(self.store, self.module_instance(mi), name)
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
            with self._guest():
                call_void(self.store, start)
            return 0
        except wasmtime.ExitTrap as e:
            _drop_tracebacks(e)  # see _failure: a cycle through this frame
            return e.code
        except Exception as e:  # traps, and errors raised by host functions
            raise self._failure(e) from None
        finally:
            self.timings["run"] = time.perf_counter() - t0

    def lookup(self, symbol: str) -> wasmtime.Func | int | None:
        """A function, or the address of a data symbol, from the global scope."""
        modules = self.plan.modules
        owner = scope_lookup(
            symbol, None, self.plan.scope, (), lambda i: modules[i].image.info.exports
        )
        if debug.SYMBOLS:
            found = "not found" if owner is None else self.plan.modules[owner].image.display
            debug.trace("symbols", f'lookup "{symbol}" in the global scope => {found}')
        if owner is None:
            return None
        ext = get_export(self.store, self.module_instance(owner), symbol)
        if isinstance(ext, wasmtime.Global):
            value = ext.value(self.store)
            if not isinstance(value, int):  # not a data address (a reference, a vector)
                return None
            return (value + self.plan.modules[owner].memory_base) & 0xFFFFFFFF
        return ext

    def call(
        self, symbol: str, args: Sequence[int | float] = (), flush: bool = True
    ) -> list[int | float]:
        """Call an exported function of the global scope with numeric args.

        Raises :class:`GuestExit` if the function calls ``exit()``,
        :class:`GuestTrap` if it traps.

        With ``flush``, the C library's buffered output is flushed afterwards
        (``fflush(NULL)``, what ``exit`` would do), so that what the library
        printed reaches its stdout even though no program exits.
        """
        f = self.lookup(symbol)
        if not isinstance(f, wasmtime.Func):
            raise SymbolError(f"undefined symbol: {symbol} (function)")
        try:
            with self._guest():
                r = f(self.store, *args)
                fflush = self.lookup("fflush") if flush else None
                if isinstance(fflush, wasmtime.Func):
                    fflush(self.store, 0)
        except Exception as e:  # traps, exit(), and errors raised by host functions
            raise self._failure(e, f"{symbol}()") from None
        if r is None:
            return []
        return list(r) if isinstance(r, tuple | list) else [r]

    def finish(self) -> None:
        """What ``exit(0)`` does once a caller is done with the instance set,
        short of ending anything: the C library's exit-time work (``atexit``
        and ``__cxa_atexit`` handlers, so C++ static destructors and the
        destructors of libraries still dlopen'ed, then stdio flushed), by its
        ``__wasm_call_dtors``. ``wasmrun call`` does this after its one call,
        as a program that dlopens a library, calls it and exits would. Call
        nothing in the set afterwards. Nothing happens without that export.

        Raises :class:`GuestExit` if a handler calls ``exit()``,
        :class:`GuestTrap` if one traps.
        """
        dtors = self.lookup("__wasm_call_dtors")
        if not isinstance(dtors, wasmtime.Func):
            return
        try:
            with self._guest():
                call_void(self.store, dtors)
        except Exception as e:  # traps, exit(), and errors raised by host functions
            raise self._failure(e, "exit-time handlers") from None


def _drop_tracebacks(err: BaseException | None) -> None:
    """Cut an exception (and those it was raised from) loose from the frames
    it went through; see :meth:`InstanceSet._failure`."""
    seen = 0
    while err is not None and seen < 16:
        err.__traceback__ = None
        err = err.__context__
        seen += 1
