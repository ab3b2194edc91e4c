"""exit(N) anywhere ends the run with N: in main, in a library constructor or
destructor, in a dlopen'ed library, in a function called with ``call``."""

from __future__ import annotations

from pathlib import Path

import pytest
from wasmrun.runtime import GuestExit, Runtime, WasiOptions, WasmrunError


def test_exit_in_a_library_constructor_is_the_run_status(run):
    r = run("exitctormain.wasm")
    assert (r.code, r.out) == (3, "exitctor ctor\n")  # main never ran


def test_exit_in_a_library_destructor_is_the_run_status(run):
    r = run("exitdtormain.wasm")
    assert (r.code, r.out) == (4, "main value=7\nexitdtor dtor\n")


def test_exit_in_the_constructor_of_a_dlopened_library(run):
    r = run("dlexitmain.wasm")
    assert (r.code, r.out) == (3, "before dlopen\nexitctor ctor\n")


def test_open_library_raises_guest_exit_naming_the_constructor(runtime: Runtime, corpus: Path):
    with pytest.raises(GuestExit) as exc:
        runtime.open_library(str(corpus / "libexitctor.so"))
    assert isinstance(exc.value, WasmrunError)
    assert (exc.value.code, exc.value.during) == (3, "constructor of libexitctor.so")
    assert str(exc.value) == "exit(3) called during constructor of libexitctor.so"


def test_exit_in_a_dependency_constructor_names_that_library(runtime: Runtime, corpus: Path):
    with pytest.raises(GuestExit) as exc:
        runtime.open_library(str(corpus / "exitctormain.wasm"))
    assert exc.value.during == "constructor of libexitctor.so"


def test_call_raises_guest_exit_naming_the_function(runtime: Runtime, corpus: Path):
    with runtime.open_library(str(corpus / "libquit.so")) as lib:
        with pytest.raises(GuestExit) as exc:
            lib.call("quit_with", [5])
    assert (exc.value.code, exc.value.during) == (5, "quit_with()")
    assert str(exc.value) == "exit(5) called during quit_with()"


def test_cli_call_exits_with_the_guest_status_and_one_line(cli, corpus: Path):
    p = cli("call", "--no-daemon", "-L", str(corpus), "libquit.so", "quit_with", "5")
    assert (p.returncode, p.stdout) == (5, "quitting with 5\n")
    assert p.stderr == "wasmrun: exit(5) called during quit_with()\n"


def test_cli_call_with_an_exiting_constructor(cli, corpus: Path):
    p = cli("call", "--no-daemon", "-L", str(corpus), "libexitctor.so", "exitctor_never")
    assert (p.returncode, p.stdout) == (3, "exitctor ctor\n")
    assert p.stderr == "wasmrun: exit(3) called during constructor of libexitctor.so\n"


def test_cli_run_with_an_exiting_constructor(cli, corpus: Path):
    p = cli("run", "--no-daemon", "-L", str(corpus), str(corpus / "exitctormain.wasm"))
    assert (p.returncode, p.stdout, p.stderr) == (3, "exitctor ctor\n", "")


def test_cli_call_exit_zero_is_a_quiet_success(cli, corpus: Path):
    p = cli("call", "--no-daemon", "-L", str(corpus), "libquit.so", "quit_with", "0")
    assert (p.returncode, p.stdout, p.stderr) == (0, "quitting with 0\n", "")


def test_errors_survive_pickling():
    """A daemon's worker may send them to another process."""
    import pickle

    from wasmrun.runtime import BinaryFormatError, GuestTrap, RunInterrupted

    for err in (
        GuestExit(3, "constructor of libfoo.so"),
        GuestTrap("unreachable", ["a!f (offset 0x1)"]),
        RunInterrupted("timeout", "run timed out after 1 s"),
        BinaryFormatError("x.wasm", 16, "bad section"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), str(back), vars(back)) == (type(err), str(err), vars(err))


def test_cli_call_runs_exit_time_handlers_before_the_results(cli, corpus: Path):
    """After its one call, ``wasmrun call`` does what exit(0) would:
    destructors and atexit handlers run (then the results are printed)."""
    p = cli("call", "--no-daemon", "-L", str(corpus), "libplugin.so", "plugin_add", "2", "3")
    assert (p.returncode, p.stdout, p.stderr) == (0, "plugin ctor\nplugin dtor\n5\n", "")


def test_cli_call_with_an_exiting_destructor(cli, corpus: Path):
    p = cli("call", "--no-daemon", "-L", str(corpus), "libexitdtor.so", "exitdtor_value")
    assert (p.returncode, p.stdout) == (4, "exitdtor dtor\n")  # no result: the run exited
    assert p.stderr == "wasmrun: exit(4) called during exit-time handlers\n"


def test_finish_runs_the_destructors_of_dlopened_libraries(
    runtime: Runtime, corpus: Path, tmp_path: Path
):
    """finish() is exit(0)'s work: libc's handlers, among them the one that
    runs the destructors of libraries a call dlopen'ed and never closed."""
    out = tmp_path / "out"
    with runtime.open_library(
        str(corpus / "libdlkeep.so"), wasi=WasiOptions(stdout=str(out))
    ) as lib:
        assert lib.call("keep_plugin") == [1]
        assert out.read_text() == "plugin ctor\n"
        lib.finish()
        assert out.read_text() == "plugin ctor\nplugin dtor\n"


def test_cli_call_runs_the_destructors_of_what_it_dlopened(cli, corpus: Path):
    p = cli("call", "--no-daemon", "-L", str(corpus), "libdlkeep.so", "keep_plugin")
    assert (p.returncode, p.stdout, p.stderr) == (0, "plugin ctor\nplugin dtor\n1\n", "")
