"""Who is on the other end of a connection.

The kernel vouches for the peer's credentials (SO_PEERCRED: pid, uid, gid at
connect time; SO_PEERGROUPS: supplementary groups), so they can be trusted
for logging and for choosing the identity a worker takes, unlike anything
in a request. Access decisions are never made here: the worker holding the
peer's credentials lets the kernel make them.
"""

from __future__ import annotations

import array
import socket
import struct
from typing import Protocol

import attrs

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_UCRED = struct.Struct("3i")


class HasSockopt(Protocol):
    """A stdlib or trio socket: all peer_of needs."""

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


@attrs.frozen
class Peer:
    """A connected client's credentials."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def peer_of(sock: HasSockopt) -> Peer:
    """The credentials of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    groups: tuple[int, ...] = ()
    try:
        raw_groups = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        arr = array.array("I")
        arr.frombytes(raw_groups[: len(raw_groups) - len(raw_groups) % 4])
        groups = tuple(arr)
    except OSError:
        pass  # old kernel: primary group only
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups)
