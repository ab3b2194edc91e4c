"""The ``wasmrun`` argparse parser, built from the option tables in
:mod:`wasmrun.client.options` (so the quick parser and argparse cannot
disagree about names, defaults or value types). Imported only when the
quick parser declines a command line, or for ldd/preload/cache/--help."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from . import options

COMMANDS = ("run", "call", "ldd", "preload", "cache", "status")


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without ``shutil``: argparse builds a
    formatter for every argument it adds, and ``shutil`` (imported just to
    read the terminal width) pulls in bz2, lzma and more on each run."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            stdout = sys.__stdout__
            try:
                columns = os.get_terminal_size(stdout.fileno()).columns if stdout else 80
            except (AttributeError, ValueError, OSError):
                columns = 80
        super().__init__(prog, indent_increment, max_help_position, width=columns - 2)


def _argparse_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A converter whose BadValue argparse reports with its message."""

    def parse(value: str) -> Any:
        try:
            return convert(value)
        except options.BadValue as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = convert.__name__
    return parse


def _add(parser: argparse.ArgumentParser, table: tuple[options.Option, ...]) -> None:
    for opt in table:
        kwargs: dict[str, Any] = {"dest": opt.dest, "action": opt.action, "help": opt.help}
        if opt.action != "store_true":
            kwargs["default"] = opt.default
            if opt.metavar is not None:
                kwargs["metavar"] = opt.metavar
            if opt.type is not None:
                kwargs["type"] = _argparse_type(opt.type)
        parser.add_argument(*opt.flags, **kwargs)


def _subparser(sub: Any, name: str, **kwargs: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=_Formatter, **kwargs)
    return parser


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, the arguments of that one command
    (the others are listed but left empty), which is all a command line
    needs and builds faster."""
    parser = argparse.ArgumentParser(
        prog="wasmrun",
        description="Run dynamically linked WebAssembly (WASI preview 1) programs.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def wanted(name: str) -> bool:
        return only is None or only == name

    run = _subparser(
        sub,
        "run",
        help="load, link and run a program",
        description="Load PROGRAM and its shared libraries, link them and run it "
        "(through wasmrund when it is running).",
    )
    if wanted("run"):
        _add(run, options.RUN)
        run.add_argument("program", metavar="PROGRAM")
        run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")

    call = _subparser(
        sub,
        "call",
        help="load a library and call one of its functions",
        description="Load LIB with its dependencies in a fresh instance set, run its "
        "constructors, call SYMBOL with numeric ARGS (ints or floats) and print the "
        "results, one per line (through wasmrund when it is running).",
    )
    if wanted("call"):
        _add(call, options.CALL)
        call.add_argument("library", metavar="LIB")
        call.add_argument("symbol", metavar="SYMBOL")
        call.add_argument("args", nargs="*", type=_argparse_type(options.number), metavar="ARGS")

    ldd = _subparser(
        sub,
        "ldd",
        help="print the dependency tree and unresolved symbols",
        description="Print which file each NEEDED library resolves to and every "
        "unresolved non-weak symbol; exit 1 if anything is missing.",
    )
    if wanted("ldd"):
        _add(ldd, options.LINK)
        ldd.add_argument("file", metavar="PROGRAM|LIB")

    pre = _subparser(
        sub,
        "preload",
        help="compile libraries (and their dependencies) into the cache ahead of time",
        description="Load and compile each LIB and everything it needs, saving the "
        "compiled code in the disk cache so that later runs start without compiling.",
    )
    if wanted("preload"):
        _add(pre, options.LINK)
        pre.add_argument("libraries", nargs="+", metavar="LIB")

    status = _subparser(
        sub,
        "status",
        help="ask the running wasmrund for its counters",
        description="Print wasmrund's counters: connections, workers, queued and "
        "running requests per uid, the compiled code it holds; exit 1 if no daemon "
        "answers.",
    )
    if wanted("status"):
        _add(status, (options.DAEMON[1],))

    cache = _subparser(sub, "cache", help="show or clear the compiled-code cache")
    if wanted("cache"):
        cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
        cache_sub.required = True
        for action, text in (("stats", "print cache counters"), ("clear", "delete cached code")):
            _add(_subparser(cache_sub, action, help=text), (options.CACHE,))
    return parser
