"""Helpers for the wasmrun-cc tests: the cached test sysroot, the driver as a
subprocess (the way make and configure call it), and running the results.

The sysroot lives in build/sysroot, built by the project's own
toolchain/sysroot.py and rebuilt only when its recipe or zig changes (the
libc++ part costs about a minute on two cores the first time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
SYSROOT_DIR = ROOT / "build" / "sysroot"
SRC = ROOT / "tests" / "c" / "cc"
BIN = Path(sys.executable).parent


def driver_env(**extra: str) -> dict[str, str]:
    """The environment for driver subprocesses: the test sysroot, no user cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("WASMRUN_LIBRARY_PATH",)}
    env["WASMRUN_SYSROOT"] = str(SYSROOT_DIR)
    env.update(extra)
    return env


def cc(*args: str | Path, cxx: bool = False, cwd: Path, check: bool = True):
    """Run wasmrun-cc (or wasmrun-c++) like a build system would."""
    tool = BIN / ("wasmrun-c++" if cxx else "wasmrun-cc")
    proc = subprocess.run(
        [str(tool), *map(str, args)],
        cwd=cwd,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool.name} {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


@attrs.frozen
class Ran:
    code: int
    out: str
    err: str


def run_program(runtime, program: Path, *args: str, library_path=()) -> Ran:
    """Run a built program in process, searching the given dirs then the sysroot."""
    out, err = program.with_suffix(".stdout"), program.with_suffix(".stderr")
    result = runtime.run(
        str(program),
        args=[program.name, *args],
        library_path=[*map(str, library_path), str(SYSROOT_DIR / "lib")],
        stdout=str(out),
        stderr=str(err),
    )
    return Ran(result.exit_code, out.read_text(), err.read_text())
