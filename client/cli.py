"""The ``wasmrun`` command line.

A thin layer: parse arguments, call the runtime, map outcomes to exit
statuses the way a shell user expects from a dynamic loader:

* the program's own exit status when it runs;
* 127 when loading or linking fails (as ld.so does), with one line on stderr;
* 134 when the guest traps (as an abort would), with the trap and a wasm
  backtrace on stderr;
* 2 for command-line mistakes.

The runtime (and so wasmtime) is imported only once a command needs it, to
keep ``wasmrun --help`` and argument errors fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

EXIT_LOAD_ERROR = 127
EXIT_TRAP = 134
EXIT_USAGE = 2
# Interrupted runs, as the daemon reports them (protocol EXIT_CODES).
EXIT_INTERRUPTED = {"timeout": 124, "cancelled": 130, "fuel": 137}


def _dir_spec(value: str) -> tuple[str, str]:
    host, sep, guest = value.partition("::")
    if not host:
        raise argparse.ArgumentTypeError(f"invalid --dir {value!r}: expected HOST[::GUEST]")
    return host, guest if sep else host


def _env_spec(value: str) -> tuple[str, str | None]:
    name, sep, val = value.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"invalid --env {value!r}: expected NAME[=VALUE]")
    return name, val if sep else None


def _number(value: str) -> int | float:
    try:
        return int(value, 0)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def _size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    v = value.strip().lower()
    mult = 1
    if v and v[-1] in units:
        mult = units[v[-1]]
        v = v[:-1]
    try:
        n = int(v) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {value!r}: must be positive")
    return n


def _add_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep compiled code in DIR (default $WASMRUN_CACHE_DIR or "
        "$XDG_CACHE_HOME/wasmrun; WASMRUN_CACHE_DIR=off disables it)",
    )


def _add_link_options(p: argparse.ArgumentParser) -> None:
    _add_cache_option(p)
    p.add_argument(
        "-L",
        "--library-path",
        action="append",
        default=[],
        metavar="DIR",
        help="search DIR for shared libraries (before WASMRUN_LIBRARY_PATH)",
    )


def _add_daemon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-daemon",
        action="store_true",
        help="run in this process even if wasmrund is running",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="wasmrund's socket (default $WASMRUN_SOCKET, else $XDG_RUNTIME_DIR/wasmrun/"
        "wasmrund.sock)",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop the guest after this long"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmrun",
        description="Run dynamically linked WebAssembly (WASI preview 1) programs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="load, link and run a program",
        description="Load PROGRAM and its shared libraries, link them and run it.",
    )
    _add_link_options(run)
    _add_daemon_options(run)
    run.add_argument(
        "--dir",
        action="append",
        default=[],
        type=_dir_spec,
        metavar="HOST[::GUEST]",
        help="grant the guest access to a host directory (as GUEST)",
    )
    run.add_argument(
        "--env",
        action="append",
        default=[],
        type=_env_spec,
        metavar="NAME[=VALUE]",
        help="set an environment variable for the guest (without =VALUE: inherit it)",
    )
    run.add_argument(
        "--bind-now",
        action="store_true",
        help="resolve every function at load time and report all missing symbols (LD_BIND_NOW)",
    )
    run.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="LIB",
        help="load LIB first, right after the program in symbol order (LD_PRELOAD)",
    )
    run.add_argument("--stack-size", type=_size, default=1 << 20, help="guest stack (default 1M)")
    run.add_argument("--max-memory", type=_size, help="limit of guest memory (default 4G)")
    run.add_argument("program", metavar="PROGRAM")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")

    ldd = sub.add_parser(
        "ldd",
        help="print the dependency tree and unresolved symbols",
        description="Print which file each NEEDED library resolves to and every "
        "unresolved non-weak symbol; exit 1 if anything is missing.",
    )
    _add_link_options(ldd)
    ldd.add_argument("file", metavar="PROGRAM|LIB")

    pre = sub.add_parser(
        "preload",
        help="compile libraries (and their dependencies) into the cache ahead of time",
        description="Load and compile each LIB and everything it needs, saving the "
        "compiled code in the disk cache so that later runs start without compiling.",
    )
    _add_link_options(pre)
    pre.add_argument("libraries", nargs="+", metavar="LIB")

    call = sub.add_parser(
        "call",
        help="load a library and call one of its functions",
        description="Load LIB with its dependencies in a fresh instance set, run its "
        "constructors, call SYMBOL with numeric ARGS and print the results, one per line.",
    )
    _add_link_options(call)
    _add_daemon_options(call)
    call.add_argument("library", metavar="LIB")
    call.add_argument("symbol", metavar="SYMBOL")
    call.add_argument("args", nargs="*", type=_number, metavar="ARGS")

    cache = sub.add_parser("cache", help="show or clear the compiled-code cache")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    cache_sub.required = True
    for action, text in (("stats", "print cache counters"), ("clear", "delete cached code")):
        _add_cache_option(cache_sub.add_parser(action, help=text))
    return parser


def _error(message: str) -> None:
    print(f"wasmrun: {message}", file=sys.stderr)


def _default_signals() -> None:
    """Ctrl-C and a closed pipe end the run at once, as for a native program:
    while the guest runs inside wasmtime, Python's own handlers would only
    fire after it returns."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _guest_env(pairs: list[tuple[str, str | None]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, value in pairs:
        if value is None:
            if name in os.environ:
                env[name] = os.environ[name]
        else:
            env[name] = value
    return env


def _daemon_session(ns: argparse.Namespace):
    """A session with a running wasmrund, or None to run in this process."""
    if ns.no_daemon:
        return None
    from wasmrun.client import remote

    path = remote.socket_path(ns.socket)
    sock = remote.connect(path) or remote.autostart(path)
    return remote.Session(sock) if sock is not None else None


def _library_path(ns: argparse.Namespace) -> list[str]:
    """-L and the client's WASMRUN_LIBRARY_PATH, made absolute for the daemon."""
    env_dirs = [d for d in os.environ.get("WASMRUN_LIBRARY_PATH", "").split(os.pathsep) if d]
    return [os.path.abspath(d) for d in (*ns.library_path, *env_dirs)]


def _remote_outcome(session, request, fds: list[int]) -> int:
    from wasmrun.client.remote import error_text
    from wasmrun.protocol import CallResult, Error, RunResult

    try:
        answer = session.request(request, fds)
    except (OSError, ConnectionError) as e:
        _error(f"lost the connection to wasmrund: {e}")
        return EXIT_LOAD_ERROR
    finally:
        for fd in fds[3:]:
            os.close(fd)
        session.close()
    if isinstance(answer, Error):
        sys.stdout.flush()
        print(error_text(answer), file=sys.stderr)
        return answer.exit_code
    if isinstance(answer, CallResult):
        for value in answer.results:
            print(value)
        return 0
    if isinstance(answer, RunResult):
        return answer.exit_code
    _error(f"unexpected answer from wasmrund: {type(answer).__name__}")
    return EXIT_LOAD_ERROR


def _open_fds(ns: argparse.Namespace, path: str) -> tuple[list[str], list[int]] | str:
    """The descriptors a request carries: stdio, the file, preopened dirs."""
    roles, fds = ["stdin", "stdout", "stderr"], [0, 1, 2]
    try:
        fds.append(os.open(path, os.O_RDONLY))
    except OSError as e:
        return f"{path}: cannot open file: {e.strerror}"
    roles.append("program")
    for host, guest in getattr(ns, "dir", ()):
        try:
            fds.append(os.open(host, os.O_RDONLY | os.O_DIRECTORY))
        except OSError:
            for fd in fds[3:]:
                os.close(fd)
            return f"--dir {host}: not a directory"
        roles.append(f"dir:{guest}")
    return roles, fds


def cmd_run(ns: argparse.Namespace) -> int:
    _default_signals()
    env = _guest_env(ns.env)
    args = list(ns.args)
    if args[:1] == ["--"]:
        args = args[1:]
    # The daemon links with the default stack; another stack size runs here.
    session = _daemon_session(ns) if ns.stack_size == 1 << 20 else None
    if session is not None:
        return _run_remote(ns, session, env, args)
    return _run_here(ns, env, args)


def _run_remote(ns, session, env: dict[str, str], args: list[str]) -> int:
    from wasmrun.protocol import Limits, Run

    program = os.path.abspath(ns.program)
    opened = _open_fds(ns, program)
    if isinstance(opened, str):
        session.close()
        _error(opened)
        return EXIT_LOAD_ERROR
    roles, fds = opened
    request = Run(
        program=program,
        args=(ns.program, *args),
        env=tuple(env.items()),
        cwd=os.getcwd(),
        library_path=tuple(_library_path(ns)),
        preload=tuple(p if "/" not in p else os.path.abspath(p) for p in ns.preload),
        bind_now=ns.bind_now,
        limits=Limits(
            memory_bytes=ns.max_memory,
            timeout_ms=int(ns.timeout * 1000) if ns.timeout else None,
        ),
        fd_roles=tuple(roles),
        request_id=1,
    )
    return _remote_outcome(session, request, fds)


def _run_here(ns: argparse.Namespace, env: dict[str, str], args: list[str]) -> int:
    from wasmrun.runtime import GuestTrap, LinkOptions, LoadError, RunInterrupted, RunLimits

    options = LinkOptions(
        bind_now=ns.bind_now,
        stack_size=ns.stack_size,
        max_memory=ns.max_memory or 1 << 32,
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
    except LoadError as e:
        _error(str(e))
        return EXIT_LOAD_ERROR
    except GuestTrap as e:
        sys.stdout.flush()
        print(e.render(), file=sys.stderr)
        return EXIT_TRAP
    except RunInterrupted as e:
        sys.stdout.flush()
        _error(str(e))
        return EXIT_INTERRUPTED.get(e.reason, EXIT_TRAP)
    return result.exit_code


def cmd_call(ns: argparse.Namespace) -> int:
    session = _daemon_session(ns)
    if session is not None:
        from wasmrun.protocol import Dlopen, Limits

        library = ns.library if "/" not in ns.library else os.path.abspath(ns.library)
        request = Dlopen(
            library=library,
            symbol=ns.symbol,
            args=tuple(ns.args),
            library_path=tuple(_library_path(ns)),
            limits=Limits(timeout_ms=int(ns.timeout * 1000) if ns.timeout else None),
            fd_roles=("stdin", "stdout", "stderr"),
            request_id=1,
        )
        return _remote_outcome(session, request, [0, 1, 2])
    from wasmrun.runtime import GuestTrap, LoadError, RunInterrupted, RunLimits, WasmrunError

    try:
        rt = _runtime(ns)
        lib = rt.open_library(ns.library, limits=RunLimits(timeout=ns.timeout))
        for value in lib.call(ns.symbol, ns.args):
            print(value)
    except LoadError as e:
        _error(str(e))
        return EXIT_LOAD_ERROR
    except GuestTrap as e:
        print(e.render(), file=sys.stderr)
        return EXIT_TRAP
    except RunInterrupted as e:
        _error(str(e))
        return EXIT_INTERRUPTED.get(e.reason, EXIT_TRAP)
    except WasmrunError as e:
        _error(str(e))
        return 1
    return 0


def _runtime(ns: argparse.Namespace):
    from wasmrun.runtime import Runtime

    return Runtime(
        library_path=getattr(ns, "library_path", ()),
        disk_cache=ns.cache_dir if ns.cache_dir else True,
    )


def cmd_preload(ns: argparse.Namespace) -> int:
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


def cmd_cache(ns: argparse.Namespace) -> int:
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


def cmd_ldd(ns: argparse.Namespace) -> int:
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
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        commands = {
            "run": cmd_run,
            "call": cmd_call,
            "ldd": cmd_ldd,
            "preload": cmd_preload,
            "cache": cmd_cache,
        }
        return commands[ns.command](ns)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
