"""A compiler process: turns module bytes a tenant supplied into wasmtime
code, with bounds the front itself cannot have.

Compiling is the one thing the front did with a tenant's bytes that no
limit covered: Cranelift's memory grows with the code it is given (a 7 MB
module of straight-line code took 724 MiB and 5 s; a 250 MB one would
take the whole host), and a compile in a thread of the front cannot be
stopped. So the zygote forks compiler processes on the front's request.
Each has the front's identity, no capabilities, ``no_new_privs``, and
``RLIMIT_DATA`` set to ``compile_memory``: past it, wasmtime's allocator
aborts this process, not the daemon. The front kills one that takes longer
than ``compile_timeout`` and asks for a new one.

This is a bound on resources, not a trust boundary: the code a compiler
returns is mapped as native code by every worker, exactly as code the front
compiled itself would be, so a compiler runs as the front's user and holds
nothing a tenant can reach. Forked from the zygote, whose engine has never
compiled (wasmtime's compiler threads do not survive fork), it compiles
with the workers' engine settings.

Messages on its channel: front -> compiler ``compile`` (the module's
bytes); compiler -> front ``compiled`` (a memfd holding the serialized
code, for the front to seal) or ``error`` (wasmtime's reason). The
compiler exits when the front closes the channel.
"""

from __future__ import annotations

import os
from typing import Any

import wasmtime

from .channel import ChannelError, SyncChannel, close_fds
from .codestore import trim_heap


def serve(channel: SyncChannel, engine: wasmtime.Engine) -> None:
    """Compile what the front sends until it closes the channel."""
    while True:
        try:
            msg, fds = channel.receive()
        except ChannelError:
            return
        close_fds(fds)
        data = msg.get("data")
        if msg.get("op") != "compile" or not isinstance(data, bytes):
            channel.send({"op": "error", "error": "malformed compile request"})
            continue
        answer, out = _compile(engine, data)
        del data, msg
        trim_heap()  # compiling leaves tens of MB of freed heap behind
        try:
            channel.send(answer, out)
        finally:
            close_fds(out)


def _compile(engine: wasmtime.Engine, data: bytes) -> tuple[dict[str, Any], list[int]]:
    try:
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as e:
        return {"op": "error", "error": str(e)}, []
    payload = module.serialize()
    del module
    fd = os.memfd_create("wasmrun-compiled", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(payload)
    while view:  # written, never mapped: the front can seal it against writes
        view = view[os.write(fd, view) :]
    return {"op": "compiled", "size": len(payload)}, [fd]
