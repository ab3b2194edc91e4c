"""The two pieces of the systemd protocol wasmrund speaks, written out rather
than depending on a library: socket activation (``LISTEN_FDS``) and readiness
notification (``sd_notify``)."""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def listen_fds(environ: dict[str, str] | None = None) -> list[int]:
    """File descriptors passed by socket activation, if meant for us."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, count)))


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1") to ``$NOTIFY_SOCKET``; False if there
    is no such socket. An address starting with '@' is in the abstract
    namespace."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
            s.sendall(state.encode())
        except OSError:
            return False
    return True
