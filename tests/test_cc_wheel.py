"""``pip install`` of the built wheel brings the C sysroot: a program that
needs libc.so is built with the installed wasmrun-cc and runs with no -L.

Offline: the wheel is built with the test venv's own setuptools (no build
isolation) and installed without dependencies into a fresh venv that sees
the test venv's packages (wasmtime, ziglang...) through a .pth file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from cc_support import ROOT, SYSROOT_DIR
from wasmrun.toolchain import sysroot


def _run(argv, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "sysroot", ".*")
    for d in package_dirs:
        shutil.copytree(ROOT / d, src / d, ignore=skip)
    sysroot.stage_for_wheel(sysroot.build_sysroot(SYSROOT_DIR), src / "toolchain" / "sysroot")
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
          "-w", str(dist), str(src)])  # fmt: skip
    (wheel,) = dist.glob("wasmrun-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
          "--no-index", str(wheel)])  # fmt: skip
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    Path(purelib.stdout.strip(), "test-venv-deps.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    return venv / "bin"


def test_wheel_carries_the_c_sysroot(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMRUN_")}
    env.update(
        XDG_CACHE_HOME=str(tmp_path / "xdg"),  # no per-user sysroot to fall back on
        WASMRUN_CACHE_DIR="off",
        WASMRUN_SOCKET=str(tmp_path / "no-daemon.sock"),
    )
    probe = "import wasmrun.toolchain as t; print(t.sysroot_lib_dir())"
    where = _run([str(installed / "python"), "-c", probe], env=env)
    assert where.stdout.strip().startswith(str(installed.parent))
    (tmp_path / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello from the wheel"); return 0; }\n'
    )
    _run([str(installed / "wasmrun-cc"), "-O2", "-o", "hello", "hello.c"], cwd=tmp_path, env=env)
    assert not (tmp_path / "xdg" / "wasmrun-sysroot").exists()  # the shipped one was fresh
    ran = _run([str(installed / "wasmrun"), "run", "--no-daemon", "hello"], cwd=tmp_path, env=env)
    assert ran.stdout == "hello from the wheel\n"


def test_wheel_ships_py_typed(installed):
    """PEP 561: the installed runtime says it is typed, so a user's mypy
    checks calls into wasmrun.runtime instead of treating it as Any."""
    probe = (
        "import importlib.resources as r; "
        "print(r.files('wasmrun.runtime').joinpath('py.typed').is_file())"
    )
    assert _run([str(installed / "python"), "-c", probe]).stdout.strip() == "True"
