"""One request, executed in a worker process that holds the client's
credentials: a validated protocol message in, a response message out.
Synchronous and trio-free, so it is tested directly.

Nothing here decides whether the client may read a file: the worker runs as
the client, so opening the program, its libraries and the guest's dlopens
is the kernel's decision, and its answers (EACCES, ENOENT) are the ones the
client would get itself.

Every failure becomes a typed ``Error`` response with the same one-line text
the in-process ``wasmrun`` prints (load errors, traps, timeouts); anything
unexpected becomes ``Error(kind="internal")`` with a one-line summary, never
a traceback (that goes to the daemon's log).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import attrs
from wasmrun.protocol import (
    MAX_STRING_BYTES,
    CallResult,
    Dlopen,
    Error,
    Limits,
    Preload,
    PreloadResult,
    Request,
    Response,
    Run,
    RunResult,
)
from wasmrun.runtime import (
    GuestExit,
    GuestTrap,
    LinkOptions,
    LoadError,
    RunControl,
    RunInterrupted,
    RunLimits,
    Runtime,
    WasmrunError,
)

from .config import DaemonConfig
from .stdio import ClientWasi

log = logging.getLogger("wasmrund")

DEFAULT_MAX_MEMORY = 1 << 32  # LinkOptions' default: wasm32's whole address space


@attrs.frozen
class Effective:
    """The limits a request runs with, after defaults and maxima."""

    timeout: float | None
    memory: int | None
    fuel: int | None


def effective_limits(config: DaemonConfig, asked: Limits) -> Effective:
    """The client's limits, each defaulted and capped by the configuration."""
    lim = config.limits

    def pick(value: float | None, default: float | None, maximum: float | None) -> Any:
        value = default if value is None else value
        if maximum is not None:
            value = maximum if value is None else min(value, maximum)
        return value

    timeout = asked.timeout_ms / 1000 if asked.timeout_ms is not None else None
    return Effective(
        timeout=pick(timeout, lim.timeout, lim.max_timeout),
        memory=pick(asked.memory_bytes, lim.memory, lim.max_memory),
        fuel=pick(asked.fuel, lim.fuel, lim.max_fuel) if config.fuel else None,
    )


NOT_VISIBLE = "(not visible to wasmrund)"
"""Ends the message for a file the client opened but the daemon cannot see
at its path (a private /tmp, another mount namespace, a rename): nothing
ran, so the client runs the request in its own process instead."""

SIGPIPE_REASON = "sigpipe"
"""A run's stop reason when its guest wrote to a pipe (or socket) whose
reader went away: a native program dies of SIGPIPE there, and so does
``wasmrun`` in process; a worker stops the guest instead (see worker.py),
and the client dies of the signal."""
_SIGPIPE_MESSAGE = "killed by SIGPIPE (its output's reader went away)"


def check_opened_file(path: str, fd: int | None) -> str | None:
    """The file the client opened must be the one at ``path``: the daemon
    then loads it by path (so RUNTIME_PATH and $ORIGIN work), yet only a file
    the client could open itself. Returns the problem, or None."""
    if fd is None:
        return f"{path}: the client must send the file it names as an open descriptor"
    try:
        by_fd = os.fstat(fd)
    except OSError as e:
        return f"{path}: bad descriptor: {e.strerror}"
    try:
        by_path = os.stat(path)
    except FileNotFoundError:
        return f"{path}: not the file the client opened {NOT_VISIBLE}"
    except OSError as e:
        return f"{path}: cannot open file: {e.strerror}"
    if (by_fd.st_dev, by_fd.st_ino) != (by_path.st_dev, by_path.st_ino):
        return f"{path}: not the file the client opened {NOT_VISIBLE}"
    return None


def _absolute(path: str, cwd: str) -> str | None:
    """``path`` made absolute against the client's cwd; None if impossible."""
    if os.path.isabs(path):
        return path
    return os.path.join(cwd, path) if cwd else None


def _library_names(names: tuple[str, ...], cwd: str) -> tuple[str, ...] | str:
    """Preload/library names: paths (with '/') made absolute, names kept."""
    out = []
    for name in names:
        if "/" in name:
            full = _absolute(name, cwd)
            if full is None:
                return f"{name}: a relative path needs the client's cwd"
            out.append(full)
        else:
            out.append(name)
    return tuple(out)


def _clean_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """Timings as the protocol requires: finite non-negative floats."""
    return {
        str(k): float(v)
        for k, v in timings.items()
        if isinstance(v, int | float) and math.isfinite(v) and v >= 0
    }


def _fit(text: str, limit: int = MAX_STRING_BYTES - 64) -> str:
    """``text`` cut to fit a protocol string (a trap in a deep recursion can
    have a backtrace of thousands of frames)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + "\n... (truncated)"


def error_for(exc: BaseException, request_id: int) -> Error:
    """A runtime failure as the protocol's typed error, with the text the
    in-process CLI prints (the client adds the same "wasmrun: " prefix)."""
    if isinstance(exc, RunInterrupted):
        if exc.reason == SIGPIPE_REASON:
            return Error(request_id=request_id, kind="signal", message=_SIGPIPE_MESSAGE)
        kind = {"timeout": "timeout", "cancelled": "cancelled"}.get(exc.reason, "limit")
        return Error(request_id=request_id, kind=kind, message=_fit(str(exc)))
    if isinstance(exc, LoadError):  # including LimitError: 127, as in process
        return Error(request_id=request_id, kind="load", message=_fit(str(exc)))
    if isinstance(exc, GuestTrap):
        return Error(request_id=request_id, kind="trap", message=_fit(exc.render()))
    if isinstance(exc, WasmrunError):
        return Error(request_id=request_id, kind="internal", message=_one_line(str(exc)))
    text = _one_line(f"{type(exc).__name__}: {exc}")
    return Error(request_id=request_id, kind="internal", message=f"internal error: {text}")


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return (lines[0] if lines else "")[:2000]


@attrs.define
class Job:
    """Everything one request needs in its worker process."""

    runtime: Runtime
    config: DaemonConfig
    msg: Request
    fds: Mapping[str, int]  # role -> descriptor (owned by the caller)
    control: RunControl  # cancellation; the runtime adds the timeout to it
    stdio: Mapping[str, str]  # role -> path for WASI (from the StdioRelay)


def execute(job: Job) -> Response:
    """Run one request to completion; never raises."""
    rid = job.msg.request_id
    try:
        if isinstance(job.msg, Run):
            return _run(job, job.msg)
        if isinstance(job.msg, Dlopen):
            return _dlopen(job, job.msg)
        if isinstance(job.msg, Preload):
            return _preload(job, job.msg)
        return Error(request_id=rid, kind="protocol", message=f"cannot execute {job.msg.TYPE}")
    except Exception as e:
        if not isinstance(e, WasmrunError):
            log.exception("request %d failed", rid)
        return error_for(e, rid)


def _raise_if_stopped(control: RunControl) -> None:
    """A run that ended on its own after we stopped it (cancelled or timed
    out while blocked in stdio: the relay cut its pipes, so its I/O failed
    and it exited) reports the interruption, not the exit status it chose."""
    reason = control.reason
    if reason == "timeout":
        raise RunInterrupted(reason, f"run timed out after {control.timeout:g} s")
    if reason == SIGPIPE_REASON:
        raise RunInterrupted(reason, _SIGPIPE_MESSAGE)
    if reason is not None:
        raise RunInterrupted(reason, f"run {reason}")


def stopped_error(control: RunControl, request_id: int) -> Error | None:
    """The Error for a request its control stopped, or None if it was not."""
    try:
        _raise_if_stopped(control)
    except RunInterrupted as e:
        return error_for(e, request_id)
    return None


def _wasi(job: Job, args: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> ClientWasi:
    dirs = tuple((fd, role[4:]) for role, fd in job.fds.items() if role.startswith("dir:"))
    return ClientWasi(args=args, env=env, stdio=job.stdio, dir_fds=dirs)


def _run(job: Job, msg: Run) -> Response:
    rid = msg.request_id
    program = _absolute(msg.program, msg.cwd)
    if program is None:
        return Error(request_id=rid, kind="load", message=f"{msg.program}: not an absolute path")
    problem = check_opened_file(program, job.fds.get("program"))
    if problem is not None:
        return Error(request_id=rid, kind="load", message=problem)
    library_path = _library_names(msg.library_path, msg.cwd)
    preload = _library_names(msg.preload, msg.cwd)
    for value in (library_path, preload):
        if isinstance(value, str):
            return Error(request_id=rid, kind="load", message=value)
    assert not isinstance(library_path, str) and not isinstance(preload, str)
    limits = effective_limits(job.config, msg.limits)
    options = LinkOptions(
        max_file_size=job.config.max_file_size,
        max_libraries=job.config.max_libraries,
        bind_now=msg.bind_now,
        max_memory=limits.memory or DEFAULT_MAX_MEMORY,
        preload=preload,
    )
    runtime = job.runtime
    result = runtime.run(
        program,
        options=options,
        limits=RunLimits(memory_bytes=limits.memory, timeout=limits.timeout, fuel=limits.fuel),
        control=job.control,
        wasi=_wasi(job, msg.args or (msg.program,), msg.env),
        library_path=library_path,
    )
    _raise_if_stopped(job.control)
    return RunResult(
        request_id=rid,
        exit_code=result.exit_code & 0xFFFFFFFF,
        timings=_clean_timings(result.timings),
    )


def _dlopen(job: Job, msg: Dlopen) -> Response:
    rid = msg.request_id
    library = msg.library
    if "/" in library:
        if not os.path.isabs(library):
            return Error(request_id=rid, kind="load", message=f"{library}: not an absolute path")
        problem = check_opened_file(library, job.fds.get("program"))
        if problem is not None:
            return Error(request_id=rid, kind="load", message=problem)
    preload = _library_names(msg.preload, "")
    if isinstance(preload, str):
        return Error(request_id=rid, kind="load", message=preload)
    limits = effective_limits(job.config, msg.limits)
    options = LinkOptions(
        max_file_size=job.config.max_file_size,
        max_libraries=job.config.max_libraries,
        bind_now=msg.bind_now,
        max_memory=limits.memory or DEFAULT_MAX_MEMORY,
        preload=preload,
    )
    runtime = job.runtime
    t0 = time.perf_counter()
    try:
        with runtime.open_library(
            library,
            options=options,
            wasi=_wasi(job, (library,), ()),
            limits=RunLimits(memory_bytes=limits.memory, timeout=limits.timeout, fuel=limits.fuel),
            control=job.control,
            library_path=msg.library_path,
        ) as iset:
            results = iset.call(msg.symbol, list(msg.args))
            # Then what exit(0) would do (destructors, atexit handlers), as
            # in process: the client prints the results after their output.
            iset.finish()
            timings = {**iset.timings, "total": time.perf_counter() - t0}
    except GuestExit as e:
        _raise_if_stopped(job.control)
        if e.code & 0xFF == 0:  # exit(0): a status of success, nothing returned
            return CallResult(request_id=rid, results=(), timings={})
        return Error(request_id=rid, kind="exit", message=str(e), exit_code=e.code & 0xFF)
    _raise_if_stopped(job.control)
    values = []
    for value in results:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Error(
                request_id=rid,
                kind="load",
                message=f"{msg.symbol}: returns a {type(value).__name__}, not a number",
            )
        values.append(value)
    return CallResult(request_id=rid, results=tuple(values), timings=_clean_timings(timings))


def _preload(job: Job, msg: Preload) -> Response:
    rid = msg.request_id
    loaded = job.runtime.preload(msg.libraries, library_path=msg.library_path)
    return PreloadResult(request_id=rid, loaded=tuple(loaded))
