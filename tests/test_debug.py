"""WASMRUN_DEBUG: LD_DEBUG-style tracing of libraries, bindings and symbols."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from wasmrun.runtime import debug


@pytest.fixture
def tracing():
    """Switch tracing on for one test (the flags are process-wide)."""
    yield debug.configure
    debug.configure(None)


def _lines(text: str, category: str) -> list[str]:
    prefix = re.compile(rf"^wasmrun\[\d+\]: {category}: ")
    return [prefix.sub("", ln) for ln in text.splitlines() if prefix.match(ln)]


def test_all_traces_libraries_bindings_and_dlopen(cli, corpus: Path):
    r = cli(
        "run",
        "--no-daemon",
        "-L",
        str(corpus),
        str(corpus / "dlmain.wasm"),
        env={"WASMRUN_DEBUG": "all"},
    )
    assert r.returncode == 0, r.stderr
    libs = _lines(r.stderr, "libs")
    assert f"{corpus / 'dlmain.wasm'}: pic module, loaded first" in libs
    assert (
        f"libdl.so => {corpus / 'libdl.so'} (needed by dlmain.wasm; found via -L {corpus})" in libs
    )
    assert any(ln.startswith("libc.so => ") and "already loaded" in ln for ln in libs)
    assert 'dlopen("libplugin.so", RTLD_NOW|RTLD_LOCAL) = handle 1' in libs
    assert any(
        ln.startswith('dlopen("libnope.so", RTLD_NOW) failed: libnope.so: cannot open')
        for ln in libs
    )
    bindings = _lines(r.stderr, "bindings")
    assert "dlmain.wasm: env.dlopen => libdl.so (direct)" in bindings
    assert any(ln.startswith("libplugin.so: ") for ln in bindings)  # a dlopen'ed library's
    symbols = _lines(r.stderr, "symbols")
    assert any(re.fullmatch(r'dlsym\(1, "plugin_add"\) = 0x[0-9a-f]+', ln) for ln in symbols)
    assert 'dlsym(1, "no_such_symbol") failed: undefined symbol: no_such_symbol in ' in "\n".join(
        symbols
    )
    # The guest's own output is untouched.
    assert "add=5 value=" in r.stdout


def test_each_category_alone(cli, corpus: Path):
    r = cli(
        "run",
        "--no-daemon",
        "-L",
        str(corpus),
        str(corpus / "hello.wasm"),
        env={"WASMRUN_DEBUG": "bindings"},
    )
    assert r.returncode == 0, r.stderr
    assert _lines(r.stderr, "bindings") and not _lines(r.stderr, "libs")
    assert not _lines(r.stderr, "symbols")


def test_off_by_default_prints_nothing(run):
    assert not debug.LIBS and not debug.BINDINGS and not debug.SYMBOLS
    r = run("dlmain.wasm")
    assert r.code == 0
    assert "wasmrun[" not in r.err


def test_bindings_name_lazy_and_weak(tracing, runtime, corpus: Path, capsys):
    tracing("bindings")
    runtime.plan(str(corpus / "lazymain.wasm"))
    bindings = _lines(capsys.readouterr().err, "bindings")
    assert any("(lazy: PLT slot that traps if called)" in ln for ln in bindings)


def test_a_cached_plan_is_traced_again(tracing, runtime, corpus: Path, capsys):
    runtime.plan(str(corpus / "hello.wasm"))  # cached, untraced
    tracing("libs")
    runtime.plan(str(corpus / "hello.wasm"))
    assert _lines(capsys.readouterr().err, "libs")


def test_help_and_unknown_options(tracing, capsys):
    flags = tracing("help")
    assert flags.help and not (debug.LIBS or debug.BINDINGS or debug.SYMBOLS)
    err = capsys.readouterr().err
    assert "Valid options for the WASMRUN_DEBUG environment variable" in err
    flags = tracing("libs:bogus")
    assert debug.LIBS and flags.unknown == ("bogus",)
    assert "unknown WASMRUN_DEBUG option(s): bogus" in capsys.readouterr().err


def test_parse():
    assert debug.parse("all") == debug.DebugFlags(libs=True, bindings=True, symbols=True)
    assert debug.parse(" libs, symbols ") == debug.DebugFlags(libs=True, symbols=True)
    assert debug.parse(None) == debug.DebugFlags()


def test_a_host_can_send_the_trace_elsewhere(tracing, runtime, corpus: Path, capsys):
    lines: list[str] = []
    tracing("libs", lines.append)
    runtime.plan(str(corpus / "hello.wasm"))
    assert _lines("".join(lines), "libs")
    assert "wasmrun[" not in capsys.readouterr().err
