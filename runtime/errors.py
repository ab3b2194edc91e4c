"""Errors raised by the linker.

Every error a user can cause carries enough context (file, symbol, byte
offset) to be printed as one line, ld.so style, without a traceback. The CLI
maps :class:`LoadError` to exit status 127 like a dynamic loader does.
"""

from __future__ import annotations

_LINE_BREAKING = {0x7F, 0x85, 0x2028, 0x2029}


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...).

    Messages quote names taken from the files themselves (NEEDED entries,
    symbols, imports): a newline or an escape sequence in one must not
    break the one-line message apart or reach the user's terminal raw.
    """
    if all(" " <= c and ord(c) not in _LINE_BREAKING for c in text):
        return text
    out = []
    for c in text:
        o = ord(c)
        if c >= " " and o not in _LINE_BREAKING:
            out.append(c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        else:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
    return "".join(out)


def wasmtime_message(text: str) -> str:
    """A wasmtime error with its whole cause chain, on one line.

    wasmtime reports ``failed to compile: wasm[0]::function[45]::f`` and
    puts the reason (``legacy_exceptions feature required for try
    instruction``) in a numbered "Caused by:" list below; the first line
    alone tells a user nothing they can act on.
    """
    text = text.strip()
    if not text:
        return "unknown error"
    head, _, rest = text.partition("Caused by:")
    parts = [" ".join(ln.strip() for ln in head.strip().splitlines() if ln.strip())]
    for ln in rest.splitlines():
        ln = ln.strip()
        number, colon, cause = ln.partition(":")
        if colon and number.isdigit():
            ln = cause.strip()
        if ln and ln not in parts:
            parts.append(ln)
    return ": ".join(p for p in parts if p)


class WasmrunError(Exception):
    """Base class of every error wasmrun reports to a user; a message is
    always one line (see :func:`one_line`)."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)


class LoadError(WasmrunError):
    """The program or one of its libraries could not be loaded or linked.

    ``str(err)`` is the full one-line message, e.g.
    ``libfoo.so: cannot open shared object file``.
    """


class BinaryFormatError(LoadError):
    """A file is not WebAssembly, or its structure is malformed.

    Carries the file and the byte offset where decoding failed, so a user can
    inspect the exact spot with ``wasm-tools objdump``.
    """

    def __init__(self, file: str, offset: int, what: str) -> None:
        self.file = file
        self.offset = offset
        self.what = what
        super().__init__(f"{file}: {what} (at byte offset {offset:#x})")

    def __reduce__(self):  # picklable (a daemon's worker sends errors over a pipe)
        return (BinaryFormatError, (self.file, self.offset, self.what))


class SymbolError(LoadError):
    """A symbol could not be resolved or has an incompatible type."""


class LimitError(LoadError):
    """A module asks for more memory or table space than allowed."""


class GuestTrap(WasmrunError):
    """The guest trapped: the message and a wasm backtrace, already formatted."""

    def __init__(self, message: str, backtrace: list[str]) -> None:
        self.message = one_line(message)
        self.backtrace = [one_line(frame) for frame in backtrace]
        super().__init__(message)

    def __reduce__(self):
        return (GuestTrap, (self.message, self.backtrace))

    def render(self) -> str:
        """The trap and its backtrace as printed by the CLI."""
        lines = [f"wasm trap: {self.message}"]
        if self.backtrace:
            lines.append("wasm backtrace:")
            lines.extend(f"  {i}: {frame}" for i, frame in enumerate(self.backtrace))
        return "\n".join(lines)


class GuestExit(WasmrunError):
    """The guest called ``exit(code)`` where no program status is expected.

    ``Runtime.run`` turns an exit anywhere (``_start``, a library constructor
    or destructor, a dlopen'ed library) into the run's exit status; this is
    raised when the exit ends something that has no status of its own: the
    constructors run by ``Runtime.open_library`` or a function called with
    ``InstanceSet.call``. ``during`` says what was running, e.g.
    ``"constructor of libfoo.so"`` or ``"greet()"``; ``str(err)`` is one
    line, ``exit(3) called during constructor of libfoo.so``.
    """

    def __init__(self, code: int, during: str) -> None:
        self.code = code
        self.during = during
        super().__init__(f"exit({code}) called during {during}")

    def __reduce__(self):
        return (GuestExit, (self.code, self.during))


class RunInterrupted(WasmrunError):
    """The run was stopped from outside: ``reason`` is "timeout" or
    "cancelled" (or another word a controller gave)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)

    def __reduce__(self):
        return (RunInterrupted, (self.reason, str(self)))
