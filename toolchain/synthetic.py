"""Modules made byte by byte, for tests and benchmarks that need a module
of a given cost rather than a given behaviour.

``straight_line_program(n)`` is a non-PIE program whose ``_start`` runs
``n`` times ``local.get; i32.const 1; i32.add; local.set``: valid, quick to
run, and as costly for Cranelift as it is long (7 MB, n = 1,000,000, took
~720 MiB and ~5 s to compile on a 2-core machine of 2026). Each ``n`` is a
different module, so a new ``n`` is one no cache holds yet (or a new
``tag``, for modules of one size).
"""

from __future__ import annotations

__all__ = ["straight_line_program"]


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _section(n: int, body: bytes) -> bytes:
    return bytes([n]) + _leb(len(body)) + body


def straight_line_program(instructions: int, tag: int | None = None) -> bytes:
    """The module's bytes (see the module docstring). A ``tag`` (0..2**64-1)
    goes into a custom section of fixed size: modules of one size that are
    each new to a cache."""
    body = bytes([0x20, 0, 0x41, 1, 0x6A, 0x21, 0]) * instructions
    code = bytes([1, 1, 0x7F]) + body + b"\x0b"  # one i32 local
    exports = bytes([2]) + _leb(6) + b"_start" + bytes([0, 0]) + _leb(6) + b"memory" + bytes([2, 0])
    return (
        b"\0asm\1\0\0\0"
        + _section(1, bytes([1, 0x60, 0, 0]))  # type 0: () -> ()
        + _section(3, bytes([1, 0]))  # function 0 of type 0
        + _section(5, bytes([1, 0, 1]))  # memory 0: one page
        + _section(7, exports)
        + _section(10, bytes([1]) + _leb(len(code)) + code)
        + (b"" if tag is None else _section(0, _leb(3) + b"tag" + tag.to_bytes(8, "little")))
    )
