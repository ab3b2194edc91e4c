"""The ``wasmrun`` command line.

A thin layer: parse arguments, call the runtime (in this process, or through
the loader daemon ``wasmrund`` when one is running), map outcomes to exit
statuses the way a shell user expects from a dynamic loader:

* the program's own exit status when it runs;
* 127 when loading or linking fails (as ld.so does), with one line on stderr;
* 134 when the guest traps (as an abort would), with the trap and a wasm
  backtrace on stderr;
* 124 when ``--timeout`` stops it, 130 when cancelled with Ctrl-C;
* 2 for command-line mistakes.

``run`` and ``call`` go to the daemon when one answers on its socket (see
:mod:`wasmrun.client.remote`), else run here; both ways give the same output
and exit status. Only the daemon path's modules are imported before that
choice, and the runtime (and so wasmtime) only once a command needs it, so
``wasmrun --help``, argument errors and daemon runs start fast.
"""

from __future__ import annotations

import os
import sys

from .options import DEFAULT_STACK_SIZE, quick_parse

TYPE_CHECKING = False  # no typing/argparse imports on the daemon path
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace
    from collections.abc import Callable, Sequence

    from wasmrun.runtime import Runtime, WasmrunError

    from .remote import Session

EXIT_LOAD_ERROR = 127
EXIT_TRAP = 134
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_CANCELLED = 130
# Interrupted runs: the protocol's exit codes, used on both paths.
EXIT_INTERRUPTED = {"timeout": 124, "cancelled": EXIT_CANCELLED, "fuel": 137}
DEFAULT_MAX_MEMORY = 1 << 32
# wasmrund's answer when it cannot see the file we opened at its path (a
# private /tmp...): nothing ran, so the request runs here. Same text as
# wasmrun.daemon.execute.NOT_VISIBLE (tests/test_daemon.py checks).
NOT_VISIBLE = "(not visible to wasmrund)"


COMMANDS = ("run", "call", "ldd", "preload", "cache")


def build_parser(only: str | None = None) -> ArgumentParser:
    """The argparse parser (see :mod:`wasmrun.client.parser`)."""
    from .parser import build_parser as build

    return build(only)


def _error(message: str) -> None:
    print(f"wasmrun: {message}", file=sys.stderr)


def _default_signals() -> None:
    """Ctrl-C and a closed pipe end the run at once, as for a native program:
    while the guest runs inside wasmtime, Python's own handlers would only
    fire after it returns."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _die_of(signum: int, status: int) -> int:
    """Die of ``signum`` as the guest would have natively (SIGPIPE: its
    output's reader went away); ``status`` if that signal does not kill."""
    import signal

    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    return status


def _guest_env(pairs: list[tuple[str, str | None]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, value in pairs:
        if value is None:
            if name in os.environ:
                env[name] = os.environ[name]
        else:
            env[name] = value
    return env


# -- the daemon path ---------------------------------------------------------------


class _Display:
    """Restores paths as the user typed them in messages from the daemon.

    The daemon needs absolute paths (its cwd is not ours), so its messages
    name ``/home/me/build/libc.so`` where the in-process run says
    ``build/libc.so``; replacing each absolute form we sent by what the user
    typed makes both paths print the same line.
    """

    def __init__(self) -> None:
        self.pairs: dict[str, str] = {}

    def absolute(self, typed: str) -> str:
        full = os.path.abspath(typed)
        if full != typed:
            self.pairs[full] = typed
        return full

    def __call__(self, text: str) -> str:
        import re  # only for messages: not on the start-up path

        for full in sorted(self.pairs, key=len, reverse=True):
            pattern = r"(?<![\w./-])" + re.escape(full) + r"(?=$|[/\s;:,)'\"])"
            literal = self.pairs[full].replace("\\", "\\\\")  # no escapes in it
            text = re.sub(pattern, literal, text)
        return text


def _library_dirs(ns: Namespace, display: _Display) -> list[str]:
    """-L then the client's WASMRUN_LIBRARY_PATH, absolute for the daemon
    (which does not see our environment)."""
    env_dirs = [d for d in os.environ.get("WASMRUN_LIBRARY_PATH", "").split(os.pathsep) if d]
    return [display.absolute(d) for d in (*ns.library_path, *env_dirs)]


def _library_names(names: list[str], display: _Display) -> list[str]:
    return [display.absolute(n) if "/" in n else n for n in names]


def _open_request_fds(
    path: str | None, dirs: Sequence[tuple[str, str]]
) -> tuple[list[str], list[int], int] | str:
    """Roles and descriptors to send: our stdio, the file to load (opened
    here, so the daemon only loads what we can open), preopened directories.
    Returns (roles, fds, index of the first fd opened here, to close after
    sending), or the error to print (the in-process run's message)."""
    from wasmrun.client import remote

    roles, fds = remote.stdio_fds()
    first_own = len(fds)
    problem = None
    try:
        if path is not None:
            try:
                # O_NONBLOCK: a FIFO named as the program must not hang us.
                fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                roles.append("program")
            except OSError as e:
                problem = f"{path}: cannot open file: {e.strerror}"
        for host, guest in dirs:
            if problem is not None:
                break
            try:
                fds.append(os.open(host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                roles.append(f"dir:{guest}")
            except OSError:
                problem = f"--dir {host}: not a directory"
    except BaseException:
        _close_from(fds, first_own)
        raise
    if problem is not None:
        _close_from(fds, first_own)
        return problem
    return roles, fds, first_own


def _close_from(fds: list[int], first_own: int) -> None:
    for fd in fds[first_own:]:
        try:
            os.close(fd)
        except OSError:
            pass


def _remote(
    ns: Namespace,
    session: Session,
    frame_of: Callable[[list[str]], bytes],
    path: str | None,
    dirs: Sequence[tuple[str, str]],
    display: _Display,
) -> int:
    """Send one request through ``session`` and turn the answer into output
    and an exit status exactly as the in-process path would."""
    from wasmrun.client import remote, wire

    try:
        opened = _open_request_fds(path, dirs)
        if isinstance(opened, str):
            _error(display(opened))
            return EXIT_LOAD_ERROR
        roles, fds, first_own = opened
        try:
            try:
                frame = frame_of(roles)
            except wire.WireError:
                return -1  # not expressible in the protocol: run in process
            try:
                reply = session.request(frame, fds, request_id=1)
            except remote.Interrupted:
                return EXIT_CANCELLED
            except (OSError, ConnectionError, wire.WireError) as e:
                if session.interrupted:
                    return EXIT_CANCELLED
                _error(f"lost the connection to wasmrund: {e}")
                return EXIT_INTERNAL
        finally:
            _close_from(fds, first_own)
    finally:
        session.close()
    fields = reply.fields
    if reply.type == "error":
        if fields["kind"] == "cancelled" and session.interrupted:
            return EXIT_CANCELLED  # our own Ctrl-C: quiet, as in process
        if fields["kind"] == "signal":  # as in process: we die of it, silently
            return _die_of(int(fields["exit_code"]) - 128, int(fields["exit_code"]))
        if fields["kind"] == "load" and fields["message"].endswith(NOT_VISIBLE):
            return -1  # the daemon cannot see our file (private /tmp...): run here
        message = display(fields["message"])
        print(message if fields["kind"] == "trap" else f"wasmrun: {message}", file=sys.stderr)
        return int(fields["exit_code"])
    if reply.type == "run_result":
        return int(fields["exit_code"])
    if reply.type == "call_result":
        for value in fields["results"]:
            print(value)
        return 0
    _error(f"unexpected answer from wasmrund: {reply.type}")
    return EXIT_INTERNAL


def _session(ns: Namespace) -> Session | None:
    """A session with wasmrund, or None to run in this process."""
    if ns.no_daemon:
        return None
    from wasmrun.client import remote

    return remote.open_session(ns.socket)


def _timeout_ms(ns: Namespace) -> int | None:
    return max(1, round(ns.timeout * 1000)) if ns.timeout is not None else None


def _run_remote(ns: Namespace, session: Session, env: dict[str, str], args: list[str]) -> int:
    from wasmrun.client import wire

    display = _Display()
    program = display.absolute(ns.program)
    library_path = _library_dirs(ns, display)
    preload = _library_names(ns.preload, display)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""

    def frame_of(roles: list[str]) -> bytes:
        return wire.run_request(
            program=program,
            args=[ns.program, *args],
            env=list(env.items()),
            cwd=cwd,
            library_path=library_path,
            preload=preload,
            bind_now=ns.bind_now,
            memory_bytes=ns.max_memory,
            timeout_ms=_timeout_ms(ns),
            fd_roles=roles,
            request_id=1,
            debug=os.environ.get("WASMRUN_DEBUG", ""),
        )

    return _remote(ns, session, frame_of, ns.program, ns.dir, display)


def _call_remote(ns: Namespace, session: Session) -> int:
    from wasmrun.client import wire

    display = _Display()
    library = display.absolute(ns.library) if "/" in ns.library else ns.library
    library_path = _library_dirs(ns, display)
    preload = _library_names(ns.preload, display)

    def frame_of(roles: list[str]) -> bytes:
        return wire.dlopen_request(
            library=library,
            symbol=ns.symbol,
            args=ns.args,
            library_path=library_path,
            preload=preload,
            bind_now=ns.bind_now,
            memory_bytes=None,
            timeout_ms=_timeout_ms(ns),
            fd_roles=roles,
            request_id=1,
            debug=os.environ.get("WASMRUN_DEBUG", ""),
        )

    path = ns.library if "/" in ns.library else None
    return _remote(ns, session, frame_of, path, (), display)


# -- commands ----------------------------------------------------------------------


def cmd_run(ns: Namespace) -> int:
    env = _guest_env(ns.env)
    args = list(ns.args)
    if args[:1] == ["--"]:
        args = args[1:]
    # The protocol has no stack size: another one runs here.
    if ns.stack_size == DEFAULT_STACK_SIZE:
        session = _session(ns)
        if session is not None:
            code = _run_remote(ns, session, env, args)
            if code >= 0:
                return code
    return _run_here(ns, env, args)


def _report(e: WasmrunError) -> int:
    """Print an in-process failure as the daemon path would; its exit status."""
    from wasmrun.runtime import GuestExit, GuestTrap, LoadError, RunInterrupted

    sys.stdout.flush()
    if isinstance(e, GuestTrap):
        print(e.render(), file=sys.stderr)
        return EXIT_TRAP
    if isinstance(e, GuestExit):  # the guest's own status, and what it cut short
        if e.code & 0xFF == 0:
            return 0  # a successful exit: nothing to report (as through wasmrund)
        _error(str(e))
        return e.code & 0xFF
    _error(str(e))
    if isinstance(e, LoadError):
        return EXIT_LOAD_ERROR
    if isinstance(e, RunInterrupted):
        return EXIT_INTERRUPTED.get(e.reason, EXIT_TRAP)
    return EXIT_INTERNAL


def _run_here(ns: Namespace, env: dict[str, str], args: list[str]) -> int:
    from wasmrun.runtime import LinkOptions, RunLimits, WasmrunError

    _default_signals()
    options = LinkOptions(
        bind_now=ns.bind_now,
        stack_size=ns.stack_size,
        max_memory=ns.max_memory or DEFAULT_MAX_MEMORY,
        preload=tuple(ns.preload),
    )
    try:
        rt = _runtime(ns)
        result = rt.run(
            ns.program,
            args=[ns.program, *args],
            env=env,
            dirs=ns.dir,
            options=options,
            limits=RunLimits(memory_bytes=ns.max_memory, timeout=ns.timeout),
        )
    except WasmrunError as e:
        return _report(e)
    return result.exit_code


def cmd_call(ns: Namespace) -> int:
    session = _session(ns)
    if session is not None:
        code = _call_remote(ns, session)
        if code >= 0:
            return code
    return _call_here(ns)


def _call_here(ns: Namespace) -> int:
    from wasmrun.runtime import LinkOptions, RunLimits, WasmrunError

    _default_signals()
    try:
        rt = _runtime(ns)
        with rt.open_library(
            ns.library,
            options=LinkOptions(bind_now=ns.bind_now, preload=tuple(ns.preload)),
            limits=RunLimits(timeout=ns.timeout),
        ) as lib:
            results = lib.call(ns.symbol, ns.args)
            lib.finish()  # exit-time handlers, as the daemon runs them: before the results
    except WasmrunError as e:  # GuestExit: exit(N) in a constructor, the call or a handler
        return _report(e)
    for value in results:
        print(value)
    return 0


def _runtime(ns: Namespace) -> Runtime:
    from wasmrun.runtime import Runtime
    from wasmrun.toolchain import sysroot_lib_dir  # the sysroot is searched last, like /usr/lib

    return Runtime(
        library_path=getattr(ns, "library_path", ()),
        default_library_path=[d for d in [sysroot_lib_dir()] if d],
        disk_cache=ns.cache_dir if ns.cache_dir else True,
    )


def cmd_preload(ns: Namespace) -> int:
    from wasmrun.runtime import LoadError

    rt = _runtime(ns)
    try:
        for path in rt.preload(ns.libraries):
            print(path)
    except LoadError as e:
        _error(str(e))
        return EXIT_LOAD_ERROR
    stats = rt.stats()
    print(
        f"compiled {stats['memory.compiles']}, loaded {stats['memory.deserializes']} "
        "from the disk cache"
    )
    return 0


def cmd_cache(ns: Namespace) -> int:
    rt = _runtime(ns)
    if rt.cache.disk is None:
        _error("the disk cache is off (WASMRUN_CACHE_DIR=off)")
        return 1
    if ns.cache_command == "clear":
        n = rt.clear_caches()
        print(f"removed {n} entries from {rt.cache.disk.directory}")
        return 0
    for key, value in rt.cache.disk.summary().items():
        print(f"{key.removeprefix('disk.')}: {value}")
    return 0


def cmd_status(ns: Namespace) -> int:
    """The daemon's ``stats``, one ``key: value`` per line."""
    from wasmrun.client import remote, wire

    path, _ = remote.socket_path(ns.socket)
    session = remote.open_session(ns.socket)
    if session is None:
        _error(f"no wasmrund answers at {path}")
        return 1
    try:
        reply = session.request(wire.simple_request("stats", 1), [], request_id=1)
    except (OSError, ConnectionError, wire.WireError) as e:
        _error(f"lost the connection to wasmrund: {e}")
        return EXIT_INTERNAL
    finally:
        session.close()
    if reply.type != "stats_result":
        _error(str(reply.fields.get("message", f"unexpected answer: {reply.type}")))
        return int(reply.fields.get("exit_code", EXIT_INTERNAL))
    for key, value in sorted(reply.fields.get("stats", {}).items()):
        print(f"{key}: {value}")
    return 0


def cmd_ldd(ns: Namespace) -> int:
    from wasmrun.runtime import LoadError
    from wasmrun.runtime.ldd import ldd

    rt = _runtime(ns)
    try:
        report = ldd(rt.cache, rt.search, ns.file)
    except LoadError as e:
        _error(str(e))
        return EXIT_LOAD_ERROR
    for line in report.lines:
        print(line)
    for module, symbol, kind in report.unresolved:
        print(f"undefined symbol: {symbol} ({kind}) in {module}")
    if report.error:
        print(f"error: {report.error}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    quick = quick_parse(args)
    if quick is None:
        parser = build_parser(args[0] if args and args[0] in COMMANDS else None)
        ns = parser.parse_args(args)
    else:
        # The quick parser's namespace has the same attributes; it is not an
        # argparse.Namespace only so that the daemon path never imports argparse.
        ns = quick  # type: ignore[assignment]
    try:
        commands = {
            "run": cmd_run,
            "call": cmd_call,
            "ldd": cmd_ldd,
            "preload": cmd_preload,
            "cache": cmd_cache,
            "status": cmd_status,
        }
        return commands[ns.command](ns)
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug of ours: still one line, not a traceback
        if os.environ.get("WASMRUN_TRACEBACK"):
            raise
        sys.stdout.flush()
        _error(f"internal error: {type(e).__name__}: {e} (WASMRUN_TRACEBACK=1 shows where)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
