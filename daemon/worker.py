"""A worker process: runs guests for exactly one identity, one at a time.

Forked by the zygote (:mod:`wasmrun.daemon.zygote`) from its warm state
(engine, preloaded modules), a worker first becomes its tenant
(:func:`~wasmrun.daemon.identity.become`), then serves jobs the front sends
over its channel. Everything a run opens (the program, its libraries, the
guest's ``dlopen``s, the client's directories by their descriptors) is
opened here, with the tenant's credentials, so the kernel decides.

Messages on the channel (see :mod:`wasmrun.daemon.channel`):

* front -> worker: ``job`` (a protocol request's payload, its descriptor
  roles, the descriptors), ``cancel`` (stop the current run), ``code``
  (an answer to our request: a sealed memfd of compiled code, or an error).
* worker -> front: ``code`` (the bytes of a module we need compiled code
  for), ``done`` (the protocol response's payload).

A reader thread takes every message off the channel, so a ``cancel``
reaches the running guest (through its RunControl and epoch interruption)
while the main thread is inside wasmtime. A guest that does not stop (a
host call that blocks) is the front's to handle: it kills this process.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

import wasmtime
from wasmrun.protocol import Error, decode_message, encode_payload
from wasmrun.protocol.messages import Request
from wasmrun.runtime import LoadError, RunControl, Runtime

from .channel import ChannelError, SyncChannel, close_fds
from .config import DaemonConfig
from .execute import Job, error_for, execute, stopped_error
from .stdio import StdioRelay

log = logging.getLogger("wasmrund")


class RemoteCode:
    """A runtime ``code_source``: compiled code from the front, never
    compiled here. ``ask`` sends the bytes and returns the answer."""

    def __init__(self, engine: wasmtime.Engine, channel: SyncChannel) -> None:
        self.engine = engine
        self.channel = channel
        self.replies: queue.SimpleQueue[tuple[dict[str, Any], list[int]]] | None = None

    def _answer(self) -> tuple[dict[str, Any], list[int]]:
        if self.replies is not None:  # a reader thread owns the channel
            return self.replies.get()
        while True:
            msg, fds = self.channel.receive()
            if msg["op"] == "code":
                return msg, fds
            close_fds(fds)

    def __call__(self, digest: str, data: bytes) -> wasmtime.Module:
        self.channel.send({"op": "code", "data": data})
        msg, fds = self._answer()
        if not fds:
            raise wasmtime.WasmtimeError(str(msg.get("error", "no compiled code")))
        try:
            return wasmtime.Module.deserialize_file(self.engine, f"/proc/self/fd/{fds[0]}")
        finally:
            close_fds(fds)


class _Current:
    """The job being run, for the reader thread's ``cancel``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.control: RunControl | None = None


def serve(channel: SyncChannel, runtime: Runtime, config: DaemonConfig, code: RemoteCode) -> None:
    """Run jobs until the front closes the channel or says ``exit``."""
    jobs: queue.SimpleQueue[tuple[dict[str, Any], list[int]] | None] = queue.SimpleQueue()
    replies: queue.SimpleQueue[tuple[dict[str, Any], list[int]]] = queue.SimpleQueue()
    code.replies = replies
    current = _Current()

    def reader() -> None:
        try:
            while True:
                msg, fds = channel.receive()
                op = msg["op"]
                if op == "job":
                    jobs.put((msg, fds))
                elif op == "code":
                    replies.put((msg, fds))
                elif op == "cancel":
                    with current.lock:
                        if current.control is not None:
                            current.control.cancel(str(msg.get("reason", "cancelled")))
                    close_fds(fds)
                else:
                    close_fds(fds)
                    if op == "exit":
                        break
        except ChannelError:
            pass
        # The front is gone or wants us gone: nothing may run on.
        os._exit(0)

    threading.Thread(target=reader, name="wasmrund-channel", daemon=True).start()
    while True:
        item = jobs.get()
        if item is None:
            return
        msg, fds = item
        control = RunControl()
        with current.lock:
            current.control = control
        try:
            response = run_job(runtime, config, msg, fds, control)
        finally:
            with current.lock:
                current.control = None
        channel.send({"op": "done", "response": response})


def run_job(
    runtime: Runtime,
    config: DaemonConfig,
    job: dict[str, Any],
    fds: list[int],
    control: RunControl,
) -> bytes:
    """One request, start to end: the encoded protocol response. Closes
    ``fds``."""
    request_id = 0
    try:
        roles = job.get("roles")
        payload = job.get("request")
        if not isinstance(roles, list) or len(roles) != len(fds):
            raise LoadError("malformed job: descriptor roles do not match")
        if not isinstance(payload, bytes):
            raise LoadError("malformed job: no request")
        msg = decode_message(payload)
        request_id = getattr(msg, "request_id", 0) or 0
        by_role = dict(zip(roles, fds, strict=True))
        response = _execute(runtime, config, msg, by_role, control)  # type: ignore[arg-type]
    except Exception as e:  # never lose a request to a bug: answer it
        log.exception("worker: job failed")
        response = error_for(e, request_id)
    finally:
        close_fds(fds)
    return encode_payload(response)


def _execute(
    runtime: Runtime,
    config: DaemonConfig,
    msg: Request,
    fds: dict[str, int],
    control: RunControl,
) -> Any:
    rid = msg.request_id
    stdio = {k: v for k, v in fds.items() if k in ("stdin", "stdout", "stderr")}
    try:
        relay = StdioRelay(stdio, control)
    except OSError as e:
        return Error(request_id=rid, kind="internal", message=f"stdio: {e}")
    try:
        relay.start()
        response = execute(Job(runtime, config, msg, fds, control, relay.paths))
        relay.finish()  # the guest is done: deliver its output before the answer
        relay.wait()
        if relay.cut and not isinstance(response, Error):
            # Stopped while delivering its output: say so, never a success
            # with output silently missing.
            response = stopped_error(control, rid) or response
        return response
    finally:
        relay.close()
