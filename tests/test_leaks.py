"""Runs leave nothing behind: no Python objects, descriptors or memory.

wasmtime-py keeps the Python callable of every host function in a global
table until its Store is deleted; a callable that (through a closure or a
bound method) reaches the Store keeps the whole run alive forever. A daemon
serving a plugin-heavy workload then runs out of descriptors after ~1,000
requests. These tests count objects and descriptors, never time.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from wasmrun.runtime import (
    GuestExit,
    GuestTrap,
    RunControl,
    RunInterrupted,
    RunLimits,
    Runtime,
    WasiOptions,
    instance,
)
from wasmrun.runtime.dlopen import RTLD_NOW, DynamicLinker

MIB = 1 << 20


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def _host_functions() -> int:
    """Python callables wasmtime-py holds for live host functions."""
    from wasmtime import _func

    return len(_func.FUNCTIONS.handles)


@pytest.fixture
def tracked(monkeypatch) -> Iterator[list[weakref.ref]]:
    """Weak references to every InstanceSet created during the test."""
    refs: list[weakref.ref] = []
    original = instance.InstanceSet.__init__

    def init(self, *args, **kwargs):
        refs.append(weakref.ref(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(instance.InstanceSet, "__init__", init)
    yield refs


def _alive(refs: list[weakref.ref]) -> int:
    return sum(1 for r in refs if r() is not None)


def test_300_dlopen_runs_free_objects_descriptors_and_memory(corpus: Path, tmp_path: Path):
    rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=False)
    program = str(corpus / "dlmain.wasm")  # dlopen, dlsym, dlclose, failed dlopens

    def one_run() -> None:
        result = rt.run(program, stdout=os.devnull, stderr=os.devnull)
        assert result.exit_code == 0

    for _ in range(30):  # warm-up: compile, plan, fill every cache
        one_run()
    gc.collect()
    fds, rss, hosts = _fds(), _rss(), _host_functions()
    stores, isets = _live(wasmtime.Store), _live(instance.InstanceSet)
    tracemalloc.start()
    try:
        for _ in range(30):
            one_run()
        gc.collect()
        py_before = tracemalloc.get_traced_memory()[0]
        for _ in range(240):
            one_run()
        gc.collect()
        py_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert _fds() == fds
    assert _host_functions() == hosts
    assert (_live(wasmtime.Store), _live(instance.InstanceSet)) == (stores, isets)
    assert _live(DynamicLinker) == 0
    assert py_after - py_before < 256 * 1024, "Python allocations grow with the runs"
    assert _rss() - rss <= 10 * MIB


def test_a_finished_run_is_freed_without_the_garbage_collector(
    corpus: Path, runtime: Runtime, tracked
):
    def runs() -> None:
        for name in ("dlmain.wasm", "lazymain.wasm", "toymain.wasm", "hello.wasm"):
            runtime.run(str(corpus / name), stdout=os.devnull, stderr=os.devnull)
        for name in ("exitctormain.wasm", "dlexitmain.wasm", "exitdtormain.wasm"):
            assert runtime.run(str(corpus / name), stdout=os.devnull).exit_code
        try:
            runtime.open_library(
                str(corpus / "libexitctor.so"), wasi=WasiOptions(stdout=os.devnull)
            )
        except GuestExit:
            pass
        assert runtime.run(str(corpus / "io.wasm"), args=["io", "7"], stdout=os.devnull).exit_code
        try:
            runtime.run(str(corpus / "trap.wasm"), stdout=os.devnull, stderr=os.devnull)
        except GuestTrap:
            pass
        control = RunControl()
        control.cancel()  # stopped at the first epoch check: no waiting on a clock
        try:
            runtime.run(str(corpus / "spin.wasm"), stdout=os.devnull, control=control)
        except RunInterrupted:
            pass
        try:  # a loop that never ends: whenever the clock says, it is stopped
            runtime.run(
                str(corpus / "spin.wasm"), stdout=os.devnull, limits=RunLimits(timeout=0.01)
            )
        except RunInterrupted:
            pass
        quiet = WasiOptions(stdout=os.devnull)
        with runtime.open_library(str(corpus / "libquit.so"), wasi=quiet) as lib:
            try:
                lib.call("quit_with", [4])
            except GuestExit:
                pass
        lib = runtime.open_library(str(corpus / "libleft.so"), wasi=quiet)
        lib.dynamic.dlclose(lib.dynamic.dlopen("libplugin.so", RTLD_NOW))
        assert lib.call("left") == [10]
        del lib  # not closed: dropping it is enough

    runs()  # compiled code may keep cache files mapped: once per module, not per run
    gc.collect()
    fds = _fds()
    gc.disable()
    try:
        runs()
        assert _alive(tracked) == 0
        assert _fds() == fds
    finally:
        gc.enable()


def test_open_library_with_dlopen_is_freed_when_dropped(corpus: Path, runtime: Runtime, tracked):
    hosts = _host_functions()
    gc.disable()
    try:
        lib = runtime.open_library(str(corpus / "libleft.so"), wasi=None)
        lib.dynamic.dlopen("libplugin.so", RTLD_NOW)
        assert lib.call("left") == [10]
        del lib
        assert _alive(tracked) == 0
    finally:
        gc.enable()
    assert _host_functions() == hosts


def test_close_frees_the_store_at_once(corpus: Path, runtime: Runtime):
    hosts = _host_functions()
    with runtime.open_library(str(corpus / "libleft.so")) as lib:
        lib.dynamic.dlopen("libplugin.so", RTLD_NOW)
        assert _host_functions() > hosts
        keep = lib  # a caller still holding it does not keep the Store
    assert keep.closed
    assert _host_functions() == hosts
    keep.close()  # idempotent
