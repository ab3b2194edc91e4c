"""The front's rules, in process and deterministic: a real :class:`Server`
on a real Unix socket, with fake workers whose runs the test controls, and
trio's MockClock (autojump) standing in for time. Nothing here sleeps or
assumes how long anything takes.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from wasmrun.daemon import server as server_module
from wasmrun.daemon.channel import close_fds
from wasmrun.daemon.config import DaemonConfig
from wasmrun.daemon.identity import Identity, own_identity
from wasmrun.daemon.scheduler import Busy, PoolLimits, Scheduler
from wasmrun.daemon.server import Server
from wasmrun.daemon.workers import WorkerDied, WorkerKilled
from wasmrun.protocol import (
    Cancel,
    Connection,
    Error,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Run,
    RunResult,
    Stats,
    decode_message,
    encode_payload,
)

# -- fake workers -------------------------------------------------------------------


@attrs.define(eq=False)
class FakeWorker:
    """Runs "programs" the test scripts: ``ok``; ``gate:NAME`` (waits for the
    test to open the gate, or for cancellation/timeout, as a guest that
    stops at its epoch check); ``stuck`` (ignores cancellation: the front
    must kill it); ``die`` (the process vanishes)."""

    identity: Identity
    gates: dict[str, trio.Event]
    started: list[str]
    pid: int = 4242
    alive: bool = True
    runs: int = 0
    last_used: float = 0.0
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.alive = False

    async def run(self, request, roles, fds, store, stop, kill_grace):
        self.runs += 1
        msg = decode_message(request)
        program = msg.program
        self.started.append(program)
        rid = msg.request_id
        if program == "ok":
            return encode_payload(RunResult(request_id=rid, exit_code=0))
        if program.startswith("gate:"):
            gate = self.gates.setdefault(program, trio.Event())
            with stop.scope:  # a guest that stops at its next epoch check
                await gate.wait()
                return encode_payload(RunResult(request_id=rid, exit_code=7))
            if stop.why() == "timeout":
                timeout = msg.limits.timeout_ms / 1000
                text = f"run timed out after {timeout:g} s"
                return encode_payload(Error(request_id=rid, kind="timeout", message=text))
            return encode_payload(Error(request_id=rid, kind="cancelled", message="run cancelled"))
        if program == "stuck":
            with stop.scope:  # ignores the request to stop: killed after the grace
                await trio.sleep_forever()
            await trio.sleep(kill_grace)
            self.alive = False
            raise WorkerKilled(stop.why())
        if program == "die":
            self.alive = False
            raise WorkerDied("gone")
        if program == "garbage":  # a worker answering what is no answer
            return b"\xc1"
        if program == "other-id":  # ... or answering another request
            return encode_payload(RunResult(request_id=rid + 1, exit_code=0))
        raise AssertionError(program)


@attrs.define
class Harness:
    server: Server
    path: str
    workers: list[FakeWorker]
    gates: dict[str, trio.Event]
    started: list[str]
    serving: trio.CancelScope
    done: trio.Event

    async def connect(self) -> Client:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(self.path)
        return Client(sock)

    def gate(self, name: str) -> trio.Event:
        return self.gates.setdefault(f"gate:{name}", trio.Event())


class Client:
    """A protocol client over a trio socket: plain frames, optional fds."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.conn = Connection("client")

    async def send(self, msg: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
        await self.send_raw(self.conn.send(msg), fds)

    async def send_raw(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        await self.sock.sendmsg([data], anc)

    async def receive(self) -> Message:
        while True:
            msg = self.conn.next_message()
            if msg is not None:
                return msg
            data = await self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.conn.receive_data(data)

    async def closed_by_server(self) -> bool:
        """Read to the end: True once the server closed its side."""
        while True:
            try:
                data = await self.sock.recv(65536)
            except OSError:
                return True
            if not data:
                return True
            self.conn.receive_data(data)

    def close(self) -> None:
        self.sock.close()


def run(program: str, rid: int = 1, timeout_ms: int | None = None) -> Run:
    from wasmrun.protocol import Limits

    return Run(program=program, request_id=rid, limits=Limits(timeout_ms=timeout_ms))


def _config(**kw) -> DaemonConfig:
    kw.setdefault("concurrency", 2)
    kw.setdefault("drain_timeout", 30.0)
    kw.setdefault("idle_timeout", 60.0)
    kw.setdefault("frame_timeout", 10.0)
    kw.setdefault("kill_grace", 1.0)
    return DaemonConfig(**kw)


@asynccontextmanager
async def serving(
    config: DaemonConfig | None = None, can_change_identity: bool = False, **pool
) -> AsyncIterator[Harness]:
    config = config or _config()
    workers: list[FakeWorker] = []
    gates: dict[str, trio.Event] = {}
    started: list[str] = []

    async def spawn(identity: Identity) -> FakeWorker:
        w = FakeWorker(identity, gates, started)
        workers.append(w)
        return w

    limits = PoolLimits(
        max_workers=config.concurrency,
        max_workers_per_uid=config.effective_workers_per_uid,
        max_queued_per_uid=config.queue_per_uid,
        idle_timeout=pool.get("idle_timeout", 1000.0),
        max_requests=pool.get("max_requests", 1000),
    )
    scheduler: Scheduler[FakeWorker] = Scheduler(limits, spawn)
    srv = Server(
        config, scheduler, None, own=own_identity(), can_change_identity=can_change_identity
    )
    directory = tempfile.mkdtemp(prefix="wrs-", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await srv.serve(listener, handle_signals=False, task_status=task_status)
                done.set()

            await nursery.start(serve)
            yield Harness(srv, path, workers, gates, started, scope, done)
            scope.cancel()
    finally:
        os.unlink(path)
        os.rmdir(directory)


# -- per-connection rules ---------------------------------------------------------------


async def test_ping_and_stats(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        await c.send(Ping(request_id=1))
        assert isinstance(await c.receive(), Pong)
        await c.send(run("ok", 2))
        assert await c.receive() == RunResult(request_id=2, exit_code=0)
        await c.send(Stats(request_id=3))
        stats = (await c.receive()).stats
        uid = os.geteuid()
        assert stats[f"uid.{uid}.connections"] == 1
        assert stats[f"uid.{uid}.workers"] == 1 and stats[f"uid.{uid}.queued"] == 0
        assert stats["daemon.requests"] == 1
        # Another tenant sees the daemon's totals, not who else uses it.
        other = h.server.stats(viewer=uid + 4242)
        assert other["daemon.requests"] == 1 and not any(k.startswith("uid.") for k in other)
        assert h.server.stats(viewer=uid)[f"uid.{uid}.workers"] == 1


async def test_a_request_id_in_use_breaks_the_connection(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        await c.send(run("gate:a", 5))
        await trio.testing.wait_all_tasks_blocked()
        await c.send_raw(Connection("client").send(run("ok", 5)))
        answer = await c.receive()
        assert isinstance(answer, Error) and answer.kind == "protocol"
        assert "request id 5 is already in use" in answer.message
        assert await c.closed_by_server()


async def test_a_request_id_is_free_again_once_answered(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        for _ in range(3):
            await c.send(run("ok", 9))
            assert await c.receive() == RunResult(request_id=9, exit_code=0)


async def test_the_in_flight_cap_of_one_connection(autojump_clock) -> None:
    config = _config(concurrency=1, queue_per_uid=1000)
    async with serving(config) as h:
        c = await h.connect()
        for rid in range(1, 65):
            await c.send(run("gate:x", rid))
        await c.send(run("ok", 65))
        answer = await c.receive()
        assert isinstance(answer, Error) and answer.request_id == 65
        assert answer.kind == "busy" and answer.exit_code == 75
        assert "in flight on one connection" in answer.message
        h.gate("x").set()
        ids = {(await c.receive()).request_id for _ in range(64)}
        assert ids == set(range(1, 65))


async def test_a_full_queue_answers_busy_at_once(autojump_clock) -> None:
    config = _config(concurrency=1, queue_per_uid=2)
    async with serving(config) as h:
        c = await h.connect()
        await c.send(run("gate:q", 1))  # running
        await trio.testing.wait_all_tasks_blocked()
        await c.send(run("gate:q", 2))  # waiting
        await c.send(run("gate:q", 3))  # waiting
        await trio.testing.wait_all_tasks_blocked()
        await c.send(run("ok", 4))
        answer = await c.receive()
        assert answer.request_id == 4 and answer.kind == "busy", answer
        assert "max_queued_per_uid = 2" in answer.message
        h.gate("q").set()
        assert {(await c.receive()).request_id for _ in range(3)} == {1, 2, 3}


async def test_descriptors_must_match_the_roles(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        msg = Run(program="ok", request_id=1, fd_roles=("stdin", "stdout"))
        r, w = os.pipe()
        try:
            await c.send(msg, [r])  # one descriptor for two roles
        finally:
            os.close(r)
            os.close(w)
        answer = await c.receive()
        assert isinstance(answer, Error) and answer.kind == "protocol"
        assert "names 2 descriptors but 1 arrived" in answer.message
        assert await c.closed_by_server()


async def test_truncated_descriptors_are_a_protocol_error(autojump_clock, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "_ANC_SPACE", socket.CMSG_SPACE(4))
    async with serving() as h:
        c = await h.connect()
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        try:
            msg = Run(program="ok", request_id=1, fd_roles=("stdin", "stdout", "stderr"))
            await c.send(msg, fds)
        finally:
            for fd in fds:
                os.close(fd)
        answer = await c.receive()
        assert isinstance(answer, Error) and answer.kind == "protocol"
        assert "too many file descriptors" in answer.message


def test_connection_counts_descriptors_with_plain_bytes() -> None:
    client, server = Connection("client"), Connection("server", descriptors=True)
    server.receive_fds(1)
    server.receive_data(client.send(Run(program="p", request_id=1, fd_roles=("program",))))
    msg = server.next_message()
    assert server.fds_for(msg) == 1 and server.inflight == {1}
    server.send(RunResult(request_id=1, exit_code=0))
    assert server.inflight == frozenset()
    broken = Connection("server", descriptors=True)
    with pytest.raises(ProtocolError, match="too many file descriptors"):
        broken.receive_fds(2, truncated=True)
    flood = Connection("server", descriptors=True)
    with pytest.raises(ProtocolError, match="without requests"):
        flood.receive_fds(1000)


# -- time limits on connections -------------------------------------------------------


async def test_an_idle_connection_is_closed(autojump_clock) -> None:
    async with serving(_config(idle_timeout=60.0)) as h:
        c = await h.connect()
        t0 = trio.current_time()
        assert await c.closed_by_server()
        assert trio.current_time() - t0 == pytest.approx(60.0, abs=0.5)
        assert h.server.open_connections == 0


async def test_a_connection_with_a_request_in_flight_is_not_idle(autojump_clock) -> None:
    async with serving(_config(idle_timeout=5.0)) as h:
        c = await h.connect()
        await c.send(run("gate:long", 1))
        await trio.sleep(100)  # virtual time: far past the idle timeout
        assert h.server.open_connections == 1
        h.gate("long").set()
        assert (await c.receive()).request_id == 1
        t0 = trio.current_time()
        assert await c.closed_by_server()  # idle again: the clock restarts
        assert trio.current_time() - t0 == pytest.approx(5.0, abs=0.5)


async def test_a_frame_must_be_finished_in_time(autojump_clock) -> None:
    async with serving(_config(frame_timeout=10.0, idle_timeout=1000.0)) as h:
        c = await h.connect()
        data = Connection("client").send(run("ok", 1))
        await c.send_raw(data[: len(data) // 2])
        t0 = trio.current_time()
        answer = await c.receive()
        assert isinstance(answer, Error) and answer.kind == "protocol"
        assert "frame not completed within 10 s" in answer.message
        assert trio.current_time() - t0 == pytest.approx(10.0, abs=0.5)
        assert await c.closed_by_server()


# -- connection caps and refusals ---------------------------------------------------------


async def test_connections_per_uid_are_capped(autojump_clock) -> None:
    async with serving(_config(max_connections_per_uid=2)) as h:
        kept = [await h.connect() for _ in range(2)]
        for c in kept:
            await c.send(Ping(request_id=1))
            await c.receive()
        extra = await h.connect()
        answer = await extra.receive()
        assert isinstance(answer, Error) and answer.kind == "busy" and answer.exit_code == 75
        assert "max_connections_per_uid = 2" in answer.message
        kept[0].close()
        await trio.testing.wait_all_tasks_blocked()
        again = await h.connect()
        await again.send(Ping(request_id=1))
        assert isinstance(await again.receive(), Pong)


async def test_connections_in_all_are_capped(autojump_clock) -> None:
    async with serving(_config(max_connections=1)) as h:
        first = await h.connect()
        await first.send(Ping(request_id=1))
        await first.receive()
        extra = await h.connect()
        answer = await extra.receive()
        assert answer.kind == "busy" and "max_connections = 1" in answer.message


async def test_a_refused_client_reads_its_refusal_after_sending(autojump_clock) -> None:
    """The server answers, half-closes and keeps reading: the client's
    request is accepted by the socket and its refusal is there to read."""
    config = _config(allowed_uids=(os.geteuid() + 12345,))
    async with serving(config, can_change_identity=True) as h:
        for _ in range(20):
            c = await h.connect()
            await c.send(run("ok", 1))
            answer = await c.receive()
            assert isinstance(answer, Error) and answer.kind == "refused"
            assert answer.exit_code == 76
            c.close()


# -- running requests: stops, kills, deaths ---------------------------------------------


async def test_a_worker_that_ignores_its_timeout_is_killed(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        t0 = trio.current_time()
        await c.send(run("stuck", 1, timeout_ms=2000))
        answer = await c.receive()
        assert answer == Error(request_id=1, kind="timeout", message="run timed out after 2 s")
        assert trio.current_time() - t0 == pytest.approx(3.0, abs=0.1)  # timeout + grace
        assert h.server.counters["daemon.killed"] == 1
        await c.send(run("ok", 2))  # a new worker replaces the killed one
        assert await c.receive() == RunResult(request_id=2, exit_code=0)
        assert len(h.workers) == 2 and h.workers[0].closed


async def test_cancel_of_a_stuck_run_kills_it(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        await c.send(run("stuck", 1))
        await trio.testing.wait_all_tasks_blocked()
        await c.send(Cancel(request_id=1))
        answer = await c.receive()
        assert answer.kind == "cancelled" and answer.exit_code == 130


async def test_a_worker_that_dies_costs_only_its_request(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        await c.send(run("die", 1))
        answer = await c.receive()
        assert answer.kind == "internal" and answer.exit_code == 70
        assert "died unexpectedly" in answer.message and "\n" not in answer.message
        await c.send(run("ok", 2))
        assert await c.receive() == RunResult(request_id=2, exit_code=0)


@pytest.mark.parametrize("program", ["garbage", "other-id"])
async def test_a_bad_answer_from_a_worker_is_an_internal_error(autojump_clock, program) -> None:
    async with serving() as h:
        c = await h.connect()
        await c.send(run(program, 1))
        answer = await c.receive()
        assert answer == Error(request_id=1, kind="internal", message=answer.message, exit_code=70)
        assert answer.message.startswith("bad answer from worker")
        await c.send(run("ok", 2))  # the connection goes on
        assert await c.receive() == RunResult(request_id=2, exit_code=0)


@pytest.mark.parametrize("access_log", [True, False])
async def test_the_access_log_line(autojump_clock, caplog, access_log) -> None:
    caplog.set_level(logging.INFO, logger="wasmrund")
    async with serving(_config(access_log=access_log)) as h:
        c = await h.connect()
        await c.send(run("ok", 1))
        assert await c.receive() == RunResult(request_id=1, exit_code=0)
        await c.send(run("die", 2))
        await c.receive()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("uid=")]
    if not access_log:
        assert lines == []
        return
    assert len(lines) == 2
    assert " run ok " in lines[0] and lines[0].endswith(" ms exit 0")
    assert " run die " in lines[1] and lines[1].endswith(" ms internal error (exit 70)")


async def test_a_client_going_away_cancels_its_runs(autojump_clock) -> None:
    async with serving() as h:
        c = await h.connect()
        await c.send(run("gate:forever", 1))
        await trio.testing.wait_all_tasks_blocked()
        c.close()
        await trio.testing.wait_all_tasks_blocked()
        assert h.server.inflight_count() == 0
        assert h.server.scheduler.stats()["workers.total"] == 1  # back in the pool


# -- shutdown --------------------------------------------------------------------------------


async def test_first_stop_answers_every_accepted_request(autojump_clock) -> None:
    async with serving(_config(concurrency=1)) as h:
        c = await h.connect()
        await c.send(run("gate:s", 1))  # running
        await trio.testing.wait_all_tasks_blocked()
        await c.send(run("ok", 2))  # queued behind it
        await trio.testing.wait_all_tasks_blocked()
        h.server.stop("SIGTERM")
        await trio.testing.wait_all_tasks_blocked()
        await c.send(run("ok", 3))  # too late: refused as shutting down
        answer = await c.receive()
        assert answer == Error(request_id=3, kind="shutdown", message="wasmrund is shutting down")
        assert answer.exit_code == 69  # each refusal its own status: EX_UNAVAILABLE
        h.gate("s").set()
        answers = {m.request_id: m for m in [await c.receive(), await c.receive()]}
        assert answers[1] == RunResult(request_id=1, exit_code=7)
        assert answers[2] == RunResult(request_id=2, exit_code=0)
        await h.done.wait()
        assert await c.closed_by_server()


async def test_second_stop_cancels_running_and_queued_requests(autojump_clock) -> None:
    async with serving(_config(concurrency=1)) as h:
        c = await h.connect()
        await c.send(run("gate:never", 1))
        await trio.testing.wait_all_tasks_blocked()
        await c.send(run("ok", 2))
        await trio.testing.wait_all_tasks_blocked()
        h.server.stop("SIGTERM")
        await trio.testing.wait_all_tasks_blocked()
        h.server.stop("SIGTERM")
        answers = {m.request_id: m for m in [await c.receive(), await c.receive()]}
        assert answers[1].kind == "cancelled" and answers[1].exit_code == 130
        assert answers[2].kind == "cancelled" and answers[2].exit_code == 130
        await h.done.wait()
        assert "ok" not in h.started  # the queued request never ran


async def test_the_drain_timeout_cancels_what_is_left(autojump_clock) -> None:
    async with serving(_config(drain_timeout=30.0)) as h:
        c = await h.connect()
        await c.send(run("stuck", 1))
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        h.server.stop("SIGTERM")
        answer = await c.receive()
        assert answer.kind == "cancelled"
        await h.done.wait()
        assert trio.current_time() - t0 <= 30.0 + 2.0


async def test_a_connection_accepted_but_unread_still_gets_an_answer(autojump_clock) -> None:
    async with serving() as h:
        idle = await h.connect()
        await trio.testing.wait_all_tasks_blocked()
        h.server.stop("SIGTERM")
        await trio.testing.wait_all_tasks_blocked()
        await idle.send(run("ok", 1))
        answer = await idle.receive()
        assert answer.kind == "shutdown"
        await h.done.wait()


# -- the scheduler on its own ----------------------------------------------------------------


@attrs.define(eq=False)
class PoolWorker:
    identity: Identity
    alive: bool = True
    runs: int = 0
    last_used: float = 0.0
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def _pool(**kw) -> tuple[Scheduler[PoolWorker], list[PoolWorker]]:
    made: list[PoolWorker] = []

    async def spawn(identity: Identity) -> PoolWorker:
        w = PoolWorker(identity)
        made.append(w)
        return w

    return Scheduler(PoolLimits(**kw), spawn), made


A, B = Identity(1001, 1001), Identity(1002, 1002)


async def test_round_robin_across_uids(autojump_clock) -> None:
    sched, _ = _pool(max_workers=1, max_workers_per_uid=1, max_queued_per_uid=100)
    order: list[str] = []
    first = await sched.acquire(A)

    async def request(identity: Identity, name: str) -> None:
        w = await sched.acquire(identity)
        order.append(name)
        sched.release(w)

    async with trio.open_nursery() as n:
        for i in range(8):
            n.start_soon(request, A, f"a{i}")
            await trio.testing.wait_all_tasks_blocked()
        n.start_soon(request, B, "b0")
        await trio.testing.wait_all_tasks_blocked()
        sched.release(first)
    # B waited behind eight of A's requests but was served second, not ninth.
    assert order[:2] == ["a0", "b0"], order


async def test_worker_caps_and_eviction_of_idle_workers(autojump_clock) -> None:
    sched, made = _pool(max_workers=2, max_workers_per_uid=1)
    wa = await sched.acquire(A)
    with trio.move_on_after(1) as waited:  # A's second request waits: per-uid cap
        await sched.acquire(A)
    assert waited.cancelled_caught
    sched.release(wa)
    wb = await sched.acquire(B)
    sched.release(wb)
    assert sched.total == 2
    c = Identity(1003, 1003)
    wc = await sched.acquire(c)  # at the cap: the longest-idle worker is retired
    assert made[0].closed and not made[1].closed
    assert sched.total == 2 and wc.identity == c


async def test_workers_are_recycled_and_reaped(autojump_clock) -> None:
    sched, made = _pool(max_workers=2, max_requests=2, idle_timeout=10.0)
    for _ in range(3):
        w = await sched.acquire(A)
        w.runs += 1
        sched.release(w)
    assert made[0].closed and len(made) == 2  # retired after its 2nd run
    await trio.sleep(10)
    assert sched.reap_idle() == 1 and made[1].closed and sched.total == 0


async def test_busy_when_the_queue_is_full(autojump_clock) -> None:
    sched, _ = _pool(max_workers=1, max_queued_per_uid=1)
    await sched.acquire(A)
    async with trio.open_nursery() as n:
        n.start_soon(sched.acquire, A)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Busy):
            await sched.acquire(A)
        n.cancel_scope.cancel()
    assert sched.stats()[f"uid.{A.uid}.queued"] == 0  # the cancelled waiter left


async def test_refused_connections_linger_only_while_few_do(autojump_clock, monkeypatch) -> None:
    """A client refused in a loop cannot tie up descriptors: beyond a few
    lingering refusals, the rest are answered and closed at once."""
    monkeypatch.setattr(server_module, "_MAX_LINGERING", 3)
    config = _config(allowed_uids=(os.geteuid() + 12345,))
    async with serving(config, can_change_identity=True) as h:
        clients = [await h.connect() for _ in range(5)]
        for c in clients:
            answer = await c.receive()
            assert isinstance(answer, Error) and answer.kind == "refused"
        await trio.testing.wait_all_tasks_blocked()
        still_read = 0
        for c in clients:  # the server half-closed all; it still reads from some
            try:
                await c.send_raw(b"more")
                still_read += 1
            except BrokenPipeError:
                pass
        assert still_read == 3 and h.server.lingering == 3
        for c in clients:
            c.close()
        await trio.testing.wait_all_tasks_blocked()
        assert h.server.lingering == 0


# -- the zygote handle -----------------------------------------------------------------------


@contextmanager
def _fake_zygote() -> Iterator[tuple[Any, Any]]:
    """The front's zygote handle, and the other end of its channel, which
    the test plays (reading spawn requests, writing answers)."""
    from wasmrun.daemon.workers import AsyncChannel, Zygote

    front, zyg_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    kills, kills_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    zygote = Zygote(0, front, kills)
    fake = AsyncChannel(zyg_end)
    try:
        yield zygote, fake
    finally:
        for s in (kills, kills_peer):
            s.close()
        fake.close()
        zygote.channel.close()


async def test_a_spawn_cancelled_midway_leaves_no_answer_for_the_next(autojump_clock) -> None:
    """A request cancelled while its worker is being forked (its client
    went away) must not leave the zygote's answer for the next spawn, which
    would take that pid for its own worker, and kill the wrong worker when
    retiring it."""
    from wasmrun.daemon.workers import WorkerLimits

    identity = own_identity()
    spawned: list[int] = []
    second: list[int] = []
    with _fake_zygote() as (zygote, fake):

        async def first_spawn(scope: trio.CancelScope) -> None:
            with scope:
                worker = await zygote.spawn(identity, WorkerLimits())
                spawned.append(worker.pid)
                worker.close()

        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_spawn, scope)
            msg, fds = await fake.receive()  # the first spawn request
            close_fds(fds)
            scope.cancel()  # its client is gone, while the fork is under way
            await trio.testing.wait_all_tasks_blocked()
            await fake.send({"op": "spawned", "id": msg["id"], "pid": 111})

        async def second_spawn() -> None:
            worker = await zygote.spawn(identity, WorkerLimits())
            second.append(worker.pid)
            worker.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second_spawn)
            msg, fds = await fake.receive()
            close_fds(fds)
            await fake.send({"op": "spawned", "id": msg["id"], "pid": 222})
    assert second == [222]
    assert spawned == [111]  # the first finished its exchange, then saw its cancel


async def test_an_answer_to_another_spawn_is_refused(autojump_clock) -> None:
    from wasmrun.daemon.workers import SpawnFailed, WorkerLimits

    with _fake_zygote() as (zygote, fake):

        async def answer_wrongly() -> None:
            msg, fds = await fake.receive()
            close_fds(fds)
            await fake.send({"op": "spawned", "id": msg["id"] + 1, "pid": 333})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_wrongly)
            with pytest.raises(SpawnFailed, match="answered spawn 2"):
                await zygote.spawn(own_identity(), WorkerLimits())
