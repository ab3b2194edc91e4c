"""The front's compiler processes: compiled code for a tenant's module,
made under bounds, shared fairly between uids.

A worker that needs code for a module sends its bytes (read with the
tenant's credentials). The front hashes them, and answers from memory or
the disk cache (:class:`~wasmrun.daemon.codestore.CodeStore`) without
waiting for anything else. Only a miss compiles, and then:

* in a compiler process (:mod:`wasmrun.daemon.compiler`), forked by the
  zygote, whose data is capped at ``compile_memory`` and which is killed
  after ``compile_timeout``: a module built to exhaust Cranelift costs its
  own request an error, never the daemon;
* one compile per digest at a time (the others wait, then hit the store);
* one compile per uid at a time, and at most ``slots`` in all: a tenant
  with a backlog of slow modules holds one slot, and another tenant's
  compile takes the next free one.

Idle compiler processes are kept for reuse and closed after
``idle_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import attrs
import trio

from .channel import ChannelError, close_fds
from .codestore import CodeStore, CompileFailed
from .workers import AsyncChannel, CodeFor, SpawnFailed, Zygote

log = logging.getLogger("wasmrund")


@attrs.define(eq=False)
class _Compiler:
    pid: int
    channel: AsyncChannel
    idle_since: float = 0.0


@attrs.define(eq=False)
class Compilers:
    """Compiled code for workers' modules; see the module's docstring."""

    zygote: Zygote
    store: CodeStore
    slots: int
    memory: int
    timeout: float
    idle_timeout: float = 60.0
    # Where blocking store calls run (hashing, the disk cache): a thread,
    # or inline in tests, whose fake store does not block.
    offload: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync
    _limiter: trio.CapacityLimiter = attrs.field(init=False)
    _per_uid: dict[Hashable, trio.Lock] = attrs.field(init=False, factory=dict)
    _per_digest: dict[Hashable, trio.Lock] = attrs.field(init=False, factory=dict)
    _idle: list[_Compiler] = attrs.field(init=False, factory=list)
    counters: dict[str, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = trio.CapacityLimiter(self.slots)
        self.counters = {
            "compile.processes_started": 0,
            "compile.compiled": 0,
            "compile.rejected": 0,
            "compile.timeouts": 0,
            "compile.deaths": 0,
        }

    def code_for(self, uid: int) -> CodeFor:
        """What a worker of ``uid`` gets its code from."""

        async def code_for(data: bytes) -> int:
            return await self.code(data, uid)

        return code_for

    async def code(self, data: bytes, uid: int) -> int:
        """A new descriptor of sealed code for the module ``data``;
        CompileFailed with the reason a compile failed."""
        # Hashing a large module takes a while: not on the event loop.
        digest, fd = await self.offload(self.store.lookup, data)
        if fd is not None:
            return fd
        async with _one_at_a_time(self._per_digest, digest):
            fd = self.store.cached(digest)  # compiled while we waited
            if fd is not None:
                return fd
            async with _one_at_a_time(self._per_uid, uid), self._limiter:
                code = await self._compile(data)
            try:
                return await self.offload(self.store.add, digest, code)  # it owns code now
            except trio.Cancelled:  # before the thread started: still ours
                os.close(code)
                raise

    async def _compile(self, data: bytes) -> int:
        """A memfd of code from a compiler process (unsealed: the store
        seals it)."""
        compiler = await self._take()
        answer: tuple[dict[str, Any], list[int]] | None = None
        try:
            await compiler.channel.send({"op": "compile", "data": data})
            with trio.move_on_after(self.timeout):
                answer = await compiler.channel.receive()
        except ChannelError:
            self._discard(compiler)
            self.counters["compile.deaths"] += 1
            raise CompileFailed(
                "cannot compile: the compiler process ran out of memory (compile_memory is "
                f"{self.memory >> 20} MiB) or crashed",
                limit=True,
            ) from None
        except BaseException:  # cancelled mid-compile: its answer would be stale
            self._discard(compiler)
            raise
        if answer is None:
            self._discard(compiler)
            self.counters["compile.timeouts"] += 1
            log.warning("compiler %d: compiling for %g s: killed", compiler.pid, self.timeout)
            raise CompileFailed(
                f"cannot compile: it took longer than compile_timeout ({self.timeout:g} s)",
                limit=True,
            )
        return self._answer(compiler, *answer)

    def _answer(self, compiler: _Compiler, msg: dict[str, Any], fds: list[int]) -> int:
        op = msg.get("op")
        if op == "compiled" and len(fds) == 1:
            compiler.idle_since = trio.current_time()
            self._idle.append(compiler)
            self.counters["compile.compiled"] += 1
            return fds[0]
        close_fds(fds)
        if op == "error":
            compiler.idle_since = trio.current_time()
            self._idle.append(compiler)
            self.counters["compile.rejected"] += 1
            raise CompileFailed(str(msg.get("error")))  # wasmtime's reason, as in process
        self._discard(compiler)
        raise CompileFailed(f"internal error: unexpected answer {op!r} from a compiler")

    async def _take(self) -> _Compiler:
        """The most recently used idle compiler, or a new one. One that
        ended while idle (an administrator, the OOM killer) is dropped
        here, so that it costs no compile the error of its death."""
        while self._idle:
            compiler = self._idle.pop()
            if not compiler.channel.readable_now():
                return compiler
            self._discard(compiler)
        return await self._start()

    async def _start(self) -> _Compiler:
        try:
            pid, channel = await self.zygote.spawn_compiler(self.memory)
        except SpawnFailed as e:
            raise CompileFailed(f"cannot start a compiler process: {e}", limit=True) from None
        self.counters["compile.processes_started"] += 1
        return _Compiler(pid, channel)

    def _discard(self, compiler: _Compiler) -> None:
        """Kill (by the zygote, its parent) and forget a compiler."""
        self.zygote.kill(compiler.pid)
        compiler.channel.close()

    def reap_idle(self) -> int:
        """Close compilers idle past ``idle_timeout`` (closing the channel
        ends them); how many."""
        now = trio.current_time()
        keep = [c for c in self._idle if now - c.idle_since < self.idle_timeout]
        gone = [c for c in self._idle if c not in keep]
        self._idle = keep
        for c in gone:
            c.channel.close()
        return len(gone)

    async def reap_forever(self) -> None:
        while True:
            await trio.sleep(max(self.idle_timeout / 4, 0.05))
            self.reap_idle()

    def close(self) -> None:
        for c in self._idle:
            c.channel.close()
        self._idle.clear()

    def summary(self) -> dict[str, int]:
        return {
            **self.store.summary(),
            **self.counters,
            "compile.processes_idle": len(self._idle),
        }


@contextlib.asynccontextmanager
async def _one_at_a_time(locks: dict[Hashable, trio.Lock], key: Hashable) -> AsyncIterator[None]:
    """Hold the lock for ``key``, made on first use and forgotten when
    nobody holds or waits for it."""
    lock = locks.setdefault(key, trio.Lock())
    try:
        async with lock:
            yield
    finally:
        if locks.get(key) is lock and not lock.locked() and not lock.statistics().tasks_waiting:
            del locks[key]
