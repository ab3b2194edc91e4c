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

import os
import time
from collections.abc import Mapping, Sequence

import attrs
import wasmtime

from .cache import ModuleCache
from .errors import LoadError
from .instance import GeneratedModules, InstanceSet, make_host_linker
from .plan import LinkOptions, LinkPlan, Planner
from .search import SearchPath


def make_engine() -> wasmtime.Engine:
    """The engine configuration every cached module is compiled for."""
    cfg = wasmtime.Config()
    cfg.wasm_tail_call = True  # PLT stubs use return_call_indirect
    cfg.wasm_exceptions = True  # __cpp_exception / __c_longjmp tags
    return wasmtime.Engine(cfg)


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
    """The linker and its caches."""

    def __init__(
        self,
        library_path: Sequence[str] = (),
        default_library_path: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        engine: wasmtime.Engine | None = None,
    ) -> None:
        self.engine = engine or make_engine()
        self.cache = ModuleCache(self.engine)
        self.generated = GeneratedModules(self.engine)
        self.host_linker = make_host_linker(self.engine)
        self.search = SearchPath.create(
            library_path, dict(environ) if environ is not None else None, default_library_path
        )

    def plan(self, path: str, options: LinkOptions | None = None) -> LinkPlan:
        """Load ``path`` and its dependencies and resolve every symbol."""
        return Planner(self.cache, self.search, options or LinkOptions()).plan(path)

    def instantiate(self, plan: LinkPlan, wasi: WasiOptions | None = None) -> InstanceSet:
        """A fresh, initialised instance set (constructors of libraries run)."""
        for pm in plan.modules:
            pm.image.module()  # compile (or fetch compiled) before timing the run
        iset = InstanceSet(
            plan, self.engine, self.host_linker, self.generated, (wasi or WasiOptions()).config()
        )
        iset.initialize()
        return iset

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
    ) -> RunResult:
        """Run a program to completion; returns its exit status and timings.

        ``args`` is the guest's argv *including* argv[0] (defaults to the
        program path). Raises LoadError (and subclasses) for link failures and
        GuestTrap when the guest traps.
        """
        t0 = time.perf_counter()
        plan = self.plan(program, options)
        if not plan.root_module.image.is_executable:
            raise LoadError(f"{program}: has no _start export (a library, not a program)")
        t1 = time.perf_counter()
        wasi = WasiOptions(
            args=tuple(args) if args is not None else (program,),
            env=tuple((env or {}).items()),
            dirs=tuple(dirs),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        iset = self.instantiate(plan, wasi)
        code = iset.run_start()
        timings = {"plan": t1 - t0, **iset.timings}
        return RunResult(code, timings)

    def open_library(
        self, library: str, options: LinkOptions | None = None, wasi: WasiOptions | None = None
    ) -> InstanceSet:
        """Load a shared library with its dependencies into a fresh instance
        set and run its constructors; call functions with ``.call``."""
        path = library
        if "/" not in library:
            found = self.search.find(library, os.path.join(os.getcwd(), "."), ())
            if found is None:
                raise LoadError(
                    f"error while loading shared libraries: {library}: cannot open shared "
                    "object file: No such file or directory"
                )
            path = found
        return self.instantiate(self.plan(path, options), wasi)
