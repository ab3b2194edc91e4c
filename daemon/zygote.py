"""The zygote: a warm, single-threaded process that forks workers.

The front forks it first thing, before it creates an engine or starts any
thread, so the zygote is a clean copy. The zygote makes its own engine,
loads the configured preloads (their compiled code comes from the front,
like a worker's), and then only waits for ``spawn`` requests. Each worker is
a fork of this warm state, so a new uid's first request needs no imports,
no engine and no libc.so (the code pages are shared, mapped from the
front's sealed memfds). The zygote never compiles: wasmtime's compiler
threads do not survive fork (see shared/DESIGN.md), and it never holds the
disk cache's key, which the front creates only after forking it.

It is the daemon's only privileged process (when the daemon can change
identity): the front drops its own privileges once the zygote is forked,
and asks the zygote to kill a worker that will not stop. The zygote never
reads a byte a client sent.

It also forks the front's compiler processes (:mod:`wasmrun.daemon.compiler`):
its engine has never compiled, so theirs starts its compiler threads fresh.

Channel messages: front -> zygote ``spawn`` (an identity, limits, and the
worker's ends of its job and cancel sockets) or ``spawn_compiler`` (a
memory limit and the compiler's end of its channel); zygote -> front ``code``
(preloads), ``ready``/``failed`` once, ``spawned`` (the pid) or
``spawn_failed``. On a second socket the front sends kill requests: 4-byte
pids. The zygote kills only its own children that it has not reaped yet,
so a pid can never have been reused by another process.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import resource
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from .channel import ChannelError, SyncChannel, close_fds
from .config import DaemonConfig
from .identity import Identity, IdentityError, become, set_parent_death_signal

log = logging.getLogger("wasmrund")

_REAP_INTERVAL = 1.0  # seconds between reaping exited workers when idle


KILL = struct.Struct("<i")

COMPILER_NAME = "wasmrun-compile"
"""A compiler process's name in ``ps`` (workers keep the daemon's)."""


def start(
    config: DaemonConfig, keep_fds: tuple[int, ...] = ()
) -> tuple[int, socket.socket, socket.socket]:
    """Fork the zygote; returns its pid, the front's end of its channel and
    the front's end of its kill socket."""
    front, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    kill_front, kill_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 1
        try:
            front.close()
            kill_front.close()
            _main(child, kill_child, config, keep_fds)
            code = 0
        except BaseException:
            log.exception("zygote failed")
        finally:
            os._exit(code)
    child.close()
    kill_child.close()
    return pid, front, kill_front


def _close_inherited(keep: set[int]) -> None:
    """Close every descriptor the front had open, except ``keep`` (stdio,
    our channel): a worker must inherit nothing of the daemon's."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _main(
    sock: socket.socket, kills: socket.socket, config: DaemonConfig, keep_fds: tuple[int, ...]
) -> None:
    os.setsid()  # the terminal's ^C is the front's to handle, not ours
    set_parent_death_signal(signal.SIGKILL)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _close_inherited({sock.fileno(), kills.fileno(), *keep_fds})
    from wasmrun.toolchain import sysroot_lib_dir

    # Searched last, after each request's own directories, as in process:
    # the configured directories, then the sysroot (found with our
    # environment, before it is cleared).
    defaults = (*config.library_path, *[d for d in [sysroot_lib_dir()] if d])
    for name in list(os.environ):  # NOTIFY_SOCKET, LISTEN_*...: not ours
        if name not in ("PATH", "LANG", "LC_ALL", "TZ"):
            del os.environ[name]

    from wasmrun.runtime import LoadError, Runtime
    from wasmrun.runtime.api import make_engine

    from .worker import RemoteCode

    channel = SyncChannel(sock)
    engine = make_engine(config.fuel)
    code = RemoteCode(engine, channel)
    runtime = Runtime(
        default_library_path=defaults,
        environ={},
        engine=engine,
        disk_cache=False,
        memory_budget=config.memory_budget,
        fuel=config.fuel,
        code_source=code,
        # Each module a worker keeps holds a descriptor (wasmtime maps its
        # code and data from the front's memfd): an eighth of the worker's
        # descriptors for each cache, and plans (whose modules stay alive
        # with them) bounded to match; the rest is for requests, which may
        # carry 253 descriptors each.
        max_modules=max(8, config.worker_max_fds // 8),
        plan_cache_size=max(2, min(256, config.worker_max_fds // 32)),
    )
    try:
        loaded = runtime.preload(config.preload, library_path=()) if config.preload else []
    except LoadError as e:
        channel.send({"op": "failed", "message": f"preload: {e}"})
        return
    except Exception as e:  # a bug: say so in one line (the log has the rest)
        log.exception("zygote: preload failed")
        channel.send({"op": "failed", "message": f"preload: internal error: {e}"})
        return
    channel.send({"op": "ready", "loaded": loaded})
    # Everything built so far is shared with every worker: moved out of the
    # collector's reach, its pages are not copied into each worker when a
    # collection walks (and writes) their object headers.
    gc.collect()
    gc.freeze()
    children: dict[int, str] = {}  # pid -> "worker" or "compiler"
    killed: set[int] = set()  # killed on the front's request
    pending = b""
    while True:
        readable, _, _ = select.select([channel.fileno(), kills.fileno()], [], [], _REAP_INTERVAL)
        if kills.fileno() in readable:
            data = kills.recv(4096)
            if not data:
                return  # the front is gone
            pending += data
            while len(pending) >= KILL.size:
                (pid,) = KILL.unpack_from(pending)
                pending = pending[KILL.size :]
                if pid in children:  # ours and not reaped: never a reused pid
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    except OSError:
                        pass
        _reap(children, killed)
        if channel.fileno() not in readable:
            continue
        try:
            msg, fds = channel.receive()
        except ChannelError:
            return  # the front is gone
        if msg["op"] == "spawn" and len(fds) == 2:
            identity = Identity(
                int(msg["uid"]), int(msg["gid"]), tuple(int(g) for g in msg["groups"])
            )
            pid = _spawn(
                (channel.sock, kills),
                channel,
                msg,
                identity.describe(),
                functools.partial(
                    _become_worker, fds, identity, msg, runtime=runtime, config=config, code=code
                ),
            )
            if pid:
                children[pid] = "worker"
        elif msg["op"] == "spawn_compiler" and len(fds) == 1:
            pid = _spawn(
                (channel.sock, kills),
                channel,
                msg,
                "a compiler",
                functools.partial(_become_compiler, fds[0], msg, config=config, engine=engine),
            )
            if pid:
                children[pid] = "compiler"
        close_fds(fds)


def _reap(children: dict[int, str], killed: set[int]) -> None:
    """Collect ended workers and compilers; one that ended in a way the
    front did not ask for (a signal, a failure status) is logged with how."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        kind = children.pop(pid, "child")
        if pid in killed:
            killed.discard(pid)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:  # a real-time signal
                name = f"signal {sig}"
            log.error("%s %d was killed by %s", kind, pid, name)
        elif os.WEXITSTATUS(status) != 0:
            log.error("%s %d exited with status %d", kind, pid, os.WEXITSTATUS(status))


def _spawn(
    ours: tuple[socket.socket, ...],
    channel: SyncChannel,
    msg: dict[str, Any],
    what: str,
    become: Callable[[int], None],
) -> int:
    """Fork a child that runs ``become`` (given the descriptor on which it
    reports a failed set-up, and closes once set up); its pid, or 0 if it
    could not be set up. The child closes ``ours`` (the zygote's channel
    and kill socket) first: were a tenant ever to control its worker, the
    kill socket would let it steal the front's kill requests, or make the
    front believe the zygote died."""
    r, w = os.pipe2(os.O_CLOEXEC)  # the child reports its set-up here
    pid = os.fork()
    if pid == 0:
        os.close(r)
        status = 1
        try:
            for sock in ours:
                sock.close()
            become(w)
            status = 0
        except BaseException:
            log.exception("child for %s failed", what)
        finally:
            os._exit(status)
    os.close(w)
    try:
        report = os.read(r, 4096).decode("utf-8", "replace")  # "" once set up
    finally:
        os.close(r)
    if report:
        channel.send({"op": "spawn_failed", "id": msg["id"], "message": report})
        return pid
    channel.send({"op": "spawned", "id": msg["id"], "pid": pid})
    return pid


def _lower_limit(which: int, value: int) -> None:
    """Set a limit, soft and hard, never above the hard limit we were given
    (the daemon's own may be lower than the configured one)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _set_up_child(
    report_fd: int,
    what: str,
    limits: Callable[[], tuple[int, int | None]],
    take_identity: Callable[[], None],
) -> bool:
    """In a forked child: its limits (``limits()``: descriptors, and data
    if any, read from the request here so that a bad one is reported too),
    then its identity (``take_identity``), then what must follow an
    identity change; a failure is reported on ``report_fd`` as "cannot
    WHAT: why". Whether the child may go on."""
    try:
        max_fds, max_data = limits()
        _lower_limit(resource.RLIMIT_NOFILE, max_fds)
        if max_data:
            _lower_limit(resource.RLIMIT_DATA, max_data)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        take_identity()
        # After the identity change: the kernel clears the parent-death
        # signal when credentials change.
        set_parent_death_signal(signal.SIGKILL)
        # Never the child's death: a worker's serve then stops the guest
        # that wrote to a pipe nobody reads, as SIGPIPE would stop a native
        # program.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if os.getppid() == 1:
            raise OSError("the zygote exited")
    except (OSError, ValueError, KeyError, TypeError, IdentityError) as e:
        os.write(report_fd, f"cannot {what}: {e}".encode())
        return False
    os.close(report_fd)
    sys.stdin = None
    return True


def _become_worker(
    worker_fds: list[int],
    identity: Identity,
    msg: dict[str, Any],
    report_fd: int,
    runtime: Any,
    config: DaemonConfig,
    code: Any,
) -> None:
    """In the forked child: limits, identity, then serve."""
    from . import worker

    if not _set_up_child(
        report_fd,
        f"become {identity.describe()}",
        lambda: (msg["max_fds"], msg.get("max_data")),
        lambda: become(identity),
    ):
        return
    channel = SyncChannel(socket.socket(fileno=worker_fds[0]))
    code.channel = channel
    worker.serve(channel, socket.socket(fileno=worker_fds[1]), runtime, config, code)


def _become_compiler(
    fd: int,
    msg: dict[str, Any],
    report_fd: int,
    config: DaemonConfig,
    engine: Any,
) -> None:
    """In the forked child: the front's identity (never more), a memory
    ceiling, then compile (see :mod:`wasmrun.daemon.compiler`)."""
    from . import compiler
    from .identity import can_change_identity, drop_front_privileges, front_identity, name_process

    def as_the_front() -> None:
        privileged = can_change_identity()
        drop_front_privileges(front_identity(config.user) if privileged else None, privileged)

    name_process(COMPILER_NAME)
    if not _set_up_child(
        report_fd, "set up a compiler", lambda: (64, msg["max_data"]), as_the_front
    ):
        return
    compiler.serve(SyncChannel(socket.socket(fileno=fd)), engine)
