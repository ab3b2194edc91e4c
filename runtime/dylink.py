"""Decoding of the ``dylink.0`` custom section (and the legacy ``dylink``).

The section tells the loader how much memory and table space a module needs,
which libraries it needs, extra facts about its exports (TLS) and imports
(weak binding), and where to search for its dependencies. See the
WebAssembly tool-conventions document *DynamicLinking.md*.
"""

from __future__ import annotations

from typing import Final

import attrs

from .wasmbin import CustomSection, Reader

WASM_DYLINK_MEM_INFO: Final = 1
WASM_DYLINK_NEEDED: Final = 2
WASM_DYLINK_EXPORT_INFO: Final = 3
WASM_DYLINK_IMPORT_INFO: Final = 4
WASM_DYLINK_RUNTIME_PATH: Final = 5

# Symbol flags (shared with the object-file linking section).
SYMBOL_BINDING_WEAK: Final = 0x1
SYMBOL_BINDING_LOCAL: Final = 0x2
SYMBOL_VISIBILITY_HIDDEN: Final = 0x4
SYMBOL_UNDEFINED: Final = 0x10
SYMBOL_EXPORTED: Final = 0x20
SYMBOL_EXPLICIT_NAME: Final = 0x40
SYMBOL_NO_STRIP: Final = 0x80
SYMBOL_TLS: Final = 0x100
SYMBOL_ABSOLUTE: Final = 0x200

# Alignments are encoded as powers of two; anything past 2**31 is nonsense.
_MAX_ALIGN_LOG2: Final = 31


@attrs.frozen
class DylinkInfo:
    """The decoded dynamic-linking metadata of one module."""

    mem_size: int = 0
    mem_align: int = 0  # log2 of the byte alignment
    table_size: int = 0
    table_align: int = 0  # log2 of the element alignment
    needed: tuple[str, ...] = ()
    export_flags: dict[str, int] = attrs.field(factory=dict)
    import_flags: dict[tuple[str, str], int] = attrs.field(factory=dict)
    runtime_path: tuple[str, ...] = ()
    legacy: bool = False

    def is_weak_import(self, module: str, name: str) -> bool:
        """Whether an import is weakly bound. LLVM records the symbol under
        ``env`` even when the import itself is ``GOT.mem``/``GOT.func``."""
        flags = self.import_flags.get((module, name), 0) | self.import_flags.get(("env", name), 0)
        return bool(flags & SYMBOL_BINDING_WEAK)

    def is_tls_export(self, name: str) -> bool:
        return bool(self.export_flags.get(name, 0) & SYMBOL_TLS)


def _mem_info(r: Reader) -> tuple[int, int, int, int]:
    start = r.pos
    mem_size = r.uleb()
    mem_align = r.uleb()
    table_size = r.uleb()
    table_align = r.uleb()
    if mem_align > _MAX_ALIGN_LOG2 or table_align > _MAX_ALIGN_LOG2:
        raise r.fail(
            f"dylink.0: invalid alignment 2**{max(mem_align, table_align)} in MEM_INFO", start
        )
    return mem_size, mem_align, table_size, table_align


def parse_dylink0(section: CustomSection, file: str) -> DylinkInfo:
    """Decode a ``dylink.0`` payload; unknown subsections are skipped by length.

    Each subsection must be consumed exactly; a truncated or overlong one is an
    error naming the byte offset in ``file``.
    """
    r = Reader(section.payload, file, origin=section.offset)
    mem = (0, 0, 0, 0)
    needed: list[str] = []
    exports: dict[str, int] = {}
    imports: dict[tuple[str, str], int] = {}
    rpath: list[str] = []
    seen: set[int] = set()
    while not r.at_end():
        header = r.pos
        kind = r.u8()
        size = r.uleb()
        if r.pos + size > r.end:
            raise r.fail(
                f"dylink.0: subsection {kind} of {size} bytes runs past the end of the section",
                header,
            )
        sub = Reader(r.data, file, r.pos, r.pos + size, origin=r.origin)
        r.pos += size
        if kind in seen and kind in (1, 2, 3, 4, 5):
            raise sub.fail(f"dylink.0: duplicate subsection {kind}", header)
        seen.add(kind)
        if kind == WASM_DYLINK_MEM_INFO:
            mem = _mem_info(sub)
        elif kind == WASM_DYLINK_NEEDED:
            needed = [sub.name() for _ in range(sub.count())]
        elif kind == WASM_DYLINK_EXPORT_INFO:
            for _ in range(sub.count(2)):
                name = sub.name()
                exports[name] = sub.uleb()
        elif kind == WASM_DYLINK_IMPORT_INFO:
            for _ in range(sub.count(3)):
                module = sub.name()
                field = sub.name()
                imports[(module, field)] = sub.uleb()
        elif kind == WASM_DYLINK_RUNTIME_PATH:
            rpath = [sub.name() for _ in range(sub.count())]
        else:
            continue  # unknown subsection: skipped by its length
        if not sub.at_end():
            raise sub.fail(
                f"dylink.0: subsection {kind} has {sub.end - sub.pos} bytes of trailing data"
            )
    return DylinkInfo(
        mem_size=mem[0],
        mem_align=mem[1],
        table_size=mem[2],
        table_align=mem[3],
        needed=tuple(needed),
        export_flags=exports,
        import_flags=imports,
        runtime_path=tuple(rpath),
    )


def parse_legacy_dylink(section: CustomSection, file: str) -> DylinkInfo:
    """Decode the pre-2021 ``dylink`` section: MEM_INFO fields then NEEDED."""
    r = Reader(section.payload, file, origin=section.offset)
    mem_size, mem_align, table_size, table_align = _mem_info(r)
    needed = tuple(r.name() for _ in range(r.count()))
    if not r.at_end():
        raise r.fail(f"dylink: {r.end - r.pos} bytes of trailing data")
    return DylinkInfo(
        mem_size=mem_size,
        mem_align=mem_align,
        table_size=table_size,
        table_align=table_align,
        needed=needed,
        legacy=True,
    )
