"""The front's compiler processes, their rules in process and deterministic:
:class:`Compilers` with a fake zygote whose compilers the test scripts,
and trio's MockClock (autojump) standing in for time. The real processes
are in test_daemon_workers.py and test_daemon_tenants.py."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing
from wasmrun.daemon.channel import ChannelError
from wasmrun.daemon.codestore import CompileFailed
from wasmrun.daemon.compilers import Compilers

TIMEOUT = 100.0


@attrs.define(eq=False)
class FakeCompiler:
    """A compiler process: what it was sent, and how it answers. The bytes
    say: ``ok...`` (compiled, once the test opens the gate of that name,
    if it made one), ``bad`` (wasmtime refuses), ``hang`` (never answers),
    ``die`` (the process vanishes)."""

    pid: int
    zygote: FakeZygote
    closed: bool = False
    ended: bool = False  # the process is gone (its channel reads EOF)
    pending: bytes | None = None

    async def send(self, message: dict[str, Any], fds: Any = ()) -> None:
        assert message["op"] == "compile" and self.pending is None
        self.pending = message["data"]
        self.zygote.compiling.add(message["data"])

    async def receive(self) -> tuple[dict[str, Any], list[int]]:
        data, self.pending = self.pending, None
        assert data is not None
        try:
            if data == b"hang":
                await trio.sleep_forever()
            if data == b"die":
                raise ChannelError("receive: the compiler died")
            if data == b"bad":
                return {"op": "error", "error": "wasmtime says no"}, []
            gate = self.zygote.gates.get(data)
            if gate is not None:
                await gate.wait()
            return {"op": "compiled"}, [1000 + len(self.zygote.compiled)]
        finally:
            self.zygote.compiling.discard(data)
            self.zygote.compiled.append(data)

    def readable_now(self) -> bool:
        return self.ended

    def close(self) -> None:
        self.closed = True


@attrs.define(eq=False)
class FakeZygote:
    compilers: list[FakeCompiler] = attrs.field(factory=list)
    killed: list[int] = attrs.field(factory=list)
    gates: dict[bytes, trio.Event] = attrs.field(factory=dict)
    compiling: set[bytes] = attrs.field(factory=set)  # sent, not answered yet
    compiled: list[bytes] = attrs.field(factory=list)

    async def spawn_compiler(self, max_data: int) -> tuple[int, FakeCompiler]:
        compiler = FakeCompiler(100 + len(self.compilers), self)
        self.compilers.append(compiler)
        return compiler.pid, compiler

    def kill(self, pid: int) -> None:
        self.killed.append(pid)


@attrs.define(eq=False)
class FakeStore:
    """Digest = the bytes as text; ``known`` is what memory or the disk
    cache already holds."""

    known: dict[str, int] = attrs.field(factory=dict)

    def lookup(self, data: bytes) -> tuple[str, int | None]:
        return data.decode(), self.known.get(data.decode())

    def cached(self, digest: str) -> int | None:
        return self.known.get(digest)

    def add(self, digest: str, fd: int) -> int:
        self.known[digest] = fd
        return fd

    def summary(self) -> dict[str, int]:
        return {}


async def inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


def make(slots: int = 2, **kw: Any) -> tuple[Compilers, FakeZygote, FakeStore]:
    zygote, store = FakeZygote(), FakeStore()
    compilers = Compilers(
        zygote,  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        slots=slots,
        memory=256 << 20,
        timeout=kw.pop("timeout", TIMEOUT),
        idle_timeout=kw.pop("idle_timeout", 60.0),
        offload=inline,
    )
    return compilers, zygote, store


async def test_compiled_code_goes_to_the_store_and_the_process_is_reused(autojump_clock) -> None:
    compilers, zygote, store = make()
    first = await compilers.code(b"ok1", uid=1)
    assert store.known == {"ok1": first}
    await compilers.code(b"ok2", uid=2)
    assert len(zygote.compilers) == 1 and zygote.killed == []
    assert compilers.counters["compile.compiled"] == 2


async def test_wasmtimes_refusal_is_the_modules_fault_and_keeps_the_process(
    autojump_clock,
) -> None:
    compilers, zygote, _ = make()
    with pytest.raises(CompileFailed) as e:
        await compilers.code(b"bad", uid=1)
    assert str(e.value) == "wasmtime says no" and not e.value.limit
    await compilers.code(b"ok", uid=1)
    assert len(zygote.compilers) == 1 and zygote.killed == []


async def test_a_compile_past_its_timeout_is_killed(autojump_clock) -> None:
    compilers, zygote, _ = make(timeout=5.0)
    start = trio.current_time()
    with pytest.raises(CompileFailed) as e:
        await compilers.code(b"hang", uid=1)
    assert trio.current_time() - start == pytest.approx(5.0)
    assert e.value.limit and "compile_timeout (5 s)" in str(e.value)
    assert zygote.killed == [100] and zygote.compilers[0].closed
    await compilers.code(b"ok", uid=1)  # a new process
    assert len(zygote.compilers) == 2
    assert compilers.counters["compile.timeouts"] == 1


async def test_a_compiler_that_dies_costs_only_its_compile(autojump_clock) -> None:
    compilers, zygote, _ = make()
    with pytest.raises(CompileFailed) as e:
        await compilers.code(b"die", uid=1)
    assert e.value.limit and "compile_memory is 256 MiB" in str(e.value)
    assert zygote.compilers[0].closed
    await compilers.code(b"ok", uid=1)
    assert len(zygote.compilers) == 2 and compilers.counters["compile.deaths"] == 1


async def test_a_compiler_that_ended_while_idle_costs_no_compile(autojump_clock) -> None:
    compilers, zygote, _ = make()
    await compilers.code(b"ok1", uid=1)
    zygote.compilers[0].ended = True  # killed by an administrator meanwhile
    await compilers.code(b"ok2", uid=1)
    assert len(zygote.compilers) == 2 and zygote.compilers[0].closed
    assert compilers.counters["compile.deaths"] == 0


async def test_a_cancelled_compile_does_not_return_its_process(autojump_clock) -> None:
    """Its answer would come to the next compile's request."""
    compilers, zygote, _ = make()
    with trio.move_on_after(1):
        await compilers.code(b"hang", uid=1)
    assert zygote.killed == [100] and zygote.compilers[0].closed
    await compilers.code(b"ok", uid=1)
    assert len(zygote.compilers) == 2


async def test_cached_code_never_waits_behind_a_compile(autojump_clock) -> None:
    compilers, zygote, store = make(slots=1)
    store.known["libc"] = 7
    zygote.gates[b"okslow"] = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(compilers.code, b"okslow", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert zygote.compiling == {b"okslow"}  # the one slot is taken
        assert await compilers.code(b"libc", uid=1) == 7  # same uid, even
        assert zygote.compiling == {b"okslow"}
        zygote.gates[b"okslow"].set()


async def test_one_uid_cannot_take_every_slot(autojump_clock) -> None:
    """uid 1 has three slow modules to compile, uid 2 one: with two slots,
    uid 2 compiles alongside uid 1's first, not after all three."""
    compilers, zygote, _ = make(slots=2)
    for name in (b"okA1", b"okA2", b"okA3", b"okB1"):
        zygote.gates[name] = trio.Event()
    async with trio.open_nursery() as nursery:
        for name in (b"okA1", b"okA2", b"okA3"):
            nursery.start_soon(compilers.code, name, 1)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(compilers.code, b"okB1", 2)
        await trio.testing.wait_all_tasks_blocked()
        assert zygote.compiling == {b"okA1", b"okB1"}
        zygote.gates[b"okA1"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert zygote.compiling == {b"okA2", b"okB1"}
        for gate in zygote.gates.values():
            gate.set()
    assert sorted(zygote.compiled) == [b"okA1", b"okA2", b"okA3", b"okB1"]


async def test_one_compile_per_module(autojump_clock) -> None:
    """Workers of two uids ask for the same module at once: it is compiled
    once, and both get its code."""
    compilers, zygote, _ = make()
    zygote.gates[b"oklib"] = trio.Event()
    got: list[int] = []

    async def ask(uid: int) -> None:
        got.append(await compilers.code(b"oklib", uid))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, 1)
        nursery.start_soon(ask, 2)
        await trio.testing.wait_all_tasks_blocked()
        zygote.gates[b"oklib"].set()
    assert zygote.compiled == [b"oklib"] and len(got) == 2 and got[0] == got[1]
    assert compilers._per_digest == {} and compilers._per_uid == {}  # nothing kept


async def test_idle_compilers_are_closed(autojump_clock) -> None:
    compilers, zygote, _ = make(idle_timeout=60.0)
    await compilers.code(b"ok", uid=1)
    await trio.sleep(30)
    assert compilers.reap_idle() == 0 and not zygote.compilers[0].closed
    await trio.sleep(31)
    assert compilers.reap_idle() == 1 and zygote.compilers[0].closed
    assert compilers.summary()["compile.processes_idle"] == 0
