"""``wasmrun ldd`` resolves libraries with the loader's own code, so it shows
exactly what a run loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wasmrun.runtime import Runtime
from wasmrun.runtime.ldd import ldd


def test_a_library_without_runtime_path_reuses_what_the_program_loaded(cli, corpus: Path):
    """libldda.so has no RUNTIME_PATH and needs liblddb.so; the program needs
    both through RUNTIME_PATH $ORIGIN/lddlib. The run works, so ldd must not
    say ``not found``."""
    program = str(corpus / "lddmain.wasm")
    run = cli("run", "--no-daemon", "-L", str(corpus), program)
    assert (run.returncode, run.stdout) == (0, "ldda_value=42\n"), run.stderr
    p = cli("ldd", "-L", str(corpus), program)
    assert p.returncode == 0, p.stdout + p.stderr
    lib = corpus / "lddlib"
    assert p.stdout.splitlines() == [
        f"{program} (program, dynamically linked)",
        f"    libldda.so => {lib / 'libldda.so'}",
        f"        liblddb.so => {lib / 'liblddb.so'}",
        f"    liblddb.so => {lib / 'liblddb.so'} (see above)",
        f"    libc.so => {corpus / 'libc.so'}",
    ]


@pytest.mark.parametrize(
    "program",
    [
        "lddmain.wasm",
        "diamond.wasm",
        "cycmain.wasm",
        "rpmain.wasm",
        "precmain.wasm",
        "dlmain.wasm",
        "libleft.so",
    ],
)
def test_ldd_lists_the_files_a_run_loads(runtime: Runtime, corpus: Path, program: str):
    path = str(corpus / program)
    report = ldd(runtime.cache, runtime.search, path)
    assert report.ok, report
    shown = {
        os.path.realpath(
            line.split(" => ")[1].removesuffix(" (see above)").removesuffix(" (cycle)")
        )
        for line in report.lines[1:]
    }
    plan = runtime.plan(path)
    loaded = {os.path.realpath(pm.image.path) for pm in plan.modules[1:]}
    assert shown == loaded


def test_dlopen_reuses_a_library_the_program_loaded_by_name(run):
    """The same rule in the run-time loader: a dlopen'ed library without
    RUNTIME_PATH finds the copy the program loaded through its own."""
    r = run("ldddl.wasm")
    assert (r.code, r.out) == (0, "ldda_value=42 lddb_value=41\n"), r.err


def test_a_failed_dlopen_leaves_nothing_behind(runtime: Runtime, corpus: Path):
    from wasmrun.runtime.dlopen import RTLD_NOW, DlError

    with runtime.open_library(str(corpus / "libleft.so")) as lib:
        loaded = len(lib.dynamic.modules)
        for _ in range(2):  # the second attempt fails the same way: no half-loaded library
            with pytest.raises(DlError, match="liblddb.so: cannot open shared object file"):
                lib.dynamic.dlopen("lddlib/libldda.so", RTLD_NOW)
        assert len(lib.dynamic.modules) == loaded  # nothing counts against max_libraries
        assert lib.call("left") == [10]
