"""The guest's stdio and preopened directories, from the client's descriptors.

The client sends its own stdin/stdout/stderr and directories (SCM_RIGHTS);
the daemon never opens a path of the client's choosing with its own
privileges. wasmtime-py can only configure WASI stdio by *path* (or by a
Python callback), so:

* **stdout/stderr** go through a pipe the daemon owns: wasmtime writes into
  its write end (``/proc/self/fd/W``) and a relay thread copies every byte
  to the client's descriptor with ``write(2)``, so they land in the client's
  open file: its offset, ``O_APPEND``, pipe or terminal. When both are the
  same file (``2>&1``, a terminal) they share one pipe, so their relative
  order is the guest's. Reopening the
  client's descriptor by its ``/proc`` path instead would truncate a regular
  file (wasmtime opens output paths with O_CREAT|O_TRUNC) and cannot be
  interrupted; wasmtime's output *callback* runs on wasmtime's shared tokio
  worker threads, so one client that stops reading would stall every other
  run's output (measured: 5.5 s of stall for a 3 s blocked callback).
* **stdin** is reopened by its ``/proc`` path when it is a regular file read
  from its start or ``/dev/null`` (reads never block); anything else (pipe,
  terminal, socket) goes through a relay pipe, because a guest blocked in a
  read cannot be interrupted by epoch interruption, but closing our pipe
  ends its read with EOF.
* **directories** are preopened by their ``/proc/self/fd/N`` magic link,
  which reaches exactly the directory the client opened. This happens in a
  worker holding the client's credentials, so the reopen and every file
  the guest opens inside are checked by the kernel against the client's
  rights; an ``O_PATH`` descriptor (opened without read access) is refused.

When the run ends the relay drains what the guest wrote before the response
is sent, so the client's output is complete when its exit status arrives.
Cancellation (client gone, timeout) closes the relay's pipes, which unblocks
a guest stuck in a stdio call so the epoch check can stop it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import select
import signal
import stat
import threading
from collections.abc import Callable, Mapping

import attrs
import wasmtime
from wasmrun.runtime import LoadError, RunControl, WasiOptions

_POLL_INTERVAL_MS = 100  # how often a waiting relay checks for cancellation
_CHUNK = 65536
_PIPE_BUF = select.PIPE_BUF  # writes this small never block once poll says POLLOUT
_F_SETPIPE_SZ = 1031
_DEVNULL_RDEV = os.makedev(1, 3)
O_PATH = getattr(os, "O_PATH", 0o10000000)


def proc_path(fd: int) -> str:
    """A path that reaches the open file behind ``fd`` (Linux /proc magic link)."""
    return f"/proc/self/fd/{fd}"


def _access_mode(fd: int) -> int | None:
    """O_RDONLY, O_WRONLY or O_RDWR as the client opened ``fd``; None for an
    O_PATH descriptor (no access at all) or a bad one."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return None
    if flags & O_PATH:
        return None
    return flags & os.O_ACCMODE


def readable(fd: int) -> bool:
    return _access_mode(fd) in (os.O_RDONLY, os.O_RDWR)


def _direct(fd: int, write: bool) -> bool:
    """Whether wasmtime may open the client's own pipe or character device
    (terminal, /dev/null) by its /proc path: opening those truncates
    nothing, and the new open file has the access the client's descriptor
    has (writable for output, readable for input), never more. A guest
    then blocked on it is stopped by killing its worker."""
    mode = _access_mode(fd)
    if mode is None or (write and mode == os.O_RDONLY) or (not write and mode == os.O_WRONLY):
        return False
    try:
        st = os.fstat(fd)
        if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            return False
        # The open is checked against the inode's owner and mode: a pipe
        # another user made (a root shell's) may be closed to this worker.
        flags = (os.O_WRONLY if write else os.O_RDONLY) | os.O_NONBLOCK | os.O_NOCTTY
        os.close(os.open(proc_path(fd), flags | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def _reopenable_input(fd: int) -> bool:
    """Reading stdin through a fresh open of its /proc path is faithful and
    never blocks: a regular file still at offset 0, or /dev/null. Only a
    descriptor the client opened for reading is reopened (for reading):
    never more access than it was opened with."""
    if not readable(fd):
        return False
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEVNULL_RDEV:
            return True
        if not stat.S_ISREG(st.st_mode) or os.lseek(fd, 0, os.SEEK_CUR) != 0:
            return False
        probe = os.open(proc_path(fd), os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(probe)
    return True


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _ThreadPool:
    """Threads for relays, reused. Each active relay needs a thread of its
    own (a client that stops reading must hold up nobody else), but
    starting one per request costs ~0.1 ms; idle threads wait for the next
    relay and exit after ``idle_timeout`` seconds without work."""

    def __init__(self, idle_timeout: float = 60.0) -> None:
        self.idle_timeout = idle_timeout
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # reserved: an idle worker takes it
                self._tasks.put(task)
                return
        worker = threading.Thread(target=self._work, args=(task,), name="wasmrund-stdio")
        worker.daemon = True
        worker.start()

    def _work(self, task: Callable[[], None]) -> None:
        # A relay's EPIPE is not a guest's write (worker._SigpipeWatch).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        while True:
            task()
            with self._lock:
                self._idle += 1
            try:
                task = self._tasks.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    try:  # a task submitted as we timed out was reserved for us
                        task = self._tasks.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


_POOL = _ThreadPool()


class _Channel:
    """One direction of copying: ``src`` -> buffer -> ``dst``."""

    def __init__(self, name: str, src: int, dst: int, src_is_ours: bool) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.src_is_ours = src_is_ours  # ours: non-blocking pipe; else the client's fd
        self.buffer = bytearray()
        self.eof = False  # nothing more will come from src
        self.broken = False  # dst refuses data (EPIPE...): drop it
        try:
            self.dst_regular = stat.S_ISREG(os.fstat(dst).st_mode)
        except OSError:
            self.dst_regular = False


class StdioRelay:
    """Pipes between the guest and the client's stdio, and the thread that
    copies through them. Use: ``paths`` for the WASI config, ``start()``
    before the run, ``finish()`` after it (returns once output is drained),
    ``close()`` always.

    ``direct``: the guest uses the client's pipes and terminals itself (no
    copying thread), as wasmrund's workers do: they can be killed when a
    guest blocks on one. Regular files still go through the relay (wasmtime
    would truncate them), and so does everything when ``direct`` is off.
    """

    def __init__(
        self,
        fds: Mapping[str, int],
        control: RunControl,
        on_done: Callable[[], None] | None = None,
        direct: bool = False,
    ) -> None:
        self.control = control
        self.on_done = on_done
        self.paths: dict[str, str] = {}
        self._ours: list[int] = []  # descriptors this relay opened (and closes)
        self._outputs: list[_Channel] = []
        self._input: _Channel | None = None
        self._input_keep_w: int | None = None
        self._finishing = False
        self.cut = False  # stopped before delivering everything (cancel, timeout)
        self._started = False
        self._done = threading.Event()
        self._wake_r = self._wake_w = -1  # made by start() when a thread copies
        try:
            by_file: dict[tuple[int, int], str] = {}
            for role in ("stdout", "stderr"):
                if role not in fds:
                    continue
                if direct and _direct(fds[role], write=True):
                    self.paths[role] = proc_path(fds[role])
                    continue
                ident = _identity(fds[role])
                if ident is not None and ident in by_file:
                    # stdout and stderr go to the same file (2>&1, a terminal):
                    # one pipe keeps their writes in the order the guest made them.
                    self.paths[role] = by_file[ident]
                    continue
                r, w = self._pipe()
                os.set_blocking(r, False)
                self._outputs.append(_Channel(role, r, fds[role], src_is_ours=True))
                self.paths[role] = proc_path(w)
                if ident is not None:
                    by_file[ident] = self.paths[role]
            if "stdin" in fds:
                client = fds["stdin"]
                if _reopenable_input(client) or (direct and _direct(client, write=False)):
                    self.paths["stdin"] = proc_path(client)
                else:
                    r, w = self._pipe()
                    os.set_blocking(w, False)
                    try:  # read ahead of the guest as little as possible
                        fcntl.fcntl(w, _F_SETPIPE_SZ, 4096)
                    except OSError:
                        pass
                    self._input = _Channel("stdin", client, w, src_is_ours=False)
                    self.paths["stdin"] = proc_path(r)
        except BaseException:
            self.close()
            raise

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        self._ours += [r, w]
        return r, w

    @property
    def needed(self) -> bool:
        """Whether a relay thread has anything to copy."""
        return bool(self._outputs or self._input)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start copying; with nothing to copy, report done at once."""
        if not self.needed:
            self._done.set()
            if self.on_done is not None:
                self.on_done()
            return
        self._wake_r, self._wake_w = self._pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._started = True
        _POOL.submit(self._main)

    def finish(self) -> None:
        """The guest is done: copy what it wrote, then stop (in the relay
        thread; wait with ``wait()`` or the ``on_done`` callback)."""
        self._finishing = True
        self._wake()

    def abort(self) -> None:
        """Stop now, dropping pending output (the client is gone)."""
        self.control.cancel("cancelled")
        self._wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        """Release every descriptor the relay opened (after the thread ended)."""
        if self._started and not self._done.is_set():
            self.abort()
            self._done.wait()
        for fd in self._ours:
            try:
                os.close(fd)
            except OSError:
                pass
        self._ours.clear()

    def _wake(self) -> None:
        if self._wake_w < 0:  # no thread to wake
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the relay thread -------------------------------------------------------

    def _main(self) -> None:
        try:
            self._loop()
        except Exception:  # never let a relay bug leave a guest blocked
            self._cut_off()
        finally:
            self._done.set()
            if self.on_done is not None:
                self.on_done()

    def _cut_off(self) -> None:
        """Unblock the guest: our output read ends closed (its writes fail
        with EPIPE), our input write end closed (its reads see EOF)."""
        self.cut = True
        for ch in self._outputs:
            self._close_ours(ch.src)
        if self._input is not None:
            self._close_ours(self._input.dst)

    def _close_ours(self, fd: int) -> None:
        if fd in self._ours:
            self._ours.remove(fd)
            try:
                os.close(fd)
            except OSError:
                pass

    def _loop(self) -> None:
        poller = select.poll()
        while True:
            if self.control.reason is not None:
                self._cut_off()
                return
            finishing = self._finishing
            if finishing:
                for ch in self._outputs:  # the guest wrote everything it will write
                    self._read_output(ch, until_empty=True)
                    ch.eof = True
                if all(ch.broken or not ch.buffer for ch in self._outputs):
                    return
            watched: dict[int, tuple[_Channel, bool]] = {}
            for ch in self._outputs:
                if ch.buffer and not ch.broken:
                    watched[ch.dst] = (ch, True)
                elif not ch.eof:
                    watched[ch.src] = (ch, False)
            ch_in = self._input
            if ch_in is not None and not finishing and not ch_in.broken:
                if ch_in.buffer:
                    watched[ch_in.dst] = (ch_in, True)
                elif not ch_in.eof:
                    watched[ch_in.src] = (ch_in, False)
            for fd in list(watched):
                poller.register(fd, select.POLLOUT if watched[fd][1] else select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            try:
                events = poller.poll(_POLL_INTERVAL_MS)
            finally:
                for fd in (*watched, self._wake_r):
                    poller.unregister(fd)
            for fd, _mask in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                ch, writing = watched[fd]
                if writing:
                    self._write(ch)
                elif ch is ch_in:
                    self._read_input(ch)
                else:
                    self._read_output(ch, until_empty=False)

    def _read_output(self, ch: _Channel, until_empty: bool) -> None:
        """Take what the guest wrote from our pipe (non-blocking). Outside
        draining, one chunk at a time and only into an empty buffer, so a
        slow client holds the guest back through the pipe; when draining,
        everything left (at most one pipe's capacity: the guest is done)."""
        while not ch.eof:
            try:
                data = os.read(ch.src, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                ch.eof = True
                return
            if not data:
                ch.eof = True
                return
            if not ch.broken:
                ch.buffer += data
            if not until_empty:
                return

    def _read_input(self, ch: _Channel) -> None:
        """Read from the client's stdin (poll said readable, so no block)."""
        try:
            data = os.read(ch.src, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            ch.buffer += data
            return
        ch.eof = True
        self._close_ours(ch.dst)  # the guest reads EOF
        self._input = None

    def _write(self, ch: _Channel) -> None:
        """Write from the buffer to ``dst``. Poll said writable; a write of at
        most PIPE_BUF bytes then cannot block (regular files never do)."""
        size = len(ch.buffer) if ch.dst_regular else min(len(ch.buffer), _PIPE_BUF)
        try:
            n = os.write(ch.dst, ch.buffer[:size])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            ch.broken = True
            ch.buffer.clear()
            if ch is self._input:
                self._input = None
            elif e.errno == errno.EPIPE:
                # Nobody reads the client's end: like a native program, the
                # guest's next write fails (EPIPE) instead of piling up.
                self._close_ours(ch.src)
                ch.eof = True
            return
        del ch.buffer[:n]


@attrs.frozen
class ClientWasi(WasiOptions):
    """WASI context over what a client sent: argv and environment from the
    request, stdio through a StdioRelay's paths, directories by descriptor.
    Nothing is inherited from the daemon: a missing stdio role is empty."""

    stdio: Mapping[str, str] = attrs.field(factory=dict)
    dir_fds: tuple[tuple[int, str], ...] = ()  # (descriptor, guest path)

    def config(self) -> wasmtime.WasiConfig:
        cfg = wasmtime.WasiConfig()
        cfg.argv = list(self.args)
        cfg.env = [list(kv) for kv in self.env]
        try:
            if "stdin" in self.stdio:
                cfg.stdin_file = self.stdio["stdin"]
            if "stdout" in self.stdio:
                cfg.stdout_file = self.stdio["stdout"]
            if "stderr" in self.stdio:
                cfg.stderr_file = self.stdio["stderr"]
        except wasmtime.WasmtimeError as e:
            raise LoadError(f"cannot set up the guest's stdio: {e}") from None
        for fd, guest in self.dir_fds:
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise LoadError(f"--dir {guest}: not a directory")
                if not readable(fd):
                    raise LoadError(
                        f"--dir {guest}: the directory was not opened for reading "
                        "(O_PATH or write-only descriptor)"
                    )
                cfg.preopen_dir(proc_path(fd), guest)
            except (OSError, wasmtime.WasmtimeError) as e:
                raise LoadError(f"--dir {guest}: cannot open the directory: {e}") from None
        return cfg
