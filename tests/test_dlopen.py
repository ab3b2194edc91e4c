"""Guest dlopen: libdl.so over the dyld host module (C programs in tests/c)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wasmrun.runtime import GuestTrap


def test_dlopen_dlsym_flags_dladdr_dlerror_dlclose(run):
    r = run("dlmain.wasm")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        "plugin ctor",
        "add=5 value=42",
        # Opening twice: the same handle, the same data.
        "same_handle=1",
        "shared_data=99",
        # RTLD_LOCAL: invisible to RTLD_DEFAULT and to libraries opened later.
        "default_lookup=hidden",
        "dlsym default: undefined symbol: plugin_add in the global scope",
        "user_with_local=failed",
        "dlopen user: symbol lookup error: libpluginuser.so: undefined symbol: plugin_add "
        "(function)",
        # Reopened RTLD_GLOBAL: visible to both.
        "default_lookup=found",
        "use_plugin=101",
        "dladdr_fn=plugin_add in libplugin.so",
        "dladdr_data=plugin_value exact=1",
        "missing_lib=NULL",
        "dlopen missing: libnope.so: cannot open shared object file: No such file or directory",
        "missing_sym=NULL",
        "dlsym missing: undefined symbol: no_such_symbol in libplugin.so",
        "escape=NULL",
        "dlopen escape: ../c/libplugin.so: refusing a path with '..' (outside the library "
        "search path)",
        "absolute=NULL",
        "dlopen absolute: /etc/passwd: refusing a path outside the library search path",
        "noload=NULL",
        "dlopen noload: liblate.so: not loaded (RTLD_NOLOAD)",
        "noload_loaded=same",
        "no_error_now=none",
        # Reference counted: still open while one reference remains ...
        "still_open=found",
        # ... then destructors run and the symbols disappear.
        "plugin dtor",
        "after_close=gone",
        # A later dlopen loads it afresh (constructor again, fresh data).
        "plugin ctor",
        "reopened_value=42",
        # main returns with it still open: exit runs its destructor, as
        # ld.so's does.
        "plugin dtor",
    ]


def test_exit_runs_the_destructors_of_libraries_still_open(run):
    # The same output as the native build of these two files (glibc's
    # ld.so runs the destructors of every library still loaded at exit).
    r = run("dlopenarg.wasm", "libplugin.so")
    assert (r.code, r.out) == (0, "plugin ctor\nloaded: (no who)\nplugin dtor\n")


def test_lazy_function_satisfied_by_a_later_dlopen(run):
    r = run("lazymain.wasm")
    assert (r.code, r.out) == (0, "late_fn=42\n"), r.err


def test_calling_a_still_missing_lazy_function_traps_naming_it(cli, corpus: Path):
    p = cli("run", "--no-daemon", "-L", str(corpus), str(corpus / "lazymain.wasm"), "call-first")
    assert p.returncode == 134
    assert p.stdout == "calling late_fn before it exists\n"
    assert p.stderr.splitlines()[0] == (
        "wasm trap: symbol lookup error: lazymain.wasm: undefined symbol: late_fn (called lazily)"
    )
    assert "Traceback" not in p.stderr


def test_bind_now_reports_the_missing_function_at_load(cli, corpus: Path):
    p = cli("run", "--no-daemon", "--bind-now", "-L", str(corpus), str(corpus / "lazymain.wasm"))
    assert p.returncode == 127
    assert p.stderr.strip() == (
        "wasmrun: symbol lookup error: lazymain.wasm: undefined symbol: late_fn (function)"
    )


def test_rtld_lazy_library_with_missing_function(run):
    r = run("lazyuser.wasm")
    assert r.code == 0, r.err
    # (The plugin is still open when main returns: its destructor runs at exit.)
    assert r.out.splitlines() == ["loaded lazily", "plugin ctor", "use_plugin=101", "plugin dtor"]
    with pytest.raises(GuestTrap, match="undefined symbol: plugin_add"):
        run("lazyuser.wasm", "call-now")


def test_rtld_lazy_trap_message_names_symbol_and_importer(cli, corpus: Path):
    p = cli("run", "--no-daemon", "-L", str(corpus), str(corpus / "lazyuser.wasm"), "call-now")
    assert p.returncode == 134
    assert p.stderr.splitlines()[0] == (
        "wasm trap: symbol lookup error: libpluginuser.so: undefined symbol: plugin_add "
        "(called lazily)"
    )


def test_dlopen_after_malloc_grew_memory_keeps_program_data(run):
    r = run("dlgrow.wasm")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        "plugin ctor",
        "intact=1 value=43 add=42 more_distinct=1",
        "plugin dtor",  # still open at exit
    ]


def test_library_built_for_toywasm_abi_with_flags_zero(run):
    r = run("toymain.wasm")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        "plugin ctor",
        "handle_nonzero=1 add=9 value=42 missing_fails=1",
        "plugin dtor",  # still open at exit
    ]


def test_dlopen_respects_the_memory_limit(runtime, corpus: Path):
    from wasmrun.runtime import RunLimits
    from wasmrun.runtime.dlopen import RTLD_NOW, DlError

    plan = runtime.plan(str(corpus / "libleft.so"))
    limit = plan.memory_pages * 65536  # no room to grow
    iset = runtime.open_library(str(corpus / "libleft.so"), limits=RunLimits(memory_bytes=limit))
    with pytest.raises(DlError) as exc:
        iset.dynamic.dlopen("libplugin.so", RTLD_NOW)
    assert str(exc.value).startswith("libplugin.so: needs ")
    assert str(exc.value).endswith(f"over the run's memory limit of {limit} bytes")
    # Nothing half-loaded stays behind: without the limit the same load works.
    ok = runtime.open_library(str(corpus / "libleft.so"))
    handle = ok.dynamic.dlopen("libplugin.so", RTLD_NOW)
    assert ok.call("left") == [10] and handle > 0


def test_unknown_dyld_function_is_a_load_error(tmp_path: Path):
    import wasmtime
    from wasmrun.runtime import Runtime, SymbolError

    wat = """(module (@dylink.0 (mem-info))
      (import "env" "memory" (memory 0))
      (import "dyld" "teleport" (func (param i32) (result i32))))"""
    lib = tmp_path / "libodd.so"
    lib.write_bytes(wasmtime.wat2wasm(wat))
    with pytest.raises(SymbolError, match="unknown dyld function teleport"):
        Runtime(disk_cache=False).plan(str(lib))


def test_dlclose_returns_memory_for_a_later_dlopen(runtime, corpus: Path):
    from wasmrun.runtime.dlopen import RTLD_NOW

    iset = runtime.open_library(str(corpus / "libleft.so"))
    dyn = iset.dynamic
    pages = iset.memory.size(iset.store)
    h = dyn.dlopen("libplugin.so", RTLD_NOW)
    first = dyn.modules[dyn.handles[h].root].memory_base
    grown = iset.memory.size(iset.store)
    assert grown > pages  # taken from new pages, never from the allocator's
    assert first >= pages * 65536
    dyn.dlclose(h)
    h2 = dyn.dlopen("libplugin.so", RTLD_NOW)
    assert dyn.modules[dyn.handles[h2].root].memory_base == first  # region reused
    assert iset.memory.size(iset.store) == grown
    assert dyn.dlsym(h2, "plugin_add", None) > 0
