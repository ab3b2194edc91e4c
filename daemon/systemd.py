"""The two pieces of the systemd protocol wasmrund speaks, written out rather
than pulled from a library (each is a few lines, and the daemon should not
depend on libsystemd being present): socket activation (``LISTEN_FDS``) and
readiness notification (``sd_notify``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

SD_LISTEN_FDS_START = 3


def listen_fds(environ: MutableMapping[str, str] | None = None, unset: bool = True) -> list[int]:
    """File descriptors handed over by socket activation, if meant for us.

    systemd sets ``LISTEN_PID`` to the pid it started; a child that inherited
    the variables must not take the sockets, hence the check. The variables
    are removed (``unset``) so processes we start never see them, and the
    descriptors are made close-on-exec, as sd_listen_fds(3) does.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if pid is None or count is None or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, n)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass  # not open after all: the caller's use of it will say so
    return fds


def notify_address(environ: MutableMapping[str, str] | None = None) -> str | None:
    """``$NOTIFY_SOCKET`` as a socket address: '@' means the abstract
    namespace (a leading NUL byte)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


_connected: socket.socket | None = None


def connect_notify(environ: MutableMapping[str, str] | None = None) -> None:
    """Connect to the service manager's socket now, while the daemon may
    still reach it: a front that gave up root may not be allowed to send to
    its path later, but a connected socket keeps working."""
    global _connected
    address = notify_address(environ)
    if address is None or _connected is not None:
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(address)
    except OSError:
        s.close()
        return
    _connected = s


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."``) to
    the service manager; False when not run under one or the send failed
    (notification is best-effort: the daemon works without it)."""
    if _connected is not None and environ is None:
        try:
            _connected.send(state.encode())
        except OSError:
            return False
        return True
    address = notify_address(environ)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(state.encode(), address)
        except OSError:
            return False
    return True
