"""Which request runs next, on which worker: per-uid queues served
round-robin, worker pools per identity with caps, reuse, recycling and
idle reaping.

Pure trio and free of processes: the worker factory is injected, so every
rule here is tested in process with fake workers (tests/test_scheduler.py).

* A request waits in its uid's queue; a uid with ``max_queued_per_uid``
  requests waiting gets :class:`Busy` at once.
* Whenever a worker frees up or a request arrives, uids with waiting
  requests are visited in round-robin order and each gets at most one
  worker per round, so one uid's backlog never starves another's.
* A request takes an idle worker of its identity, else a new one if the
  caps allow (``max_workers`` in all, ``max_workers_per_uid``), else, at
  the cap, the longest-idle worker of another identity is retired to make
  room. Otherwise the request waits.
* A worker returns to its pool after a run, unless it died, was killed or
  has served ``max_requests`` runs (a defence against leaks, like
  PHP-FPM's ``pm.max_requests``); idle workers are retired after
  ``idle_timeout`` seconds.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import attrs
import trio

from .identity import Identity


class PoolWorker(Protocol):
    identity: Identity
    alive: bool
    runs: int
    last_used: float

    def close(self) -> None: ...


W = TypeVar("W", bound=PoolWorker)


class Busy(Exception):
    """Too many requests of this uid are waiting."""


@attrs.frozen
class PoolLimits:
    max_workers: int = 4
    max_workers_per_uid: int = 4
    max_queued_per_uid: int = 64
    idle_timeout: float = 60.0
    max_requests: int = 1000


@attrs.define(eq=False)
class _Ticket(Generic[W]):
    identity: Identity
    event: trio.Event = attrs.field(factory=trio.Event)
    worker: W | None = None
    granted: bool = False


class Scheduler(Generic[W]):
    def __init__(self, limits: PoolLimits, spawn: Callable[[Identity], Awaitable[W]]) -> None:
        self.limits = limits
        self._spawn = spawn
        self._queues: dict[int, collections.deque[_Ticket[W]]] = {}
        self._rr: collections.deque[int] = collections.deque()  # uids with waiting tickets
        self._idle: dict[Identity, list[W]] = {}
        self._count: collections.Counter[int] = collections.Counter()  # workers per uid
        self._busy: collections.Counter[int] = collections.Counter()
        self.total = 0
        self.spawned = 0
        self.retired = 0

    # -- taking and giving back workers ------------------------------------------

    async def acquire(self, identity: Identity) -> W:
        """A worker for ``identity``, when it is this request's turn."""
        uid = identity.uid
        queue = self._queues.setdefault(uid, collections.deque())
        if len(queue) >= self.limits.max_queued_per_uid:
            raise Busy(
                f"uid {uid} has {len(queue)} requests waiting "
                f"(max_queued_per_uid = {self.limits.max_queued_per_uid})"
            )
        ticket: _Ticket[W] = _Ticket(identity)
        queue.append(ticket)
        if uid not in self._rr:
            self._rr.append(uid)
        self._dispatch()
        try:
            await ticket.event.wait()
        except BaseException:
            if ticket.granted:
                if ticket.worker is not None:
                    self._busy[uid] += 1
                    self.release(ticket.worker)
                else:
                    self._unreserve(uid)
            else:
                queue.remove(ticket)
                self._forget_if_empty(uid)
            raise
        self._busy[uid] += 1
        if ticket.worker is not None:
            return ticket.worker
        try:
            worker = await self._spawn(identity)
        except BaseException:
            self._busy[uid] -= 1
            self._unreserve(uid)
            raise
        self.spawned += 1
        return worker

    def release(self, worker: W) -> None:
        """A worker is done with its request: back to its pool, or retired."""
        uid = worker.identity.uid
        self._busy[uid] -= 1
        if not self._busy[uid]:
            del self._busy[uid]
        if not worker.alive or worker.runs >= self.limits.max_requests:
            self._retire(worker, idle=False)
        else:
            worker.last_used = trio.current_time()
            self._idle.setdefault(worker.identity, []).append(worker)
        self._dispatch()

    # -- the rules -------------------------------------------------------------

    def _dispatch(self) -> None:
        granted = True
        while granted and self._rr:
            granted = False
            for uid in list(self._rr):  # least recently served first
                queue = self._queues[uid]
                if self._grant(queue[0]):
                    queue.popleft()
                    granted = True
                    self._rr.remove(uid)  # served: to the back of the line
                    if queue:
                        self._rr.append(uid)
                    else:
                        del self._queues[uid]

    def _forget_if_empty(self, uid: int) -> None:
        queue = self._queues.get(uid)
        if queue is not None and not queue:
            del self._queues[uid]
            self._rr.remove(uid)

    def _grant(self, ticket: _Ticket[W]) -> bool:
        idle = self._idle.get(ticket.identity)
        if idle:
            ticket.worker = idle.pop()
            if not idle:
                del self._idle[ticket.identity]
        else:
            uid = ticket.identity.uid
            if self._count[uid] >= self.limits.max_workers_per_uid:
                victim = self._longest_idle(lambda w: w.identity.uid == uid)
            elif self.total >= self.limits.max_workers:
                victim = self._longest_idle(lambda w: True)
            else:
                victim = None
            if victim is not None:
                self._retire(victim, idle=True)
            if self._count[uid] >= self.limits.max_workers_per_uid:
                return False
            if self.total >= self.limits.max_workers:
                return False
            self._count[uid] += 1
            self.total += 1
        ticket.granted = True
        ticket.event.set()
        return True

    def _longest_idle(self, which: Callable[[W], bool]) -> W | None:
        best = None
        for workers in self._idle.values():
            for w in workers:
                if which(w) and (best is None or w.last_used < best.last_used):
                    best = w
        return best

    def _unreserve(self, uid: int) -> None:
        self._count[uid] -= 1
        if not self._count[uid]:
            del self._count[uid]
        self.total -= 1
        self._dispatch()

    def _retire(self, worker: W, idle: bool) -> None:
        if idle:
            pool = self._idle[worker.identity]
            pool.remove(worker)
            if not pool:
                del self._idle[worker.identity]
        worker.close()
        self.retired += 1
        uid = worker.identity.uid
        self._count[uid] -= 1
        if not self._count[uid]:
            del self._count[uid]
        self.total -= 1

    # -- housekeeping ------------------------------------------------------------

    def reap_idle(self) -> int:
        """Retire workers idle longer than ``idle_timeout``; how many."""
        now = trio.current_time()
        old = [
            w
            for workers in self._idle.values()
            for w in workers
            if now - w.last_used >= self.limits.idle_timeout
        ]
        for w in old:
            self._retire(w, idle=True)
        return len(old)

    async def reap_forever(self) -> None:
        while True:
            await trio.sleep(max(self.limits.idle_timeout / 4, 0.05))
            self.reap_idle()

    def close_idle(self) -> None:
        for workers in list(self._idle.values()):
            for w in list(workers):
                self._retire(w, idle=True)

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {
            "workers.total": self.total,
            "workers.spawned": self.spawned,
            "workers.retired": self.retired,
        }
        uids = set(self._count) | set(self._queues)
        for uid in sorted(uids):
            out[f"uid.{uid}.workers"] = self._count.get(uid, 0)
            out[f"uid.{uid}.busy"] = self._busy.get(uid, 0)
            out[f"uid.{uid}.queued"] = len(self._queues.get(uid, ()))
        return out
