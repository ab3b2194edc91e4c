"""Hand-written WebAssembly for tests that need what C from our toolchain
does not produce (exception tags, exact data segments...): the text
compiled and written where a test's runtime will look for it."""

from __future__ import annotations

from pathlib import Path

import wasmtime


def write_wat(dir_: Path, file: str, wat: str) -> Path:
    """``wat`` compiled to ``dir_/file``; the path."""
    path = dir_ / file
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


# A library that throws __cpp_exception (a tag it imports, shared by all).
THROWER = """
(module
 (@dylink.0 (mem-info))
 (import "env" "memory" (memory 0))
 (import "env" "__cpp_exception" (tag $e (param i32)))
 (func (export "thrower") (param i32) (throw $e (local.get 0)))
)
"""


def catcher(needed: str) -> str:
    """A library whose ``catcher`` catches what ``thrower`` throws; ``needed``
    is its dylink.0 needed list (e.g. ``(needed "libthrow.so")``, or empty)."""
    return f"""
(module
 (@dylink.0 (mem-info) {needed})
 (import "env" "memory" (memory 0))
 (import "env" "__cpp_exception" (tag $e (param i32)))
 (import "env" "thrower" (func $thrower (param i32)))
 (func (export "catcher") (param i32) (result i32)
   (block $h (result i32)
     (try_table (catch $e $h) (call $thrower (local.get 0)))
     (i32.const -1)))
)
"""
