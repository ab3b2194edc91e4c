"""The private link between wasmrund's front and its zygote and workers.

A Unix socketpair carrying length-prefixed msgpack maps, each with an
``op`` and, when descriptors travel with it (SCM_RIGHTS), ``nfds``: how
many of the descriptors received so far belong to it. Descriptors arrive
with the first byte of the frame that carries them, so a reader keeps them
in arrival order and hands each frame its share.

Both ends are wasmrund's own code, but a worker runs as a tenant's user, so
the front reads what a worker sends with the same care as a client's bytes:
frames are bounded, malformed ones end the worker.

:class:`SyncChannel` is the blocking end (zygote, worker); the front wraps
its end with :class:`AsyncChannel` (trio).
"""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
from collections import deque
from typing import Any, Final

import msgpack

MAX_FDS_PER_FRAME = 256  # a request may carry the protocol's MAX_FDS (253)
MAX_FRAME = 512 << 20  # a module of up to the largest allowed size, plus room
_HEADER = 4
_ANC = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * array.array("i").itemsize)
# Bytes asked for per read: a job or an answer fits many times over, and a
# module sent for compiling takes several reads. Python allocates the whole
# size for every read: a megabyte cost ~12 us a call, 64 KiB ~1 us.
_RECV_SIZE = 1 << 16

CANCEL = struct.Struct("<IB")
"""A record on a worker's cancel socket: the job's number, and why (a
separate socket, so cancellation never waits behind the job channel)."""
CANCEL_REASONS = {0: "cancelled", 1: "timeout"}


CLOSED: Final = "the other end closed the channel"


class ChannelError(Exception):
    """The other end sent something malformed or went away."""


def _pack(message: dict[str, Any], fds: list[int] | tuple[int, ...]) -> bytes:
    if fds:
        message = {**message, "nfds": len(fds)}
    data = msgpack.packb(message, use_bin_type=True)
    return len(data).to_bytes(_HEADER, "little") + data


def _ancillary(fds: list[int] | tuple[int, ...]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in a recvmsg's ancillary data."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def close_fds(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class FrameSplitter:
    """Bytes and descriptors in, (message, fds) out. Sans-I/O: the two
    channel flavours share it."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.fds: deque[int] = deque()

    def feed(self, data: bytes, fds: list[int]) -> None:
        self.buffer += data
        self.fds.extend(fds)

    def take(self, data: bytes, ancdata: list[tuple[int, int, bytes]]) -> None:
        """What one recvmsg returned; ChannelError at the end of the stream."""
        fds = received_fds(ancdata)
        if not data:
            close_fds(fds)
            raise ChannelError(CLOSED)
        self.feed(data, fds)

    def next(self) -> tuple[dict[str, Any], list[int]] | None:
        if len(self.buffer) < _HEADER:
            return None
        size = int.from_bytes(self.buffer[:_HEADER], "little")
        if size > self.max_frame:
            raise ChannelError(f"frame of {size} bytes is over the limit")
        if len(self.buffer) < _HEADER + size:
            return None
        payload = bytes(self.buffer[_HEADER : _HEADER + size])
        del self.buffer[: _HEADER + size]
        try:
            message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several types
            raise ChannelError(f"undecodable frame: {e}") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ChannelError("frame is not a message")
        nfds = message.get("nfds", 0)
        if not isinstance(nfds, int) or not 0 <= nfds <= MAX_FDS_PER_FRAME:
            raise ChannelError("bad descriptor count")
        if nfds > len(self.fds):
            raise ChannelError(f"message names {nfds} descriptors, {len(self.fds)} arrived")
        return message, [self.fds.popleft() for _ in range(nfds)]

    def close(self) -> None:
        close_fds(list(self.fds))
        self.fds.clear()


class SyncChannel:
    """The blocking end. Sends may come from several threads (a lock keeps
    frames whole); receives come from one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.splitter = FrameSplitter()
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        frame = _pack(message, fds)
        with self._send_lock:
            try:
                sent = self.sock.sendmsg([frame], _ancillary(fds))
                if sent < len(frame):
                    self.sock.sendall(frame[sent:])
            except OSError as e:
                raise ChannelError(f"send: {e.strerror}") from None

    def receive(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and its descriptors; ChannelError at EOF."""
        while True:
            got = self.splitter.next()
            if got is not None:
                return got
            try:
                data, anc, _flags, _ = self.sock.recvmsg(_RECV_SIZE, _ANC, socket.MSG_CMSG_CLOEXEC)
            except OSError as e:
                raise ChannelError(f"receive: {e.strerror}") from None
            self.splitter.take(data, anc)

    def close(self) -> None:
        self.splitter.close()
        self.sock.close()
