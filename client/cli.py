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
    run.add_argument(
        "--no-daemon", action="store_true", help="run in this process (the only mode for now)"
    )
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
    run.add_argument(
        "--max-memory", type=_size, default=1 << 32, help="limit of guest memory (default 4G)"
    )
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


def cmd_run(ns: argparse.Namespace) -> int:
    from wasmrun.runtime import GuestTrap, LinkOptions, LoadError

    _default_signals()
    env = {}
    for name, value in ns.env:
        if value is None:
            if name in os.environ:
                env[name] = os.environ[name]
        else:
            env[name] = value
    args = list(ns.args)
    if args[:1] == ["--"]:
        args = args[1:]
    options = LinkOptions(
        bind_now=ns.bind_now,
        stack_size=ns.stack_size,
        max_memory=ns.max_memory,
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
        )
    except LoadError as e:
        _error(str(e))
        return EXIT_LOAD_ERROR
    except GuestTrap as e:
        sys.stdout.flush()
        print(e.render(), file=sys.stderr)
        return EXIT_TRAP
    return result.exit_code


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
        commands = {"run": cmd_run, "ldd": cmd_ldd, "preload": cmd_preload, "cache": cmd_cache}
        return commands[ns.command](ns)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
