"""wasmrun-cc: gcc-style builds of C programs and libraries, and what used to
go wrong with them (issue 11): setjmp/longjmp across libraries, programs not
exporting what their libraries read, -g with _Thread_local, dlopen that
depended on link order, unsupported options, the sysroot's stamp."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cc_support import SRC, SYSROOT_DIR, cc, driver_env, run_program
from wasmrun.runtime import Runtime
from wasmrun.toolchain import driver, sysroot

TEST_CACHE_DIR = Path(__file__).resolve().parent.parent / "build" / "test-cache"


@pytest.fixture(scope="session")
def c_sysroot() -> sysroot.Sysroot:
    """The C sysroot in build/sysroot (built once, cached by its stamp)."""
    return sysroot.build_sysroot(SYSROOT_DIR)


@pytest.fixture(scope="session")
def rt(c_sysroot) -> Runtime:
    return Runtime(environ={}, disk_cache=TEST_CACHE_DIR)


def test_setjmp_longjmp_across_libraries(rt, tmp_path):
    cc("-O2", "-shared", "-fPIC", "-o", "libsj.so", SRC / "sjlib.c", cwd=tmp_path)
    cc("-O2", "-o", "sjmain", SRC / "sjmain.c", "-L.", "-lsj", cwd=tmp_path)
    r = run_program(rt, tmp_path / "sjmain", library_path=[tmp_path])
    assert (r.code, r.err) == (0, "")
    assert r.out == ("program setjmp: code 42 after 2 rounds, depth 0\nlibrary setjmp: code 7\n")


def test_library_reads_program_data(rt, tmp_path):
    """ELF's rule: a program exports what the libraries it links import."""
    cc("-O2", "-shared", "-o", "libappver.so", SRC / "appver.c", cwd=tmp_path)
    cc(
        "-O2", "-o", "appmain", SRC / "appmain.c", "-L.", "-lappver", "-Wl,-rpath,$ORIGIN",
        cwd=tmp_path,
    )  # fmt: skip
    r = run_program(rt, tmp_path / "appmain")
    assert (r.code, r.out) == (0, "libappver.so sees version 304 of appmain\n")
    exports = driver.read_module((tmp_path / "appmain").read_bytes()).exports
    assert {"app_version", "app_name"} <= set(exports)
    # Only what is referenced: main itself is not exported.
    assert "main" not in exports


def test_dlopened_plugin_reads_program_data_with_rdynamic(rt, tmp_path):
    cc("-O2", "-shared", "-o", "libappver.so", SRC / "appver.c", cwd=tmp_path)
    cc("-O2", "-rdynamic", "-o", "dlappmain", SRC / "dlappmain.c", cwd=tmp_path)
    r = run_program(rt, tmp_path / "dlappmain", library_path=[tmp_path])
    assert (r.code, r.out) == (0, "plugin sees version 12\n")


def test_debug_info_with_thread_local(rt, tmp_path):
    cc("-g", "-O0", "-o", "tls", SRC / "tls.c", cwd=tmp_path)
    r = run_program(rt, tmp_path / "tls")
    assert (r.code, r.out) == (0, "tls 8\n")
    exports = driver.read_module((SYSROOT_DIR / "lib" / "libc.so").read_bytes()).exports
    assert "__tls_base" not in exports and "dlopen" in exports


@pytest.mark.parametrize("order", ["libdl-first", "libc-first"])
def test_dlopen_works_whatever_the_link_order(rt, tmp_path, c_sysroot, order):
    """libdl lives in libc.so: no stub dlopen is left for a link order to pick.

    A separately built libdl.so (the old way) listed after libc.so used to
    lose to zig's stub; now both copies are real.
    """
    cc(
        "-O2", "-shared", "-o", "libdl.so", SRC.parent.parent.parent / "toolchain/libdl/libdl.c",
        "-nodefaultlibs", cwd=tmp_path,
    )  # fmt: skip
    cc("-O2", "-shared", "-o", "libappver.so", SRC / "appver.c", cwd=tmp_path)
    libs = ["libdl.so", str(c_sysroot.libc)]
    if order == "libc-first":
        libs.reverse()
    cc(
        "-O2",
        "-rdynamic",
        "-nodefaultlibs",
        "-o",
        "dlapp",
        SRC / "dlappmain.c",
        *libs,
        cwd=tmp_path,
    )
    r = run_program(rt, tmp_path / "dlapp", library_path=[tmp_path])
    assert (r.code, r.out) == (0, "plugin sees version 12\n")


def test_unsupported_option_is_one_line(tmp_path):
    (tmp_path / "x.c").write_text("int main(void) { return 0; }\n")
    p = cc("-pthread", "x.c", cwd=tmp_path, check=False)
    assert p.returncode == 1
    assert p.stderr == "wasmrun-cc: error: unsupported option '-pthread'\n"


def test_missing_library_gives_ldso_error(c_sysroot, tmp_path):
    cc("-O2", "-shared", "-o", "libappver.so", SRC / "appver.c", cwd=tmp_path)
    cc("-O2", "-o", "appmain", SRC / "appmain.c", "-L.", "-lappver", cwd=tmp_path)
    (tmp_path / "libappver.so").unlink()
    p = subprocess.run(
        [str(Path(sys.executable).parent / "wasmrun"), "run", "--no-daemon", "appmain"],
        cwd=tmp_path,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 127
    assert p.stderr.startswith(
        "wasmrun: error while loading shared libraries: libappver.so: "
        "cannot open shared object file"
    )
    assert len(p.stderr.splitlines()) == 1


def test_gcc_style_steps_and_configure_probes(rt, tmp_path):
    """What Makefiles and autoconf do: -c then link, -E, -M, --version, a.out."""
    (tmp_path / "conftest.c").write_text(
        '#include <stdio.h>\n#define WHO "conf"\nint main(void) { puts(WHO); return 0; }\n'
    )
    cc("-c", "-O2", "-DX=1", "-Wall", "conftest.c", cwd=tmp_path)
    assert (tmp_path / "conftest.o").is_file()
    cc("conftest.o", "-lm", "-ldl", cwd=tmp_path)
    assert run_program(rt, tmp_path / "a.out").out == "conf\n"
    pre = cc("-E", "conftest.c", cwd=tmp_path)
    assert '"conf"' in pre.stdout
    dep = cc("-MM", "conftest.c", cwd=tmp_path)
    assert dep.stdout.startswith("conftest.o: conftest.c")
    assert cc("--version", cwd=tmp_path).returncode == 0
    assert cc("-dumpmachine", cwd=tmp_path).stdout == "wasm32-unknown-wasi\n"
    bad = cc("-V", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "'-V'" in bad.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_builds_an_ordinary_makefile_project(rt, tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(SRC / "makeproj", proj)
    bin_dir = Path(sys.executable).parent
    p = subprocess.run(
        ["make", f"CC={bin_dir / 'wasmrun-cc'}", f"AR={bin_dir / 'wasmrun-ar'}"],
        cwd=proj,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    r = run_program(rt, proj / "calc", "6", "7")
    assert (r.code, r.out) == (0, "6 * 7 = 42 (libmul.so, libadd.a)\n")


def test_stale_sysroot_is_rebuilt_identically(c_sysroot, tmp_path):
    root = tmp_path / "sysroot"
    first = sysroot.build_sysroot(root)
    digest = sysroot.wasmcc.sha256_file(first.libc)
    assert digest == sysroot.wasmcc.sha256_file(c_sysroot.libc)  # reproducible
    stamp = root / sysroot.STAMP
    stamp.write_text('{"c": "built-by-another-driver"}\n')
    before = first.libc.stat().st_ino
    again = sysroot.build_sysroot(root)
    assert again.libc.stat().st_ino != before  # rebuilt, not trusted
    assert sysroot.wasmcc.sha256_file(again.libc) == digest
    assert sysroot._fresh(root, cxx=False)


def test_no_pie_program_with_a_library(rt, tmp_path):
    cc("-O2", "-shared", "-o", "libappver.so", SRC / "appver.c", cwd=tmp_path)
    cc("-O2", "-no-pie", "-o", "appmain", SRC / "appmain.c", "-L.", "-lappver", cwd=tmp_path)
    r = run_program(rt, tmp_path / "appmain", library_path=[tmp_path])
    assert (r.code, r.out) == (0, "libappver.so sees version 304 of appmain\n")
