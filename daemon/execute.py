"""Executing one request in a worker thread: protocol message in, response
out. No I/O of its own beyond the client's descriptors, no trio.

The client's descriptors arrive with the request (SCM_RIGHTS). The guest
writes straight to the client's stdout/stderr descriptors (through a WASI
output callback: reopening ``/proc/self/fd/N`` would truncate a file the
client opened for appending); stdin and preopened directories are reopened
through ``/proc/self/fd/N``, which reaches exactly what the client opened,
never a path of the daemon's choosing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from functools import partial

import attrs
import wasmtime
from wasmrun.protocol import (
    CallResult,
    Dlopen,
    Error,
    Preload,
    PreloadResult,
    Request,
    Response,
    Run,
    RunResult,
)
from wasmrun.runtime import (
    GuestTrap,
    LinkOptions,
    LoadError,
    RunControl,
    RunInterrupted,
    RunLimits,
    Runtime,
    WasiOptions,
)

from .config import DaemonConfig


def _write_all(fd: int, data: bytes) -> int | None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return None


@attrs.frozen
class FdWasiOptions(WasiOptions):
    """WASI context over descriptors received from a client."""

    stdin_fd: int | None = None
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    dir_fds: tuple[tuple[int, str], ...] = ()

    def config(self) -> wasmtime.WasiConfig:
        cfg = wasmtime.WasiConfig()
        cfg.argv = list(self.args)
        cfg.env = [list(kv) for kv in self.env]
        if self.stdin_fd is not None:
            cfg.stdin_file = f"/proc/self/fd/{self.stdin_fd}"
        if self.stdout_fd is not None:
            cfg.stdout_custom = partial(_write_all, self.stdout_fd)
        if self.stderr_fd is not None:
            cfg.stderr_custom = partial(_write_all, self.stderr_fd)
        for dir_fd, guest in self.dir_fds:
            cfg.preopen_dir(f"/proc/self/fd/{dir_fd}", guest)
        return cfg


def roles_to_fds(roles: tuple[str, ...], fds: list[int]) -> dict[str, int]:
    return dict(zip(roles, fds, strict=True))


def _limits(config: DaemonConfig, requested) -> RunLimits:
    """The client's limits, defaulted and capped by the configuration."""
    lim = config.limits

    def pick(asked, default, maximum):
        value = asked if asked is not None else default
        if maximum is not None:
            value = maximum if value is None else min(value, maximum)
        return value

    timeout_s = requested.timeout_ms / 1000 if requested.timeout_ms is not None else None
    return RunLimits(
        memory_bytes=pick(requested.memory_bytes, lim.memory, lim.max_memory),
        timeout=pick(timeout_s, lim.timeout, lim.max_timeout),
        fuel=pick(requested.fuel, lim.fuel, lim.max_fuel) if config.fuel else None,
    )


def _check_program(path: str, fd: int | None) -> str | None:
    """The program the client named must be the file it opened for us."""
    if fd is None:
        return f"{path}: the client must send the program as an open file"
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError as e:
        return f"{path}: cannot open file: {e.strerror}"
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        return f"{path}: the file the client opened is not the one at this path"
    return None


def _wasi(msg: Run | Dlopen, fds: Mapping[str, int], args: tuple[str, ...]) -> FdWasiOptions:
    dirs = tuple((fd, role[4:]) for role, fd in fds.items() if role.startswith("dir:"))
    return FdWasiOptions(
        args=args,
        env=tuple(msg.env) if isinstance(msg, Run) else (),
        stdin_fd=fds.get("stdin"),
        stdout_fd=fds.get("stdout"),
        stderr_fd=fds.get("stderr"),
        dir_fds=dirs,
    )


def error_for(exc: BaseException, request_id: int) -> Error:
    """Map a runtime failure to the protocol's typed error."""
    if isinstance(exc, RunInterrupted):
        kind = {"timeout": "timeout", "cancelled": "cancelled"}.get(exc.reason, "limit")
        return Error(request_id=request_id, kind=kind, message=str(exc))
    if isinstance(exc, LoadError):  # LimitError included: 127, as in process
        return Error(request_id=request_id, kind="load", message=str(exc))
    if isinstance(exc, GuestTrap):
        return Error(request_id=request_id, kind="trap", message=exc.render())
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
    return Error(request_id=request_id, kind="internal", message=f"internal error: {text}")


def execute(
    runtime: Runtime,
    config: DaemonConfig,
    msg: Request,
    fds: Mapping[str, int],
    control: RunControl,
) -> Response:
    """Run one request to completion (in a worker thread)."""
    rid = msg.request_id
    t0 = time.perf_counter()
    try:
        if isinstance(msg, Run):
            problem = _check_program(msg.program, fds.get("program"))
            if problem is not None:
                return Error(request_id=rid, kind="load", message=problem)
            args = tuple(msg.args) if msg.args else (msg.program,)
            result = runtime.run(
                msg.program,
                options=LinkOptions(bind_now=msg.bind_now, preload=tuple(msg.preload)),
                limits=_limits(config, msg.limits),
                control=control,
                wasi=_wasi(msg, fds, args),
                library_path=msg.library_path,
            )
            return RunResult(request_id=rid, exit_code=result.exit_code, timings=result.timings)
        if isinstance(msg, Dlopen):
            library = msg.library
            if "program" in fds:
                problem = _check_program(library, fds["program"])
                if problem is not None:
                    return Error(request_id=rid, kind="load", message=problem)
            iset = runtime.open_library(
                library,
                options=LinkOptions(bind_now=msg.bind_now, preload=tuple(msg.preload)),
                wasi=_wasi(msg, fds, (library,)),
                limits=_limits(config, msg.limits),
                control=control,
                library_path=msg.library_path,
            )
            results = iset.call(msg.symbol, list(msg.args))
            timings = {**iset.timings, "total": time.perf_counter() - t0}
            return CallResult(request_id=rid, results=tuple(results), timings=timings)
        if isinstance(msg, Preload):
            loaded = runtime.preload(msg.libraries, library_path=msg.library_path)
            return PreloadResult(request_id=rid, loaded=tuple(loaded))
        return Error(request_id=rid, kind="protocol", message=f"cannot execute {msg!r}")
    except wasmtime.ExitTrap as e:  # proc_exit from a library call
        return Error(request_id=rid, kind="trap", message=f"the library called exit({e.code})")
    except Exception as e:
        return error_for(e, rid)
