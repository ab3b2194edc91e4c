"""Who is on the other end of a connection, and what they may read.

The kernel vouches for the peer's credentials (SO_PEERCRED: pid, uid, gid at
connect time; SO_PEERGROUPS: supplementary groups), so they can be trusted
for logging and for access decisions, unlike anything in a request.
"""

from __future__ import annotations

import array
import os
import socket
import stat
import struct
from collections.abc import Iterable

import attrs

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_UCRED = struct.Struct("3i")


@attrs.frozen
class Peer:
    """A connected client's credentials."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def same_user(self) -> bool:
        """The peer can read whatever the daemon can (same user, or root):
        access checks on its behalf are moot."""
        return self.uid in (0, os.geteuid())

    def may_read(self, st: os.stat_result) -> bool:
        """Whether the file's permission bits let the peer read it, by the
        usual owner / group / other rule (ACLs are not consulted: a file
        readable only through an ACL is refused, the safe direction)."""
        if self.uid == 0:
            return True
        mode = st.st_mode
        if st.st_uid == self.uid:
            return bool(mode & stat.S_IRUSR)
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(mode & stat.S_IRGRP)
        return bool(mode & stat.S_IROTH)

    def unreadable(self, paths: Iterable[str]) -> str | None:
        """The first of ``paths`` the peer could not read itself, if any."""
        if self.same_user:
            return None
        for path in paths:
            try:
                if not self.may_read(os.stat(path)):
                    return path
            except OSError:
                return path
        return None


def peer_of(sock: socket.socket) -> Peer:
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
