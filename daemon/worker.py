"""A worker process: runs guests for exactly one identity, one at a time.

Forked by the zygote (:mod:`wasmrun.daemon.zygote`) from its warm state
(engine, preloaded modules), a worker first becomes its tenant
(:func:`~wasmrun.daemon.identity.become`), then serves jobs the front sends
over its channel. Everything a run opens (the program, its libraries, the
guest's ``dlopen``s, the client's directories by their descriptors) is
opened here, with the tenant's credentials, so the kernel decides.

Messages on the channel (see :mod:`wasmrun.daemon.channel`):

* front -> worker: ``job`` (a protocol request's payload, its descriptor
  roles, the descriptors, its number), ``code`` (an answer to our
  request: a sealed memfd of compiled code, or an error); on the cancel
  socket, :data:`CANCEL` records.
* worker -> front: ``code`` (the bytes of a module we need compiled code
  for), ``done`` (the protocol response's payload).

The main thread owns the channel: it receives a job, asks for code while
linking, and sends the answer. Cancellation comes on a second socket, read
by a thread of its own, so a ``cancel`` reaches the running guest (through
its RunControl and epoch interruption) while the main thread is inside
wasmtime. A guest that does not stop (a host call that blocks) is the
front's to handle: it kills this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import wasmtime
from wasmrun.protocol import Error, decode_message, encode_payload
from wasmrun.protocol.messages import Request
from wasmrun.runtime import LimitError, LoadError, RunControl, Runtime, debug

from .channel import CANCEL, CANCEL_REASONS, CLOSED, ChannelError, SyncChannel, close_fds
from .config import DaemonConfig
from .execute import SIGPIPE_REASON, Job, error_for, execute, stopped_error
from .stdio import StdioRelay

log = logging.getLogger("wasmrund")


class CodeUnavailable(Exception):
    """Compiled code was needed while the front does not answer for it."""


class RemoteCode:
    """A runtime ``code_source``: compiled code from the front, never
    compiled here. The asking thread owns the channel while it waits.

    The front answers code requests only while it waits for a job's end:
    ``offline`` (set while the worker prepares a spare between jobs) makes a
    request fail at once instead of waiting for an answer that never comes,
    with the next job's message taken for it."""

    def __init__(self, engine: wasmtime.Engine, channel: SyncChannel) -> None:
        self.engine = engine
        self.channel = channel
        self.offline = False

    @contextlib.contextmanager
    def between_jobs(self) -> Iterator[None]:
        """No code requests meanwhile (see the class docstring)."""
        self.offline = True
        try:
            yield
        finally:
            self.offline = False

    def __call__(self, digest: str, data: bytes) -> wasmtime.Module:
        if self.offline:
            raise CodeUnavailable("compiled code is fetched only during a job")
        self.channel.send({"op": "code", "data": data})
        while True:
            msg, fds = self.channel.receive()
            if msg["op"] == "code":
                break
            close_fds(fds)
        if not fds:
            error = str(msg.get("error", "no compiled code"))
            if msg.get("limit"):  # a bound of the daemon's, not the module's fault
                raise LimitError(error)
            raise wasmtime.WasmtimeError(error)
        try:
            return wasmtime.Module.deserialize_file(self.engine, f"/proc/self/fd/{fds[0]}")
        finally:
            close_fds(fds)


class _Current:
    """The job being run, for the cancel thread.

    A cancel can arrive before its job does (the front sends the job, then
    a cancel on the other socket, and this thread may read the cancel
    first): it is kept, and the job is stopped as it starts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.number = 0
        self.control: RunControl | None = None
        self.early: tuple[int, str] | None = None  # a cancel for a later job

    def start(self, number: int, control: RunControl) -> None:
        with self.lock:
            self.number = number
            self.control = control
            if self.early is not None and self.early[0] == number:
                control.cancel(self.early[1])
            self.early = None

    def end(self) -> None:
        with self.lock:
            self.control = None

    def cancel(self, number: int, reason: str) -> None:
        with self.lock:
            if number == self.number and self.control is not None:
                self.control.cancel(reason)
            elif number > self.number:
                self.early = (number, reason)

    def cancel_running(self, reason: str) -> None:
        """Stop the job running now, if any."""
        with self.lock:
            if self.control is not None:
                self.control.cancel(reason)


class _SigpipeWatch:
    """A guest's write to a pipe or socket whose reader went away stops
    its run as SIGPIPE would stop a native program (and ``wasmrun`` in
    process): the client then dies of SIGPIPE itself. Without this, the
    guest would get EPIPE, and one that ignores it (most C programs do)
    would run on to its timeout: ``wasmrun run yes.wasm | head`` would hang.

    The signal is raised in the thread that wrote: the guest's (the main
    thread, or a thread wasmtime started from it). Python's C-level handler
    writes its number to the wakeup pipe at once, even while the main
    thread is inside wasmtime; a thread of ours reads it and stops the run
    at its next epoch check. The worker's threads that write to clients'
    pipes (the stdio relay's) block SIGPIPE: their EPIPE is not the
    guest's write.

    Signals belong to the job during which they were raised: the pipe is
    drained (and what it held dropped) as a job starts, and read again
    whenever the job's outcome is decided (:class:`_WorkerControl`), all
    under one lock with the reading thread, so a late read never stops the
    next job, and a guest that ends right after its failed write still
    ends as killed by SIGPIPE. Create from the main thread."""

    def __init__(self, current: _Current) -> None:
        self.current = current
        self.lock = threading.Lock()
        self._r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGPIPE, lambda *_: None)  # the Python-level part: nothing
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="wasmrund-sigpipe", daemon=True).start()

    def _raised(self) -> bool:
        """Whether SIGPIPE was raised since the last read (call locked)."""
        raised = False
        try:
            while data := os.read(self._r, 256):
                raised = raised or signal.SIGPIPE in data
        except BlockingIOError:
            pass
        return raised

    def _watch(self) -> None:
        while True:
            select.select([self._r], [], [])
            with self.lock:
                if self._raised():
                    self.current.cancel_running(SIGPIPE_REASON)

    def start(self, number: int, control: RunControl) -> None:
        """The job ``number`` starts: what was raised before is not its."""
        with self.lock:
            self._raised()
            self.current.start(number, control)

    def settle(self, control: RunControl) -> None:
        """Account for what was raised but not read yet, to ``control``."""
        with self.lock:
            if self._raised():
                control.cancel(SIGPIPE_REASON)


class _WorkerControl(RunControl):
    """A job's RunControl whose stop reason counts SIGPIPEs raised by the
    guest up to the moment it is read (see :class:`_SigpipeWatch`)."""

    def __init__(self, watch: _SigpipeWatch) -> None:
        super().__init__()
        self._watch = watch

    @property
    def reason(self) -> str | None:
        self._watch.settle(self)
        return super().reason


def _listen_for_cancels(sock: socket.socket, current: _Current) -> None:
    """The cancel thread: stop the current run when the front says so. A
    separate socket, so the main thread owns the job channel alone (a job
    arrives without a hand-off between threads)."""
    buffer = b""
    while True:
        try:
            data = sock.recv(64)
        except OSError:
            data = b""
        if not data:
            os._exit(0)  # the front is gone: nothing may run on
        buffer += data
        while len(buffer) >= CANCEL.size:
            number, why = CANCEL.unpack_from(buffer)
            buffer = buffer[CANCEL.size :]
            current.cancel(number, CANCEL_REASONS.get(why, "cancelled"))


def serve(
    channel: SyncChannel,
    cancels: socket.socket,
    runtime: Runtime,
    config: DaemonConfig,
    code: RemoteCode,
) -> None:
    """Run jobs until the front closes the channel or says ``exit``."""
    current = _Current()
    threading.Thread(
        target=_listen_for_cancels, args=(cancels, current), name="wasmrund-cancel", daemon=True
    ).start()
    sigpipe = _SigpipeWatch(current)
    while True:
        try:
            msg, fds = channel.receive()
        except ChannelError as e:  # the front is gone or retired us, or a bug
            if str(e) != CLOSED:
                log.error("worker %d: job channel: %s", os.getpid(), e)
            return
        if msg["op"] != "job":
            close_fds(fds)
            if msg["op"] == "exit":
                return
            continue
        control = _WorkerControl(sigpipe)
        sigpipe.start(int(msg.get("number", 0)), control)
        try:
            response = run_job(runtime, config, msg, fds, control)
        finally:
            current.end()
        channel.send({"op": "done", "response": response})
        # Idle until the next job: instantiate what a repeat of this request
        # needs now, off the next request's critical path (with the code in
        # memory: the front answers no code request between jobs).
        with code.between_jobs():
            runtime.prepare_spare()


@contextlib.contextmanager
def _client_trace(setting: str, stderr: int | None) -> Iterator[None]:
    """The client's WASMRUN_DEBUG for one request, its trace written to the
    client's stderr (this process runs one request at a time; its own log
    handler keeps the daemon's stderr)."""
    if not setting or stderr is None:
        yield
        return
    saved = sys.stderr
    switches = (debug.LIBS, debug.BINDINGS, debug.SYMBOLS)  # the daemon's own
    out = os.fdopen(os.dup(stderr), "w", buffering=1, errors="replace")
    sys.stderr = out
    try:
        debug.configure(setting)
        yield
    finally:
        debug.LIBS, debug.BINDINGS, debug.SYMBOLS = switches
        sys.stderr = saved
        try:
            out.close()
        except OSError:
            pass


def run_job(
    runtime: Runtime,
    config: DaemonConfig,
    job: dict[str, Any],
    fds: list[int],
    control: RunControl,
) -> bytes:
    """One request, start to end: the encoded protocol response. Closes
    ``fds``."""
    request_id = 0
    try:
        roles = job.get("roles")
        payload = job.get("request")
        if not isinstance(roles, list) or len(roles) != len(fds):
            raise LoadError("malformed job: descriptor roles do not match")
        if not isinstance(payload, bytes):
            raise LoadError("malformed job: no request")
        msg = decode_message(payload)
        request_id = getattr(msg, "request_id", 0) or 0
        by_role = dict(zip(roles, fds, strict=True))
        response = _execute(runtime, config, msg, by_role, control)  # type: ignore[arg-type]
    except Exception as e:  # never lose a request to a bug: answer it
        log.exception("worker: job failed")
        response = error_for(e, request_id)
    finally:
        close_fds(fds)
    return encode_payload(response)


def _execute(
    runtime: Runtime,
    config: DaemonConfig,
    msg: Request,
    fds: dict[str, int],
    control: RunControl,
) -> Any:
    rid = msg.request_id
    stdio = {k: v for k, v in fds.items() if k in ("stdin", "stdout", "stderr")}
    try:
        relay = StdioRelay(stdio, control, direct=True)
    except OSError as e:
        return Error(request_id=rid, kind="internal", message=f"stdio: {e}")
    try:
        relay.start()
        with _client_trace(getattr(msg, "debug", ""), fds.get("stderr")):
            response = execute(Job(runtime, config, msg, fds, control, relay.paths))
        relay.finish()  # the guest is done: deliver its output before the answer
        relay.wait()
        if relay.cut and not isinstance(response, Error):
            # Stopped while delivering its output: say so, never a success
            # with output silently missing.
            response = stopped_error(control, rid) or response
        return response
    finally:
        relay.close()
