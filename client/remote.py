"""The client side of the daemon path: find wasmrund, send one request with
the client's own descriptors, wait for the answer.

Imports only small parts of the standard library and
:mod:`wasmrun.client.wire` (no wasmtime, trio, attrs or msgpack), so a run
through a warm daemon costs little more than the interpreter's start-up and
one round trip. It even uses the ``_socket`` extension directly: the
``socket`` module imports ``selectors`` and friends for features not needed
here, which costs several milliseconds per run. Nothing here prints: the CLI
decides what the user sees.
"""

from __future__ import annotations

import _signal as signal  # signal.py's enum wrappers cost start-up time
import os
import stat
import struct
import sys
import time

try:
    import _socket as socket  # CPython's socket core, without socket.py's imports
except ImportError:  # pragma: no cover - other Pythons
    import socket  # type: ignore[no-redef]

from . import wire

ENV_SOCKET = "WASMRUN_SOCKET"
ENV_AUTOSTART = "WASMRUN_AUTOSTART"
CONNECT_TIMEOUT = 2.0  # a daemon that does not accept this fast is treated as absent
AUTOSTART_TIMEOUT = 10.0
_UCRED = struct.Struct("3i")


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/wasmrun/wasmrund.sock``, else
    ``/tmp/wasmrun-$UID/wasmrund.sock`` (the daemon's own default)."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime_dir, "wasmrun") if runtime_dir else f"/tmp/wasmrun-{os.getuid()}"
    return os.path.join(base, "wasmrund.sock")


def socket_path(explicit: str | None = None) -> tuple[str, bool]:
    """The socket to use and whether the user chose it (``--socket``, then
    ``$WASMRUN_SOCKET``) rather than the per-user default."""
    if explicit:
        return explicit, True
    if os.environ.get(ENV_SOCKET):
        return os.environ[ENV_SOCKET], True
    return default_socket_path(), False


def _trusted_peer(sock: socket.socket) -> bool:
    """The default socket lives in a directory others might have created
    (the /tmp fallback): only talk to a daemon of our own user, or root.
    The descriptors we send (our terminal, our files) must not go to
    another user's process."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return False
    _pid, uid, _gid = _UCRED.unpack(raw)
    return uid in (os.geteuid(), 0)


def connect(path: str, chosen: bool, timeout: float = CONNECT_TIMEOUT) -> socket.socket | None:
    """A connection to a running daemon, or None if there is none (no
    socket file, a stale one, a daemon that does not accept in time, or, at
    the default path, one run by another user)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    if not chosen and not _trusted_peer(sock):
        sock.close()
        return None
    return sock


def autostart(path: str, chosen: bool) -> socket.socket | None:
    """With ``WASMRUN_AUTOSTART=1``, start wasmrund in the background (its log
    next to the socket) and wait for it to accept; None if it does not."""
    if os.environ.get(ENV_AUTOSTART) != "1":
        return None
    import subprocess  # only here: it costs start-up time on every other run

    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        log = os.open(
            os.path.join(directory, "wasmrund.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
    except OSError:
        return None
    try:
        subprocess.Popen(
            [sys.executable, "-m", "wasmrun.daemon", "--socket", path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,  # not killed with our terminal's process group
        )
    except OSError:
        return None
    finally:
        os.close(log)
    deadline = time.monotonic() + AUTOSTART_TIMEOUT
    while time.monotonic() < deadline:
        if os.path.exists(path):
            sock = connect(path, chosen)
            if sock is not None:
                return sock
        time.sleep(0.02)
    return None


def open_session(explicit: str | None) -> Session | None:
    """A session with the daemon (started if configured), or None."""
    path, chosen = socket_path(explicit)
    sock = connect(path, chosen) if os.path.exists(path) else None
    if sock is None:
        sock = autostart(path, chosen)
    return Session(sock) if sock is not None else None


def stdio_fds() -> tuple[list[str], list[int]]:
    """Our stdin/stdout/stderr, those that are open, with their roles."""
    roles, fds = [], []
    for fd, role in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            continue
        roles.append(role)
        fds.append(fd)
    return roles, fds


def is_directory(fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        return False


class Interrupted(Exception):
    """The user interrupted twice: stop waiting for the daemon."""


class Session:
    """One connection to wasmrund; this client sends one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = wire.FrameReader()
        self.interrupted = False

    def close(self) -> None:
        self.sock.close()

    def send(self, frame: bytes, fds: list[int]) -> None:
        """The frame, with ``fds`` attached to its first byte (SCM_RIGHTS)."""
        anc = []
        if fds:
            # struct, not array: array imports collections.abc (2 ms of start-up)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        sent = self.sock.sendmsg([frame], anc)
        if sent < len(frame):
            self.sock.sendall(frame[sent:])

    def receive(self) -> wire.Reply:
        """The next response; ConnectionError if the daemon hung up first."""
        while True:
            payload = self.reader.next_payload()
            if payload is not None:
                return wire.parse_reply(payload)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("wasmrund closed the connection")
            self.reader.feed(data)

    def request(self, frame: bytes, fds: list[int], request_id: int) -> wire.Reply:
        """Send a request and wait for its answer. The first Ctrl-C sends
        ``cancel`` (the daemon stops the guest and answers "cancelled"); a
        second one gives up waiting (closing the connection also stops it)."""
        try:
            self.send(frame, fds)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon answered and closed before reading our request (a
            # refusal): its answer may still be waiting to be read.
            return self.receive()
        cancel = wire.simple_request("cancel", request_id)

        def on_interrupt(_signum: int, _frame: object) -> None:
            if self.interrupted:
                raise Interrupted()
            self.interrupted = True
            try:
                self.sock.sendall(cancel)
            except OSError:
                raise Interrupted() from None

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            while True:
                reply = self.receive()
                if reply.request_id in (request_id, None):
                    return reply
        finally:
            signal.signal(signal.SIGINT, previous or signal.SIG_DFL)
