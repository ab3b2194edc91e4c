"""wasmrund's worker processes from outside: limits they run under, what
happens when one dies, and a daemon out of descriptors. Real daemons, any
user (no identity change needed)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_daemon import TIMEOUT, Daemon, raw_run, start_daemon
from wasmrun.daemon.zygote import COMPILER_NAME
from wasmrun.protocol import RunResult
from wasmrun.toolchain.synthetic import straight_line_program


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _zygote_children(d: Daemon, compilers: bool) -> list[int]:
    """Live children of the daemon's zygote (the front's child): its
    compiler processes, or else its workers."""
    return [
        pid
        for z in _children(d.proc.pid)
        for pid in _children(z)
        if _alive(pid) and (_comm(pid) == COMPILER_NAME) == compilers
    ]


def _workers(d: Daemon) -> list[int]:
    return _zygote_children(d, compilers=False)


def _compilers(d: Daemon) -> list[int]:
    return _zygote_children(d, compilers=True)


def _cli(d: Daemon, corpus: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WASMRUN_SOCKET": str(d.socket)}
    return subprocess.run(
        [sys.executable, "-m", "wasmrun.client.cli", "run", "-L", str(corpus), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        **kw,
    )


def _sleeping_client(d: Daemon, corpus: Path) -> subprocess.Popen[str]:
    """A client whose guest is now blocked in sleep(60) (it said so)."""
    env = {**os.environ, "WASMRUN_SOCKET": str(d.socket)}
    sleeper = subprocess.Popen(
        [sys.executable, "-m", "wasmrun.client.cli", "run", "-L", str(corpus)]
        + [str(corpus / "sleepy.wasm")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sleeper.stdout is not None
    assert sleeper.stdout.readline() == "sleeping\n"
    return sleeper


def _limits(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        out[line[:26].strip()] = line[26:].split()[0]
    return out


def test_workers_run_under_their_limits(corpus: Path) -> None:
    config = "worker_memory = 734003200\nworker_max_fds = 300\n"
    with start_daemon(config=config) as d:
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0
        [worker] = _workers(d)
        limits = _limits(worker)
        assert limits["Max open files"] == "300"
        assert limits["Max data size"] == str(734003200)
        status = Path(f"/proc/{worker}/status").read_text()
        assert "NoNewPrivs:\t1" in status


def _open_files(pid: int) -> set[str]:
    """What a process's descriptors point at (socket:[inode], /memfd:...)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            pass
    return out


def test_a_worker_holds_none_of_the_zygotes_descriptors(corpus: Path) -> None:
    """The zygote's channel and kill socket stay the zygote's: a worker
    holding its kill socket could read the front's kill requests, or write
    to it and make the front believe the zygote died. (Standard streams,
    shared with the daemon as its log, are the only files in common.)"""
    with start_daemon() as d:
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0
        [zygote] = _children(d.proc.pid)
        [worker] = _workers(d)
        shared = _open_files(worker) & _open_files(zygote)
        assert {f for f in shared if f.startswith("socket:")} == set()


def test_the_worker_memory_ceiling_holds_beyond_store_limits(corpus: Path) -> None:
    """A run allowed 1 GiB of linear memory in a worker capped at 600 MiB
    of data: its allocations fail once the cap is reached, the worker
    survives, the daemon goes on."""
    config = f"worker_memory = {600 << 20}\n[limits]\nmemory = {1 << 30}\nmax_memory = {1 << 30}\n"
    with start_daemon(config=config) as d:
        done = _cli(d, corpus, str(corpus / "grow.wasm"), "900")
        assert done.returncode == 1, done
        got = int(done.stdout.split()[1])
        assert 0 < got < 600, done.stdout
        hello = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert (hello.returncode, hello.stdout) == (0, "hello, world\n")


def test_a_worker_killed_from_outside_costs_only_its_request(corpus: Path) -> None:
    """As the OOM killer would: the request gets one line and exit 70, the
    daemon starts another worker for the next one."""
    with start_daemon() as d:
        sleeper = _sleeping_client(d, corpus)
        [worker] = _workers(d)
        os.kill(worker, signal.SIGKILL)
        _, err = sleeper.communicate(timeout=TIMEOUT)
        assert sleeper.returncode == 70, err
        assert err.count("\n") == 1 and "died unexpectedly" in err
        hello = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert (hello.returncode, hello.stdout) == (0, "hello, world\n")
        assert _workers(d) and worker not in _workers(d)
        assert d.proc.poll() is None


def test_out_of_descriptors_the_daemon_goes_on(corpus: Path) -> None:
    """Under a 64-descriptor limit, 100 idle connections exhaust the front:
    accept backs off (logged at most once a second), and once they go,
    the next client is served."""
    config = "idle_timeout = 3600.0\nmax_connections_per_uid = 1000\n"
    with start_daemon(config=config, prefix=("prlimit", "--nofile=64:64")) as d:
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0
        t0 = time.monotonic()
        idle = []
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket))
            idle.append(s)
        # The daemon tells its service manager (here: us) when accept fails.
        assert d.wait_notify(b"STATUS=accept: ") == b"STATUS=accept: Too many open files; retrying"
        for s in idle:
            s.close()
        hello = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert (hello.returncode, hello.stdout) == (0, "hello, world\n"), hello.stderr
        warnings = d.log().count("accept: Too many open files")
        assert 1 <= warnings <= time.monotonic() - t0 + 1
        assert d.proc.poll() is None


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs /proc")
def test_idle_workers_are_reaped(corpus: Path) -> None:
    config = "worker_idle_timeout = 0.2\n"
    with start_daemon(config=config) as d:
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0
        for worker in _workers(d):  # (none left if the timer was quicker than us)
            try:
                gone = os.pidfd_open(worker)  # readable once the process has exited
            except ProcessLookupError:
                continue
            try:
                ready, _, _ = select.select([gone], [], [], TIMEOUT)  # the daemon's timer
            finally:
                os.close(gone)
            assert ready
        assert not _workers(d)
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0


def test_the_sysroot_is_searched_last_through_the_daemon(corpus: Path, tmp_path: Path) -> None:
    """As in process: a program needing libc.so runs with no -L when the
    daemon has a sysroot (here $WASMRUN_SYSROOT in its environment)."""
    sysroot = tmp_path / "sysroot"
    (sysroot / "lib").mkdir(parents=True)
    (sysroot / "lib" / "libc.so").write_bytes((corpus / "libc.so").read_bytes())
    with start_daemon(env={"WASMRUN_SYSROOT": str(sysroot)}) as d:
        env = {k: v for k, v in os.environ.items() if k != "WASMRUN_LIBRARY_PATH"}
        env["WASMRUN_SOCKET"] = str(d.socket)
        done = subprocess.run(
            [sys.executable, "-m", "wasmrun.client.cli", "run", str(corpus / "hello.wasm")],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
        assert (done.returncode, done.stdout) == (0, "hello, world\n"), done.stderr
        assert "run " in d.log() and "exit 0" in d.log()


# -- the same answers as in process ----------------------------------------------------


def _both(d: Daemon, *args: str) -> tuple[subprocess.CompletedProcess[str], ...]:
    """``wasmrun ARGS`` through the daemon and with --no-daemon."""
    env = {**os.environ, "WASMRUN_SOCKET": str(d.socket)}
    out = []
    for extra in ((), ("--no-daemon",)):
        command = [sys.executable, "-m", "wasmrun.client.cli", args[0], *extra, *args[1:]]
        out.append(
            subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)
        )
    return tuple(out)


def test_exits_traps_and_bad_modules_answer_alike_through_the_daemon(
    corpus: Path, tmp_path: Path
) -> None:
    """exit(N) in a constructor or a called function, a malformed module, a
    module wasmtime rejects (its reason kept), a device or a FIFO named as
    the program: the same line and status through a worker as in process."""
    import wasmtime

    bad = bytearray((corpus / "hello.wasm").read_bytes())
    bad[10] = 0x0A  # the dylink.0 name's length
    (tmp_path / "bad.wasm").write_bytes(bad)
    (tmp_path / "legacy.wasm").write_bytes(
        wasmtime.wat2wasm(
            '(module (memory (export "memory") 1) (tag $e)'
            ' (func (export "_start") try nop catch $e end))'
        )
    )
    fifo = tmp_path / "fifo.wasm"  # nobody writes it: opening it must not hang
    os.mkfifo(fifo)
    lib = ("-L", str(corpus))
    cases = [
        (("run", *lib, str(corpus / "exitctormain.wasm")), 3, ""),
        (("call", *lib, "libquit.so", "quit_with", "5"), 5, "exit(5) called during quit_with()"),
        (("call", *lib, "libexitctor.so", "exitctor_never"), 3, "libexitctor.so"),
        (("run", *lib, str(tmp_path / "bad.wasm")), 127, "no dylink.0 section"),
        (("run", str(tmp_path / "legacy.wasm")), 127, "legacy_exceptions feature required"),
        (("run", *lib, str(corpus / "trap.wasm")), 134, "wasm trap"),
        (("run", "/dev/zero"), 127, "/dev/zero: not a regular file"),
        (("run", str(fifo)), 127, "not a regular file"),
    ]
    with start_daemon() as d:
        for args, status, text in cases:
            remote, local = _both(d, *args)
            assert (remote.returncode, remote.stdout, remote.stderr) == (
                local.returncode,
                local.stdout,
                local.stderr,
            ), args
            assert remote.returncode == status, (args, remote.stderr)
            assert text in remote.stderr and "Traceback" not in remote.stderr
        log = d.log()
        assert log.count(" run ") + log.count(" dlopen ") >= len(cases)  # all went through it


def test_the_configured_module_limits_hold_through_the_daemon(corpus: Path) -> None:
    with start_daemon(config="max_file_size = 20000\n") as d:
        done = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert done.returncode == 127, done
        assert "over the limit of 20000 bytes for a module (max_file_size)" in done.stderr
        assert "libc.so" in done.stderr
    with start_daemon(config="max_libraries = 1\n") as d:
        done = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert done.returncode == 127 and "max_libraries" in done.stderr, done.stderr


def test_a_worker_that_died_while_idle_costs_no_request(corpus: Path) -> None:
    with start_daemon() as d:
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0
        [worker] = _workers(d)
        os.kill(worker, signal.SIGKILL)
        hello = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert (hello.returncode, hello.stdout) == (0, "hello, world\n"), hello.stderr
        assert "had died while idle" in d.log()


def test_a_second_sigterm_cancels_a_stuck_run_and_the_daemon_exits_0(corpus: Path) -> None:
    """A guest blocked in sleep() ignores cancellation: its worker is killed
    and the client still gets its answer (cancelled, 130) before the
    daemon exits 0, well within drain_timeout."""
    with start_daemon(config="drain_timeout = 60.0\nkill_grace = 0.5\n") as d:
        sleeper = _sleeping_client(d, corpus)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_notify(b"STOPPING=1")  # the first was taken
        d.proc.send_signal(signal.SIGTERM)
        _, err = sleeper.communicate(timeout=TIMEOUT)
        assert sleeper.returncode == 130, err
        assert d.proc.wait(TIMEOUT) == 0
        assert time.monotonic() - t0 < 10  # not the 60 s drain timeout


def test_a_request_with_many_descriptors_reaches_its_worker(corpus: Path, tmp_path: Path) -> None:
    """200 preopened directories: every descriptor travels on to the worker."""
    dirs = [arg for i in range(200) for arg in ("--dir", f"{tmp_path}::/d{i}")]
    with start_daemon() as d:
        done = _cli(d, corpus, *dirs, str(corpus / "hello.wasm"))
        assert (done.returncode, done.stdout) == (0, "hello, world\n"), done.stderr
        assert "exit 0" in d.log()


def test_a_daemon_whose_zygote_died_stops_and_exits_non_zero(corpus: Path) -> None:
    """No worker can be started any more: the daemon says so and exits 1
    (systemd's Restart=on-failure starts a new one)."""
    with start_daemon() as d:
        [zygote] = _children(d.proc.pid)
        os.kill(zygote, signal.SIGKILL)  # noticed at once, not at the next request
        assert d.proc.wait(TIMEOUT) == 1
        assert "the zygote died" in d.log()


def test_the_linker_trace_goes_to_the_clients_stderr(corpus: Path) -> None:
    """WASMRUN_DEBUG through the daemon: the same trace as in process, on
    the client's stderr (only the pid in each line's prefix differs)."""
    import re

    with start_daemon() as d:
        env = {**os.environ, "WASMRUN_DEBUG": "libs,bindings", "WASMRUN_SOCKET": str(d.socket)}
        out = []
        for extra in ((), ("--no-daemon",)):
            done = subprocess.run(
                [sys.executable, "-m", "wasmrun.client.cli", "run", *extra, "-L", str(corpus)]
                + [str(corpus / "dlmain.wasm")],
                capture_output=True,
                text=True,
                env=env,
                timeout=TIMEOUT,
            )
            out.append((done.returncode, done.stdout, re.sub(r"wasmrun\[\d+\]", "P", done.stderr)))
        remote, local = out
        assert "P: libs: " in remote[2] and "P: bindings: " in remote[2]
        assert remote == local
        plain = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert "libs:" not in plain.stderr  # the next request traces nothing


def test_wasmrun_status_shows_the_daemons_counters(corpus: Path) -> None:
    with start_daemon() as d:
        assert _cli(d, corpus, str(corpus / "hello.wasm")).returncode == 0
        env = {**os.environ, "WASMRUN_SOCKET": str(d.socket)}
        done = subprocess.run(
            [sys.executable, "-m", "wasmrun.client.cli", "status"],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
        uid = os.geteuid()
        assert lines["daemon.requests"] == "1" and lines[f"uid.{uid}.workers"] == "1"
        assert f"uid.{uid}.queued" in lines and "code.entries" in lines
    gone = subprocess.run(
        [sys.executable, "-m", "wasmrun.client.cli", "status", "--socket", str(d.socket)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert gone.returncode == 1 and gone.stderr == f"wasmrun: no wasmrund answers at {d.socket}\n"


# -- compiler processes --------------------------------------------------------------


def _straight_line_program(path: Path, instructions: int) -> Path:
    path.write_bytes(straight_line_program(instructions))
    return path


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_module_that_exhausts_the_compiler_costs_only_its_request(
    corpus: Path, tmp_path: Path
) -> None:
    """Compiling happens in a compiler process capped at compile_memory:
    a module built to exhaust Cranelift gets its request a one-line error,
    the front's memory does not move, and the daemon goes on."""
    heavy = _straight_line_program(tmp_path / "heavy.wasm", 1_000_000)
    with start_daemon(config=f"compile_memory = {256 << 20}\n") as d:
        done = _cli(d, corpus, str(heavy))
        assert done.returncode == 127, done
        assert done.stderr == (
            f"wasmrun: {heavy}: cannot compile: the compiler process ran out of memory "
            "(compile_memory is 256 MiB) or crashed\n"
        )
        assert _peak_rss_mib(d.proc.pid) < 200  # ~770 MiB when the front compiled it
        hello = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert (hello.returncode, hello.stdout) == (0, "hello, world\n")


def test_a_module_that_compiles_too_long_is_stopped(corpus: Path, tmp_path: Path) -> None:
    heavy = _straight_line_program(tmp_path / "heavy.wasm", 1_000_000)
    with start_daemon(config="compile_timeout = 1.0\n") as d:
        started = time.monotonic()
        done = _cli(d, corpus, str(heavy))
        assert time.monotonic() - started < 4.5  # it would take ~5 s
        assert done.returncode == 127, done
        assert done.stderr == (
            f"wasmrun: {heavy}: cannot compile: it took longer than compile_timeout (1 s)\n"
        )
        hello = _cli(d, corpus, str(corpus / "hello.wasm"))
        assert (hello.returncode, hello.stdout) == (0, "hello, world\n")
        assert "compile.timeouts: 1" in _cli_status(d)


def _cli_status(d: Daemon) -> str:
    return subprocess.run(
        [sys.executable, "-m", "wasmrun.client.cli", "status", "--socket", str(d.socket)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout


def test_compilers_run_under_their_limits(corpus: Path, tmp_path: Path) -> None:
    """A compiler has the front's identity (here: ours), no_new_privs, its
    memory ceiling, and nothing of the zygote's; it stays for the next
    compile."""
    with start_daemon(config=f"compile_memory = {1 << 30}\n") as d:
        for n in (31_337, 31_338):  # new modules: compiled, not found in the cache
            program = _straight_line_program(tmp_path / f"p{n}.wasm", n)
            done = _cli(d, corpus, str(program))
            assert (done.returncode, done.stderr) == (0, "")
        [compiler] = _compilers(d)
        [zygote] = _children(d.proc.pid)
        assert _limits(compiler)["Max data size"] == str(1 << 30)
        fields = Path(f"/proc/{compiler}/status").read_text()
        assert "NoNewPrivs:\t1" in fields
        assert f"Uid:\t{os.getuid()}\t" in fields
        shared = _open_files(compiler) & _open_files(zygote)
        assert {f for f in shared if f.startswith("socket:")} == set()
        assert "compile.processes_started: 1" in _cli_status(d)


def test_a_compiler_killed_while_idle_costs_no_request(corpus: Path, tmp_path: Path) -> None:
    with start_daemon() as d:
        first = _cli(d, corpus, str(_straight_line_program(tmp_path / "a.wasm", 31_401)))
        assert first.returncode == 0, first
        [compiler] = _compilers(d)
        pidfd = os.pidfd_open(compiler)
        try:
            os.kill(compiler, signal.SIGKILL)  # as the OOM killer would
            assert select.select([pidfd], [], [], TIMEOUT)[0]  # it has ended
        finally:
            os.close(pidfd)
        second = _cli(d, corpus, str(_straight_line_program(tmp_path / "b.wasm", 31_402)))
        assert (second.returncode, second.stderr) == (0, "")
        assert "compile.processes_started: 2" in _cli_status(d)


def test_a_worker_running_many_new_programs_keeps_within_its_descriptors(
    corpus: Path, tmp_path: Path
) -> None:
    """Every module a worker keeps holds a descriptor (wasmtime maps it from
    the front's memfd): its caches are bounded by count to fit
    worker_max_fds, so a tenant running program after program never meets
    EMFILE (before: one descriptor more per new program, for good)."""
    with start_daemon(config="worker_max_fds = 64\nconcurrency = 1\n") as d:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for n in range(80):
                program = _straight_line_program(tmp_path / f"p{n}.wasm", 500 + n)
                msg = raw_run(d, program, stdout=null)
                assert isinstance(msg, RunResult) and msg.exit_code == 0, (n, msg)
        finally:
            os.close(null)
        [worker] = _workers(d)
        assert len(os.listdir(f"/proc/{worker}/fd")) < 48
