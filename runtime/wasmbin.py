"""A small reader for the parts of a core WebAssembly binary the linker needs.

wasmtime compiles and validates modules but does not expose custom sections
(``dylink.0``), element segments, or global initialisers, and building its
Python import/export objects is slow for large libraries. This reader walks
the section headers and decodes only: types, imports, functions, tables,
memories, tags, globals (with constant initialisers), exports, start,
element segments, and where each data segment's bytes lie (its bytes are not
copied). The code section is skipped by length.

Every decoding failure raises :class:`BinaryFormatError` with the file name
and the byte offset, so malformed input never surfaces as a Python traceback.

The small records here are NamedTuples rather than attrs classes: the CLI
imports this module on every start, and generating attrs methods for a dozen
classes cost more start-up time than the records are worth.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import attrs

from .errors import BinaryFormatError

MAGIC: Final = b"\0asm"
CORE_VERSION: Final = b"\x01\x00\x00\x00"

# wasmtime (wasmparser) refuses modules with more data segments; checked
# before decoding them, so a hostile count cannot make the reader allocate.
MAX_DATA_SEGMENTS: Final = 100_000

# External kinds, as encoded in import and export entries.
KIND_FUNC: Final = 0
KIND_TABLE: Final = 1
KIND_MEMORY: Final = 2
KIND_GLOBAL: Final = 3
KIND_TAG: Final = 4
KIND_NAMES: Final = {0: "function", 1: "table", 2: "memory", 3: "global", 4: "tag"}


def signed_i32(v: int) -> int:
    """An i32 (an address, a slot) as the signed value that ``i32.const``
    encodes and wasmtime's ``Val.i32`` takes."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


_VALTYPE_NAMES: Final = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
    0x69: "exnref",
}


class FuncType(NamedTuple):
    """A function signature; value types are kept as their encoded bytes.

    Keeping the encoding makes comparison exact and lets the code generator
    re-emit the signature without a second representation.
    """

    params: tuple[bytes, ...]
    results: tuple[bytes, ...]

    def __str__(self) -> str:
        p = " ".join(valtype_name(t) for t in self.params)
        r = " ".join(valtype_name(t) for t in self.results)
        return f"({p}) -> ({r})"


def valtype_name(encoded: bytes) -> str:
    """A readable name for an encoded value type (for error messages)."""
    if len(encoded) == 1 and encoded[0] in _VALTYPE_NAMES:
        return _VALTYPE_NAMES[encoded[0]]
    return "ref" if encoded[:1] == b"\x64" else "ref null"


class Limits(NamedTuple):
    minimum: int
    maximum: int | None
    shared: bool = False
    is64: bool = False


class GlobalType(NamedTuple):
    valtype: bytes
    mutable: bool


class TableType(NamedTuple):
    reftype: bytes
    limits: Limits


class Import(NamedTuple):
    """One import entry. ``desc`` depends on ``kind``: FuncType (func and tag),
    TableType, Limits (memory) or GlobalType."""

    module: str
    name: str
    kind: int
    desc: FuncType | TableType | Limits | GlobalType
    offset: int


class Export:
    """One export entry.

    A slotted class rather than a NamedTuple: its ``index`` field would
    shadow ``tuple.index`` (a type error, and a trap for readers), and a
    plain ``__init__`` keeps decoding libc.so's ~1,700 exports as cheap as
    before (a frozen attrs class pays an ``object.__setattr__`` per field).
    Treat instances as immutable.
    """

    __slots__ = ("name", "kind", "index", "position")

    def __init__(self, name: str, kind: int, index: int, position: int = 0) -> None:
        self.name = name
        self.kind = kind
        self.index = index  # index in the module's index space of its kind
        self.position = position  # position in the export section (wasmtime's export_nth)

    def __repr__(self) -> str:
        return f"Export({self.name!r}, {self.kind}, {self.index}, {self.position})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Export):
            return NotImplemented
        return (self.name, self.kind, self.index, self.position) == (
            other.name,
            other.kind,
            other.index,
            other.position,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.index, self.position))


class ConstExpr(NamedTuple):
    """A constant expression as a list of (opcode, immediate) pairs.

    Only what dynamic-linking modules use is interpreted (``i32.const``,
    ``global.get`` and extended-const ``i32.add``/``i32.sub``/``i32.mul``);
    anything else is kept opaque.
    """

    ops: tuple[tuple[int, int], ...]

    def eval_i32(self, globals_: dict[int, int] | None = None) -> int | None:
        """Evaluate to an i32, given values of referenced globals; None if the
        expression is not a plain i32 computation or refers to an unknown
        global."""
        stack: list[int] = []
        for op, imm in self.ops:
            if op == 0x41:
                stack.append(imm)
            elif op == 0x23:
                if globals_ is None or imm not in globals_:
                    return None
                stack.append(globals_[imm])
            elif op in (0x6A, 0x6B, 0x6C) and len(stack) >= 2:
                b, a = stack.pop(), stack.pop()
                r = a + b if op == 0x6A else a - b if op == 0x6B else a * b
                stack.append(r & 0xFFFFFFFF)
            else:
                return None
        return stack[0] & 0xFFFFFFFF if len(stack) == 1 else None

    def global_refs(self) -> list[int]:
        return [imm for op, imm in self.ops if op == 0x23]


class Global(NamedTuple):
    type: GlobalType
    init: ConstExpr


class ElemSegment(NamedTuple):
    """An active element segment: where it lands and which functions it holds
    (``None`` for entries that are not ``ref.func``)."""

    table: int
    offset: ConstExpr
    funcs: tuple[int | None, ...]


class DataSegment(NamedTuple):
    """A data segment: where its bytes lie in the file, and for an active
    one, which memory and the offset expression. ``entry``, ``header_end``
    and ``payload`` are file offsets: the segment's encoding is
    ``file[entry:header_end]`` (flags, memory, offset), then the size, then
    ``size`` bytes at ``payload``."""

    active: bool
    memory: int
    offset: ConstExpr | None
    entry: int
    header_end: int  # end of flags, memory index and offset expression
    payload: int
    size: int


class CustomSection(NamedTuple):
    name: str
    offset: int  # offset of the payload in the file
    payload: bytes
    first: bool  # it is the first section of the module


@attrs.define
class ModuleInfo:
    """What the linker knows about one module, decoded from its bytes."""

    types: list[FuncType | None] = attrs.Factory(list)
    imports: list[Import] = attrs.Factory(list)
    func_types: list[int] = attrs.Factory(list)  # defined functions' type indices
    tables: list[TableType] = attrs.Factory(list)
    memories: list[Limits] = attrs.Factory(list)
    tags: list[int] = attrs.Factory(list)
    globals: list[Global] = attrs.Factory(list)
    exports: dict[str, Export] = attrs.Factory(dict)  # in export-section order
    start: int | None = None
    elements: list[ElemSegment] = attrs.Factory(list)
    customs: list[CustomSection] = attrs.Factory(list)
    data: list[DataSegment] = attrs.Factory(list)
    data_section: tuple[int, int] | None = None  # file offsets: header, end
    imported_funcs: int = 0
    imported_globals: int = 0

    def func_type(self, funcidx: int) -> FuncType | None:
        """Signature of a function in the module's function index space."""
        if funcidx < self.imported_funcs:
            n = 0
            for imp in self.imports:
                if imp.kind == KIND_FUNC:
                    if n == funcidx:
                        desc = imp.desc
                        return desc if isinstance(desc, FuncType) else None
                    n += 1
            return None
        local = funcidx - self.imported_funcs
        if local >= len(self.func_types):
            return None
        ti = self.func_types[local]
        return self.types[ti] if ti < len(self.types) else None

    def global_init(self, globalidx: int) -> ConstExpr | None:
        local = globalidx - self.imported_globals
        if 0 <= local < len(self.globals):
            return self.globals[local].init
        return None

    def global_type(self, globalidx: int) -> GlobalType | None:
        if globalidx < self.imported_globals:
            n = 0
            for imp in self.imports:
                if imp.kind == KIND_GLOBAL:
                    if n == globalidx:
                        desc = imp.desc
                        return desc if isinstance(desc, GlobalType) else None
                    n += 1
            return None
        local = globalidx - self.imported_globals
        return self.globals[local].type if local < len(self.globals) else None

    def imported_global_names(self) -> dict[int, tuple[str, str]]:
        out: dict[int, tuple[str, str]] = {}
        for imp in self.imports:
            if imp.kind == KIND_GLOBAL:
                out[len(out)] = (imp.module, imp.name)
        return out

    def custom(self, name: str) -> CustomSection | None:
        for c in self.customs:
            if c.name == name:
                return c
        return None


class Reader:
    """Bounds-checked LEB128 reader over a slice of a file's bytes."""

    __slots__ = ("data", "pos", "end", "file", "origin")

    def __init__(
        self,
        data: bytes | memoryview,
        file: str,
        pos: int = 0,
        end: int | None = None,
        origin: int = 0,
    ):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.file = file
        self.origin = origin  # file offset of data[0], for error messages

    def fail(self, what: str, at: int | None = None) -> BinaryFormatError:
        return BinaryFormatError(self.file, self.origin + (self.pos if at is None else at), what)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def u8(self) -> int:
        if self.pos >= self.end:
            raise self.fail("unexpected end of data")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"unexpected end of data (need {n} bytes)")
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b

    def _leb(self, bits: int) -> tuple[int, int, int]:
        """The digits of a LEB128 number: (value, bits read, last byte)."""
        start = self.pos
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result, shift, b
            if shift >= bits + 7:
                raise self.fail("integer representation too long", start)

    def uleb(self, bits: int = 32) -> int:
        start = self.pos
        result, _, _ = self._leb(bits)
        if result >> bits:
            raise self.fail("integer too large", start)
        return result

    def sleb(self, bits: int = 32) -> int:
        result, shift, last = self._leb(bits)
        if last & 0x40:
            result -= 1 << shift
        return result

    def name(self) -> str:
        n = self.uleb()
        start = self.pos
        raw = self.bytes(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("name is not valid UTF-8", start) from None

    def count(self, min_entry_size: int = 1) -> int:
        """A vector length, checked against the bytes left so that absurd
        counts fail immediately instead of looping."""
        start = self.pos
        n = self.uleb()
        if n * min_entry_size > self.end - self.pos:
            raise self.fail(f"count {n} exceeds the remaining {self.end - self.pos} bytes", start)
        return n


def _heaptype(r: Reader) -> None:
    r.sleb(33)


def _valtype(r: Reader) -> bytes:
    start = r.pos
    b = r.u8()
    if b in _VALTYPE_NAMES:
        return bytes([b])
    if b in (0x63, 0x64):
        _heaptype(r)
        return bytes(r.data[start : r.pos])
    # Abbreviated reference types (GC proposal): single-byte heap types.
    if 0x65 <= b <= 0x74:
        return bytes([b])
    raise r.fail(f"unknown value type {b:#x}", start)


def _functype_body(r: Reader) -> FuncType:
    params = tuple(_valtype(r) for _ in range(r.count()))
    results = tuple(_valtype(r) for _ in range(r.count()))
    return FuncType(params, results)


def _comptype(r: Reader) -> FuncType | None:
    form = r.u8()
    if form == 0x60:
        return _functype_body(r)
    if form == 0x5F:  # struct
        for _ in range(r.count()):
            _storagetype(r)
            r.u8()
        return None
    if form == 0x5E:  # array
        _storagetype(r)
        r.u8()
        return None
    raise r.fail(f"unknown type form {form:#x}", r.pos - 1)


def _storagetype(r: Reader) -> None:
    if r.data[r.pos] in (0x78, 0x77) if r.pos < r.end else False:
        r.u8()
    else:
        _valtype(r)


def _subtype(r: Reader, out: list[FuncType | None]) -> None:
    b = r.data[r.pos] if r.pos < r.end else -1
    if b in (0x50, 0x4F):
        r.u8()
        for _ in range(r.count()):
            r.uleb()
    out.append(_comptype(r))


def _limits(r: Reader) -> Limits:
    start = r.pos
    flags = r.u8()
    if flags > 0x07:
        raise r.fail(f"invalid limits flags {flags:#x}", start)
    is64 = bool(flags & 4)
    bits = 64 if is64 else 32
    minimum = r.uleb(bits)
    maximum = r.uleb(bits) if flags & 1 else None
    return Limits(minimum, maximum, bool(flags & 2), is64)


def _tabletype(r: Reader) -> TableType:
    reftype = _valtype(r)
    return TableType(reftype, _limits(r))


def _globaltype(r: Reader) -> GlobalType:
    vt = _valtype(r)
    mut = r.u8()
    if mut > 1:
        raise r.fail(f"invalid global mutability {mut}", r.pos - 1)
    return GlobalType(vt, bool(mut))


_GC_CONST_IMMEDIATES: Final = {0: 1, 1: 1, 6: 1, 7: 1, 8: 2, 26: 0, 27: 0, 28: 0}


def const_expr(r: Reader) -> ConstExpr:
    """Decode a constant expression up to its ``end`` opcode."""
    ops: list[tuple[int, int]] = []
    while True:
        start = r.pos
        op = r.u8()
        if op == 0x0B:
            return ConstExpr(tuple(ops))
        if op == 0x41:
            ops.append((op, r.sleb(32)))
        elif op == 0x42:
            ops.append((op, r.sleb(64)))
        elif op == 0x43:
            r.bytes(4)
            ops.append((op, 0))
        elif op == 0x44:
            r.bytes(8)
            ops.append((op, 0))
        elif op in (0x23, 0xD2):
            ops.append((op, r.uleb()))
        elif op == 0xD0:
            _heaptype(r)
            ops.append((op, 0))
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):
            ops.append((op, 0))
        elif op == 0xFD:
            sub = r.uleb()
            if sub != 12:
                raise r.fail(f"unsupported SIMD opcode {sub} in constant expression", start)
            r.bytes(16)
            ops.append((op, 0))
        elif op == 0xFB:
            sub = r.uleb()
            if sub not in _GC_CONST_IMMEDIATES:
                raise r.fail(f"unsupported GC opcode {sub} in constant expression", start)
            for _ in range(_GC_CONST_IMMEDIATES[sub]):
                r.uleb()
            ops.append((op, 0))
        else:
            raise r.fail(f"unsupported opcode {op:#x} in constant expression", start)


def _elem_segment(r: Reader) -> ElemSegment | None:
    start = r.pos
    flags = r.uleb()
    if flags > 7:
        raise r.fail(f"invalid element segment flags {flags}", start)
    passive_or_declarative = bool(flags & 1)
    explicit_table = bool(flags & 2)
    uses_exprs = bool(flags & 4)
    table = 0
    offset = None
    if not passive_or_declarative:
        if explicit_table:
            table = r.uleb()
        offset = const_expr(r)
    if passive_or_declarative or explicit_table:
        if uses_exprs:
            _valtype(r)
        else:
            kind = r.u8()
            if kind != 0:
                raise r.fail(f"invalid element kind {kind}", r.pos - 1)
    funcs: list[int | None] = []
    for _ in range(r.count()):
        if uses_exprs:
            expr = const_expr(r)
            funcs.append(expr.ops[0][1] if len(expr.ops) == 1 and expr.ops[0][0] == 0xD2 else None)
        else:
            funcs.append(r.uleb())
    if offset is None:
        return None
    return ElemSegment(table, offset, tuple(funcs))


def _data_segment(r: Reader) -> DataSegment:
    entry = r.pos
    flags = r.uleb()
    if flags > 2:
        raise r.fail(f"invalid data segment flags {flags}", entry)
    memory = 0
    offset = None
    if flags != 1:
        if flags == 2:
            memory = r.uleb()
        offset = const_expr(r)
    header_end = r.pos
    size = r.uleb()
    payload = r.pos
    if size > r.end - payload:
        raise r.fail(f"data segment of {size} bytes runs past the end of its section", entry)
    r.pos = payload + size
    return DataSegment(flags != 1, memory, offset, entry, header_end, payload, size)


def _import_entry(r: Reader, info: ModuleInfo) -> Import:
    start = r.pos
    module = r.name()
    name = r.name()
    kind = r.u8()
    desc: FuncType | TableType | Limits | GlobalType
    if kind == KIND_FUNC:
        ti = r.uleb()
        ft = info.types[ti] if ti < len(info.types) else None
        if ft is None:
            raise r.fail(f"import {module}.{name} uses invalid type index {ti}", start)
        desc = ft
        info.imported_funcs += 1
    elif kind == KIND_TABLE:
        desc = _tabletype(r)
    elif kind == KIND_MEMORY:
        desc = _limits(r)
    elif kind == KIND_GLOBAL:
        desc = _globaltype(r)
        info.imported_globals += 1
    elif kind == KIND_TAG:
        r.u8()
        ti = r.uleb()
        ft = info.types[ti] if ti < len(info.types) else None
        if ft is None:
            raise r.fail(f"tag import {module}.{name} uses invalid type index {ti}", start)
        desc = ft
    else:
        raise r.fail(f"invalid import kind {kind}", r.pos - 1)
    return Import(module, name, kind, desc, start)


def _section(r: Reader, sid: int, info: ModuleInfo) -> None:
    if sid == 1:
        for _ in range(r.count()):
            if r.pos < r.end and r.data[r.pos] == 0x4E:  # rec group
                r.u8()
                for _ in range(r.count()):
                    _subtype(r, info.types)
            else:
                _subtype(r, info.types)
    elif sid == 2:
        for _ in range(r.count(3)):
            info.imports.append(_import_entry(r, info))
    elif sid == 3:
        info.func_types = [r.uleb() for _ in range(r.count())]
    elif sid == 4:
        for _ in range(r.count(2)):
            if r.pos < r.end and r.data[r.pos] == 0x40:  # table with initialiser
                r.u8()
                r.u8()
                tt = _tabletype(r)
                const_expr(r)
            else:
                tt = _tabletype(r)
            info.tables.append(tt)
    elif sid == 5:
        info.memories = [_limits(r) for _ in range(r.count(2))]
    elif sid == 13:
        for _ in range(r.count(2)):
            r.u8()
            info.tags.append(r.uleb())
    elif sid == 6:
        for _ in range(r.count(3)):
            gt = _globaltype(r)
            info.globals.append(Global(gt, const_expr(r)))
    elif sid == 7:
        for _ in range(r.count(3)):
            start = r.pos
            name = r.name()
            kind = r.u8()
            if kind > 4:
                raise r.fail(f"invalid export kind {kind}", r.pos - 1)
            index = r.uleb()
            if name in info.exports:
                raise r.fail(f"duplicate export name {name!r}", start)
            info.exports[name] = Export(name, kind, index, len(info.exports))
    elif sid == 8:
        info.start = r.uleb()
    elif sid == 9:
        for _ in range(r.count()):
            seg = _elem_segment(r)
            if seg is not None:
                info.elements.append(seg)
    elif sid == 11:
        start = r.pos
        n = r.count(2)
        if n > MAX_DATA_SEGMENTS:
            raise r.fail(
                f"{n} data segments, more than WebAssembly implementations accept "
                f"({MAX_DATA_SEGMENTS})",
                start,
            )
        info.data = [_data_segment(r) for _ in range(n)]
    else:
        return
    if r.pos != r.end:
        raise r.fail(f"section {sid} has {r.end - r.pos} unexpected trailing bytes")


# Sections the linker has no use for: skipped by length.
_SKIPPED: Final = frozenset({10, 12})


def parse_module(data: bytes, file: str) -> ModuleInfo:
    """Decode what the linker needs from a core module's bytes.

    Raises BinaryFormatError naming ``file`` and the offset on malformed data,
    and a specific message for files that are not WebAssembly at all.
    """
    if len(data) < 8 or data[:4] != MAGIC:
        raise BinaryFormatError(file, 0, "not a WebAssembly module (bad magic number)")
    if data[4:8] != CORE_VERSION:
        if data[6:8] == b"\x01\x00":
            raise BinaryFormatError(
                file,
                4,
                "is a WebAssembly component, not a core module; components are not supported",
            )
        raise BinaryFormatError(file, 4, f"unsupported WebAssembly version {data[4:8].hex()}")
    mv = memoryview(data)
    r = Reader(mv, file, 8)
    info = ModuleInfo()
    first = True
    where: dict[int, int] = {}  # section id -> offset of its header
    while not r.at_end():
        header = r.pos
        sid = r.u8()
        size = r.uleb()
        body = r.pos
        if body + size > len(data):
            raise BinaryFormatError(
                file, header, f"section {sid} of {size} bytes runs past the end of the file"
            )
        if sid != 0:
            if sid in where:
                raise BinaryFormatError(file, header, f"duplicate section {sid}")
            where[sid] = header
        if sid == 0:
            sub = Reader(mv, file, body, body + size)
            name = sub.name()
            info.customs.append(
                CustomSection(name, sub.pos, bytes(mv[sub.pos : body + size]), first)
            )
        elif sid not in _SKIPPED:
            if sid > 13:
                raise BinaryFormatError(file, header, f"unknown section id {sid}")
            _section(Reader(mv, file, body, body + size), sid, info)
            if sid == 11:
                info.data_section = (header, body + size)
        r.pos = body + size
        first = False
    _check_indices(info, file, where)
    return info


def _check_indices(info: ModuleInfo, file: str, where: dict[int, int]) -> None:
    """The indices the linker follows point at something of the right kind.

    wasmtime checks all of this when it compiles, but the planner reads these
    tables first (and ``wasmrun ldd`` never compiles): a type index naming a
    non-function type, or an export past the end of its index space, would
    otherwise surface as a Python exception deep in the linker.
    """
    for i, ti in enumerate(info.func_types):
        if ti >= len(info.types) or info.types[ti] is None:
            raise BinaryFormatError(
                file, where.get(3, 0), f"function {i} uses invalid type index {ti}"
            )
    for ti in info.tags:
        if ti >= len(info.types) or info.types[ti] is None:
            raise BinaryFormatError(file, where.get(13, 0), f"tag uses invalid type index {ti}")
    imported = [0] * 5
    for imp in info.imports:
        imported[imp.kind] += 1
    counts = {
        KIND_FUNC: imported[KIND_FUNC] + len(info.func_types),
        KIND_TABLE: imported[KIND_TABLE] + len(info.tables),
        KIND_MEMORY: imported[KIND_MEMORY] + len(info.memories),
        KIND_GLOBAL: imported[KIND_GLOBAL] + len(info.globals),
        KIND_TAG: imported[KIND_TAG] + len(info.tags),
    }
    for exp in info.exports.values():
        if exp.index >= counts[exp.kind]:
            raise BinaryFormatError(
                file,
                where.get(7, 0),
                f"export {exp.name!r} refers to {KIND_NAMES[exp.kind]} {exp.index}, but the "
                f"module has {counts[exp.kind]}",
            )
    if info.start is not None and info.start >= counts[KIND_FUNC]:
        raise BinaryFormatError(
            file, where.get(8, 0), f"start function {info.start} does not exist"
        )
