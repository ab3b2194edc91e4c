"""The embedding API: load, link and run a program, or call a library function.

    from wasmrun.runtime import Runtime

    rt = Runtime(library_path=["examples/bin"])
    status = rt.run("examples/bin/hello.wasm", args=["hello"])

    lib = rt.open_library("libgreet.so")
    print(lib.call("greet_value", [20]))

One :class:`Runtime` holds the engine and the caches; it is safe to share
between threads, and every ``run``/``open_library`` gets a fresh instance set.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import wasmtime

from . import debug
from .cache import DEFAULT_BUDGET, CodeSource, ModuleCache
from .diskcache import (
    DEFAULT_MAX_BYTES,
    ENV_CACHE_DIR,
    DiskCache,
    default_cache_dir,
    engine_fingerprint,
)
from .errors import GuestExit, LimitError, LoadError
from .instance import GeneratedModules, InstanceSet, make_host_linker
from .limits import EpochTicker, RunControl, RunLimits
from .plan import LinkOptions, LinkPlan, Planner
from .recipe import compiled_module
from .search import SearchPath


def engine_settings(fuel: bool) -> str:
    """The engine settings as text, for the disk cache's fingerprint."""
    return f"tail_call=1 exceptions=1 epoch=1 fuel={int(fuel)}"


def make_engine(fuel: bool = False) -> wasmtime.Engine:
    """The engine configuration every cached module is compiled for.

    Epoch interruption is always on, so that any run can be given a timeout
    or cancelled; fuel metering changes the compiled code more and costs
    more, so it is opt-in.
    """
    cfg = wasmtime.Config()
    cfg.wasm_tail_call = True  # PLT stubs use return_call_indirect
    cfg.wasm_exceptions = True  # __cpp_exception / __c_longjmp tags
    cfg.epoch_interruption = True  # timeouts and cancellation
    cfg.consume_fuel = fuel
    return wasmtime.Engine(cfg)


def _disk_cache(
    setting: bool | str | os.PathLike | None,
    engine: wasmtime.Engine,
    environ: Mapping[str, str],
    max_bytes: int,
    settings: str,
) -> DiskCache | None:
    if setting is None or setting is True:
        env_value = environ.get(ENV_CACHE_DIR)
        if env_value is not None and env_value.strip().lower() in ("", "off", "0", "none"):
            return None
        directory = default_cache_dir(dict(environ))
    elif setting is False:
        return None
    else:
        directory = Path(setting)
    return DiskCache(directory, engine, engine_fingerprint(settings), max_bytes)


@attrs.frozen
class _PlanEntry:
    plan: LinkPlan
    files: tuple[tuple[str, tuple[int, ...]], ...]
    misses: tuple[str, ...]

    def still_valid(self) -> bool:
        """Every file unchanged and no earlier search path now holds a file:
        a few stat calls per module, no symbol work."""
        for path, ident in self.files:
            try:
                st = os.stat(path)
            except OSError:
                return False
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != ident:
                return False
        return not any(os.path.exists(p) for p in self.misses)


@attrs.frozen
class WasiOptions:
    """What a run's WASI context grants the guest.

    ``stdin``/``stdout``/``stderr`` are host file paths, or ``None`` to
    inherit the host process's streams.
    """

    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[tuple[str, str], ...] = ()  # (host path, guest path)
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None

    def config(self) -> wasmtime.WasiConfig:
        cfg = wasmtime.WasiConfig()
        cfg.argv = list(self.args)
        cfg.env = [list(kv) for kv in self.env]
        for host, guest in self.dirs:
            if not os.path.isdir(host):
                raise LoadError(f"--dir {host}: not a directory")
            cfg.preopen_dir(host, guest)
        if self.stdin is None:
            cfg.inherit_stdin()
        else:
            cfg.stdin_file = self.stdin
        if self.stdout is None:
            cfg.inherit_stdout()
        else:
            cfg.stdout_file = self.stdout
        if self.stderr is None:
            cfg.inherit_stderr()
        else:
            cfg.stderr_file = self.stderr
        return cfg


@attrs.frozen
class RunResult:
    exit_code: int
    timings: dict[str, float]


class Runtime:
    """The linker and its caches.

    ``disk_cache``: True (default) keeps compiled code in ``$WASMRUN_CACHE_DIR``
    or ``$XDG_CACHE_HOME/wasmrun`` (``WASMRUN_CACHE_DIR=off`` disables it),
    a path puts it there, False turns it off. ``code_source`` replaces both
    compiling and the disk cache (wasmrund's workers get code from the
    daemon this way). ``memory_budget`` bounds the
    in-memory module cache (bytes) and ``max_modules``, if given, the number
    of modules it and the generated modules' cache keep each;
    ``plan_cache_size`` the number of link plans kept.
    """

    def __init__(
        self,
        library_path: Sequence[str] = (),
        default_library_path: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        engine: wasmtime.Engine | None = None,
        disk_cache: bool | str | os.PathLike | None = True,
        disk_cache_max_bytes: int = DEFAULT_MAX_BYTES,
        memory_budget: int = DEFAULT_BUDGET,
        plan_cache_size: int = 256,
        fuel: bool = False,
        code_source: CodeSource | None = None,
        max_modules: int | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.fuel = fuel
        self.engine = engine or make_engine(fuel)
        self.ticker = EpochTicker(self.engine)
        disk = _disk_cache(
            disk_cache, self.engine, env, disk_cache_max_bytes, engine_settings(fuel)
        )
        self.cache = ModuleCache(
            self.engine, memory_budget, disk, code_source, max_modules=max_modules
        )
        self.generated = GeneratedModules(self.engine, self.cache.compile, max_modules=max_modules)
        self.host_linker = make_host_linker(self.engine)
        self.search = SearchPath.create(library_path, dict(env), default_library_path)
        self.plan_cache_size = plan_cache_size
        self._plans: collections.OrderedDict[tuple, _PlanEntry] = collections.OrderedDict()
        self._plans_lock = threading.Lock()
        self.plan_stats = {"plan.hits": 0, "plan.misses": 0, "plan.stale": 0}
        # The spare: an instance set built ahead of the next run (prepare_spare).
        self._spare: InstanceSet | None = None
        self._last: tuple[LinkPlan, RunLimits] | None = None
        self._repeated = False  # the last run's plan and limits were the ones before too
        self._spare_lock = threading.Lock()
        self.spare_stats = {"spare.hits": 0, "spare.misses": 0}

    def search_path(self, library_path: Sequence[str] | None = None) -> SearchPath:
        """The search path for a request: its own directories (``-L`` and the
        client's WASMRUN_LIBRARY_PATH) before the configured defaults."""
        if library_path is None:
            return self.search
        return SearchPath(tuple(library_path), (), self.search.defaults)

    def plan(
        self,
        path: str,
        options: LinkOptions | None = None,
        search: SearchPath | None = None,
    ) -> LinkPlan:
        """Load ``path`` and its dependencies and resolve every symbol.

        Plans are cached: a repeated request for the same program, options
        and search path, whose files are all unchanged, reuses the plan.
        """
        return self._plan(path, options, search)[0]

    def _plan(
        self, path: str, options: LinkOptions | None = None, search: SearchPath | None = None
    ) -> tuple[LinkPlan, dict[str, float]]:
        options = options or LinkOptions()
        search = search or self.search
        key = (os.getcwd(), path, options, search)
        t0 = time.perf_counter()
        with self._plans_lock:
            entry = self._plans.get(key)
        if entry is not None and not (debug.LIBS or debug.BINDINGS):  # tracing: plan afresh
            if entry.still_valid():
                with self._plans_lock:
                    self._plans.move_to_end(key)
                    self.plan_stats["plan.hits"] += 1
                return entry.plan, {"load": time.perf_counter() - t0, "link": 0.0}
            with self._plans_lock:
                self.plan_stats["plan.stale"] += 1
        plan = Planner(self.cache, search, options).plan(path)
        # The identity of each file as it was read (fstat on the open file),
        # not a later stat: a file swapped meanwhile must make the plan stale.
        files = tuple(
            (pm.image.path, pm.image.file_identity)
            for pm in plan.modules
            if pm.image.file_identity is not None
        )
        with self._plans_lock:
            self.plan_stats["plan.misses"] += 1
            if len(files) == len(plan.modules):
                self._plans[key] = _PlanEntry(plan, files, tuple(plan.misses))
            while len(self._plans) > self.plan_cache_size:
                self._plans.popitem(last=False)
        return plan, dict(plan.timings)

    def preload(
        self, libraries: Sequence[str], library_path: Sequence[str] | None = None
    ) -> list[str]:
        """Load, compile (and save to the disk cache) libraries and their
        dependencies ahead of the runs that need them. Returns the paths."""
        search = self.search_path(library_path)
        loaded = []
        for lib in libraries:
            path = lib if "/" in lib else self._find_library(lib, search)
            plan = self.plan(path, search=search)
            for mi, pm in enumerate(plan.modules):
                compiled_module(plan, mi)
                loaded.append(pm.image.path)
        return list(dict.fromkeys(loaded))

    def _find_library(self, library: str, search: SearchPath | None = None) -> str:
        found = (search or self.search).find(library, os.path.join(os.getcwd(), "."), ())
        if found is None:
            raise LoadError(
                f"error while loading shared libraries: {library}: cannot open shared "
                "object file: No such file or directory"
            )
        return found

    def stats(self) -> dict[str, int | float | str]:
        """Counters of the module cache, disk cache and plan cache."""
        out = self.cache.summary()
        with self._plans_lock:
            out.update(self.plan_stats)
            out["plan.entries"] = len(self._plans)
        with self._spare_lock:
            out.update(self.spare_stats)
        out["generated.modules"] = len(self.generated)
        out["generated.bytes"] = self.generated.bytes
        return out

    def clear_caches(self, disk: bool = True) -> int:
        """Forget cached plans and modules (and disk entries); returns how many
        disk entries were removed."""
        self.drop_spare()
        with self._plans_lock:
            self._plans.clear()
        self.cache.clear()
        if disk and self.cache.disk is not None:
            return self.cache.disk.clear()
        return 0

    def instantiate(
        self,
        plan: LinkPlan,
        wasi: WasiOptions | None = None,
        limits: RunLimits | None = None,
        control: RunControl | None = None,
        search: SearchPath | None = None,
    ) -> InstanceSet:
        """A fresh, initialised instance set (constructors of libraries run).

        With ``limits.timeout`` or a ``control``, the instance set can be
        interrupted (``RunInterrupted``) until it is dropped.
        """
        limits = limits or RunLimits()
        if limits.fuel is not None and not self.fuel:
            raise LimitError("a fuel limit needs a runtime created with fuel=True")
        if limits.timeout is not None:
            if control is None:
                control = RunControl(limits.timeout)
            else:
                control.limit_time(limits.timeout)
        t0 = time.perf_counter()
        for mi in range(len(plan.modules)):
            compiled_module(plan, mi)  # compile, deserialize, or already in memory
        t1 = time.perf_counter()
        wasi_config = (wasi or WasiOptions()).config()
        loader = (self.cache, search or self.search)
        iset = self._take_spare(plan, limits)
        if iset is not None:
            iset.attach(wasi_config, control, loader)
            iset.timings["instantiate"] = time.perf_counter() - t1
        else:
            iset = InstanceSet(
                plan,
                self.engine,
                self.host_linker,
                self.generated,
                wasi_config,
                limits=limits,
                control=control,
                ticker=self.ticker,
                fuel=self.fuel,
                loader=loader,
            )
        with self._spare_lock:
            last = self._last
            self._repeated = last is not None and last[0] is plan and last[1] == limits
            self._last = (plan, limits)
        iset.timings["compile"] = t1 - t0
        try:
            iset.initialize()
        except BaseException:
            iset.close()  # free the Store now, not when a traceback lets go of it
            raise
        return iset

    # -- the spare ------------------------------------------------------------

    def prepare_spare(self) -> bool:
        """Build now, while idle, the instance set that the next run of the
        last plan will need; returns whether one is ready.

        A long-lived process that runs the same program again and again (a
        wasmrund worker, between two requests of its uid) calls this after
        answering a request: instantiating libc.so and the program, the
        largest part of a warm run, then happens before the next request
        arrives instead of after. The spare is still a fresh instance set,
        used by one run only: its memory, table, globals and instances are
        its own, no guest code has run in it, and the request gives it its
        WASI context and controller (:meth:`InstanceSet.attach`). It is used
        only for the same plan object (a plan whose files changed is a new
        plan) and the same limits, and never for a plan with a start
        function, which runs guest code at instantiation. A build that fails
        leaves no spare; the run then builds its set and reports the error.

        Only a plan run twice in a row gets a spare: a process serving
        varied programs would otherwise build one after every run and throw
        it away at the next.
        """
        with self._spare_lock:
            last = self._last
            spare = self._spare
            if last is None or not self._repeated:
                return False
            if spare is not None and spare.plan is last[0] and spare.limits == last[1]:
                return True
            self._spare = None
        if spare is not None:
            spare.close()
        plan, limits = last
        if any(pm.image.info.start is not None for pm in plan.modules):
            return False
        try:
            spare = InstanceSet(
                plan,
                self.engine,
                self.host_linker,
                self.generated,
                None,
                limits=limits,
                ticker=self.ticker,
                fuel=self.fuel,
                loader=(self.cache, self.search),
            )
        except Exception:
            return False
        with self._spare_lock:
            if self._spare is None:
                self._spare, spare = spare, None
        if spare is not None:  # another thread made one meanwhile
            spare.close()
        return True

    def drop_spare(self) -> None:
        """Free the spare, if any (its memory and instances)."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
            self._last = None
            self._repeated = False
        if spare is not None:
            spare.close()

    def _take_spare(self, plan: LinkPlan, limits: RunLimits) -> InstanceSet | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
            if spare is None:
                return None
            usable = spare.plan is plan and spare.limits == limits
            self.spare_stats["spare.hits" if usable else "spare.misses"] += 1
        if usable:
            return spare
        spare.close()
        return None

    def run(
        self,
        program: str,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        dirs: Sequence[tuple[str, str]] = (),
        options: LinkOptions | None = None,
        stdin: str | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
        limits: RunLimits | None = None,
        control: RunControl | None = None,
        wasi: WasiOptions | None = None,
        library_path: Sequence[str] | None = None,
    ) -> RunResult:
        """Run a program to completion; returns its exit status and timings.

        ``args`` is the guest's argv *including* argv[0] (defaults to the
        program path). ``wasi`` replaces args/env/dirs/stdio with a prepared
        WASI context (the daemon passes the client's descriptors this way);
        ``library_path`` replaces the runtime's own search directories.
        Raises LoadError (and subclasses) for link failures, GuestTrap when
        the guest traps and RunInterrupted when a limit or a controller stops
        it. ``exit(N)`` anywhere (``main``, a library constructor or
        destructor, a dlopen'ed library) gives ``exit_code`` N.
        """
        t0 = time.perf_counter()
        search = self.search_path(library_path)
        plan, plan_timings = self._plan(program, options, search)
        if not plan.root_module.image.is_executable:
            raise LoadError(f"{program}: has no _start export (a library, not a program)")
        t1 = time.perf_counter()
        if wasi is None:
            wasi = WasiOptions(
                args=tuple(args) if args is not None else (program,),
                env=tuple((env or {}).items()),
                dirs=tuple(dirs),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            iset = self.instantiate(plan, wasi, limits, control, search)
        except GuestExit as e:  # exit() in a library's constructor ends the run
            return RunResult(e.code, {**plan_timings, "plan": t1 - t0})
        try:
            code = iset.run_start()
        finally:
            iset.close()
        timings = {**plan_timings, "plan": t1 - t0, **iset.timings}
        return RunResult(code, timings)

    def open_library(
        self,
        library: str,
        options: LinkOptions | None = None,
        wasi: WasiOptions | None = None,
        limits: RunLimits | None = None,
        control: RunControl | None = None,
        library_path: Sequence[str] | None = None,
    ) -> InstanceSet:
        """Load a shared library with its dependencies into a fresh instance
        set and run its constructors; call functions with ``.call``.

        Raises :class:`GuestExit` when a constructor calls ``exit()``. Close
        the instance set (``.close()`` or ``with``) to free it at once.
        """
        search = self.search_path(library_path)
        path = library if "/" in library else self._find_library(library, search)
        plan = self.plan(path, options, search)
        return self.instantiate(plan, wasi, limits, control, search)
