"""Malformed modules give one line (a LoadError), never another exception.

Two regressions found by fuzzing, then the fuzzers themselves: byte flips,
insertions, deletions and truncations of *real* modules (the corpus's
hello.wasm, libc.so and a plugin), aimed mostly at the sections the linker
decodes itself. The decoder and the planner may only answer with a
LoadError (or succeed); a run may in addition trap, be stopped by its
timeout, or exit, as any guest can.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasmrun.runtime import (
    GuestTrap,
    LinkOptions,
    LoadError,
    RunInterrupted,
    RunLimits,
    Runtime,
    WasiOptions,
)
from wasmrun.runtime.dlopen import RTLD_NOW, DlError
from wasmrun.runtime.ldd import ldd
from wasmrun.runtime.plan import Planner
from wasmrun.runtime.search import SearchPath
from wasmrun.runtime.wasmbin import Reader, parse_module

LOAD_ERROR = 127


def assert_one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("wasmrun: ")
    return lines[0]


FUZZ = settings(
    max_examples=int(os.environ.get("WASMRUN_FUZZ_EXAMPLES", "100")),
    deadline=None,
    # The same examples on every run, so CI stays deterministic; set
    # WASMRUN_FUZZ_RANDOM=1 (and a larger WASMRUN_FUZZ_EXAMPLES) to explore.
    derandomize=not os.environ.get("WASMRUN_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the two regressions ----------------------------------------------------------


def test_dylink_name_length_changed_is_one_load_error(cli, corpus: Path, tmp_path: Path):
    data = bytearray((corpus / "hello.wasm").read_bytes())
    assert data[10] == 0x08  # the length of the name "dylink.0"
    data[10] = 0x0A
    bad = tmp_path / "hello.wasm"
    bad.write_bytes(data)
    rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=False)
    with pytest.raises(LoadError, match="no dylink.0 section"):
        rt.run(str(bad), stdout=os.devnull)
    p = cli("run", "--no-daemon", "-L", str(corpus), str(bad))
    assert p.returncode == LOAD_ERROR
    line = assert_one_clean_line(p.stderr)
    assert line == (
        f"wasmrun: {bad}: imports its memory (env.memory) but has no dylink.0 section, "
        "so it cannot be linked as a position-independent module"
    )


def _sections(data: bytes) -> dict[int, tuple[int, int]]:
    """Section id -> (start, end) of its body."""
    r, out = Reader(data, "x", 8), {}
    while not r.at_end():
        sid, size = r.u8(), r.uleb()
        out.setdefault(sid, (r.pos, r.pos + size))
        r.pos += size
    return out


def _retype_start(data: bytes) -> bytes:
    """hello.wasm with ``_start``'s function given a type that takes an i32."""
    info = parse_module(data, "hello.wasm")
    target = next(i for i, t in enumerate(info.types) if t is not None and t.params == (b"\x7f",))
    local = info.exports["_start"].index - info.imported_funcs
    start, end = _sections(data)[3]
    r = Reader(data, "x", start, end)
    r.uleb()  # count
    for _ in range(local):
        r.uleb()
    at = r.pos
    assert data[at] < 0x80 and target < 0x80  # one-byte type indices
    return data[:at] + bytes([target]) + data[at + 1 :]


def test_start_with_the_wrong_signature_is_a_load_error(cli, corpus: Path, tmp_path: Path):
    bad = tmp_path / "hello.wasm"
    bad.write_bytes(_retype_start((corpus / "hello.wasm").read_bytes()))
    p = cli("run", "--no-daemon", "-L", str(corpus), str(bad))
    assert p.returncode == LOAD_ERROR, p.stderr
    line = assert_one_clean_line(p.stderr)
    assert line == f"wasmrun: {bad}: _start has type (i32) -> (), expected () -> ()"


@pytest.mark.parametrize(
    ("wat", "message"),
    [
        (
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (global (export "__wasm_call_ctors") i32 (i32.const 0)))',
            "__wasm_call_ctors is exported as a global, not a function",
        ),
        (
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (func (export "__wasm_apply_data_relocs") (result i32) (i32.const 0)))',
            "__wasm_apply_data_relocs has type () -> (i32), expected () -> ()",
        ),
        (
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (import "GOT.mem" "x" (global (mut i64))))',
            "imports GOT.mem.x as a mut i64 global, expected i32",
        ),
        (
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (import "env" "__stack_pointer" (global i32)))',
            "imports env.__stack_pointer as a i32 global, expected mut i32",
        ),
        (
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory i64 0)))',
            "imports a 64-bit memory (env.memory)",
        ),
        (
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (global (export "__stack_pointer") i32 (i32.const 0)))',
            "exports __stack_pointer but not as a mut i32 global",
        ),
    ],
)
def test_what_the_loader_relies_on_is_checked_at_load(tmp_path: Path, wat: str, message: str):
    import wasmtime

    lib = tmp_path / "libodd.so"
    lib.write_bytes(wasmtime.wat2wasm(wat))
    rt = Runtime(environ={}, disk_cache=False)
    with pytest.raises(LoadError) as exc:
        rt.open_library(str(lib))
    assert str(exc.value).startswith(f"{lib}: {message}")
    assert "\n" not in str(exc.value)


# -- fuzzing ------------------------------------------------------------------------


def _regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth mutating: every section the linker decodes, and the
    first bytes of the code and data sections (their headers and counts)."""
    r, out = Reader(data, "x", 8), []
    while not r.at_end():
        header, sid, size = r.pos, r.u8(), r.uleb()
        end = r.pos + size
        out.append((header, end if sid not in (10, 11) else min(end, r.pos + 8)))
        r.pos = end
    return out


@st.composite
def mutated(draw, original: bytes) -> bytes:
    regions = _regions(original)
    data = bytearray(original)

    def position() -> int:
        if draw(st.integers(0, 4)) and regions:  # mostly inside a decoded section
            start, end = draw(st.sampled_from(regions))
            end = min(end, len(data))
            if start < end:
                return draw(st.integers(start, end - 1))
        return draw(st.integers(0, max(0, len(data) - 1)))

    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "flip", "byte", "insert", "delete", "truncate"]))
        at = position()
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_runtime(corpus: Path) -> Runtime:
    return Runtime(environ={}, disk_cache=False)


def _plan_only(rt: Runtime, root: Path, directory: Path) -> None:
    """The planner (strict and as ldd uses it) and ldd itself."""
    search = SearchPath((str(directory),), (), ())
    for strict in (True, False):
        try:
            Planner(rt.cache, search, LinkOptions()).plan(str(root), strict=strict)
        except LoadError as e:
            assert "\n" not in str(e), str(e)
    try:
        report = ldd(rt.cache, search, str(root))
    except LoadError as e:
        assert "\n" not in str(e), str(e)
    else:
        assert all("\n" not in line for line in report.lines)


def _corpus_copy(corpus: Path, tmp_path: Path, *names: str) -> Path:
    work = tmp_path / "fuzz"
    work.mkdir(exist_ok=True)
    for n in names:
        shutil.copyfile(corpus / n, work / n)
    return work


def test_fuzz_libc_through_the_decoder_and_planner(corpus: Path, tmp_path: Path, fuzz_runtime):
    work = _corpus_copy(corpus, tmp_path, "hello.wasm", "libdl.so")
    original = (corpus / "libc.so").read_bytes()

    @FUZZ
    @given(mutated(original))
    def check(data: bytes) -> None:
        (work / "libc.so").write_bytes(data)
        _plan_only(fuzz_runtime, work / "hello.wasm", work)

    check()


def _run_outcome(fn) -> None:
    """Only what a guest may legitimately cause, and every message one line
    (a trap's first line)."""
    try:
        fn()
    except LoadError as e:
        assert "\n" not in str(e), str(e)
    except DlError as e:  # a failed dlopen: the guest would see dlerror()
        assert "\n" not in str(e), str(e)
    except GuestTrap as e:
        assert "parameters provided" not in e.message, e.message
    except RunInterrupted as e:
        assert e.reason == "timeout"


@pytest.mark.parametrize(
    ("program", "libraries"),
    [("hello.wasm", ("libc.so",)), ("nopiemain.wasm", ("libdata.so", "libc.so"))],
)
def test_fuzz_a_program_through_decoding_planning_and_running(
    corpus: Path, tmp_path: Path, fuzz_runtime, program: str, libraries: tuple[str, ...]
):
    work = _corpus_copy(corpus, tmp_path, *libraries)
    original = (corpus / program).read_bytes()

    @FUZZ
    @given(mutated(original))
    def check(data: bytes) -> None:
        (work / program).write_bytes(data)
        _plan_only(fuzz_runtime, work / program, work)
        _run_outcome(
            lambda: fuzz_runtime.run(
                str(work / program),
                stdout=os.devnull,
                stderr=os.devnull,
                library_path=[str(work)],
                limits=RunLimits(timeout=1.0, memory_bytes=64 << 20),
            )
        )

    check()


def test_fuzz_a_library_loaded_and_dlopened(corpus: Path, tmp_path: Path, fuzz_runtime):
    work = _corpus_copy(corpus, tmp_path, "libc.so", "libcallee.so")
    original = (corpus / "libplugin.so").read_bytes()
    quiet = WasiOptions(stdout=os.devnull, stderr=os.devnull)

    def load_and_dlopen() -> None:
        with fuzz_runtime.open_library(
            str(work / "libplugin.so"),
            wasi=quiet,
            library_path=[str(work)],
            limits=RunLimits(timeout=1.0, memory_bytes=64 << 20),
        ) as lib:
            lib.close()
        with fuzz_runtime.open_library(
            str(work / "libcallee.so"),
            wasi=quiet,
            library_path=[str(work)],
            limits=RunLimits(timeout=1.0, memory_bytes=64 << 20),
        ) as host:
            host.dynamic.dlopen("libplugin.so", RTLD_NOW)

    @FUZZ
    @given(mutated(original))
    def check(data: bytes) -> None:
        (work / "libplugin.so").write_bytes(data)
        _plan_only(fuzz_runtime, work / "libplugin.so", work)
        _run_outcome(load_and_dlopen)

    check()


# -- wasmtime's reasons are kept ---------------------------------------------------


def test_a_rejected_module_shows_wasmtime_reason(cli, tmp_path: Path):
    import wasmtime

    prog = tmp_path / "legacy.wasm"
    prog.write_bytes(
        wasmtime.wat2wasm(
            '(module (memory (export "memory") 1) (tag $e)'
            ' (func (export "_start") try nop catch $e end))'
        )
    )
    rt = Runtime(environ={}, disk_cache=False)
    with pytest.raises(LoadError) as exc:
        rt.run(str(prog))
    message = str(exc.value)
    assert message.startswith(f"{prog}: invalid WebAssembly module: failed to compile: ")
    assert message.endswith("legacy_exceptions feature required for try instruction")
    p = cli("run", "--no-daemon", str(prog))
    assert p.returncode == LOAD_ERROR
    assert assert_one_clean_line(p.stderr) == f"wasmrun: {message}"


def test_an_instantiation_failure_shows_wasmtime_reason(tmp_path: Path):
    import wasmtime

    lib = tmp_path / "libodd.so"
    lib.write_bytes(
        wasmtime.wat2wasm(
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (import "env" "__indirect_function_table" (table 0 externref)))'
        )
    )
    rt = Runtime(environ={}, disk_cache=False)
    with pytest.raises(LoadError) as exc:
        rt.open_library(str(lib))
    message = str(exc.value)
    assert message.startswith(
        "libodd.so: cannot instantiate: incompatible import type for "
        "`env::__indirect_function_table`: "
    )
    assert "externref" in message
    assert "\n" not in message


def test_a_data_symbol_that_is_not_an_i32_global_is_a_symbol_error(tmp_path: Path):
    import wasmtime

    (tmp_path / "libref.so").write_bytes(
        wasmtime.wat2wasm(
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (global (export "thing") funcref (ref.null func)))'
        )
    )
    user = tmp_path / "libuser.so"
    user.write_bytes(
        wasmtime.wat2wasm(
            '(module (@dylink.0 (mem-info) (needed "libref.so"))'
            ' (import "env" "memory" (memory 0)) (import "GOT.mem" "thing" (global (mut i32))))'
        )
    )
    rt = Runtime(library_path=[str(tmp_path)], environ={}, disk_cache=False)
    with pytest.raises(LoadError) as exc:
        rt.open_library(str(user))
    assert str(exc.value) == (
        "libuser.so: symbol thing is imported as data but libref.so exports it as a "
        "funcref global, not an address"
    )
    with rt.open_library(str(tmp_path / "libref.so")) as lib:
        assert lib.lookup("thing") is None
        with pytest.raises(DlError, match="thing is a funcref global, not a data address"):
            lib.dynamic.dlsym(0, "thing", None)


def test_a_data_segment_out_of_bounds_is_a_load_error_not_a_trap(corpus: Path, tmp_path: Path):
    import wasmtime

    lib = tmp_path / "libbig.so"
    lib.write_bytes(
        wasmtime.wat2wasm(
            '(module (@dylink.0 (mem-info (memory 4 0))) (import "env" "memory" (memory 0))'
            ' (import "env" "__memory_base" (global $mb i32))'
            ' (data (offset (i32.add (global.get $mb) (i32.const 0x7ffffff0))) "overflow"))'
        )
    )
    rt = Runtime(library_path=[str(tmp_path), str(corpus)], environ={}, disk_cache=False)
    with pytest.raises(LoadError) as exc:
        rt.open_library(str(lib))
    assert str(exc.value) == "libbig.so: cannot instantiate: out of bounds memory access"
    with rt.open_library(str(corpus / "libleft.so")) as host:
        with pytest.raises(DlError, match="libbig.so: cannot instantiate: out of bounds memory"):
            host.dynamic.dlopen(str(lib), RTLD_NOW)


def test_a_file_name_with_a_nul_is_a_load_error():
    rt = Runtime(environ={}, disk_cache=False)
    with pytest.raises(LoadError, match=r"^a\\x00b.wasm: cannot open file: invalid file name$"):
        rt.run("a\0b.wasm")
