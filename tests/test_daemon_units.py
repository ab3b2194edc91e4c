"""The daemon's pure pieces, in process: the stdio relay (with the real
runtime), limits, file checks, error mapping, and
``execute`` on protocol messages."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from wasmrun.daemon.config import DaemonConfig, Limits, parse_config
from wasmrun.daemon.execute import (
    NOT_VISIBLE,
    Job,
    check_opened_file,
    effective_limits,
    error_for,
    execute,
)
from wasmrun.daemon.stdio import ClientWasi, StdioRelay
from wasmrun.protocol import CallResult, Dlopen, Error, Run, RunResult
from wasmrun.protocol import Limits as WireLimits
from wasmrun.runtime import (
    GuestTrap,
    LoadError,
    RunControl,
    RunInterrupted,
    Runtime,
)

CHUNKS = 256  # 1 MiB of output
TIMEOUT = 30

# A non-PIE program: CHUNKS writes of 4 KiB to stdout (bytes 'a'..'z', each
# chunk ending in a newline), then "done\n" to stderr. Exit 3 if a write
# fails, 4 on a short write, else 0.
BIGOUT = f"""
(module
 (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
 (memory (export "memory") 1)
 (data (i32.const 8300) "done\\n")
 (func (export "_start") (local $i i32)
   (loop $fill
     (i32.store8 (local.get $i)
       (i32.add (i32.const 97) (i32.rem_u (local.get $i) (i32.const 26))))
     (local.set $i (i32.add (local.get $i) (i32.const 1)))
     (br_if $fill (i32.lt_u (local.get $i) (i32.const 4096))))
   (i32.store8 (i32.const 4095) (i32.const 10))
   (i32.store (i32.const 8192) (i32.const 0))
   (i32.store (i32.const 8196) (i32.const 4096))
   (local.set $i (i32.const 0))
   (loop $out
     (if (call $w (i32.const 1) (i32.const 8192) (i32.const 1) (i32.const 8200))
       (then (call $exit (i32.const 3))))
     (if (i32.ne (i32.load (i32.const 8200)) (i32.const 4096))
       (then (call $exit (i32.const 4))))
     (local.set $i (i32.add (local.get $i) (i32.const 1)))
     (br_if $out (i32.lt_u (local.get $i) (i32.const {CHUNKS}))))
   (i32.store (i32.const 8192) (i32.const 8300))
   (i32.store (i32.const 8196) (i32.const 5))
   (drop (call $w (i32.const 2) (i32.const 8192) (i32.const 1) (i32.const 8200)))
   (call $exit (i32.const 0)))
)
"""


def expected_bigout() -> bytes:
    chunk = bytearray(97 + i % 26 for i in range(4096))
    chunk[-1] = 10
    return bytes(chunk) * CHUNKS


@pytest.fixture(scope="module")
def bigout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wat") / "bigout.wasm"
    path.write_bytes(wasmtime.wat2wasm(BIGOUT))
    return path


def run_relayed(
    runtime: Runtime,
    program: Path,
    fds: dict[str, int],
    args: tuple[str, ...] = (),
    control: RunControl | None = None,
    config: DaemonConfig | None = None,
):
    """Execute a Run as the daemon does (stdio through a StdioRelay):
    (the response, whether the relay drained). In a thread with a deadline,
    so a relay that fails to unblock the guest fails the test, not CI."""
    result: list = []
    worker = threading.Thread(
        target=lambda: result.append(_run_relayed(runtime, program, fds, args, control, config)),
        daemon=True,
    )
    worker.start()
    worker.join(TIMEOUT)
    assert not worker.is_alive(), "the run did not end"
    return result[0]


def _run_relayed(runtime, program, fds, args, control, config):
    control = control or RunControl()
    relay = StdioRelay(fds, control)
    prog = os.open(program, os.O_RDONLY)
    try:
        relay.start()
        msg = Run(
            program=str(program),
            args=(program.name, *args),
            library_path=(str(program.parent),),
            fd_roles=(*fds, "program"),
        )
        job = Job(
            runtime=runtime,
            config=config or DaemonConfig(),
            msg=msg,
            fds={**fds, "program": prog},
            control=control,
            stdio=relay.paths,
        )
        answer = execute(job)
        relay.finish()
        drained = relay.wait(10)
    finally:
        relay.close()
        os.close(prog)
    return answer, drained


def exit_code(answer) -> int:
    assert isinstance(answer, RunResult), answer
    return answer.exit_code


class Reader(threading.Thread):
    """Reads a pipe to EOF, slowly if asked."""

    def __init__(self, fd: int, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.fd, self.delay, self.data = fd, delay, bytearray()

    def run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk
            time.sleep(self.delay)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


# -- the stdio relay --------------------------------------------------------------------


def test_large_output_through_a_slow_pipe_is_complete(runtime: Runtime, bigout: Path, pipe):
    r, w = pipe
    reader = Reader(r, delay=0.001)
    reader.start()
    answer, drained = run_relayed(runtime, bigout, {"stdout": w, "stderr": w})
    os.close(w)
    reader.join(10)
    assert (exit_code(answer), drained) == (0, True)
    assert bytes(reader.data) == expected_bigout() + b"done\n"  # complete, in order


def test_stdout_and_stderr_to_different_files(runtime: Runtime, bigout: Path, tmp_path: Path):
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    err = os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        answer, _ = run_relayed(runtime, bigout, {"stdout": out, "stderr": err})
    finally:
        os.close(out)
        os.close(err)
    assert exit_code(answer) == 0
    assert (tmp_path / "out").read_bytes() == expected_bigout()
    assert (tmp_path / "err").read_bytes() == b"done\n"


def test_output_to_an_append_mode_file(runtime: Runtime, bigout: Path, tmp_path: Path):
    out = tmp_path / "log"
    out.write_bytes(b"first line\n")
    fd = os.open(out, os.O_WRONLY | os.O_APPEND)
    try:
        answer, _ = run_relayed(runtime, bigout, {"stdout": fd, "stderr": fd})
    finally:
        os.close(fd)
    assert exit_code(answer) == 0
    assert out.read_bytes() == b"first line\n" + expected_bigout() + b"done\n"


def test_a_closed_reader_fails_the_guests_writes(runtime: Runtime, bigout: Path, pipe):
    """Like SIGPIPE for a native program: the guest's write fails; the run
    ends and nothing hangs."""
    r, w = pipe
    os.close(r)
    answer, drained = run_relayed(runtime, bigout, {"stdout": w})
    assert (exit_code(answer), drained) == (3, True)


def test_cancel_unblocks_a_guest_writing_to_a_stalled_reader(runtime: Runtime, bigout: Path, pipe):
    r, w = pipe  # nobody reads r: the guest fills the pipe and blocks in fd_write
    control = RunControl()
    threading.Timer(0.3, control.cancel).start()
    t0 = time.monotonic()
    answer, _ = run_relayed(runtime, bigout, {"stdout": w}, control=control)
    assert isinstance(answer, Error) and answer.kind == "cancelled", answer
    assert time.monotonic() - t0 < 5


def test_stdin_from_a_pipe(runtime: Runtime, corpus: Path, pipe, tmp_path: Path):
    r, w = pipe
    os.write(w, b"through the relay\n")
    os.close(w)
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        answer, _ = run_relayed(runtime, corpus / "io.wasm", {"stdin": r, "stdout": fd})
    finally:
        os.close(fd)
    assert exit_code(answer) == 0
    assert "stdin=THROUGH THE RELAY" in out.read_text().splitlines()


def test_timeout_unblocks_a_guest_reading_stdin(runtime: Runtime, corpus: Path, pipe):
    r, w = pipe  # w stays open and silent: the guest's read would wait forever
    t0 = time.monotonic()
    config = DaemonConfig(limits=Limits(timeout=0.3))
    answer, _ = run_relayed(runtime, corpus / "io.wasm", {"stdin": r}, config=config)
    assert isinstance(answer, Error) and answer.kind == "timeout", answer
    assert time.monotonic() - t0 < 5


def test_regular_file_stdin_is_reopened_not_relayed(tmp_path: Path):
    path = tmp_path / "in"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        relay = StdioRelay({"stdin": fd}, RunControl())
        assert relay.paths == {"stdin": f"/proc/self/fd/{fd}"} and not relay.needed
        relay.close()
        os.read(fd, 1)  # not at its start any more: relayed, to honour the offset
        relay = StdioRelay({"stdin": fd}, RunControl())
        assert relay.needed
        relay.close()
    finally:
        os.close(fd)


def test_missing_roles_give_the_guest_nothing(runtime: Runtime, corpus: Path):
    """No stdout descriptor: the output goes nowhere (never the daemon's own)."""
    answer, drained = run_relayed(runtime, corpus / "hello.wasm", {})
    assert (exit_code(answer), drained) == (0, True)


def test_a_dir_role_that_is_not_a_directory(tmp_path: Path):
    path = tmp_path / "file"
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(LoadError, match="--dir /data: not a directory"):
            ClientWasi(dir_fds=((fd, "/data"),)).config()
    finally:
        os.close(fd)


# -- limits, checks, errors -----------------------------------------------------------


def test_effective_limits_default_and_cap():
    config = parse_config(
        {"fuel": True, "limits": {"timeout": 2, "max_timeout": 10, "max_memory": 1 << 20}}
    )
    e = effective_limits(config, WireLimits())
    assert (e.timeout, e.memory, e.fuel) == (2.0, 1 << 20, None)
    e = effective_limits(config, WireLimits(timeout_ms=500, memory_bytes=4096, fuel=7))
    assert (e.timeout, e.memory, e.fuel) == (0.5, 4096, 7)
    e = effective_limits(config, WireLimits(timeout_ms=60_000, memory_bytes=1 << 30))
    assert (e.timeout, e.memory) == (10.0, 1 << 20)
    unlimited = effective_limits(DaemonConfig(), WireLimits(fuel=5))
    assert (unlimited.timeout, unlimited.memory, unlimited.fuel) == (None, None, None)


def test_check_opened_file(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    fd = os.open(a, os.O_RDONLY)
    try:
        assert check_opened_file(str(a), fd) is None
        assert "not the file the client opened" in check_opened_file(str(b), fd)
        assert check_opened_file(str(tmp_path / "c"), fd).endswith(NOT_VISIBLE)
        assert "open descriptor" in check_opened_file(str(a), None)
    finally:
        os.close(fd)


def test_error_mapping():
    assert error_for(LoadError("x: nope"), 3) == Error(request_id=3, kind="load", message="x: nope")
    trap = error_for(GuestTrap("unreachable", ["m!f (offset 0x1)"]), 1)
    assert trap.kind == "trap" and trap.exit_code == 134
    assert trap.message == "wasm trap: unreachable\nwasm backtrace:\n  0: m!f (offset 0x1)"
    assert error_for(RunInterrupted("timeout", "t"), 1).exit_code == 124
    assert error_for(RunInterrupted("cancelled", "c"), 1).exit_code == 130
    assert error_for(RunInterrupted("fuel", "f"), 1).exit_code == 137
    huge = error_for(GuestTrap("stack overflow", ["m!f (offset 0x1)"] * 20000), 1)
    assert huge.message.endswith("... (truncated)") and len(huge.message) < 65536
    internal = error_for(KeyError("boom\nsecond line"), 1)
    assert internal.kind == "internal" and "\n" not in internal.message
    assert internal.message.startswith("internal error: KeyError")


# -- execute() on protocol messages ------------------------------------------------------


def _job(runtime: Runtime, msg, fds=None, config=None) -> Job:
    return Job(
        runtime=runtime,
        config=config or DaemonConfig(),
        msg=msg,
        fds=fds or {},
        control=RunControl(),
        stdio={},
    )


def test_execute_run_and_dlopen(runtime: Runtime, corpus: Path):
    program = corpus / "hello.wasm"
    fd = os.open(program, os.O_RDONLY)
    try:
        msg = Run(program=str(program), library_path=(str(corpus),), fd_roles=("program",))
        answer = execute(_job(runtime, msg, {"program": fd}))
    finally:
        os.close(fd)
    assert isinstance(answer, RunResult) and answer.exit_code == 0
    assert {"plan", "run"} <= set(answer.timings)
    answer = execute(
        _job(runtime, Dlopen(library="libleft.so", symbol="left", library_path=(str(corpus),)))
    )
    assert isinstance(answer, CallResult) and answer.results == (10,)
    answer = execute(_job(runtime, Dlopen(library="libleft.so", symbol="left")))
    assert isinstance(answer, Error) and answer.kind == "load"  # no -L: not found


def test_execute_applies_the_configured_timeout(runtime: Runtime, corpus: Path):
    program = corpus / "spin.wasm"
    config = DaemonConfig(limits=Limits(timeout=0.2))
    fd = os.open(program, os.O_RDONLY)
    try:
        msg = Run(program=str(program), library_path=(str(corpus),), fd_roles=("program",))
        answer = execute(_job(runtime, msg, {"program": fd}, config=config))
    finally:
        os.close(fd)
    assert isinstance(answer, Error) and answer.kind == "timeout"
    assert answer.message == "run timed out after 0.2 s"


def test_a_cancel_that_arrives_before_its_job_still_stops_it() -> None:
    """The front sends a job, then (its client gone) a cancel on the other
    socket; the worker's cancel thread may read the cancel first."""
    from wasmrun.daemon.worker import _Current

    current = _Current()
    first = RunControl()
    current.start(1, first)
    current.end()
    current.cancel(2, "cancelled")  # job 2 is not running yet
    second = RunControl()
    current.start(2, second)
    assert second.reason == "cancelled" and first.reason is None
    current.end()
    current.cancel(2, "timeout")  # job 2 is over: nothing to stop
    third = RunControl()
    current.start(3, third)
    assert third.reason is None
    current.cancel(3, "timeout")
    assert third.reason == "timeout"
    current.end()
    current.cancel(3, "cancelled")  # a late cancel for an ended job is dropped
    fourth = RunControl()
    current.start(4, fourth)
    assert fourth.reason is None


def test_between_jobs_a_worker_asks_the_front_for_no_code() -> None:
    """The front answers code requests only while a job runs: a spare built
    between jobs that needs code fails at once (no spare), rather than wait
    for an answer and take the next job's message for it."""
    from wasmrun.daemon.worker import CodeUnavailable, RemoteCode

    class Channel:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        def send(self, message: dict, fds: tuple = ()) -> None:
            self.sent.append(message)

    channel = Channel()
    code = RemoteCode(wasmtime.Engine(), channel)  # type: ignore[arg-type]
    with code.between_jobs(), pytest.raises(CodeUnavailable):
        code("digest", b"\0asm\1\0\0\0")
    assert channel.sent == [] and not code.offline


SIGPIPE_SCRIPT = """
import os, signal
from wasmrun.daemon import worker

current = worker._Current()
watch = worker._SigpipeWatch(current)

# Job 1 writes to a pipe nobody reads (SIGPIPE) and ends right after, before
# the watching thread could read the signal: its outcome still counts it.
one = worker._WorkerControl(watch)
watch.start(1, one)
with watch.lock:  # the watching thread cannot read meanwhile
    os.kill(os.getpid(), signal.SIGPIPE)
print("job 1:", one.reason)
current.end()

# A signal raised after job 1's outcome, read late: never job 2's.
with watch.lock:
    os.kill(os.getpid(), signal.SIGPIPE)
two = worker._WorkerControl(watch)
watch.start(2, two)
print("job 2:", two.reason)
"""


def test_a_sigpipe_belongs_to_the_job_that_raised_it() -> None:
    """In a process of its own: the watch installs a signal handler and a
    wakeup descriptor, which are the process's (pytest-trio has its own)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SIGPIPE_SCRIPT], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (done.stdout, done.stderr) == ("job 1: sigpipe\njob 2: None\n", "")
