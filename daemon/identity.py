"""Who a worker runs as, and how it becomes them.

wasmrund never decides on its own whether a client may read a file: a
worker process takes the client's uid, primary gid and supplementary groups
(as the kernel reported them through SO_PEERCRED and SO_PEERGROUPS), drops
every capability and sets ``no_new_privs`` *before* it opens a program, a
library or a directory for that client. Every access decision is then the
kernel's, including directory search permissions, ACLs and LSMs, which no
emulation of permission bits gets right.

A daemon that cannot change identity (neither root nor holding CAP_SETUID
and CAP_SETGID) serves its own uid only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import attrs

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
CAP_SETGID = 6
CAP_SETUID = 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@attrs.frozen
class Identity:
    """A set of credentials a worker runs with: one worker, one identity."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"uid={self.uid} gid={self.gid}"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _effective_caps() -> int:
    """The CapEff mask of this process (0 where /proc is unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def can_change_identity() -> bool:
    """Whether this process may become another user: root, or a process
    holding both CAP_SETUID and CAP_SETGID."""
    caps = _effective_caps()
    return bool(caps & (1 << CAP_SETUID)) and bool(caps & (1 << CAP_SETGID))


def own_identity() -> Identity:
    return Identity(os.geteuid(), os.getegid(), tuple(sorted(os.getgroups())))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """Clear the effective, permitted and inheritable sets. Leaving uid 0
    clears them already; a daemon holding CAP_SETUID as another user keeps
    them across setresuid, so they are cleared explicitly."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies,
    so no worker outlives the daemon."""
    _libc().prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def name_process(name: str) -> None:
    """Set what ``ps`` and ``/proc/PID/comm`` call this process (at most
    15 bytes), so an operator can tell the daemon's processes apart."""
    _libc().prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class IdentityError(Exception):
    """A configured user does not exist (one line)."""


def front_identity(user: str | int | None) -> Identity | None:
    """The identity the front takes once the zygote is forked (the
    ``user`` setting), or None to keep its uid."""
    if user is None:
        return None
    import pwd

    try:
        pw = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise IdentityError(f"no such user {user!r}") from None
    return Identity(pw.pw_uid, pw.pw_gid, (pw.pw_gid,))


def drop_front_privileges(user: Identity | None, privileged: bool) -> None:
    """The front's privileges go once the zygote holds them: with a
    ``user``, the front becomes that user; otherwise it keeps its uid but no
    capability. Either way, no_new_privs. An unprivileged daemon (a user's
    own) has nothing to drop but sets no_new_privs too."""
    if user is not None:
        become(user)
        return
    libc = _libc()
    if privileged:
        _drop_capabilities(libc)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def become(identity: Identity) -> None:
    """Take on ``identity`` for good (groups, gid, uid: in that order, since
    changing the uid first would forfeit the right to change the rest), with
    no capabilities and no way to gain privileges through exec. When the
    identity is already ours, only the last two steps apply."""
    libc = _libc()
    if identity != own_identity() or os.getuid() != identity.uid:
        os.setgroups(list(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    if identity.uid != 0:
        _drop_capabilities(libc)
        if _effective_caps():
            raise OSError("capabilities remain after dropping them")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
