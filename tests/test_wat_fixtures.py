"""Linker features that C from our toolchain does not produce (TLS exports,
exception tags), exercised with small hand-written libraries."""

from __future__ import annotations

from pathlib import Path

from wasmrun.runtime import Runtime
from wat_support import THROWER, catcher, write_wat

TLS_LIB = """
(module
 (@dylink.0 (mem-info (memory 8 2)) (export-info "tv" tls))
 (import "env" "memory" (memory 0))
 (import "env" "__memory_base" (global $mb i32))
 (global $tls_base (mut i32) (i32.const 0))
 (global (export "__tls_size") i32 (i32.const 8))
 (global (export "__tls_align") i32 (i32.const 8))
 (global (export "tv") i32 (i32.const 4))
 (func (export "__wasm_init_tls") (param i32)
   (global.set $tls_base (local.get 0))
   (i32.store offset=4 (local.get 0) (i32.const 42)))
 (func (export "tls_block") (result i32) (global.get $tls_base))
)
"""

TLS_USER = """
(module
 (@dylink.0 (mem-info) (needed "libtls.so"))
 (import "env" "memory" (memory 0))
 (import "GOT.mem" "tv" (global $tv (mut i32)))
 (func (export "read_tv") (result i32) (i32.load (global.get $tv)))
 (func (export "tv_addr") (result i32) (global.get $tv))
)
"""

CATCHER = catcher('(needed "libthrow.so")')


def test_tls_exports_are_relative_to_the_tls_block(tmp_path: Path):
    write_wat(tmp_path, "libtls.so", TLS_LIB)
    user = write_wat(tmp_path, "libtlsuser.so", TLS_USER)
    rt = Runtime(library_path=[str(tmp_path)])
    lib = rt.open_library(str(user))
    (block,) = lib.call("tls_block")
    assert block != 0 and block % 8 == 0  # __wasm_init_tls got an aligned block
    assert lib.call("tv_addr") == [block + 4]  # GOT.mem = __tls_base + offset
    assert lib.call("read_tv") == [42]


def test_exception_tags_are_shared_between_modules(tmp_path: Path):
    write_wat(tmp_path, "libthrow.so", THROWER)
    catcher = write_wat(tmp_path, "libcatch.so", CATCHER)
    rt = Runtime(library_path=[str(tmp_path)])
    lib = rt.open_library(str(catcher))
    assert lib.call("catcher", [7]) == [7]
