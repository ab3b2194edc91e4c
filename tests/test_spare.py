"""The spare instance set (``Runtime.prepare_spare``): built before its
request, it serves one run only, with that run's own WASI context,
controller and search path, and is as fresh as a set built for the run. A
spare that does not fit the next run (another plan, a changed file, other
limits) is dropped and the run builds its own."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import wasmtime
from wasmrun.runtime import RunInterrupted, RunLimits, Runtime

TEST_CACHE_DIR = os.environ["WASMRUN_CACHE_DIR"]  # set by conftest


@pytest.fixture
def rt(corpus: Path) -> Runtime:
    """A runtime of its own, so that its spare counters start at zero."""
    return Runtime(library_path=[str(corpus)], environ={}, disk_cache=TEST_CACHE_DIR)


def test_a_spare_serves_the_next_run_with_that_runs_own_context(run, rt: Runtime) -> None:
    for _ in range(2):  # a plan run twice in a row gets a spare
        first = run("io.wasm", "one", env={"GREETING": "hi"}, stdin="abc\n", rt=rt)
        assert first.code == 0
    assert rt.prepare_spare()
    second = run("io.wasm", "two", "3", env={"GREETING": "bye"}, stdin="xyz\n", rt=rt)
    assert rt.stats()["spare.hits"] == 1
    fresh = run("io.wasm", "two", "3", env={"GREETING": "bye"}, stdin="xyz\n")
    assert second == fresh  # status, stdout and stderr alike
    assert second.code == 3
    assert "arg1=two" in second.out and "GREETING=bye" in second.out
    assert "stdin=XYZ" in second.out and "one" not in second.out


def test_a_spare_is_fresh_state(run, rt: Runtime) -> None:
    outputs = [run("counter.wasm", rt=rt).out]
    for _ in range(4):
        outputs.append(run("counter.wasm", rt=rt).out)
        assert rt.prepare_spare()
    assert rt.stats()["spare.hits"] == 3
    assert outputs == ["runs=1 ctors=1\n"] * 5


def test_a_spare_is_not_used_for_another_program_or_a_changed_file(
    run, rt: Runtime, corpus: Path, tmp_path: Path
) -> None:
    program = tmp_path / "counter.wasm"
    shutil.copy(corpus / "counter.wasm", program)
    for _ in range(2):
        assert run(str(program), rt=rt).out == "runs=1 ctors=1\n"
    assert rt.prepare_spare()
    assert run("hello.wasm", rt=rt).out == "hello, world\n"  # another plan
    assert rt.stats()["spare.misses"] == 1
    assert run("hello.wasm", rt=rt).out == "hello, world\n"
    assert rt.prepare_spare()  # now one for hello.wasm
    assert run(str(program), rt=rt).out == "runs=1 ctors=1\n"
    assert rt.stats()["spare.misses"] == 2
    assert run(str(program), rt=rt).out == "runs=1 ctors=1\n"
    assert rt.prepare_spare()
    st = program.stat()
    os.utime(program, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new plan
    assert run(str(program), rt=rt).out == "runs=1 ctors=1\n"
    assert rt.stats()["spare.misses"] == 3
    assert rt.stats()["spare.hits"] == 0


def test_a_spare_is_not_used_under_other_limits(rt: Runtime, corpus: Path) -> None:
    program = str(corpus / "hello.wasm")
    for _ in range(2):
        rt.run(program, stdout=os.devnull)
    assert rt.prepare_spare()
    rt.run(program, stdout=os.devnull, limits=RunLimits(memory_bytes=8 << 20))
    assert rt.stats()["spare.misses"] == 1 and rt.stats()["spare.hits"] == 0


def test_a_run_from_a_spare_still_times_out(rt: Runtime, corpus: Path) -> None:
    program = str(corpus / "spin.wasm")
    limits = RunLimits(timeout=0.2)
    for _ in range(2):
        with pytest.raises(RunInterrupted):
            rt.run(program, stdout=os.devnull, limits=limits)
    assert rt.prepare_spare()
    t0 = time.monotonic()
    with pytest.raises(RunInterrupted) as exc:
        rt.run(program, stdout=os.devnull, limits=limits)
    assert rt.stats()["spare.hits"] == 1
    assert exc.value.reason == "timeout" and time.monotonic() - t0 < 5


def test_a_guest_dlopen_from_a_spare_searches_the_runs_path(corpus: Path, tmp_path: Path) -> None:
    # The runtime's own search path is empty: only the run's library path
    # finds libc.so and libwho.so, so the spare's loader must take it.
    rt = Runtime(environ={}, disk_cache=TEST_CACHE_DIR)
    out = tmp_path / "out"
    for _ in range(3):
        result = rt.run(
            str(corpus / "dlopenarg.wasm"),
            args=["dlopenarg", "libwho.so"],
            stdout=str(out),
            library_path=[str(corpus)],
        )
        assert (result.exit_code, out.read_text()) == (0, "loaded: public\n")
        rt.prepare_spare()
    assert rt.stats()["spare.hits"] == 1


def test_no_spare_for_a_module_with_a_start_function(rt: Runtime, tmp_path: Path) -> None:
    # A start function is guest code that runs at instantiation: before its
    # request existed, it would run without the request's WASI context.
    program = tmp_path / "started.wasm"
    program.write_bytes(
        wasmtime.wat2wasm(
            """(module
                 (global $ran (mut i32) (i32.const 0))
                 (func $init (global.set $ran (i32.const 1)))
                 (start $init)
                 (memory (export "memory") 1)
                 (func (export "_start")))"""
        )
    )
    for _ in range(2):
        assert rt.run(str(program)).exit_code == 0
    assert not rt.prepare_spare()
    rt.run(str(program))
    assert rt.stats()["spare.hits"] == 0


def test_only_a_plan_run_twice_in_a_row_gets_a_spare(rt: Runtime, corpus: Path) -> None:
    # Varied programs: a spare after every run would be built for nothing.
    for name in ("hello.wasm", "counter.wasm", "hello.wasm", "counter.wasm"):
        rt.run(str(corpus / name), stdout=os.devnull)
        assert not rt.prepare_spare()
    rt.run(str(corpus / "counter.wasm"), stdout=os.devnull)
    assert rt.prepare_spare()
    assert rt.stats()["spare.misses"] == 0


def test_drop_spare_frees_it(rt: Runtime, corpus: Path) -> None:
    for _ in range(2):
        rt.run(str(corpus / "hello.wasm"), stdout=os.devnull)
    assert rt.prepare_spare()
    rt.drop_spare()
    rt.run(str(corpus / "hello.wasm"), stdout=os.devnull)
    assert rt.stats()["spare.hits"] == 0 and rt.stats()["spare.misses"] == 0
