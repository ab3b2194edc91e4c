"""One binder for start-up and dlopen (runtime/bind.py): a library binds the
same way whichever path loads it, and what the planner always did (shared
exception tags, globals exported by loaded modules) holds on dlopen too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import wasmtime
from wasmrun.runtime import LinkOptions, Runtime, bind, debug
from wasmrun.runtime.dlopen import RTLD_GLOBAL, RTLD_NOW
from wasmrun.runtime.plan import Planner
from wat_support import THROWER, catcher, write_wat


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, tuple[bind.Binding, ...]]]:
    """Every module the binder binds, with its bindings (both paths)."""
    seen: list[tuple[str, tuple[bind.Binding, ...]]] = []
    original = bind.Binder.bind

    def recording(self: bind.Binder, mi: int) -> tuple[bind.Binding, ...]:
        binds = original(self, mi)
        seen.append((self.site.image(mi).display, binds))
        return binds

    monkeypatch.setattr(bind.Binder, "bind", recording)
    return seen


def _kinds(image_imports, binds) -> dict[str, str]:
    return {
        f"{i.module}.{i.name}": type(b).__name__ for i, b in zip(image_imports, binds, strict=True)
    }


def test_a_library_binds_alike_at_load_time_and_on_dlopen(runtime: Runtime, corpus: Path, recorded):
    plan = Planner(runtime.cache, runtime.search, LinkOptions()).plan(str(corpus / "libplugin.so"))
    at_load = [b for name, b in recorded if name == "libplugin.so"]
    iset = runtime.open_library(str(corpus / "libleft.so"))  # libc, not libplugin
    recorded.clear()
    iset.dynamic.dlopen("libplugin.so", RTLD_NOW)
    on_dlopen = [b for name, b in recorded if name == "libplugin.so"]
    assert len(at_load) == len(on_dlopen) == 1
    imports = plan.root_module.image.info.imports
    load_kinds = _kinds(imports, at_load[0])
    # Calls into libc are direct on both paths; only __cxa_atexit differs:
    # a library loaded at run time keeps its destructors for dlclose.
    assert load_kinds["env.puts"] == "BindDirect"
    assert load_kinds["env.__cxa_atexit"] == "BindDirect"
    assert _kinds(imports, on_dlopen[0]) == {**load_kinds, "env.__cxa_atexit": "BindHost"}


def test_bindings_are_traced_in_the_same_words_on_both_paths(runtime: Runtime, corpus: Path):
    lines: list[str] = []
    debug.configure("bindings", lines.append)
    try:
        Planner(runtime.cache, runtime.search, LinkOptions()).plan(str(corpus / "libplugin.so"))
        at_load = list(lines)
        iset = runtime.open_library(str(corpus / "libleft.so"))
        lines.clear()
        iset.dynamic.dlopen("libplugin.so", RTLD_NOW)
        on_dlopen = list(lines)
    finally:
        debug.configure(None)

    def plugin(trace: list[str]) -> list[str]:
        text = "".join(trace)
        found = re.findall(r"^wasmrun\[\d+\]: bindings: (libplugin\.so: .*)$", text, re.M)
        return [re.sub(r"0x[0-9a-f]+", "0x?", ln) for ln in found]

    load, dl = plugin(at_load), plugin(on_dlopen)
    assert "libplugin.so: GOT.mem.stdout => address 0x? in libc.so" in load
    assert "libplugin.so: env.__cxa_atexit => libc.so (direct)" in load
    atexit = "libplugin.so: env.__cxa_atexit => the linker's (destructors kept with the library)"
    assert dl == [atexit if "__cxa_atexit" in ln else ln for ln in load]


HOST = """
(module
 (@dylink.0 (mem-info))
 (import "env" "memory" (memory 0))
 (global (export "answer") i32 (i32.const 42))
)
"""

ANSWER_USER = """
(module
 (@dylink.0 (mem-info))
 (import "env" "memory" (memory 0))
 (import "env" "answer" (global $a i32))
 (func (export "get_answer") (result i32) (global.get $a))
)
"""


def _call(iset, handle: int, name: str, *args: int) -> object:
    slot = iset.dynamic.dlsym(handle, name, None)
    func = iset.table.get(iset.store, slot)
    assert isinstance(func, wasmtime.Func)
    return func(iset.store, *args)


def test_dlopened_libraries_share_exception_tags(tmp_path: Path):
    """One tag per name for the whole run, as at load time: within one
    dlopen'ed group and across later ones."""
    host = write_wat(tmp_path, "libhost.so", HOST)
    write_wat(tmp_path, "libthrow.so", THROWER)
    write_wat(tmp_path, "libcatch.so", catcher('(needed "libthrow.so")'))
    write_wat(tmp_path, "libcatchlater.so", catcher(""))
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(host)) as iset:  # no tag at load time
        h = iset.dynamic.dlopen("libcatch.so", RTLD_NOW | RTLD_GLOBAL)  # with libthrow.so
        assert _call(iset, h, "catcher", 7) == 7
        later = iset.dynamic.dlopen("libcatchlater.so", RTLD_NOW)
        assert _call(iset, later, "catcher", 8) == 8


def test_a_dlopened_library_imports_a_loaded_modules_global(tmp_path: Path):
    host = write_wat(tmp_path, "libhost.so", HOST)
    write_wat(tmp_path, "libanswer.so", ANSWER_USER)
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(host)) as iset:
        h = iset.dynamic.dlopen("libanswer.so", RTLD_NOW)
        assert _call(iset, h, "get_answer") == 42


TAKES_ADDRESS = """
(module
 (@dylink.0 (mem-info))
 (import "env" "memory" (memory 0))
 (import "GOT.func" "nowhere" (global $f (mut i32)))
 (func (export "address") (result i32) (global.get $f))
)
"""


def test_rtld_lazy_defers_calls_only(tmp_path: Path):
    """A missing function whose address is taken: at load time (without
    --bind-now) a slot that traps when called; on dlopen an error even under
    RTLD_LAZY, as in ld.so."""
    from wasmrun.runtime.dlopen import RTLD_LAZY, DlError

    host = write_wat(tmp_path, "libhost.so", HOST)
    lib = write_wat(tmp_path, "libaddr.so", TAKES_ADDRESS)
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(lib)) as iset:
        (slot,) = iset.call("address")
        assert slot > 0
        with pytest.raises(wasmtime.Trap, match="undefined symbol: nowhere"):
            iset.table.get(iset.store, slot)(iset.store)
    with rt.open_library(str(host)) as iset:
        with pytest.raises(DlError) as exc:
            iset.dynamic.dlopen("libaddr.so", RTLD_LAZY)
        assert str(exc.value) == (
            "symbol lookup error: libaddr.so: undefined symbol: nowhere (function)"
        )
