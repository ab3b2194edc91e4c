"""Limits cover every resource a guest can take: table elements as well as
linear memory, the size of the files it makes us read, and the number of
libraries one run may load."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime
from wasmrun.runtime import LimitError, LinkOptions, LoadError, RunLimits, Runtime
from wasmrun.runtime.dlopen import RTLD_NOW, DlError

MIB = 1 << 20


def table_grower(n: int) -> bytes:
    """A plain WASI program whose ``_start`` grows a table by ``n`` and exits
    0 if that worked, 3 if ``table.grow`` returned -1."""
    return wasmtime.wat2wasm(
        f"""
        (module
         (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
         (memory (export "memory") 1)
         (table $t 1 funcref)
         (func (export "_start")
           (if (i32.eq (table.grow $t (ref.null func) (i32.const {n})) (i32.const -1))
             (then (call $exit (i32.const 3))))))
        """
    )


@pytest.fixture
def rt() -> Runtime:
    return Runtime(environ={}, disk_cache=False)


@pytest.mark.parametrize(
    ("grow", "limits", "status"),
    [
        (100_000_000, RunLimits(memory_bytes=256 * MIB), 3),  # 800 MB of table: refused
        (100_000_000, RunLimits(), 3),  # refused even with no limits set at all
        (1_000_000, RunLimits(memory_bytes=256 * MIB), 0),  # 8 MB: fine
        (2_000, RunLimits(table_elements=1_000), 3),
        (500, RunLimits(table_elements=1_000), 0),
    ],
)
def test_table_grow_counts_against_the_limits(
    rt: Runtime, tmp_path: Path, grow: int, limits: RunLimits, status: int
):
    prog = tmp_path / "grower.wasm"
    prog.write_bytes(table_grower(grow))
    assert rt.run(str(prog), limits=limits).exit_code == status


def test_table_limit_follows_the_memory_limit():
    assert RunLimits(memory_bytes=256 * MIB).table_limit() == 256 * MIB // 64
    assert RunLimits(memory_bytes=MIB).table_limit() == 65536  # the floor
    assert RunLimits(memory_bytes=256 * MIB, table_elements=10).table_limit() == 10


def test_process_memory_stays_bounded_when_a_guest_grows_a_table(tmp_path: Path):
    prog = tmp_path / "grower.wasm"
    prog.write_bytes(table_grower(100_000_000))
    script = f"""
import resource, sys
from wasmrun.runtime import Runtime, RunLimits
rt = Runtime(environ={{}}, disk_cache=False)
code = rt.run({str(prog)!r}, limits=RunLimits(memory_bytes={256 * MIB})).exit_code
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert int(out[0]) == 3
    assert int(out[1]) < 256 * MIB + 128 * MIB  # the limit plus the interpreter and wasmtime


def test_start_table_over_the_limit_is_a_limit_error(runtime: Runtime, corpus: Path):
    plan = runtime.plan(str(corpus / "libleft.so"))
    with pytest.raises(LimitError, match="over the run's table limit of 1 elements"):
        runtime.open_library(str(corpus / "libleft.so"), limits=RunLimits(table_elements=1))
    assert plan.table_size > 1


def test_dlopen_needing_table_slots_over_the_limit_fails_cleanly(runtime: Runtime, corpus: Path):
    plan = runtime.plan(str(corpus / "libleft.so"))
    limits = RunLimits(table_elements=plan.table_size)  # no room to grow
    with runtime.open_library(str(corpus / "libleft.so"), limits=limits) as lib:
        with pytest.raises(DlError) as exc:
            lib.dynamic.dlopen("libplugin.so", RTLD_NOW)
    assert exc.value.code == errno.ENOMEM
    assert f"the run's table limit is {plan.table_size} elements" in str(exc.value)


# -- file size ------------------------------------------------------------------------


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _bytes_read() -> int:
    """Bytes this process has read with read(2) and friends so far."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_huge_program_file_is_refused_before_it_is_read(rt: Runtime, tmp_path: Path, cli):
    big = _sparse(tmp_path / "big.wasm", 300 * MIB)
    read_before = _bytes_read()
    with pytest.raises(LimitError) as exc:
        rt.run(str(big))
    assert _bytes_read() - read_before < MIB
    assert str(exc.value) == (
        f"{big}: file of {300 * MIB} bytes is over the limit of {256 * MIB} bytes for a "
        "module (max_file_size)"
    )
    p = cli("run", "--no-daemon", str(big))
    assert p.returncode == 127
    assert p.stderr == f"wasmrun: {exc.value}\n"


def test_a_huge_library_is_refused_by_the_planner_and_by_dlopen(corpus: Path, tmp_path: Path):
    rt = Runtime(library_path=[str(tmp_path), str(corpus)], environ={}, disk_cache=False)
    _sparse(tmp_path / "libplugin.so", 300 * MIB)
    read_before = _bytes_read()
    with pytest.raises(LoadError, match=r"libplugin.so: file of 314572800 bytes is over"):
        rt.plan(str(corpus / "libpluginuser.so"), LinkOptions(preload=("libplugin.so",)))
    with rt.open_library(str(corpus / "libleft.so")) as lib:
        with pytest.raises(LimitError, match="over the limit of 268435456 bytes"):
            lib.dynamic.dlopen("libplugin.so", RTLD_NOW)
    assert _bytes_read() - read_before < 16 * MIB  # the corpus files, not the big one
    small = LinkOptions(max_file_size=100)
    with pytest.raises(LimitError, match=r"libleft.so: file of \d+ bytes is over the limit of 100"):
        rt.plan(str(corpus / "libleft.so"), small)


# -- number of libraries -------------------------------------------------------------------


def test_the_number_of_libraries_in_a_run_is_bounded(runtime: Runtime, corpus: Path):
    plan = runtime.plan(str(corpus / "diamond.wasm"))
    n = len(plan.modules)
    with pytest.raises(LimitError, match=rf"too many libraries: .* limit of {n - 1} modules"):
        runtime.plan(str(corpus / "diamond.wasm"), LinkOptions(max_libraries=n - 1))
    runtime.plan(str(corpus / "diamond.wasm"), LinkOptions(max_libraries=n))


def test_dlopen_counts_against_the_library_limit(runtime: Runtime, corpus: Path):
    n = len(runtime.plan(str(corpus / "libleft.so")).modules)
    options = LinkOptions(max_libraries=n + 1)  # room for one more
    with runtime.open_library(str(corpus / "libleft.so"), options=options) as lib:
        lib.dynamic.dlopen("libcallee.so", RTLD_NOW)
        with pytest.raises(DlError, match=r"too many libraries: .*limit \(max_libraries\) is"):
            lib.dynamic.dlopen("liblate.so", RTLD_NOW)


def test_dlopened_libraries_cannot_add_memories(corpus: Path, tmp_path: Path):
    """Each memory may take the whole memory limit: a plugin defining one of
    its own, dlopen'ed again and again, would multiply it."""
    for i in range(4):
        (tmp_path / f"libmem{i}.so").write_bytes(
            wasmtime.wat2wasm(
                '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
                ' (memory 1) (func (export "f")))'
            )
        )
    rt = Runtime(library_path=[str(tmp_path), str(corpus)], environ={}, disk_cache=False)
    with rt.open_library(str(corpus / "libleft.so")) as lib:
        with pytest.raises(DlError, match="cannot instantiate: .*memor"):
            for i in range(4):
                lib.dynamic.dlopen(f"libmem{i}.so", RTLD_NOW)
        assert lib.call("left") == [10]  # the run itself goes on
