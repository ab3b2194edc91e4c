"""wasmrun-c++: C++ exceptions across shared libraries with the sysroot's
libc++.so (libc++abi with exceptions, libunwind's wasm unwinder), and one
copy of each typeinfo for the whole program (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_support import SRC, SYSROOT_DIR, cc, run_program
from wasmrun.runtime import Runtime
from wasmrun.toolchain import sysroot

TEST_CACHE_DIR = Path(__file__).resolve().parent.parent / "build" / "test-cache"


@pytest.fixture(scope="session")
def cxx_sysroot() -> sysroot.Sysroot:
    """build/sysroot with libc++.so (about a minute the first time, then cached)."""
    return sysroot.build_sysroot(SYSROOT_DIR, cxx=True)


@pytest.fixture(scope="session")
def cxx_build(cxx_sysroot, tmp_path_factory) -> Path:
    """libthrower.so throws, libcatcher.so catches, cxxmain does both."""
    d = tmp_path_factory.mktemp("cxx")
    cc("-O2", "-shared", "-fPIC", "-o", "libthrower.so", SRC / "thrower.cpp", cxx=True, cwd=d)
    cc("-O2", "-shared", "-fPIC", "-o", "libcatcher.so", SRC / "catcher.cpp", "-L.",
       "-lthrower", cxx=True, cwd=d)  # fmt: skip
    cc("-O2", "-o", "cxxmain", SRC / "cxxmain.cpp", "-L.", "-lcatcher", "-lthrower",
       "-Wl,-rpath,$ORIGIN", cxx=True, cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="session")
def cxx_output(cxx_build) -> list[str]:
    rt = Runtime(environ={}, disk_cache=TEST_CACHE_DIR)
    r = run_program(rt, cxx_build / "cxxmain")
    assert (r.code, r.err) == (0, "")
    return r.out.splitlines()


def test_exception_from_one_library_caught_by_type_in_the_program(cxx_output):
    assert "program caught AppError(3): thrown in libthrower" in cxx_output


def test_exception_from_one_library_caught_by_type_in_another(cxx_output):
    assert "library caught AppError(9)" in cxx_output


def test_standard_library_exceptions(cxx_output):
    """libc++'s own throws work (zig's libc++ aborts "in -fno-exceptions mode")."""
    assert "program caught std::logic_error: negative code" in cxx_output
    assert "stoi threw std::invalid_argument" in cxx_output


def test_typeinfo_is_shared_across_modules(cxx_output):
    assert "typeinfo shared: yes" in cxx_output


def test_cxx_program_records_where_libcxx_is(cxx_build, cxx_sysroot):
    """libc++.so is not shipped in the wheel: a C++ program records the
    sysroot it was linked against as a RUNTIME_PATH entry."""
    from wasmrun.toolchain.driver import read_module

    summary = read_module((cxx_build / "cxxmain").read_bytes())
    assert summary.needed == ["libcatcher.so", "libthrower.so", "libc++.so", "libc.so"]
    assert str(cxx_sysroot.lib) in summary.runtime_path


def test_exceptions_in_dlopened_cxx_libraries(cxx_build, tmp_path):
    """A C program dlopens libcatcher.so, which catches what libthrower.so throws."""
    cc("-O2", "-o", "dlcxx", SRC / "dlcxx.c", cwd=cxx_build)
    rt = Runtime(environ={}, disk_cache=TEST_CACHE_DIR)
    r = run_program(rt, cxx_build / "dlcxx", library_path=[cxx_build])
    assert (r.code, r.out) == (0, "caught in a dlopened library: 5\n")
