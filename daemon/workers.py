"""The front's side of worker processes: the zygote that forks them, each
worker's channel, and running one request on a worker with a hard stop.

A worker serves one request at a time. While it runs, the front answers its
requests for compiled code (from :class:`~wasmrun.daemon.codestore.CodeStore`,
or a compiler process: :mod:`wasmrun.daemon.compilers`) and watches two
things: the client cancelling, and the run's timeout. Either sends the
worker ``cancel`` (the guest stops at its next epoch check); a worker that
has not answered ``kill_grace`` seconds later (a guest blocked in a host
call: ``sleep``, a FIFO) is killed by the zygote, its parent, and the
request is answered as the timeout or cancellation it is.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .channel import (
    _ANC,
    _RECV_SIZE,
    CANCEL,
    ChannelError,
    FrameSplitter,
    _ancillary,
    _pack,
    close_fds,
)
from .codestore import CodeStore, CompileFailed
from .identity import Identity
from .zygote import KILL

log = logging.getLogger("wasmrund")

_COMPILES = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
"""Compilations at once in the front itself (the configuration's preloads,
at start): one per core."""


class AsyncChannel:
    """The front's end of a channel, over a trio socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.splitter = FrameSplitter()
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        frame = _pack(message, fds)
        async with self._send_lock:
            try:
                sent = await self.sock.sendmsg([frame], _ancillary(fds))
                view = memoryview(frame)[sent:]
                while view:
                    view = view[await self.sock.send(view) :]
            except OSError as e:
                raise ChannelError(f"send: {e.strerror}") from None

    async def receive(self) -> tuple[dict[str, Any], list[int]]:
        while True:
            got = self.splitter.next()
            if got is not None:
                return got
            try:
                data, anc, _flags, _ = await self.sock.recvmsg(
                    _RECV_SIZE, _ANC, socket.MSG_CMSG_CLOEXEC
                )
            except OSError as e:
                raise ChannelError(f"receive: {e.strerror}") from None
            self.splitter.take(data, anc)

    def readable_now(self) -> bool:
        """Whether the other end sent something or closed, without
        waiting: on an idle channel, whose other end has nothing to say,
        it means that end is gone."""
        readable, _, _ = select.select([self.sock.fileno()], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.splitter.close()
        self.sock.close()


@attrs.define(eq=False)
class Stop:
    """How a running request is stopped from outside: ``cancel()`` (the
    client's cancel, its going away, shutdown) or the scope's deadline
    (the run's timeout)."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()

    def why(self) -> str:
        return self.reason or "timeout"


class WorkerDied(Exception):
    """The worker ended before answering (killed, crashed, out of memory)."""


class WorkerKilled(WorkerDied):
    """The run was stopped (``reason``: "timeout" or "cancelled") and its
    worker did not stop in time, so it was killed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"killed: the run was {reason}")
        self.reason = reason


class WorkerGone(WorkerDied):
    """The worker was dead before it got the job (it died while idle): the
    request can go to another worker."""


class SpawnFailed(Exception):
    """The zygote could not start a worker (one line)."""


@attrs.frozen
class WorkerLimits:
    """What the zygote applies to each worker before it drops privileges."""

    max_fds: int = 1024
    max_data: int | None = None  # RLIMIT_DATA: the ceiling beyond Store limits


class Zygote:
    """The front's handle on the zygote process."""

    def __init__(self, pid: int, sock: socket.socket, kills: socket.socket) -> None:
        self.pid = pid
        self.channel = AsyncChannel(sock)
        self.kills = kills
        kills.setblocking(False)
        self._ids = itertools.count(1)
        self._lock = trio.Lock()

    async def watch(self) -> None:
        """Return once the zygote is gone. It never writes to the kill
        socket, so that socket turns readable only at its end."""
        await trio.lowlevel.wait_readable(self.kills)

    async def start(self, store: CodeStore) -> list[str]:
        """Serve the zygote's code requests until it is ready; its preloads."""
        code_for = compiled_here(store)
        while True:
            try:
                msg, fds = await self.channel.receive()
            except ChannelError:
                raise SpawnFailed("the zygote exited while starting (see the log)") from None
            op = msg["op"]
            if op == "code":
                await answer_code(self.channel, msg, code_for)
            elif op == "ready":
                return [str(p) for p in msg.get("loaded", ())]
            elif op == "failed":
                raise SpawnFailed(str(msg.get("message")))
            close_fds(fds)

    async def spawn(self, identity: Identity, limits: WorkerLimits) -> Worker:
        """A new worker for ``identity``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cancel_ours, cancel_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = await self._fork(
                {
                    "op": "spawn",
                    "uid": identity.uid,
                    "gid": identity.gid,
                    "groups": list(identity.groups),
                    "max_fds": limits.max_fds,
                    "max_data": limits.max_data,
                },
                [theirs, cancel_theirs],
                "a worker",
            )
        except SpawnFailed:
            ours.close()
            cancel_ours.close()
            raise
        cancel_ours.setblocking(False)
        return Worker(identity, pid, self.kill, AsyncChannel(ours), cancel_ours)

    async def spawn_compiler(self, max_data: int) -> tuple[int, AsyncChannel]:
        """A new compiler process (see :mod:`wasmrun.daemon.compiler`)
        whose data may not pass ``max_data`` bytes: its pid and channel."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = await self._fork(
                {"op": "spawn_compiler", "max_data": max_data}, [theirs], "a compiler"
            )
        except SpawnFailed:
            ours.close()
            raise
        return pid, AsyncChannel(ours)

    async def _fork(self, request: dict[str, Any], theirs: list[socket.socket], what: str) -> int:
        """Have the zygote fork a child given ``theirs`` (closed here);
        its pid."""
        try:
            # One spawn at a time (the zygote is serial), and never half of
            # one: a request cancelled between asking and reading the answer
            # would leave the answer for the next spawn, which would then
            # take another worker's pid for its own (and kill that worker
            # when retiring its own). Forking takes milliseconds; the caller
            # sees its cancellation right after, with the child in hand.
            with trio.CancelScope(shield=True):
                async with self._lock:
                    ident = next(self._ids)
                    await self.channel.send(
                        {**request, "id": ident}, [sock.fileno() for sock in theirs]
                    )
                    for sock in theirs:
                        sock.close()
                    msg, fds = await self.channel.receive()
        except ChannelError as e:
            raise SpawnFailed(f"the zygote is gone ({e})") from None
        finally:
            for sock in theirs:
                sock.close()
        close_fds(fds)
        if msg.get("id") != ident:  # a bug: say so, never take another's child
            raise SpawnFailed(f"internal error: the zygote answered spawn {msg.get('id')!r}")
        if msg["op"] != "spawned":
            raise SpawnFailed(str(msg.get("message", f"the zygote could not start {what}")))
        return int(msg["pid"])

    def kill(self, pid: int) -> None:
        """Have the zygote SIGKILL its child ``pid`` (a few bytes into an
        idle socket: never blocks in practice; a full buffer drops it, and
        the worker's channel is closed anyway)."""
        try:
            self.kills.send(KILL.pack(pid))
        except OSError:
            pass

    def close(self) -> None:
        self.channel.close()
        self.kills.close()


CodeFor = Callable[[bytes], Awaitable[int]]
"""Compiled code for a module's bytes: a new descriptor of a sealed memfd,
or CompileFailed."""


async def answer_code(channel: AsyncChannel, msg: dict[str, Any], code_for: CodeFor) -> None:
    """Answer a ``code`` request: compiled code for the bytes sent, as a
    sealed memfd, or wasmtime's reason for refusing them."""
    data = msg.get("data")
    if not isinstance(data, bytes):
        await channel.send({"op": "code", "error": "malformed code request"})
        return
    try:
        fd = await code_for(data)
    except CompileFailed as e:
        await channel.send({"op": "code", "error": str(e), "limit": e.limit})
        return
    try:
        await channel.send({"op": "code"}, [fd])
    finally:
        os.close(fd)


def compiled_here(store: CodeStore) -> CodeFor:
    """Code compiled in the front itself: only for the configuration's
    preloads (the zygote asks for them before it can fork a compiler)."""

    async def code_for(data: bytes) -> int:
        return await trio.to_thread.run_sync(store.code_for, data, limiter=_COMPILES)

    return code_for


@attrs.define(eq=False)
class Worker:
    """One worker process, serving one identity."""

    identity: Identity
    pid: int
    killer: Callable[[int], None]
    channel: AsyncChannel
    cancels: socket.socket
    runs: int = 0
    last_used: float = 0.0
    alive: bool = True
    killed: bool = False

    def kill(self) -> None:
        """SIGKILL, by the zygote (never another process, whatever happened
        to the pid: the zygote has not reaped it)."""
        if self.killed:
            return
        self.killed = True
        self.killer(self.pid)

    def close(self) -> None:
        """Kill (if still running) and release the descriptors."""
        self.kill()
        self.alive = False
        self.channel.close()
        self.cancels.close()

    async def run(
        self,
        request: bytes,
        roles: list[str],
        fds: list[int],
        code_for: CodeFor | None,
        stop: Stop,
        kill_grace: float,
    ) -> bytes:
        """Run one request; its encoded response. ``fds`` are sent, not
        closed. When ``stop`` fires (its deadline, or cancel()) the worker
        is told to stop the guest; ``kill_grace`` later, if it has not
        answered, it is killed and WorkerKilled says why."""
        self.runs += 1
        number = self.runs
        try:
            await self.channel.send(
                {"op": "job", "request": request, "roles": roles, "number": number}, fds
            )
        except ChannelError as e:
            self.alive = False
            raise WorkerGone(str(e)) from None
        with stop.scope:
            return await self._serve_until_done(code_for)
        reason = stop.why()
        try:  # a few bytes into an empty socket buffer: never blocks
            self.cancels.send(CANCEL.pack(number, 1 if reason == "timeout" else 0))
        except OSError:
            pass
        with trio.move_on_after(kill_grace):
            return await self._serve_until_done(code_for)
        log.warning(
            "worker %d (%s) did not stop %.1f s after its run was %s: killed",
            self.pid,
            self.identity.describe(),
            kill_grace,
            "timed out" if reason == "timeout" else reason,
        )
        self.kill()
        self.alive = False
        raise WorkerKilled(reason)

    async def _serve_until_done(self, code_for: CodeFor | None) -> bytes:
        while True:
            try:
                msg, fds = await self.channel.receive()
            except ChannelError as e:
                self.alive = False
                raise WorkerDied(str(e)) from None
            close_fds(fds)
            op = msg["op"]
            if op == "code" and code_for is not None:
                with trio.CancelScope(shield=True):  # never half an answer
                    await answer_code(self.channel, msg, code_for)
            elif op == "done" and isinstance(msg.get("response"), bytes):
                return msg["response"]
            else:
                self.alive = False
                self.kill()
                raise WorkerDied(f"unexpected message {op!r}")
