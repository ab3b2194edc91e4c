"""The client side of the daemon path: find wasmrund, send one request with
the client's own descriptors, relay the answer.

Imports only the standard library and the protocol package, so that a
client run costs a socket round trip rather than loading wasmtime.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import sys
import time

from wasmrun.protocol import Cancel, Connection, Error, Message, Request, encode_message

ENV_SOCKET = "WASMRUN_SOCKET"
ENV_AUTOSTART = "WASMRUN_AUTOSTART"


def socket_path(explicit: str | None = None) -> str:
    """--socket, else $WASMRUN_SOCKET, else the daemon's default location."""
    if explicit:
        return explicit
    if os.environ.get(ENV_SOCKET):
        return os.environ[ENV_SOCKET]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime_dir, "wasmrun") if runtime_dir else f"/tmp/wasmrun-{os.getuid()}"
    return os.path.join(base, "wasmrund.sock")


def connect(path: str) -> socket.socket | None:
    """A connection to a running daemon, or None if there is none."""
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def autostart(path: str, timeout: float = 10.0) -> socket.socket | None:
    """Start wasmrund in the background when WASMRUN_AUTOSTART=1 asks for it."""
    if os.environ.get(ENV_AUTOSTART) != "1":
        return None
    subprocess.Popen(
        [sys.executable, "-m", "wasmrun.daemon", "--socket", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = connect(path)
        if sock is not None:
            return sock
        time.sleep(0.05)
    return None


class Session:
    """One connection to wasmrund; requests are answered in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = Connection("client")

    def send(self, request: Request, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        data = encode_message(request)
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def receive(self) -> Message:
        while True:
            msg = self.conn.next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(65536)
            self.conn.receive_data(data)
            if not data:
                msg = self.conn.next_message()
                if msg is not None:
                    return msg
                raise ConnectionError("wasmrund closed the connection")

    def request(self, request: Request, fds: list[int] = ()) -> Message:  # type: ignore[assignment]
        """Send and wait for the answer; Ctrl-C cancels the remote run."""
        self.send(request, fds)
        previous = signal.getsignal(signal.SIGINT)
        cancelled = False

        def on_interrupt(_sig, _frame):
            nonlocal cancelled
            if not cancelled:
                cancelled = True
                self.sock.sendall(encode_message(Cancel(request_id=request.request_id)))

        signal.signal(signal.SIGINT, on_interrupt)
        try:
            return self.receive()
        finally:
            signal.signal(signal.SIGINT, previous)

    def close(self) -> None:
        self.sock.close()


def error_text(err: Error) -> str:
    """What the CLI prints for an error answer: the same text as the
    in-process path (traps verbatim, everything else as 'wasmrun: ...')."""
    if err.kind == "trap":
        return err.message
    return f"wasmrun: {err.message}"
