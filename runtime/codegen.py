"""Generation of the small WebAssembly modules the linker instantiates itself.

Two kinds, both emitted as binary and compiled once per distinct shape:

* The **PLT**: one stub per function import that cannot be bound directly
  (a back-edge in a dependency cycle, a symbol not yet available). Each stub
  forwards its arguments with ``return_call_indirect`` through a slot of the
  PLT's own table, which the linker fills once the target exists. Being wasm,
  the stub adds no host frame, so tail calls and exceptions pass through.
* The **WASI shim**: wasmtime's WASI functions read the *caller's* exported
  ``memory``; shared libraries import memory and export none. The shim
  imports ``env.memory``, re-exports it, and wraps each WASI function so the
  caller wasmtime sees is the shim.
"""

from __future__ import annotations

from collections.abc import Sequence

from .wasmbin import FuncType


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def name(s: str) -> bytes:
    raw = s.encode("utf-8")
    return uleb(len(raw)) + raw


def vec(items: Sequence[bytes]) -> bytes:
    return uleb(len(items)) + b"".join(items)


def section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + uleb(len(body)) + body


def functype(ft: FuncType) -> bytes:
    return b"\x60" + vec(list(ft.params)) + vec(list(ft.results))


HEADER = b"\0asm\x01\x00\x00\x00"


class _Types:
    """Interns function types into a type section."""

    def __init__(self) -> None:
        self.index: dict[FuncType, int] = {}

    def get(self, ft: FuncType) -> int:
        if ft not in self.index:
            self.index[ft] = len(self.index)
        return self.index[ft]

    def section(self) -> bytes:
        return section(1, vec([functype(ft) for ft in self.index]))


def _forward_body(ft: FuncType, tail: bytes) -> bytes:
    code = b"".join(b"\x20" + uleb(i) for i in range(len(ft.params))) + tail + b"\x0b"
    body = b"\x00" + code  # no locals
    return uleb(len(body)) + body


def plt_module(stubs: Sequence[FuncType]) -> bytes:
    """A module exporting ``table`` (one funcref slot per stub) and functions
    ``0``..``n-1``; stub *i* tail-calls whatever is in slot *i*."""
    types = _Types()
    type_ids = [types.get(ft) for ft in stubs]
    n = len(stubs)
    funcs = section(3, vec([uleb(t) for t in type_ids]))
    table = section(4, vec([b"\x70\x01" + uleb(n) + uleb(n)]))
    exports = [name("table") + b"\x01\x00"]
    exports += [name(str(i)) + b"\x00" + uleb(i) for i in range(n)]
    bodies = [
        _forward_body(ft, b"\x41" + sleb(i) + b"\x13" + uleb(t) + b"\x00")
        for i, (ft, t) in enumerate(zip(stubs, type_ids, strict=True))
    ]
    return (
        HEADER
        + types.section()
        + funcs
        + table
        + section(7, vec(exports))
        + section(10, vec(bodies))
    )


def limits(minimum: int, maximum: int | None) -> bytes:
    if maximum is None:
        return b"\x00" + uleb(minimum)
    return b"\x01" + uleb(minimum) + uleb(maximum)


def wasi_shim_module(
    functions: Sequence[tuple[str, FuncType]], memory: tuple[int, int | None] | None = None
) -> bytes:
    """A module exporting ``memory`` and one wrapper per WASI preview1
    function (same name).

    With ``memory`` (min, max pages) the shim *defines* the program's memory,
    so a run instantiates it with one ``Linker.instantiate`` call that binds
    every WASI import natively; without, it imports ``env.memory`` (for a
    non-PIE main, which defines memory itself).
    """
    types = _Types()
    type_ids = [types.get(ft) for _, ft in functions]
    imports = [] if memory else [name("env") + name("memory") + b"\x02\x00\x00"]
    imports += [
        name("wasi_snapshot_preview1") + name(fn) + b"\x00" + uleb(t)
        for (fn, _), t in zip(functions, type_ids, strict=True)
    ]
    n = len(functions)
    funcs = section(3, vec([uleb(t) for t in type_ids]))
    mem = section(5, vec([limits(*memory)])) if memory else b""
    exports = [name("memory") + b"\x02\x00"]
    exports += [name(fn) + b"\x00" + uleb(n + i) for i, (fn, _) in enumerate(functions)]
    bodies = [_forward_body(ft, b"\x10" + uleb(i)) for i, (_, ft) in enumerate(functions)]
    return (
        HEADER
        + types.section()
        + section(2, vec(imports))
        + funcs
        + mem
        + section(7, vec(exports))
        + section(10, vec(bodies))
    )
