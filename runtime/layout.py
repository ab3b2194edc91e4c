"""Memory and table layout: where each module's data, TLS block and table
slots go.

One set of placement rules for both ways a library arrives: the planner
lays out the load-time modules one after another above the stack, and
guest ``dlopen`` places a library in memory taken by growing the memory (or
a freed region). Both place a module's MEM_INFO region, its TLS block and
its table region with :func:`place_memory` and :func:`place_table`, and both
answer the layout symbols (``__heap_base``, ``__stack_low``, …) from one
:class:`LayoutSymbols`.

The records are NamedTuples rather than attrs classes: every process that
links imports this module, and generating attrs methods costs start-up time
(see wasmbin.py).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .module import ModuleImage

PAGE: Final = 65536
# Bytes left unused at address 0, so that writes through small null-based
# pointers do not land in the stack or in data.
NULL_GUARD: Final = 1024
# Names the linker provides itself; never looked up in the symbol scope.
LAYOUT_SYMBOLS: Final = frozenset(
    {"__heap_base", "__heap_end", "__stack_low", "__stack_high", "__dso_handle"}
)


def align(x: int, log2: int) -> int:
    """``x`` rounded up to a multiple of ``2**log2`` (dylink.0 alignments)."""
    a = 1 << log2
    return (x + a - 1) & ~(a - 1)


def align_to(x: int, alignment: int) -> int:
    """``x`` rounded up to a multiple of ``alignment`` bytes (``__tls_align``
    need not be a power of two as far as the module says)."""
    return (x + alignment - 1) // alignment * alignment


class TlsBlock(NamedTuple):
    """A module's thread-local block (it exports ``__wasm_init_tls``)."""

    size: int
    align: int


def tls_block(image: ModuleImage) -> TlsBlock | None:
    """The TLS block a module needs, from its ``__tls_size``/``__tls_align``."""
    if "__wasm_init_tls" not in image.info.exports:
        return None
    size = image.export_value("__tls_size", 0, 0) or 0
    alignment = image.export_value("__tls_align", 0, 0) or 1
    return TlsBlock(size, alignment)


class MemoryPlacement(NamedTuple):
    """Where one module's memory went: its ``__memory_base``, its TLS block
    (None without one), and the first byte after both."""

    memory_base: int
    tls_base: int | None
    end: int


def place_memory(image: ModuleImage, addr: int) -> MemoryPlacement:
    """Place a library's MEM_INFO region at the first suitably aligned
    address from ``addr``, then its TLS block right after it."""
    dl = image.dylink
    assert dl is not None, "only modules with dylink.0 are placed"
    base = align(addr, dl.mem_align)
    end = base + dl.mem_size
    tls = tls_block(image)
    tls_base = None
    if tls is not None:
        tls_base = align_to(end, tls.align)
        end = tls_base + tls.size
    return MemoryPlacement(base, tls_base, end)


def place_table(image: ModuleImage, first_free: int) -> int:
    """A library's ``__table_base``: the first aligned slot from ``first_free``."""
    dl = image.dylink
    assert dl is not None, "only modules with dylink.0 are placed"
    return align(first_free, dl.table_align)


class LayoutSymbols(NamedTuple):
    """The values the linker itself gives ``__heap_base``, ``__heap_end``,
    ``__stack_low``, ``__stack_high`` (one per run) and ``__dso_handle``
    (each module's ``__memory_base``), as ``env.*`` or ``GOT.mem.*``."""

    stack_low: int
    stack_high: int
    heap_base: int
    heap_end: int

    def value(self, name: str, dso_handle: int) -> int:
        """The value of layout symbol ``name`` for a module whose
        ``__dso_handle`` is ``dso_handle``."""
        if name == "__dso_handle":
            return dso_handle
        return {
            "__heap_base": self.heap_base,
            "__heap_end": self.heap_end,
            "__stack_low": self.stack_low,
            "__stack_high": self.stack_high,
        }[name]


class Layout(NamedTuple):
    """The load-time layout of a program: per module (in load order) its
    memory, table and TLS bases; the stack and heap; the initial and the
    largest memory in pages; the first table slot after every module's
    table region (GOT.func slots are assigned from there)."""

    mem_bases: tuple[int, ...]
    table_bases: tuple[int, ...]
    tls_bases: tuple[int | None, ...]
    symbols: LayoutSymbols
    pages: int
    max_pages: int
    table_end: int
