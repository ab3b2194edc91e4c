"""The options of ``wasmrun run`` and ``wasmrun call``, declared once, and a
quick parser for their common forms.

``argparse`` (with the ``re``, ``enum``, ``gettext`` it imports) and building
the parser cost ~10 ms per start in a regular install: a third of a whole
``wasmrun run`` through a warm daemon. The argparse parser
(:mod:`wasmrun.client.parser`) is built from the table below, and
:func:`quick_parse` reads the same table for command lines made of exact
option names and plain values; anything else (``--help``, abbreviations,
``--``, a bad value, a missing argument...) returns None and argparse parses
it, with its usual messages. tests/test_client.py checks that both produce
the same namespace.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

DEFAULT_STACK_SIZE = 1 << 20


class BadValue(ValueError):
    """An option value that does not parse; the message says why."""


def dir_spec(value: str) -> tuple[str, str]:
    host, sep, guest = value.partition("::")
    if not host:
        raise BadValue(f"invalid --dir {value!r}: expected HOST[::GUEST]")
    return host, guest if sep else host


def env_spec(value: str) -> tuple[str, str | None]:
    name, sep, val = value.partition("=")
    if not name:
        raise BadValue(f"invalid --env {value!r}: expected NAME[=VALUE]")
    return name, val if sep else None


def size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    v = value.strip().lower()
    mult = 1
    if v and v[-1] in units:
        mult = units[v[-1]]
        v = v[:-1]
    try:
        n = int(v) * mult
    except ValueError:
        raise BadValue(f"invalid size {value!r}") from None
    if n <= 0:
        raise BadValue(f"invalid size {value!r}: must be positive")
    return n


def seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise BadValue(f"invalid duration {value!r}") from None
    if not 0 < n < 1e9:
        raise BadValue(f"invalid duration {value!r}: must be positive")
    return n


def number(value: str) -> int | float:
    """A call argument: an int (decimal, 0x.., 0o.., 0b..) or a float."""
    try:
        return int(value, 0)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise BadValue(f"not a number: {value!r}") from None


class Option:
    """One option, as argparse's add_argument would take it."""

    __slots__ = ("flags", "dest", "action", "type", "default", "metavar", "help")

    def __init__(
        self,
        flags: tuple[str, ...],
        dest: str,
        action: str = "store",
        type: Callable[[str], Any] | None = None,  # noqa: A002 - argparse's name
        default: Any = None,
        metavar: str | None = None,
        help: str | None = None,  # noqa: A002 - argparse's name
    ) -> None:
        self.flags = flags
        self.dest = dest
        self.action = action
        self.type = type
        self.default = default
        self.metavar = metavar
        self.help = help

    def initial(self) -> Any:
        """The value before any occurrence (a fresh list for "append")."""
        return list(self.default or ()) if self.action == "append" else self.default


CACHE = Option(
    ("--cache-dir",),
    "cache_dir",
    metavar="DIR",
    help="keep compiled code in DIR (default $WASMRUN_CACHE_DIR or "
    "$XDG_CACHE_HOME/wasmrun; WASMRUN_CACHE_DIR=off disables it)",
)
LINK = (
    CACHE,
    Option(
        ("-L", "--library-path"),
        "library_path",
        action="append",
        default=[],
        metavar="DIR",
        help="search DIR for shared libraries (before WASMRUN_LIBRARY_PATH)",
    ),
)
DAEMON = (
    Option(
        ("--no-daemon",),
        "no_daemon",
        action="store_true",
        default=False,
        help="run in this process even if wasmrund is running",
    ),
    Option(
        ("--socket",),
        "socket",
        metavar="PATH",
        help="wasmrund's socket (default $WASMRUN_SOCKET, else "
        "$XDG_RUNTIME_DIR/wasmrun/wasmrund.sock)",
    ),
    Option(
        ("--timeout",),
        "timeout",
        type=seconds,
        metavar="SECONDS",
        help="stop the guest after this long",
    ),
)
LOADING = (
    Option(
        ("--bind-now",),
        "bind_now",
        action="store_true",
        default=False,
        help="resolve every function at load time and report all missing symbols (LD_BIND_NOW)",
    ),
    Option(
        ("--preload",),
        "preload",
        action="append",
        default=[],
        metavar="LIB",
        help="load LIB first, right after the program in symbol order (LD_PRELOAD)",
    ),
)
RUN = (
    *LINK,
    *DAEMON,
    Option(
        ("--dir",),
        "dir",
        action="append",
        default=[],
        type=dir_spec,
        metavar="HOST[::GUEST]",
        help="grant the guest access to a host directory (as GUEST)",
    ),
    Option(
        ("--env",),
        "env",
        action="append",
        default=[],
        type=env_spec,
        metavar="NAME[=VALUE]",
        help="set an environment variable for the guest (without =VALUE: inherit it)",
    ),
    *LOADING,
    Option(
        ("--stack-size",),
        "stack_size",
        type=size,
        default=DEFAULT_STACK_SIZE,
        help="guest stack (default 1M; another size always runs in this process)",
    ),
    Option(
        ("--max-memory",),
        "max_memory",
        type=size,
        help="limit of guest memory (default 4G)",
    ),
)
CALL = (*LINK, *DAEMON, *LOADING)


class Namespace:
    """What argparse.Namespace is, without argparse: attributes, equality."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __eq__(self, other: object) -> bool:
        return vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Namespace({vars(self)!r})"


def _options(args: Sequence[str], table: tuple[Option, ...], values: dict[str, Any]) -> int | None:
    """Read options from args[1:]; the index of the first positional, or
    None for anything argparse should judge."""
    by_flag = {flag: opt for opt in table for flag in opt.flags}
    i = 1
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            return i
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = by_flag.get(name)
        if opt is None:  # --help, --, an abbreviation, -Lattached, a typo
            return None
        if opt.action == "store_true":
            if eq:
                return None
            values[opt.dest] = True
            i += 1
            continue
        if not eq:
            i += 1
            if i >= len(args) or args[i].startswith("-"):
                return None  # missing, or a value argparse may read as an option
            value = args[i]
        try:
            converted = opt.type(value) if opt.type is not None else value
        except BadValue:
            return None
        if opt.action == "append":
            values[opt.dest].append(converted)
        else:
            values[opt.dest] = converted
        i += 1
    return None  # no positional: argparse reports it


def quick_parse(args: Sequence[str]) -> Namespace | None:
    """``run``/``call`` command lines in their plain forms, as argparse
    would parse them; None when unsure."""
    if not args or args[0] not in ("run", "call"):
        return None
    command = args[0]
    table = RUN if command == "run" else CALL
    values: dict[str, Any] = {opt.dest: opt.initial() for opt in table}
    first = _options(args, table, values)
    if first is None:
        return None
    rest = list(args[first:])
    if command == "run":
        values["program"] = rest[0]
        values["args"] = rest[1:]  # argparse.REMAINDER: everything after PROGRAM
    else:
        if len(rest) < 2 or any(a.startswith("-") for a in rest):
            return None  # options after the symbol, negative numbers...
        try:
            values.update(library=rest[0], symbol=rest[1], args=[number(a) for a in rest[2:]])
        except BadValue:
            return None
    return Namespace(command=command, **values)
