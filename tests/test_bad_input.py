"""Bad input: one clear line naming the file and symbol, exit 127, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from wasmrun.runtime import BinaryFormatError, LimitError, LoadError, Runtime, SymbolError
from wasmrun.runtime.codegen import name, section, uleb

LOAD_ERROR = 127


def assert_one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("wasmrun: ")
    return lines[0]


def test_missing_library(cli, corpus: Path):
    p = cli("run", "-L", str(corpus), str(corpus / "needsgone.wasm"))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line.startswith(
        "wasmrun: error while loading shared libraries: libgone.so: "
        "cannot open shared object file: No such file or directory (needed by needsgone.wasm"
    )


def test_missing_non_weak_data_symbol(cli, corpus: Path):
    p = cli("run", "-L", str(corpus / "v2"), "-L", str(corpus), str(corpus / "vanishdata.wasm"))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line == (
        "wasmrun: symbol lookup error: vanishdata.wasm: undefined symbol: vanished_data (data)"
    )


def test_missing_function_is_lazy_by_default(cli, corpus: Path):
    v2 = ["-L", str(corpus / "v2"), "-L", str(corpus)]
    p = cli("run", *v2, str(corpus / "vanishfn.wasm"))
    assert (p.returncode, p.stdout) == (0, "still_here=33\n"), p.stderr  # never called
    p = cli("run", *v2, str(corpus / "vanishfn.wasm"), "call-it")
    assert p.returncode == 134
    assert p.stdout == "still_here=33\n"
    assert "Traceback" not in p.stderr
    assert p.stderr.splitlines()[0] == (
        "wasm trap: symbol lookup error: vanishfn.wasm: undefined symbol: vanished_fn "
        "(called lazily)"
    )


def test_missing_function_with_bind_now_fails_at_load(cli, corpus: Path):
    p = cli(
        "run",
        "--bind-now",
        "-L",
        str(corpus / "v2"),
        "-L",
        str(corpus),
        str(corpus / "vanishfn.wasm"),
    )
    assert p.returncode == LOAD_ERROR
    assert p.stdout == ""  # nothing ran
    line = assert_one_clean_line(p.stderr)
    assert line == (
        "wasmrun: symbol lookup error: vanishfn.wasm: undefined symbol: vanished_fn (function)"
    )


def test_function_type_mismatch(cli, corpus: Path):
    p = cli("run", "-L", str(corpus / "v2"), "-L", str(corpus), str(corpus / "sigmain.wasm"))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line == (
        "wasmrun: sigmain.wasm: symbol sigfn has type (i32) -> (i32) but libvanish.so "
        "defines it as (i32 i32) -> (i64)"
    )


def test_not_wasm(cli, tmp_path: Path):
    bogus = tmp_path / "prog.wasm"
    bogus.write_text("#!/bin/sh\necho hi\n")
    p = cli("run", str(bogus))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert (
        line
        == f"wasmrun: {bogus}: not a WebAssembly module (bad magic number) (at byte offset 0x0)"
    )


def test_program_file_missing(cli, tmp_path: Path):
    p = cli("run", str(tmp_path / "nope.wasm"))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line == f"wasmrun: {tmp_path / 'nope.wasm'}: cannot open file: No such file or directory"


def _dylink_offset(data: bytes) -> tuple[int, int]:
    """(offset of the dylink.0 payload, its length) in a module built by wasm-ld."""
    assert data[8] == 0  # first section is custom
    size_pos = 9
    size, n = 0, 0
    while True:
        b = data[size_pos + n]
        size |= (b & 0x7F) << (7 * n)
        n += 1
        if not b & 0x80:
            break
    body = size_pos + n
    name_len = data[body]
    assert data[body + 1 : body + 1 + name_len] == b"dylink.0"
    return body + 1 + name_len, size - 1 - name_len


def test_malformed_dylink_subsection_length(cli, corpus: Path, tmp_path: Path):
    data = bytearray((corpus / "libbase.so").read_bytes())
    payload, _ = _dylink_offset(bytes(data))
    assert data[payload] == 1  # MEM_INFO
    data[payload + 1] = 0x7F  # its length now runs past the section
    shutil.copy(corpus / "libc.so", tmp_path / "libc.so")
    (tmp_path / "libbase.so").write_bytes(bytes(data))
    p = cli("run", "--preload", "libbase.so", "-L", str(tmp_path), str(corpus / "hello.wasm"))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line == (
        f"wasmrun: {tmp_path / 'libbase.so'}: dylink.0: subsection 1 of 127 bytes runs past "
        f"the end of the section (at byte offset {payload:#x})"
    )


def test_truncated_file(tmp_path: Path, corpus: Path):
    data = (corpus / "libbase.so").read_bytes()
    bad = tmp_path / "libbase.so"
    bad.write_bytes(data[: len(data) // 2])
    rt = Runtime(library_path=[str(tmp_path)])
    with pytest.raises(BinaryFormatError) as exc:
        rt.cache.load(str(bad))
    assert "runs past the end of the file" in str(exc.value)
    assert str(bad) in str(exc.value)


def _library(dylink_payload: bytes, body: bytes = b"") -> bytes:
    """A minimal shared library: a dylink.0 section, and env.memory imported."""
    imports = section(2, uleb(1) + name("env") + name("memory") + b"\x02\x00\x00")
    return b"\0asm\x01\x00\x00\x00" + section(0, name("dylink.0") + dylink_payload) + imports + body


def test_absurd_mem_info(cli, corpus: Path, tmp_path: Path):
    mem_info = uleb(0xFFFFFFFF) + uleb(0) + uleb(0) + uleb(0)
    (tmp_path / "libhuge.so").write_bytes(_library(b"\x01" + uleb(len(mem_info)) + mem_info))
    p = cli(
        "run",
        "-L",
        str(tmp_path),
        "-L",
        str(corpus),
        "--preload",
        "libhuge.so",
        str(corpus / "hello.wasm"),
    )
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line == (
        f"wasmrun: {tmp_path / 'libhuge.so'}: needs 4294967295 bytes of memory (dylink.0 "
        "MEM_INFO), which exceeds the memory limit of 4294967296 bytes"
    )


def test_memory_limit_option(runtime, corpus: Path):
    from wasmrun.runtime import LinkOptions

    with pytest.raises(LimitError, match="exceeds the memory limit of 65536 bytes"):
        runtime.plan(str(corpus / "hello.wasm"), LinkOptions(max_memory=65536))


def test_needed_that_is_not_a_library(tmp_path: Path, corpus: Path):
    shutil.copy(corpus / "hello_static.wasm", tmp_path / "libc.so")
    rt = Runtime(library_path=[str(tmp_path)])
    with pytest.raises(LoadError, match="not a shared library"):
        rt.plan(str(corpus / "hello.wasm"))


def test_unknown_import_module(tmp_path: Path):
    imports = section(
        2,
        uleb(2)
        + name("env")
        + name("memory")
        + b"\x02\x00\x00"
        + name("mystery")
        + name("thing")
        + b"\x03\x7f\x00",
    )
    mod = b"\0asm\x01\x00\x00\x00" + section(0, name("dylink.0")) + imports
    lib = tmp_path / "libodd.so"
    lib.write_bytes(mod)
    rt = Runtime()
    with pytest.raises(SymbolError, match=r"libodd.so: unknown import mystery.thing \(global\)"):
        rt.plan(str(lib))


def test_invalid_code_is_reported_at_compile(tmp_path: Path):
    # Structurally decodable, but the function body is invalid wasm.
    types = section(1, uleb(1) + b"\x60\x00\x01\x7f")
    funcs = section(3, uleb(1) + uleb(0))
    exports = section(7, uleb(1) + name("f") + b"\x00" + uleb(0))
    code = section(10, uleb(1) + uleb(2) + b"\x00\x0b")  # returns nothing: type error
    imports = section(2, uleb(1) + name("env") + name("memory") + b"\x02\x00\x00")
    lib = tmp_path / "libbad.so"
    lib.write_bytes(
        b"\0asm\x01\x00\x00\x00"
        + section(0, name("dylink.0"))
        + types
        + imports
        + funcs
        + exports
        + code
    )
    rt = Runtime()
    with pytest.raises(LoadError, match="libbad.so: invalid WebAssembly module"):
        rt.open_library(str(lib))


def test_trap_prints_backtrace_and_exits_non_zero(cli, corpus: Path):
    p = cli("run", "-L", str(corpus), str(corpus / "trap.wasm"))
    assert p.returncode == 134
    assert p.stdout == "before trap\n"
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == "wasm trap: wasm `unreachable` instruction executed"
    assert lines[1] == "wasm backtrace:"
    assert "trap.wasm!crash" in lines[2]
    assert any("trap.wasm!main" in ln for ln in lines)
    assert any("libc.so!" in ln for ln in lines)
