"""The loader daemon, for real: ``wasmrund`` subprocesses on temporary sockets
(each with its own copy of the test session's compiled-code cache), driven by
the ``wasmrun`` client and by raw protocol messages.

Every wait has a timeout and every daemon is killed in teardown, so a hung
daemon fails a test instead of hanging the run.
"""

from __future__ import annotations

import array
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest
from conftest import TEST_CACHE_DIR
from wasmrun.protocol import (
    CallResult,
    Connection,
    Dlopen,
    Error,
    Limits,
    Message,
    Ping,
    Pong,
    Request,
    Run,
    RunResult,
    Stats,
    StatsResult,
)

TIMEOUT = 30  # seconds: generous for a loaded 2-core CI machine, finite for a hang


# -- helpers ------------------------------------------------------------------------


def _short_dir() -> Path:
    """Unix socket paths are limited to 108 bytes; pytest's tmp_path can be
    longer, so sockets live in a short /tmp directory."""
    return Path(tempfile.mkdtemp(prefix="wrd-", dir="/tmp"))


class Daemon:
    """A wasmrund subprocess and where to reach it."""

    def __init__(
        self,
        proc: subprocess.Popen,
        directory: Path,
        sock: Path,
        log: Path,
        notify: socket.socket | None = None,
    ) -> None:
        self.proc = proc
        self.dir = directory
        self.socket = sock
        self.log_path = log
        self.notify = notify  # our stand-in for systemd's notification socket

    def wait_notify(self, state: bytes) -> bytes:
        """Block until the daemon sends a notification with a line starting
        with ``state`` (sd_notify: READY=1, STOPPING=1, STATUS=...)."""
        assert self.notify is not None
        self.notify.settimeout(TIMEOUT)
        while True:
            message = self.notify.recv(4096)
            for line in message.split(b"\n"):
                if line.startswith(state):
                    return line

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        if self.notify is not None:
            self.notify.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_ready(notify: socket.socket, proc: subprocess.Popen, log: Path) -> None:
    """Wait for READY=1 on our stand-in for systemd's notification socket."""
    deadline = time.monotonic() + TIMEOUT
    pidfd = os.pidfd_open(proc.pid)  # readable once the daemon has exited
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([notify, pidfd], [], [], left)
            if notify in ready and b"READY=1" in notify.recv(4096).split(b"\n"):
                return
            if pidfd in ready:
                proc.wait()
                raise AssertionError(f"wasmrund exited {proc.returncode}:\n{log.read_text()}")
    finally:
        os.close(pidfd)
    proc.kill()
    raise AssertionError(f"wasmrund not ready after {TIMEOUT} s:\n{log.read_text()}")


def start_daemon(
    *args: str,
    config: str | None = None,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    sock: Path | None = None,
) -> Daemon:
    """Start wasmrund on a fresh socket with a fresh cache (a copy of the
    session's, so libc.so is not recompiled) and wait until it is ready."""
    directory = _short_dir()
    sock = sock or directory / "d.sock"
    cache = directory / "cache"
    if TEST_CACHE_DIR.is_dir():
        shutil.copytree(TEST_CACHE_DIR, cache)
    log = directory / "wasmrund.log"
    command = [*prefix, sys.executable, "-m", "wasmrun.daemon", "--socket", str(sock)]
    command += ["--cache-dir", str(cache), *args]
    if config is not None:
        (directory / "wasmrund.toml").write_text(config)
        command += ["--config", str(directory / "wasmrund.toml")]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(directory / "notify"))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    full_env.update(env or {})
    full_env["NOTIFY_SOCKET"] = str(directory / "notify")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=full_env,
            pass_fds=pass_fds,
        )
        try:
            _wait_ready(notify, proc, log)
        except BaseException:
            notify.close()
            proc.kill()
            proc.wait(TIMEOUT)
            shutil.rmtree(directory, ignore_errors=True)
            raise
    return Daemon(proc, directory, sock, log, notify)


def client(
    daemon: Daemon | None,
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``wasmrun`` (through ``daemon``; None: --no-daemon)."""
    full_env = {k: v for k, v in os.environ.items() if k != "WASMRUN_LIBRARY_PATH"}
    full_env.update(env or {})
    command, rest = list(args[:1]), list(args[1:])
    extra = ["--socket", str(daemon.socket)] if daemon else ["--no-daemon"]
    return subprocess.run(
        [sys.executable, "-m", "wasmrun.client.cli", *command, *extra, *rest],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


class Raw:
    """A protocol-level client on one connection (the reference encoder)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self.conn = Connection("client")

    def send(self, msg: Request, fds: Sequence[int] = ()) -> None:
        data = self.conn.send(msg)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([data], anc if fds else [])

    def receive(self) -> Message | None:
        while True:
            msg = self.conn.next_message()
            if msg is not None or self.conn.state.value != "open":
                return msg
            self.conn.receive_data(self.sock.recv(65536))

    def request(self, msg: Request, fds: Sequence[int] = ()) -> Message | None:
        self.send(msg, fds)
        return self.receive()

    def close(self) -> None:
        self.sock.close()


def raw_run(
    daemon: Daemon,
    program: Path,
    args: Sequence[str] = (),
    stdout: int | None = None,
    stdin: int | None = None,
    request_id: int = 1,
    **fields,
) -> Message | None:
    """One Run over a fresh connection, sending the program's descriptor."""
    roles, fds = [], []
    for role, fd in (("stdin", stdin), ("stdout", stdout)):
        if fd is not None:
            roles.append(role)
            fds.append(fd)
    prog = os.open(program, os.O_RDONLY)
    try:
        raw = Raw(daemon.socket)
        try:
            return raw.request(
                Run(
                    program=str(program),
                    args=(program.name, *args),
                    fd_roles=(*roles, "program"),
                    request_id=request_id,
                    **fields,
                ),
                [*fds, prog],
            )
        finally:
            raw.close()
    finally:
        os.close(prog)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(corpus: Path) -> Iterator[Daemon]:
    """A daemon shared by the tests of this module (concurrency 4)."""
    with start_daemon("-L", str(corpus), "--concurrency", "4") as d:
        yield d


# -- running programs -----------------------------------------------------------------


def test_program_gets_stdio_files_and_exit_status(daemon: Daemon, corpus: Path, tmp_path: Path):
    (tmp_path / "input.txt").write_text("from the host\n")
    p = client(
        daemon,
        "run",
        "-L",
        str(corpus),
        "--env",
        "GREETING=bonjour",
        "--dir",
        f"{tmp_path}::/data",
        str(corpus / "io.wasm"),
        "first",
        "42",
        stdin="shout this\n",
    )
    assert p.returncode == 42, p.stderr
    assert p.stdout.splitlines() == [
        f"arg0={corpus / 'io.wasm'}",
        "arg1=first",
        "arg2=42",
        "GREETING=bonjour",
        "stdin=SHOUT THIS",
        "input=from the host",
    ]
    assert p.stderr == "to stderr\n"
    assert (tmp_path / "output.txt").read_text() == "written by the guest\n"
    # ...and it really went through the daemon, which logged it.
    log = daemon.log()
    assert f"uid={os.getuid()} " in log
    assert f"run {corpus / 'io.wasm'} " in log and "exit 42" in log


def test_output_is_appended_to_the_clients_file(daemon: Daemon, corpus: Path, tmp_path: Path):
    """The guest writes into the client's open file: an O_APPEND file is not
    truncated, and a file positioned mid-way is written from there."""
    appended = tmp_path / "appended.txt"
    appended.write_text("already here\n")
    positioned = tmp_path / "positioned.txt"
    positioned.write_text("0123456789\n")
    with open(appended, "a") as out:
        msg = raw_run(daemon, corpus / "hello.wasm", stdout=out.fileno())
    assert isinstance(msg, RunResult) and msg.exit_code == 0
    assert appended.read_text() == "already here\nhello, world\n"
    with open(positioned, "r+") as out:
        out.seek(4)
        msg = raw_run(daemon, corpus / "hello.wasm", stdout=out.fileno())
        assert out.tell() == 4 + len("hello, world\n")  # the client's offset moved
    assert positioned.read_text() == "0123hello, world\n"


def test_stdin_from_a_file_read_midway(daemon: Daemon, corpus: Path, tmp_path: Path):
    """The guest reads the client's stdin from where the client left it."""
    source = tmp_path / "in.txt"
    source.write_text("skip me\nread me\n")
    out = tmp_path / "out.txt"
    stdin = os.open(source, os.O_RDONLY)
    try:
        assert os.read(stdin, len("skip me\n")) == b"skip me\n"
        with open(out, "w") as stdout:
            msg = raw_run(daemon, corpus / "io.wasm", stdin=stdin, stdout=stdout.fileno())
    finally:
        os.close(stdin)
    assert isinstance(msg, RunResult), msg
    assert "stdin=READ ME" in out.read_text().splitlines()


def test_same_output_and_status_with_and_without_the_daemon(daemon: Daemon, corpus: Path):
    """Relative paths typed by the user come back as typed in messages."""
    cases = [
        ("run", "-L", ".", "hello.wasm"),
        ("run", "-L", ".", "needsgone.wasm"),
        ("run", "-L", ".", "./nothere.wasm"),
        ("run", "-L", ".", "trap.wasm"),
        ("run", "-L", ".", "libleft.so"),
        ("run", "-L", ".", "--dir", "no/such/dir::/x", "hello.wasm"),
        ("run", "-L", ".", "--preload", "libnothere.so", "hello.wasm"),
        ("run", "-L", ".", "--timeout", "0.2", "spin.wasm"),
        ("run", "-L", ".", "--max-memory", "16M", "grow.wasm", "64"),
        ("call", "-L", ".", "libleft.so", "left"),
        ("call", "-L", ".", "libleft.so", "left", "1", "0x10", "2.5"),
        # exit-time handlers after the call: destructors (of what it
        # dlopen'ed too), one that calls exit(4)
        ("call", "-L", ".", "libplugin.so", "plugin_add", "2", "3"),
        ("call", "-L", ".", "libdlkeep.so", "keep_plugin"),
        ("call", "-L", ".", "libexitdtor.so", "exitdtor_value"),
        ("call", "-L", ".", "libleft.so", "nosuchfunction"),
    ]
    for case in cases:
        here = client(None, *case, cwd=corpus)
        there = client(daemon, *case, cwd=corpus)
        assert (there.returncode, there.stdout, there.stderr) == (
            here.returncode,
            here.stdout,
            here.stderr,
        ), case
    assert here.returncode == 127 and "nosuchfunction" in here.stderr


def test_call_returns_the_functions_result(daemon: Daemon, corpus: Path):
    p = client(daemon, "call", "-L", str(corpus), "libleft.so", "left")
    assert (p.returncode, p.stdout.splitlines()[-1]) == (0, "10"), p.stderr
    raw = Raw(daemon.socket)
    try:
        msg = raw.request(Dlopen(library="libleft.so", symbol="left", library_path=(str(corpus),)))
    finally:
        raw.close()
    assert isinstance(msg, CallResult) and msg.results == (10,)


def test_runs_do_not_see_each_others_memory(daemon: Daemon, corpus: Path, tmp_path: Path):
    """left() counts calls in libbase.so's memory: every request starts from
    a fresh instance set, also on one connection and at the same time."""
    raw = Raw(daemon.socket)
    try:
        for rid in (1, 2, 3):
            raw.send(
                Dlopen(
                    library="libleft.so",
                    symbol="left",
                    library_path=(str(corpus),),
                    request_id=rid,
                )
            )
        answers = [raw.receive() for _ in range(3)]
    finally:
        raw.close()
    assert sorted(a.request_id for a in answers) == [1, 2, 3]
    assert all(isinstance(a, CallResult) and a.results == (10,) for a in answers)
    outputs = []
    for i in range(2):
        out = tmp_path / f"diamond{i}.txt"
        with open(out, "w") as f:
            msg = raw_run(
                daemon, corpus / "diamond.wasm", stdout=f.fileno(), library_path=(str(corpus),)
            )
        assert isinstance(msg, RunResult) and msg.exit_code == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    assert "left=10 right=200 base_counter=2" in outputs[0]


def test_repeated_runs_each_get_their_own_fresh_run(daemon: Daemon, corpus: Path):
    """A worker prepares the next run of the program it just ran ahead of
    time (a spare instance set): each run still starts from fresh memory and
    constructors, with its own arguments, environment and stdin."""
    for _ in range(3):
        p = client(daemon, "run", "-L", str(corpus), str(corpus / "counter.wasm"))
        assert (p.returncode, p.stdout, p.stderr) == (0, "runs=1 ctors=1\n", "")
    for word, status in (("one", "3"), ("two", "4"), ("three", "5")):
        p = client(
            daemon,
            "run",
            "-L",
            str(corpus),
            "--env",
            f"GREETING={word}",
            str(corpus / "io.wasm"),
            word,
            status,
            stdin=f"{word}\n",
        )
        assert p.returncode == int(status), p.stderr
        assert p.stdout.splitlines()[1:5] == [
            f"arg1={word}",
            f"arg2={status}",
            f"GREETING={word}",
            f"stdin={word.upper()}",
        ]


def _head(daemon: Daemon | None, corpus: Path) -> tuple[int, bytes, str]:
    """``wasmrun run loud.wasm 2000 | head -c 20``: (status, output, stderr)."""
    extra = ["--socket", str(daemon.socket)] if daemon else ["--no-daemon"]
    command = [sys.executable, "-m", "wasmrun.client.cli", "run", *extra, "-L", str(corpus)]
    proc = subprocess.Popen(
        [*command, str(corpus / "loud.wasm"), "2000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(20)
    proc.stdout.close()  # as head does: the guest's next writes meet a closed pipe
    err = proc.stderr.read().decode()
    return proc.wait(TIMEOUT), head, err


def test_a_guest_writing_into_a_closed_pipe_does_not_kill_its_worker(daemon: Daemon, corpus: Path):
    """The guest dies of SIGPIPE, and wasmrun with it, the same way in
    process (the kernel kills wasmrun) and through the daemon (the worker
    stops the guest, the client kills itself); the worker itself does not
    die of it, which answered "died unexpectedly" (70)."""
    assert _head(daemon, corpus) == (-signal.SIGPIPE, b"line 0000000000 of o", "")
    assert _head(None, corpus) == (-signal.SIGPIPE, b"line 0000000000 of o", "")
    p = client(daemon, "run", "-L", str(corpus), str(corpus / "hello.wasm"))
    assert (p.returncode, p.stdout) == (0, "hello, world\n")  # the worker goes on


def test_32_concurrent_clients(daemon: Daemon, corpus: Path, tmp_path: Path):
    """Each client gets its own output and its own exit status."""
    results: dict[int, tuple[object, str]] = {}

    def one(i: int) -> None:
        out = tmp_path / f"out{i}.txt"
        with open(out, "w") as f:
            msg = raw_run(
                daemon,
                corpus / "io.wasm",
                args=(f"client{i}", str(i)),
                stdout=f.fileno(),
                stdin=os.open(os.devnull, os.O_RDONLY),
                library_path=(str(corpus),),
            )
        results[i] = (msg, out.read_text())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert time.monotonic() - t0 < TIMEOUT
    assert sorted(results) == list(range(32))
    for i, (msg, text) in results.items():
        assert isinstance(msg, RunResult) and msg.exit_code == i, (i, msg)
        assert f"arg1=client{i}" in text.splitlines()


def test_timeout_stops_an_infinite_loop_and_the_daemon_goes_on(daemon: Daemon, corpus: Path):
    t0 = time.monotonic()
    p = client(daemon, "run", "-L", str(corpus), "--timeout", "0.3", str(corpus / "spin.wasm"))
    assert time.monotonic() - t0 < 10
    assert (p.returncode, p.stdout) == (124, "spinning\n")
    assert p.stderr == "wasmrun: run timed out after 0.3 s\n"
    p = client(daemon, "run", "-L", str(corpus), str(corpus / "hello.wasm"))
    assert (p.returncode, p.stdout) == (0, "hello, world\n")


def test_garbage_gets_a_protocol_error_and_the_daemon_goes_on(daemon: Daemon):
    for garbage in (b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff", b"\x00\x00\x00\x01\xc1"):
        raw = Raw(daemon.socket)
        try:
            raw.sock.sendall(garbage)
            msg = raw.receive()
            assert isinstance(msg, Error) and msg.kind == "protocol", msg
            assert msg.request_id is None and msg.exit_code == 76
            assert raw.sock.recv(100) == b""  # and the daemon closed the connection
        finally:
            raw.close()
    raw = Raw(daemon.socket)
    try:
        assert isinstance(raw.request(Ping(request_id=3)), Pong)
        stats = raw.request(Stats(request_id=4))
        assert isinstance(stats, StatsResult) and stats.stats["daemon.protocol_errors"] >= 3
    finally:
        raw.close()


def test_a_request_without_the_program_descriptor_is_refused(daemon: Daemon, corpus: Path):
    raw = Raw(daemon.socket)
    try:
        msg = raw.request(Run(program=str(corpus / "hello.wasm")))
    finally:
        raw.close()
    assert isinstance(msg, Error) and msg.kind == "load"
    assert "open descriptor" in msg.message


def test_a_descriptor_for_another_file_is_refused(daemon: Daemon, corpus: Path):
    """The daemon only loads the file the client itself opened."""
    fd = os.open(corpus / "trap.wasm", os.O_RDONLY)
    try:
        raw = Raw(daemon.socket)
        msg = raw.request(Run(program=str(corpus / "hello.wasm"), fd_roles=("program",)), [fd])
        raw.close()
    finally:
        os.close(fd)
    assert isinstance(msg, Error) and msg.kind == "load"
    assert "not the file the client opened" in msg.message


def test_the_client_imports_little_on_the_daemon_path(daemon: Daemon, corpus: Path):
    code = (
        "import sys\n"
        "from wasmrun.client.cli import main\n"
        f"rc = main(['run', '--socket', {str(daemon.socket)!r}, {str(corpus / 'hello.wasm')!r}])\n"
        "heavy = sorted(m for m in ('wasmtime', 'trio', 'attr', 'attrs', 'wasmrun.runtime',"
        " 'wasmrun.protocol', 'msgpack', 'argparse', 'socket', 'signal', 'typing',"
        " 'subprocess', 'threading') if m in sys.modules)\n"
        "print(rc, heavy, file=sys.stderr)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "WASMRUN_LIBRARY_PATH": str(corpus)},
    )
    assert p.stdout == "hello, world\n"
    assert p.stderr.strip() == "0 []"


@pytest.mark.parametrize("through_daemon", [True, False], ids=["daemon", "in process"])
def test_a_guest_writing_to_a_closed_pipe_dies_of_sigpipe(
    daemon: Daemon, corpus: Path, through_daemon: bool
) -> None:
    """``wasmrun run yes.wasm | head -1``: once the reader is gone the guest
    dies of SIGPIPE, as a native program does, and ``wasmrun`` with it,
    silently; never runs on (ignoring EPIPE) to its timeout. In process the
    kernel kills ``wasmrun``; through the daemon the worker stops the guest
    and the client dies of the signal."""
    extra = ["--socket", str(daemon.socket)] if through_daemon else ["--no-daemon"]
    r, w = os.pipe()
    runner = subprocess.Popen(
        [sys.executable, "-m", "wasmrun.client.cli", "run", *extra, "--timeout", "20"]
        + ["-L", str(corpus), str(corpus / "yes.wasm")],
        stdin=subprocess.DEVNULL,
        stdout=w,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    with open(r, "rb") as reader:  # head -1
        assert _first_line(reader) == b"y\n"
    _, err = runner.communicate(timeout=TIMEOUT)
    assert (runner.returncode, err) == (-signal.SIGPIPE, b"")  # a timeout: 124


def test_sigpipe_ends_only_the_run_that_wrote(daemon: Daemon, corpus: Path) -> None:
    """The worker that stopped a guest for SIGPIPE serves the next request."""
    r, w = os.pipe()
    os.close(r)  # nobody will ever read
    try:
        msg = raw_run(daemon, corpus / "yes.wasm", stdout=w, limits=Limits(timeout_ms=20_000))
    finally:
        os.close(w)
    assert isinstance(msg, Error) and (msg.kind, msg.exit_code) == ("signal", 141), msg
    p = client(daemon, "run", "-L", str(corpus), str(corpus / "hello.wasm"))
    assert (p.returncode, p.stdout) == (0, "hello, world\n")


# -- cancellation -----------------------------------------------------------------------


def _first_line(stream: IO[bytes]) -> bytes:
    """The first line a child writes to ``stream`` (a pipe): the guest
    says it is running. Waits for the pipe, not a clock."""
    ready, _, _ = select.select([stream], [], [], TIMEOUT)
    assert ready, f"nothing written within {TIMEOUT} s"
    return stream.readline()


def _spin_client(daemon: Daemon, corpus: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wasmrun.client.cli",
            "run",
            "--socket",
            str(daemon.socket),
            "-L",
            str(corpus),
            str(corpus / "spin.wasm"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_killed_client_frees_its_worker(corpus: Path):
    with start_daemon("-L", str(corpus), "--concurrency", "1") as d:
        spinner = _spin_client(d, corpus)
        try:
            assert spinner.stdout is not None
            assert _first_line(spinner.stdout) == b"spinning\n"
            spinner.kill()
        finally:
            spinner.wait(TIMEOUT)
        t0 = time.monotonic()
        p = client(d, "run", "-L", str(corpus), str(corpus / "hello.wasm"), timeout=TIMEOUT)
        assert (p.returncode, p.stdout) == (0, "hello, world\n"), p.stderr
        assert time.monotonic() - t0 < 10
        assert "spin.wasm" in d.log() and "cancelled" in d.log()


def test_ctrl_c_cancels_the_remote_run(corpus: Path):
    with start_daemon("-L", str(corpus), "--concurrency", "1") as d:
        spinner = _spin_client(d, corpus)
        try:
            assert spinner.stdout is not None
            assert _first_line(spinner.stdout) == b"spinning\n"
            spinner.send_signal(signal.SIGINT)
            _, err = spinner.communicate(timeout=TIMEOUT)
        finally:
            spinner.kill()
            spinner.wait(TIMEOUT)
        assert spinner.returncode == 130
        assert err == b""
        p = client(d, "run", "-L", str(corpus), str(corpus / "hello.wasm"))
        assert (p.returncode, p.stdout) == (0, "hello, world\n"), p.stderr
        assert "cancelled error (exit 130)" in d.log()


def test_a_guest_blocked_reading_stdin_is_stopped_by_its_timeout(corpus: Path, tmp_path: Path):
    """A read cannot be interrupted inside wasmtime; the relay's EOF ends it."""
    with start_daemon("-L", str(corpus), "--concurrency", "1") as d:
        r, w = os.pipe()
        try:
            started = time.monotonic()
            msg = raw_run(
                d,
                corpus / "io.wasm",
                stdin=r,
                stdout=os.open(os.devnull, os.O_WRONLY),
                limits=Limits(timeout_ms=300),
            )
        finally:
            os.close(r)
            os.close(w)
        assert isinstance(msg, Error) and msg.kind == "timeout", msg
        assert time.monotonic() - started < 10


# -- systemd, signals, configuration -------------------------------------------------------


def test_sd_notify_ready_in_the_abstract_namespace(corpus: Path):
    """(Every daemon in this file also reports READY=1 on a path socket.)"""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"wasmrun-test-{os.getpid()}-{time.monotonic_ns()}"
    notify.bind("\0" + name)
    directory = _short_dir()
    env = {**os.environ, "NOTIFY_SOCKET": "@" + name}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmrun.daemon", "--socket", str(directory / "d.sock")],
        env={**env, "WASMRUN_CACHE_DIR": "off"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        notify.settimeout(TIMEOUT)
        assert notify.recv(4096).split(b"\n")[0] == b"READY=1"
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096).startswith(b"STOPPING=1")
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        notify.close()
        shutil.rmtree(directory, ignore_errors=True)


WRAPPER = """
import os, sys
# What systemd does: the listening socket at fd 3, LISTEN_PID = the pid
# that is exec'd (ours: exec keeps it), LISTEN_FDS = how many.
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_socket_activation(corpus: Path):
    directory = _short_dir()
    path = directory / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()
    prefix = [sys.executable, "-c", WRAPPER, str(fd)]
    try:
        # --socket points elsewhere: the inherited socket must win.
        with start_daemon(
            "-L", str(corpus), prefix=prefix, pass_fds=[fd], sock=directory / "unused.sock"
        ) as d:
            listener.close()  # only the daemon holds it now
            d.socket = path
            p = client(d, "run", str(corpus / "hello.wasm"))
            assert (p.returncode, p.stdout) == (0, "hello, world\n"), p.stderr + d.log()
            assert "(from systemd)" in d.log()
            assert not (directory / "unused.sock").exists()
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_sigterm_drains_a_running_request_then_exits_0(corpus: Path):
    """gate.wasm says it runs, then blocks reading a pipe we hold; SIGTERM
    arrives meanwhile; the daemon stops accepting but finishes the run
    once we write its input."""
    with start_daemon("-L", str(corpus)) as d:
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        answers: list[Message | None] = []
        runner = threading.Thread(
            target=lambda: answers.append(
                raw_run(d, corpus / "gate.wasm", stdout=out_w, stdin=stdin_r)
            )
        )
        runner.start()
        with open(out_r, "rb") as out:
            try:
                assert _first_line(out) == b"waiting\n"  # the guest runs now
                d.proc.send_signal(signal.SIGTERM)
                d.wait_notify(b"STOPPING=1")  # sent once the listening socket is closed
                assert d.proc.poll() is None, "exited without draining"
                with pytest.raises(OSError):  # no longer accepting
                    Raw(d.socket)
                os.write(stdin_w, b"5\n")
                runner.join(TIMEOUT)
            finally:
                for fd in (stdin_r, stdin_w, out_w):
                    os.close(fd)
            assert out.read() == b"got 5\n"
        assert d.proc.wait(TIMEOUT) == 0
        assert isinstance(answers[0], RunResult) and answers[0].exit_code == 5
        assert "draining 1 running request" in d.log()


def _stats(d: Daemon) -> dict:
    raw = Raw(d.socket)
    try:
        msg = raw.request(Stats(request_id=1))
    finally:
        raw.close()
    assert isinstance(msg, StatsResult)
    return msg.stats


def test_config_file_limits_and_allowed_uids(corpus: Path):
    config = f"""
library_path = ["{corpus}"]
concurrency = 2
allowed_uids = [{os.getuid()}]
[limits]
timeout = 0.3
max_timeout = 0.5
"""
    with start_daemon(config=config) as d:
        p = client(d, "run", str(corpus / "spin.wasm"))  # the default timeout applies
        assert (p.returncode, p.stderr) == (124, "wasmrun: run timed out after 0.3 s\n")
        p = client(d, "run", "--timeout", "100", str(corpus / "spin.wasm"))  # capped
        assert (p.returncode, p.stderr) == (124, "wasmrun: run timed out after 0.5 s\n")
        p = client(d, "run", str(corpus / "hello.wasm"))  # library_path from the file
        assert (p.returncode, p.stdout) == (0, "hello, world\n")
        assert _stats(d)["daemon.concurrency"] == 2


def test_a_uid_not_allowed_is_refused(corpus: Path):
    with start_daemon(config=f"allowed_uids = [{os.getuid() + 12345}]\n") as d:
        p = client(d, "run", str(corpus / "hello.wasm"))
        assert p.returncode == 76
        assert p.stderr == f"wasmrun: uid {os.getuid()} may not use this wasmrund\n"
        assert "refused uid" in d.log()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrency = 0\n", "concurrency: expected a positive integer, got 0"),
        ("[limits]\ntimeout = 5\nmax_timeout = 1\n", "limits.timeout (5.0) is above"),
        ("sockett = 'x'\n", "sockett: unknown key"),
        ("concurrency = [\n", "invalid TOML"),
    ],
)
def test_a_bad_config_file_is_one_clear_line(text: str, message: str, tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmrun.daemon",
            "--config",
            str(path),
            "--socket",
            "/nonexistent/x",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 2
    assert p.stderr.startswith(f"wasmrund: {path}: ")
    assert message in p.stderr and p.stderr.count("\n") == 1


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon: Daemon):
    p = subprocess.run(
        [sys.executable, "-m", "wasmrun.daemon", "--socket", str(daemon.socket)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "WASMRUN_CACHE_DIR": "off"},
    )
    assert p.returncode == 1
    assert "another wasmrund is already listening there" in p.stderr
    assert isinstance(_stats(daemon), dict)  # the first one is unharmed


def test_autostart(corpus: Path):
    """WASMRUN_AUTOSTART=1: no daemon at the default socket, so the client
    starts one in the background, then uses it."""
    runtime_dir = _short_dir()
    os.chmod(runtime_dir, 0o700)
    shutil.copytree(TEST_CACHE_DIR, runtime_dir / "cache")
    env = {k: v for k, v in os.environ.items() if k != "WASMRUN_SOCKET"}
    env.update(
        XDG_RUNTIME_DIR=str(runtime_dir),
        WASMRUN_AUTOSTART="1",
        WASMRUN_CACHE_DIR=str(runtime_dir / "cache"),  # the daemon inherits it
    )
    log = runtime_dir / "wasmrun" / "wasmrund.log"
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "wasmrun.client.cli",
                "run",
                "-L",
                str(corpus),
                str(corpus / "hello.wasm"),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
        assert (p.returncode, p.stdout) == (0, "hello, world\n"), p.stderr
        assert "run " in log.read_text() and "hello.wasm" in log.read_text()
    finally:
        text = log.read_text() if log.exists() else ""
        for line in text.splitlines():
            if "(concurrency" in line and "pid " in line:
                pid = int(line.rsplit("pid ", 1)[1].rstrip(")"))
                _terminate_and_wait(pid)
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _terminate_and_wait(pid: int) -> None:
    """SIGTERM a process that is not our child (the client started it),
    and wait for it to end: its pidfd becomes readable then."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], TIMEOUT)
        assert ready, f"pid {pid} still running {TIMEOUT} s after SIGTERM"
    finally:
        os.close(pidfd)


def test_a_file_the_daemon_cannot_see_runs_in_process(corpus: Path, tmp_path: Path):
    """As under systemd's PrivateTmp=: the daemon's view of a directory is
    not the client's. The daemon refuses the program, the client notices
    and runs it itself, with the same result."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs mount namespaces (unshare -m)")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    shutil.copy(corpus / "hello.wasm", hidden / "hello.wasm")
    # The daemon starts with an empty tmpfs over `hidden`.
    prefix = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(hidden)]
    with start_daemon("-L", str(corpus), prefix=prefix) as d:
        p = client(d, "run", "-L", str(corpus), str(hidden / "hello.wasm"))
        assert (p.returncode, p.stdout, p.stderr) == (0, "hello, world\n", "")
        assert "not visible to wasmrund" not in p.stderr
        assert f"run {hidden / 'hello.wasm'} " in d.log() and "load error" in d.log()


def test_the_client_knows_the_daemons_not_visible_text():
    from wasmrun.client import cli
    from wasmrun.daemon import execute

    assert cli.NOT_VISIBLE == execute.NOT_VISIBLE
