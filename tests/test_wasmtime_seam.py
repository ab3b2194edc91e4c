"""The wasmtime seam: every wasmtime-py internal wasmrun uses is checked at
import, and a wasmtime-py without one fails with one line naming it and
the supported versions (not an AttributeError in the middle of a run)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import wasmtime
import wasmtime._ffi
from wasmrun.runtime import wasmtime_seam
from wasmrun.runtime.wasmtime_seam import SUPPORTED_VERSIONS, WasmtimeIncompatible, load_internals

ROOT = Path(__file__).resolve().parent.parent


def _one_line(err: pytest.ExceptionInfo[WasmtimeIncompatible]) -> str:
    text = str(err.value)
    assert "\n" not in text
    assert f"supports wasmtime-py {SUPPORTED_VERSIONS}" in text
    assert f"wasmtime-py {wasmtime_seam.installed_version()} lacks" in text
    return text


def test_the_installed_wasmtime_has_everything():
    load_internals()


def test_a_missing_c_binding_is_named(monkeypatch):
    monkeypatch.delattr(wasmtime._ffi, "wasmtime_store_epoch_deadline_callback")
    with pytest.raises(WasmtimeIncompatible) as err:
        load_internals()
    assert "lacks wasmtime._ffi.wasmtime_store_epoch_deadline_callback," in _one_line(err)


def test_a_missing_private_method_is_named(monkeypatch):
    monkeypatch.delattr(wasmtime.Store, "_context")
    with pytest.raises(WasmtimeIncompatible) as err:
        load_internals()
    assert "lacks wasmtime.Store._context," in _one_line(err)


def test_a_missing_private_module_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "wasmtime._extern", None)  # import raises ImportError
    with pytest.raises(WasmtimeIncompatible) as err:
        load_internals()
    assert "lacks the module wasmtime._extern," in _one_line(err)


def test_importing_wasmrun_with_an_incompatible_wasmtime_fails_in_one_line():
    probe = "import wasmtime._ffi as f; del f.wasmtime_instance_new; import wasmrun.runtime"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("wasmrun.runtime.wasmtime_seam.WasmtimeIncompatible: ")
    assert "lacks wasmtime._ffi.wasmtime_instance_new," in last
    assert SUPPORTED_VERSIONS in last


def test_supported_versions_are_the_pin_in_pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert f"wasmtime{SUPPORTED_VERSIONS}" in deps


def test_fingerprint_without_the_library_path_still_names_the_build(monkeypatch):
    monkeypatch.setattr(wasmtime_seam, "_I", wasmtime_seam._I._replace(library_file=None))
    ident = wasmtime_seam.library_identity()
    assert ident.startswith(f"wasmtime-py {wasmtime_seam.installed_version()} at ")


def test_call_void_behaves_as_func_call():
    """call_void skips wasmtime-py's per-call type query; what comes out
    (values set, traps, exit, a host function's exception, a type
    mismatch) is what ``func(store, ...)`` gives."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    def host_fails() -> None:
        raise ValueError("from the host")

    linker.define_func("host", "fails", wasmtime.FuncType([], []), host_fails)
    module = wasmtime.Module(
        engine,
        wasmtime.wat2wasm(
            """(module
                 (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                 (import "host" "fails" (func $fails))
                 (global $g (export "g") (mut i32) (i32.const 0))
                 (func (export "set") (param i32 i32)
                   (global.set $g (i32.add (local.get 0) (local.get 1))))
                 (func (export "trap") unreachable)
                 (func (export "exit") (call $exit (i32.const 7)))
                 (func (export "host") (call $fails)))"""
        ),
    )
    exports = linker.instantiate(store, module).exports(store)

    def func(name: str) -> wasmtime.Func:
        f = exports[name]
        assert isinstance(f, wasmtime.Func)
        return f

    wasmtime_seam.call_void(store, func("set"), 40, 2)
    g = exports["g"]
    assert isinstance(g, wasmtime.Global) and g.value(store) == 42
    for name, args, kind in (
        ("trap", (), wasmtime.Trap),
        ("exit", (), wasmtime.WasmtimeError),  # ExitTrap where wasmtime says "exit"
        ("host", (), ValueError),
        ("set", (1,), wasmtime.WasmtimeError),  # a missing argument
    ):
        with pytest.raises(kind) as ours:
            wasmtime_seam.call_void(store, func(name), *args)
        with pytest.raises(kind) as theirs:
            func(name)(store, *args)
        assert type(ours.value) is type(theirs.value)
        assert getattr(ours.value, "code", None) == getattr(theirs.value, "code", None)


def test_fill_exports_writes_each_import_in_place():
    """Exports of two instances, by name, into the slots an importer reads;
    the importer then sees them. A missing export is reported by its index,
    and a long name (another size_t) works as a short one."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    long_name = "g_" + "x" * 300
    source = wasmtime.Module(
        engine,
        wasmtime.wat2wasm(
            f"""(module
                 (global (export "a") i32 (i32.const 11))
                 (global (export "{long_name}") i32 (i32.const 22))
                 (func (export "f") (result i32) (i32.const 33)))"""
        ),
    )
    other = wasmtime.Module(
        engine, wasmtime.wat2wasm('(module (global (export "b") i32 (i32.const 44)))')
    )
    importer = wasmtime.Module(
        engine,
        wasmtime.wat2wasm(
            """(module
                 (import "m" "f" (func $f (result i32)))
                 (import "m" "b" (global $b i32))
                 (import "m" "a" (global $a i32))
                 (import "m" "long" (global $l i32))
                 (func (export "sum") (result i32)
                   (i32.add (i32.add (call $f) (global.get $b))
                            (i32.add (global.get $a) (global.get $l)))))"""
        ),
    )
    one = wasmtime.Instance(store, source, [])
    two = wasmtime.Instance(store, other, [])
    ref1, ref2 = wasmtime_seam.instance_ref(one), wasmtime_seam.instance_ref(two)
    externs = wasmtime_seam.new_extern_array(4)
    entries = [(0, ref1, b"f"), (1, ref2, b"b"), (2, ref1, b"a"), (3, ref1, long_name.encode())]
    assert wasmtime_seam.fill_exports(store, externs, entries) == -1
    inst = wasmtime_seam.new_instance(store, importer, externs, 4)
    sum_ = wasmtime_seam.get_export(store, inst, "sum")
    assert isinstance(sum_, wasmtime.Func) and sum_(store) == 11 + 22 + 33 + 44
    missing = [(0, ref1, b"f"), (1, ref1, b"b"), (2, ref1, b"a")]
    assert wasmtime_seam.fill_exports(store, wasmtime_seam.new_extern_array(3), missing) == 1
