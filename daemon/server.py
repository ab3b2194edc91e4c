"""wasmrund's front: a trio server on a Unix socket that never runs guest
code and never opens a client's files.

One task per connection reads frames, and the descriptors that come with
them, into the sans-I/O :class:`wasmrun.protocol.Connection` (which keeps
the per-connection rules: request ids, descriptor counts). Each request
waits in its uid's queue (:mod:`~wasmrun.daemon.scheduler`, round-robin
across uids) for a worker process of its client's identity
(:mod:`~wasmrun.daemon.workers`), which runs it with the client's
credentials and descriptors. The connection keeps being read meanwhile, so
a ``cancel`` message or the client going away stops the run (by killing the
worker if the guest will not stop).

Connections are bounded: in number (in all and per uid), in idle time, in
the time to finish a frame once it started, and in bytes buffered (one
frame). SIGTERM (or SIGINT) stops accepting and answers every request
accepted so far: running and queued ones finish (new ones get "shutting
down") within ``drain_timeout``; a second signal, or the timeout, cancels
them, and each is answered as cancelled.
"""

from __future__ import annotations

import array
import collections
import errno
import grp
import logging
import math
import os
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import trio
from wasmrun.protocol import (
    MAX_FDS,
    PROTOCOL_VERSION,
    Answer,
    Cancel,
    Connection,
    Dlopen,
    Error,
    Message,
    Ping,
    Pong,
    Preload,
    ProtocolError,
    Response,
    Run,
    Stats,
    StatsResult,
    encode_message,
    error_response,
    peek_answer,
)

from .channel import close_fds, received_fds
from .compilers import Compilers
from .config import DaemonConfig, default_socket_path
from .execute import effective_limits, error_for
from .identity import Identity
from .peer import Peer, peer_of
from .scheduler import Busy, Scheduler
from .systemd import listen_fds, notify
from .workers import SpawnFailed, Stop, WorkerDied, WorkerGone, WorkerKilled

log = logging.getLogger("wasmrund")

SERVER_NAME = "wasmrund 0.2.0"
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_MAX_INFLIGHT = 64  # requests one connection may have running or queued
_WORKER_TRIES = 3  # workers found dead while idle before a request gives up


class ListenError(Exception):
    """The socket cannot be set up (one line for the user)."""


# -- the listening socket ----------------------------------------------------------


def _secure_directory(path: Path) -> None:
    """The socket's directory: created 0700, and if it exists it must be ours
    and closed to others (a world-writable /tmp fallback would otherwise let
    another user plant a socket or directory there first)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise ListenError(f"{path}: cannot create the socket directory: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ListenError(f"{path}: not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ListenError(
            f"{path}: must be owned by uid {os.geteuid()} and writable only by it "
            "(remove it or choose another --socket)"
        )


def bind_socket(config: DaemonConfig) -> tuple[socket.socket, str]:
    """The listening socket and a description of it: the one systemd handed
    over (socket activation), else a new one at the configured path. A stale
    socket file left by a dead daemon is replaced; a live daemon is an error.
    """
    fds = listen_fds()
    if fds:
        sock = socket.socket(fileno=fds[0])
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ListenError("the socket passed by systemd is not a Unix stream socket")
        name = sock.getsockname()
        return sock, f"{name or '<unnamed>'} (from systemd)"
    path = Path(config.socket or default_socket_path())
    if config.socket is None:
        _secure_directory(path.parent)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ListenError(f"{path}: exists and is not a socket") from None
            path.unlink()  # stale: its daemon is gone
        else:
            raise ListenError(f"{path}: another wasmrund is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # never world-connectable, even for an instant
    try:
        sock.bind(str(path))
        if config.socket_group:
            group = config.socket_group
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
        os.chmod(path, config.effective_socket_mode)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ListenError(f"{path}: cannot listen: {e.strerror}") from None
    finally:
        os.umask(old)
    return sock, str(path)


# -- the server -------------------------------------------------------------------


class Server:
    """Accepts connections and owns what they share: the scheduler and its
    workers, the compiled code and its compilers, counters, and the drain
    state.

    ``own``: the daemon's identity; ``can_change_identity``: whether
    workers may take other identities (root, or CAP_SETUID and
    CAP_SETGID). Without it only the daemon's own uid is served.
    """

    def __init__(
        self,
        config: DaemonConfig,
        scheduler: Scheduler[Any],
        compilers: Compilers | None,
        *,
        own: Identity,
        can_change_identity: bool,
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.compilers = compilers
        self.own = own
        self.can_change_identity = can_change_identity
        self.connections: set[_ConnectionHandler] = set()
        self.per_uid: collections.Counter[int] = collections.Counter()
        self.open_connections = 0
        self.counters = {
            "daemon.connections": 0,
            "daemon.requests": 0,
            "daemon.active": 0,
            "daemon.errors": 0,
            "daemon.protocol_errors": 0,
            "daemon.refused": 0,
            "daemon.busy": 0,
            "daemon.killed": 0,
            "daemon.worker_deaths": 0,
            "daemon.accept_errors": 0,
        }
        self.started = time.monotonic()
        self.draining = False
        # The per-request line: at info (an access log), or debug if not wanted.
        self.access_level = logging.INFO if config.access_log else logging.DEBUG
        self._idle = trio.Event()  # set whenever no request is in flight
        self._closed = trio.Event()  # set whenever a connection ends
        self._accept_stopped = trio.Event()
        self._stop_send, self._stops = trio.open_memory_channel[str](4)
        # Things a hostile or broken client can make happen in a loop are
        # logged at most once a second each, with a count of the rest.
        self.accept_log = _Throttled()
        self.refusal_log = _Throttled()
        self.protocol_log = _Throttled()
        self.lingering = 0  # refused connections waiting for their client to close

    # -- who may connect ----------------------------------------------------------

    def identity_for(self, peer: Peer) -> Identity | Error:
        """The identity a peer's requests run as, or the refusal."""
        if not self.can_change_identity:
            if peer.uid != self.own.uid:
                return Error(
                    kind="refused",
                    message=(
                        f"uid {peer.uid} may not use this wasmrund: it runs as uid "
                        f"{self.own.uid} without the right to change identity (root, or "
                        f"CAP_SETUID and CAP_SETGID), so it serves uid {self.own.uid} only"
                    ),
                )
            return self.own
        if not self.config.uid_allowed(peer.uid):
            return Error(kind="refused", message=f"uid {peer.uid} may not use this wasmrund")
        return Identity(peer.uid, peer.gid, peer.groups)

    def connection_refusal(self, uid: int) -> Error | None:
        if self.open_connections >= self.config.max_connections:
            return Error(
                kind="busy",
                message=f"wasmrund has {self.open_connections} connections open "
                f"(max_connections = {self.config.max_connections}); try again later",
            )
        if self.per_uid[uid] >= self.config.max_connections_per_uid:
            return Error(
                kind="busy",
                message=f"uid {uid} has {self.per_uid[uid]} connections open "
                f"(max_connections_per_uid = {self.config.max_connections_per_uid})",
            )
        return None

    # -- serving ---------------------------------------------------------------

    async def serve(
        self,
        listener: socket.socket,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`), then drain and
        return. A second stop cancels what is still running."""
        lsock = trio.socket.from_stdlib_socket(listener)
        if handle_signals:
            # The receiver is open before READY=1: a SIGTERM right after it
            # must start a drain, not kill the process.
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                await self._serve(lsock, received, task_status)
        else:
            await self._serve(lsock, None, task_status)
        self.scheduler.close_idle()
        log.info("stopped")

    async def _serve(
        self,
        lsock: trio.socket.SocketType,
        received: AsyncIterator[int] | None,
        task_status: trio.TaskStatus[None],
    ) -> None:
        async with trio.open_nursery() as nursery:
            if received is not None:
                nursery.start_soon(self._forward_signals, received)
            accept_scope = trio.CancelScope()
            nursery.start_soon(self._accept_loop, lsock, nursery, accept_scope)
            nursery.start_soon(self.scheduler.reap_forever)
            if self.compilers is not None:
                nursery.start_soon(self.compilers.reap_forever)
            task_status.started()
            notify("READY=1\nSTATUS=serving")
            why = await self._stops.receive()
            log.info("%s: draining %d running request(s)", why, self.inflight_count())
            await self.drain(accept_scope)
            nursery.cancel_scope.cancel()

    def stop(self, why: str = "stop") -> None:
        """Begin draining; called again, cancel what is still running."""
        try:
            self._stop_send.send_nowait(why)
        except trio.WouldBlock:
            pass

    async def _forward_signals(self, received: AsyncIterator[int]) -> None:
        async for signum in received:
            self.stop(signal.Signals(signum).name)

    async def drain(self, accept_scope: trio.CancelScope) -> None:
        """Stop accepting, answer every request accepted so far (new ones
        get "shutting down"), and return when all are answered: at once on
        a second stop or after ``drain_timeout``, running and waiting
        requests are cancelled (and answered so)."""
        self.draining = True
        accept_scope.cancel()
        await self._accept_stopped.wait()
        notify(f"STOPPING=1\nSTATUS=draining {self.inflight_count()} request(s)")
        with trio.move_on_after(self.config.drain_timeout) as timer:
            async with trio.open_nursery() as watch:

                async def second_stop() -> None:
                    why = await self._stops.receive()
                    log.info("%s again: cancelling requests", why)
                    watch.cancel_scope.cancel()

                watch.start_soon(second_stop)
                await self.wait_idle()
                watch.cancel_scope.cancel()
        if timer.cancelled_caught:
            log.info("drain timeout (%.0f s): cancelling requests", self.config.drain_timeout)
        for handler in list(self.connections):
            handler.cancel_all("cancelled")
        with trio.move_on_after(self.config.kill_grace + 1):
            await self.wait_idle()
        for handler in list(self.connections):
            handler.begin_close()
        with trio.move_on_after(_FRESH_LINGER + 1):
            while self.connections:
                self._closed = trio.Event()
                await self._closed.wait()

    def inflight_count(self) -> int:
        return sum(len(h.inflight) for h in self.connections)

    async def wait_idle(self) -> None:
        while self.inflight_count():
            self._idle = trio.Event()
            await self._idle.wait()

    def request_finished(self) -> None:
        if not self.inflight_count():
            self._idle.set()

    async def _accept_loop(
        self, lsock: trio.socket.SocketType, nursery: trio.Nursery, scope: trio.CancelScope
    ) -> None:
        """Accept until ``scope`` is cancelled; then take what is already
        waiting in the backlog (those clients get an answer too), and close
        the listening socket."""
        try:
            with scope:
                while True:
                    try:
                        sock, _ = await lsock.accept()
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            self._accept_trouble(e)
                            await trio.sleep(0.05)
                            continue
                        raise
                    nursery.start_soon(self.connection, sock)
            with socket.socket(fileno=os.dup(lsock.fileno())) as backlog:
                backlog.setblocking(False)
                while True:  # the backlog: connected before we stopped
                    try:
                        waiting, _ = backlog.accept()
                    except OSError:
                        break
                    nursery.start_soon(self.connection, trio.socket.from_stdlib_socket(waiting))
        finally:
            lsock.close()
            self._accept_stopped.set()

    def _accept_trouble(self, e: OSError) -> None:
        """Out of descriptors (or memory): keep serving the connections we
        have, retry shortly, and say so at most once a second."""
        self.counters["daemon.accept_errors"] += 1
        if self.accept_log.warning("accept: %s; retrying", e.strerror):
            notify(f"STATUS=accept: {e.strerror}; retrying")

    async def connection(self, sock: trio.socket.SocketType) -> None:
        """Serve one accepted connection to its end."""
        with sock:
            self.counters["daemon.connections"] += 1
            try:
                peer = peer_of(sock)
            except OSError:
                return
            who = self.identity_for(peer)
            if isinstance(who, Error):
                self.counters["daemon.refused"] += 1
                self._log_refusal(peer, who)
                await self._refuse(sock, who)
                return
            busy = self.connection_refusal(peer.uid)
            if busy is not None:
                self.counters["daemon.busy"] += 1
                self._log_refusal(peer, busy)
                await self._refuse(sock, busy)
                return
            handler = _ConnectionHandler(self, sock, peer, who)
            self.connections.add(handler)
            self.open_connections += 1
            self.per_uid[peer.uid] += 1
            try:
                await handler.run()
            finally:
                self.connections.discard(handler)
                self._closed.set()
                self.open_connections -= 1
                self.per_uid[peer.uid] -= 1
                if not self.per_uid[peer.uid]:
                    del self.per_uid[peer.uid]
                self.request_finished()

    async def _refuse(self, sock: trio.socket.SocketType, err: Error) -> None:
        """Answer a refused connection; let it linger (so its client reads
        the answer, not a reset) only while few do: a client refused in a
        loop must not tie up the daemon's descriptors."""
        linger = self.lingering < _MAX_LINGERING
        self.lingering += linger
        try:
            await _refuse(sock, err, _REFUSAL_LINGER if linger else 0.0)
        finally:
            self.lingering -= linger

    def _log_refusal(self, peer: Peer, err: Error) -> None:
        self.refusal_log.warning("refused uid=%d pid=%d: %s", peer.uid, peer.pid, err.message)

    def stats(self, viewer: int | None = None) -> dict[str, int | float | str]:
        """The counters; for a ``viewer`` uid other than root and the
        daemon's own, without other uids' entries (``uid.N.*``): a tenant
        learns nothing of who else uses the daemon, or how much."""
        out = self._stats()
        if viewer is None or viewer in (0, self.own.uid):
            return out
        mine = f"uid.{viewer}."
        return {k: v for k, v in out.items() if not k.startswith("uid.") or k.startswith(mine)}

    def _stats(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = dict(self.counters)
        if self.compilers is not None:
            out.update(self.compilers.summary())
        out.update(self.scheduler.stats())
        for uid, n in self.per_uid.items():
            out[f"uid.{uid}.connections"] = n
        out["daemon.open_connections"] = self.open_connections
        out["daemon.concurrency"] = self.config.concurrency
        out["daemon.uptime"] = time.monotonic() - self.started
        out["daemon.server"] = SERVER_NAME
        return out


class _Throttled:
    """A log line at most once a second; the lines in between are counted
    and the count goes with the next line."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last = -math.inf
        self.skipped = 0

    def warning(self, fmt: str, *args: object) -> bool:
        """Log (True) or count (False)."""
        now = time.monotonic()
        if now - self.last < self.interval:
            self.skipped += 1
            return False
        if self.skipped:
            fmt += f" (and {self.skipped} more like it)"
        log.warning(fmt, *args)
        self.last = now
        self.skipped = 0
        return True


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> bool:
    """Write everything; False if the peer is gone."""
    try:
        view = memoryview(data)
        while view:
            n = await sock.send(view)
            view = view[n:]
    except OSError:
        return False
    return True


_FRESH_LINGER = 1.0  # seconds a just-accepted connection has to send, at shutdown
_REFUSAL_LINGER = 2.0  # seconds a refused client has to finish sending and read
_MAX_LINGERING = 64  # refused connections lingering at once; the rest close at once
_REFUSAL_READ_LIMIT = 1 << 20


async def _refuse(sock: trio.socket.SocketType, err: Error, linger: float) -> None:
    """Answer, then let the client finish: half-close our side and read
    (and drop) what it still sends until it closes, within limits. Closing
    with its request unread would reset the connection, and the client
    would see "Broken pipe" instead of the refusal. ``linger`` 0: only
    what has already arrived is read."""
    if not await _send_all(sock, encode_message(err)):
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    if not linger:  # what has arrived, without waiting for more
        with socket.socket(fileno=os.dup(sock.fileno())) as now:
            now.setblocking(False)
            try:
                while now.recv(65536):
                    pass
            except OSError:
                pass
        return
    received = 0
    with trio.move_on_after(linger):
        while received < _REFUSAL_READ_LIMIT:
            try:
                data = await sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            received += len(data)


class _Forward(NamedTuple):
    """A worker's answer, encoded by the worker, to send as it is."""

    answer: Answer
    payload: bytes


class _Inflight:
    """A request in flight: what goes to its worker (the message as
    received, its descriptors and their roles), and how to stop it while it
    waits for a worker (``scope``) or runs on one (``stop``)."""

    def __init__(self, msg: Run | Dlopen | Preload, payload: bytes, fds: list[int]) -> None:
        self.msg = msg
        self.payload = payload  # the frame body as received: the worker decodes it
        self.roles = list(getattr(msg, "fd_roles", ()))
        self.fds = fds
        self.scope = trio.CancelScope()
        self.stop = Stop()
        self.reason = "cancelled"
        self.cancelled = False

    def wait_scope(self) -> trio.CancelScope:
        """A new scope for one wait for a worker (a request may wait again
        when the worker it got had died), cancelled already if the request
        was."""
        self.scope = trio.CancelScope()
        if self.cancelled:
            self.scope.cancel()
        return self.scope

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self.cancelled = True
        self.stop.cancel(reason)
        self.scope.cancel()


class _ConnectionHandler:
    """One client connection: requests may overlap; each is answered once."""

    def __init__(
        self, server: Server, sock: trio.socket.SocketType, peer: Peer, identity: Identity
    ) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.identity = identity
        self.conn = Connection("server", descriptors=True)
        self.pending_fds: list[int] = []
        self.inflight: dict[int, _Inflight] = {}
        self.send_lock = trio.Lock()
        self.gone = False  # the client closed its end: no more responses
        self.scope = trio.CancelScope()
        self.read_scope: trio.CancelScope | None = None
        self.last_activity = trio.current_time()
        self.frame_started: float | None = None
        self.received_any = False  # any byte from the client yet
        self.closing_at: float | None = None  # the drain is over: close then

    async def run(self) -> None:
        with self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    await self._read_loop(nursery)
            finally:
                close_fds(self.pending_fds)
                self.pending_fds.clear()

    def cancel_all(self, reason: str) -> None:
        for job in list(self.inflight.values()):
            job.cancel(reason)

    async def send(self, msg: Message) -> None:
        await self._write(lambda: self.conn.send(msg), msg.TYPE, getattr(msg, "request_id", 0) or 0)

    async def forward(self, answer: Answer, payload: bytes) -> None:
        """Send an answer a worker encoded, as it is (see _run_on_a_worker)."""
        await self._write(
            lambda: self.conn.send_answer(answer.request_id, payload),
            answer.type,
            answer.request_id,
        )

    async def _write(self, frame: Callable[[], bytes], what: str, request_id: int) -> None:
        """Write what ``frame()`` makes of a message, one message at a time;
        one it cannot make (too large for a frame...) becomes an Error."""
        if self.gone:
            return
        async with self.send_lock:
            try:
                data = frame()
            except ProtocolError as e:
                log.error("cannot send %s: %s", what, e)
                data = encode_message(error_for(e, request_id))
            if not await _send_all(self.sock, data):
                self.gone = True

    # -- reading -------------------------------------------------------------------

    def _read_deadline(self) -> float:
        if self.closing_at is not None:
            return self.closing_at
        config = self.server.config
        if self.frame_started is not None:
            return self.frame_started + config.frame_timeout
        if self.inflight:
            return math.inf
        return self.last_activity + config.idle_timeout

    def request_done(self) -> None:
        """Called when a request was answered: restart the idle clock."""
        self.last_activity = trio.current_time()
        if self.read_scope is not None:
            self.read_scope.deadline = self._read_deadline()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            self.read_scope = trio.CancelScope(deadline=self._read_deadline())
            try:
                with self.read_scope:
                    data, ancdata, flags, _ = await self.sock.recvmsg(
                        65536, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC
                    )
            except OSError:
                data, ancdata, flags = b"", [], 0
            finally:
                timed_out = self.read_scope.cancelled_caught
                self.read_scope = None
            if timed_out:
                if self.closing_at is not None:
                    await self._final_pass()
                elif self.frame_started is not None:
                    await self._protocol_error(
                        ProtocolError(
                            "frame not completed within "
                            f"{self.server.config.frame_timeout:g} s of its first byte"
                        )
                    )
                else:
                    log.debug("uid=%d pid=%d: idle, closing", self.peer.uid, self.peer.pid)
                return
            fds = received_fds(ancdata)
            self.pending_fds.extend(fds)
            self.received_any = True
            try:
                self.conn.receive_fds(len(fds), truncated=bool(flags & socket.MSG_CTRUNC))
                self.conn.receive_data(data)
                while (msg := self.conn.next_message()) is not None:
                    await self._dispatch(msg, nursery)
            except ProtocolError as e:
                await self._protocol_error(e)
                return
            now = trio.current_time()
            self.last_activity = now
            if self.conn.pending_bytes:
                if self.frame_started is None:
                    self.frame_started = now
            else:
                self.frame_started = None
            if not data:  # the client went away: its runs stop
                self.gone = True
                self.cancel_all("cancelled")
                return

    async def _protocol_error(self, e: ProtocolError) -> None:
        self.server.counters["daemon.protocol_errors"] += 1
        self.server.protocol_log.warning(
            "uid=%d pid=%d protocol error: %s", self.peer.uid, self.peer.pid, e
        )
        self.cancel_all("cancelled")
        async with self.send_lock:
            await _send_all(self.sock, encode_message(error_response(e)))
        self.gone = True

    def begin_close(self) -> None:
        """At the end of a drain: answer what the client already sent
        ("shutting down"), then close. A connection that has sent nothing
        yet (accepted just before the stop) gets a moment to send its
        request, so its client reads an answer rather than a closed
        socket."""
        linger = 0.0 if self.received_any else _FRESH_LINGER
        self.closing_at = trio.current_time() + linger
        if self.read_scope is not None:
            self.read_scope.deadline = self.closing_at

    async def _final_pass(self) -> None:
        """Take whatever is already in the socket, without waiting, and
        answer each request in it as shutting down."""
        try:
            with socket.socket(fileno=os.dup(self.sock.fileno())) as now:
                now.setblocking(False)
                return await self._answer_all(now)
        except OSError:
            return

    async def _answer_all(self, now: socket.socket) -> None:
        try:
            while True:
                data, anc, flags, _ = now.recvmsg(65536, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC)
                fds = received_fds(anc)
                self.pending_fds.extend(fds)
                self.conn.receive_fds(len(fds), truncated=bool(flags & socket.MSG_CTRUNC))
                self.conn.receive_data(data)
                while (msg := self.conn.next_message()) is not None:
                    if isinstance(msg, Run | Dlopen | Preload):
                        close_fds(self._take_fds(msg))
                        await self.send(_shutting_down(msg.request_id))
                if not data:
                    return
        except (OSError, ProtocolError):
            return

    def _take_fds(self, msg: Message) -> list[int]:
        n = self.conn.fds_for(msg)
        fds = self.pending_fds[:n]
        del self.pending_fds[:n]
        return fds

    async def _dispatch(self, msg: Message, nursery: trio.Nursery) -> None:
        if isinstance(msg, Ping):
            await self.send(
                Pong(request_id=msg.request_id, version=PROTOCOL_VERSION, server=SERVER_NAME)
            )
        elif isinstance(msg, Stats):
            stats = self.server.stats(viewer=self.peer.uid)
            await self.send(StatsResult(request_id=msg.request_id, stats=stats))
        elif isinstance(msg, Cancel):
            job = self.inflight.get(msg.request_id)
            if job is not None:
                job.cancel("cancelled")
        elif isinstance(msg, Run | Dlopen | Preload):
            fds = self._take_fds(msg)
            if self.server.draining:
                close_fds(fds)
                await self.send(_shutting_down(msg.request_id))
                return
            if len(self.inflight) >= _MAX_INFLIGHT:
                close_fds(fds)
                await self.send(
                    Error(
                        request_id=msg.request_id,
                        kind="busy",
                        message=f"too many requests in flight on one connection ({_MAX_INFLIGHT})",
                    )
                )
                return
            job = _Inflight(msg, self.conn.last_payload, fds)
            self.inflight[msg.request_id] = job
            nursery.start_soon(self._request, job)
        else:  # the Connection only lets requests through; be explicit anyway
            raise ProtocolError(f"unexpected {msg.TYPE}")

    # -- one request ---------------------------------------------------------------

    async def _request(self, job: _Inflight) -> None:
        server = self.server
        msg = job.msg
        server.counters["daemon.requests"] += 1
        t0 = time.perf_counter()
        try:
            response = await self._execute(job)
        except Exception as e:  # a bug here must not cost the answer
            log.exception("request %d failed", msg.request_id)
            response = error_for(e, msg.request_id)
        finally:
            close_fds(job.fds)
        if isinstance(response, _Forward):
            answer = response.answer
            kind, status = answer.kind, answer.exit_code
        else:
            kind = response.kind if isinstance(response, Error) else None
            status = getattr(response, "exit_code", 0)
        if kind is not None:
            server.counters["daemon.errors"] += 1
        if log.isEnabledFor(server.access_level):
            outcome = f"exit {status}" if kind is None else f"{kind} error (exit {status})"
            what = getattr(msg, "program", None) or getattr(msg, "library", None) or "preload"
            if isinstance(msg, Dlopen):
                what = f"{what} {msg.symbol}"
            log.log(
                server.access_level,
                "uid=%d pid=%d %s %s %.1f ms %s",
                self.peer.uid,
                self.peer.pid,
                msg.TYPE,
                what,
                (time.perf_counter() - t0) * 1e3,
                outcome,
            )
        try:
            if isinstance(response, _Forward):
                await self.forward(response.answer, response.payload)
            else:
                await self.send(response)
        finally:
            self.inflight.pop(msg.request_id, None)
            self.request_done()
            server.request_finished()

    async def _execute(self, job: _Inflight) -> Response | _Forward:
        timeout = _timeout_of(self.server.config, job.msg)
        for _ in range(_WORKER_TRIES):
            answer = await self._run_on_a_worker(job, timeout)
            if answer is not None:
                return answer
        return Error(
            request_id=job.msg.request_id,
            kind="internal",
            message="no worker could take the request",
        )

    async def _run_on_a_worker(
        self, job: _Inflight, timeout: float | None
    ) -> Response | _Forward | None:
        """The response, or None if the worker given was already dead (it
        died while idle: another one gets the request)."""
        server = self.server
        rid = job.msg.request_id
        wait = job.wait_scope()
        try:
            with wait:  # cancelled: stop waiting for a worker
                worker = await server.scheduler.acquire(self.identity)
        except Busy as e:
            server.counters["daemon.busy"] += 1
            return Error(request_id=rid, kind="busy", message=str(e))
        except SpawnFailed as e:
            return Error(request_id=rid, kind="internal", message=f"cannot start a worker: {e}")
        if wait.cancelled_caught:
            return _stopped(rid, job.reason, timeout)
        server.counters["daemon.active"] += 1
        if timeout is not None:
            job.stop.scope.deadline = trio.current_time() + timeout
        try:
            compilers = server.compilers
            code_for = compilers.code_for(worker.identity.uid) if compilers else None
            raw = await worker.run(
                job.payload, job.roles, job.fds, code_for, job.stop, server.config.kill_grace
            )
        except WorkerGone:
            server.counters["daemon.worker_deaths"] += 1
            log.warning(
                "worker %d (%s) had died while idle", worker.pid, worker.identity.describe()
            )
            return None
        except WorkerKilled as e:
            server.counters["daemon.killed"] += 1
            return _stopped(rid, e.reason, timeout)
        except WorkerDied as e:
            server.counters["daemon.worker_deaths"] += 1
            log.error("worker %d (%s) died: %s", worker.pid, self.identity.describe(), e)
            return Error(
                request_id=rid,
                kind="internal",
                message="the worker running this request died unexpectedly "
                "(killed, or out of memory)",
            )
        finally:
            server.counters["daemon.active"] -= 1
            server.scheduler.release(worker)
        # The worker encoded a message it built and validated: forward its
        # bytes, checking only what the front acts on (the request it
        # answers, its status for the log). Only this uid's client reads it,
        # and the client validates everything it receives.
        try:
            answer = peek_answer(raw)
        except ProtocolError as e:
            return Error(request_id=rid, kind="internal", message=f"bad answer from worker: {e}")
        if answer.request_id != rid:
            return Error(request_id=rid, kind="internal", message="bad answer from worker")
        return _Forward(answer, raw)


def _timeout_of(config: DaemonConfig, msg: Run | Dlopen | Preload) -> float | None:
    limits = getattr(msg, "limits", None)
    if limits is None:
        return config.limits.timeout
    return effective_limits(config, limits).timeout


def _stopped(request_id: int, reason: str, timeout: float | None) -> Error:
    if reason == "timeout":
        return Error(
            request_id=request_id, kind="timeout", message=f"run timed out after {timeout:g} s"
        )
    return Error(request_id=request_id, kind="cancelled", message=f"run {reason}")


def _shutting_down(request_id: int) -> Error:
    return Error(request_id=request_id, kind="shutdown", message="wasmrund is shutting down")
