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

from .wasmbin import FuncType, signed_i32


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
    functions: Sequence[tuple[str, FuncType]],
    memory: tuple[int, int | None] | None = None,
) -> bytes:
    """A module exporting ``memory`` and one wrapper per WASI preview1
    function (same name).

    With ``memory`` (min, max pages) the shim *defines* the program's memory,
    so a run instantiates it with one ``Linker.instantiate`` call that binds
    every WASI import natively; without, it imports ``env.memory`` (for a
    non-PIE main, which defines memory itself). A memory image, if any, is
    appended (:func:`data_section`).
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


def data_section(data: Sequence[tuple[int, bytes]]) -> bytes:
    """Active data segments at constant addresses of memory 0 (empty: no
    section), to append to a generated module that defines the memory (its
    other sections all come before a data section).

    The module that defines a run's memory carries the libraries' data this
    way (the recipe's memory image): wasmtime then maps it copy-on-write
    from one image per compiled module, as ld.so maps a library's segments,
    instead of each library's instantiation copying its data into fresh
    pages.
    """
    if not data:
        return b""
    segments = [
        b"\x00\x41" + sleb(signed_i32(address)) + b"\x0b" + uleb(len(raw)) + raw
        for address, raw in data
    ]
    return section(11, vec(segments))


def _global_entry(mutable: bool, value: int) -> bytes:
    return b"\x7f" + (b"\x01" if mutable else b"\x00") + b"\x41" + sleb(signed_i32(value)) + b"\x0b"


def core_module(
    globals_: Sequence[tuple[bool, int]],
    tags: Sequence[FuncType],
    table: int | None,
    memory: tuple[int, int | None] | None,
) -> bytes:
    """The per-plan module holding a run's shared state, created in one
    instantiation instead of one host call per object.

    Exports ``g0``..``gN`` (i32 globals with their planned initial values:
    stack pointer, per-module bases, GOT entries), ``t0``.. (exception tags),
    and optionally ``table`` (funcref, ``table`` slots, growable) and
    ``memory`` (a memory image, if any, is appended: :func:`data_section`).
    """
    types = _Types()
    tag_types = [types.get(ft) for ft in tags]
    out = HEADER + (types.section() if tags else b"")
    exports: list[bytes] = []
    if table is not None:
        out += section(4, vec([b"\x70" + limits(table, None)]))
        exports.append(name("table") + b"\x01\x00")
    if memory is not None:
        out += section(5, vec([limits(*memory)]))
        exports.append(name("memory") + b"\x02\x00")
    if tags:
        out += section(13, vec([b"\x00" + uleb(t) for t in tag_types]))
        exports += [name(f"t{i}") + b"\x04" + uleb(i) for i in range(len(tags))]
    if globals_:
        out += section(6, vec([_global_entry(m, v) for m, v in globals_]))
        exports += [name(f"g{i}") + b"\x03" + uleb(i) for i in range(len(globals_))]
    return out + section(7, vec(exports))


def stubs_module(stubs: Sequence[tuple[FuncType, str]]) -> bytes:
    """Functions that trap with a message: stand-ins for missing symbols.

    Stub *i* (exported as ``i``) calls the host function ``wasmrun.trap``
    with the offset and length of its message, kept in the module's own
    exported memory ``msgs``; the host raises a trap carrying that text.
    """
    types = _Types()
    trap_type = types.get(FuncType((b"\x7f", b"\x7f"), ()))
    stub_types = [types.get(ft) for ft, _ in stubs]
    blob = bytearray()
    bodies = []
    for _, message in stubs:
        raw = message.encode("utf-8")
        off = len(blob)
        blob += raw
        code = b"\x41" + sleb(off) + b"\x41" + sleb(len(raw)) + b"\x10\x00" + b"\x00\x0b"
        body = b"\x00" + code
        bodies.append(uleb(len(body)) + body)
    pages = max(1, -(-len(blob) // 65536))
    imports = section(2, vec([name("wasmrun") + name("trap") + b"\x00" + uleb(trap_type)]))
    funcs = section(3, vec([uleb(t) for t in stub_types]))
    mem = section(5, vec([limits(pages, pages)]))
    exports = [name("msgs") + b"\x02\x00"]
    exports += [name(str(i)) + b"\x00" + uleb(i + 1) for i in range(len(stubs))]
    data = section(11, vec([b"\x00\x41\x00\x0b" + uleb(len(blob)) + bytes(blob)]))
    return (
        HEADER
        + types.section()
        + imports
        + funcs
        + mem
        + section(7, vec(exports))
        + section(10, vec(bodies))
        + data
    )


def filler_module(
    tables: int, functions: Sequence[FuncType], fills: Sequence[tuple[int, int, int]]
) -> bytes:
    """A module whose instantiation writes function references into tables.

    It imports ``tables`` funcref tables (``t``.``0``..) and the given
    functions (``f``.``0``..); each fill ``(table, slot, function)`` becomes
    an active element segment. This replaces one host ``Table.set`` per
    GOT.func or PLT slot with one instantiation.
    """
    types = _Types()
    type_ids = [types.get(ft) for ft in functions]
    imports = [name("t") + name(str(i)) + b"\x01\x70\x00\x00" for i in range(tables)]
    imports += [name("f") + name(str(i)) + b"\x00" + uleb(t) for i, t in enumerate(type_ids)]
    segs = [
        b"\x02" + uleb(table) + b"\x41" + sleb(slot) + b"\x0b" + b"\x00" + vec([uleb(func)])
        for table, slot, func in fills
    ]
    return (
        HEADER
        + (types.section() if functions else b"")
        + section(2, vec(imports))
        + section(9, vec(segs))
    )
