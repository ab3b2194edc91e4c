"""wasmrund's I/O shell: a trio server on a Unix socket.

One task per connection reads frames, and the descriptors that come with
them, into the sans-I/O :class:`wasmrun.protocol.Connection`. Each request
runs in its own task: its guest executes in a worker thread bounded by a
CapacityLimiter (wasmtime releases the GIL while guest code runs), while the
connection keeps being read, so a ``cancel`` message or the client going
away (EOF) stops the guest through its RunControl. A protocol error is
answered with one ``Error`` and that connection is closed; the daemon keeps
serving. SIGTERM (or SIGINT) stops accepting, lets running requests finish
(up to ``drain_timeout``, then cancels them) and returns; a second signal
cancels at once.
"""

from __future__ import annotations

import array
import errno
import grp
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from wasmrun.protocol import (
    MAX_FDS,
    PROTOCOL_VERSION,
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
)
from wasmrun.runtime import RunControl, Runtime

from .config import DaemonConfig, default_socket_path
from .execute import Job, error_for, execute, stopped_error
from .peer import Peer, peer_of
from .stdio import StdioRelay
from .systemd import listen_fds, notify

log = logging.getLogger("wasmrund")

SERVER_NAME = "wasmrund 0.1.0"
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_MAX_PENDING_FDS = 2 * MAX_FDS  # descriptors received ahead of their request
_MAX_INFLIGHT = 64  # requests one connection may have running or queued


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


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- the server -------------------------------------------------------------------


class Server:
    """Accepts connections and owns what they share: the runtime, the worker
    limiter, counters, and the drain state."""

    def __init__(self, config: DaemonConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.limiter = trio.CapacityLimiter(config.concurrency)
        self.connections: set[_ConnectionHandler] = set()
        self.counters = {
            "daemon.connections": 0,
            "daemon.requests": 0,
            "daemon.active": 0,
            "daemon.errors": 0,
            "daemon.protocol_errors": 0,
            "daemon.refused": 0,
        }
        self.started = time.monotonic()
        self.draining = False
        self._idle = trio.Event()  # set whenever no connection has work in flight
        self._accept_stopped = trio.Event()

    async def serve(
        self,
        listener: socket.socket,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until SIGTERM/SIGINT, then drain and return."""
        self.token = trio.lowlevel.current_trio_token()
        lsock = trio.socket.from_stdlib_socket(listener)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                accept_scope = trio.CancelScope()
                nursery.start_soon(self._accept_loop, lsock, nursery, accept_scope)
                task_status.started()
                notify("READY=1\nSTATUS=serving")
                async for signum in signals:
                    await self._drain(signum, signals, accept_scope)
                    nursery.cancel_scope.cancel()
                    break
        log.info("stopped")

    async def _drain(
        self, signum: int, signals: AsyncIterator[int], accept_scope: trio.CancelScope
    ) -> None:
        """Stop accepting, wait for running requests (a second signal or the
        drain timeout cancels them), close idle connections."""
        self.draining = True
        accept_scope.cancel()
        await self._accept_stopped.wait()  # the listening socket is closed
        active = self.counters["daemon.active"]
        log.info("%s: draining %d running request(s)", signal.Signals(signum).name, active)
        notify(f"STOPPING=1\nSTATUS=draining {active} request(s)")
        for handler in list(self.connections):
            handler.close_if_idle()
        with trio.move_on_after(self.config.drain_timeout) as timer:
            async with trio.open_nursery() as watch:

                async def second_signal() -> None:
                    async for again in signals:
                        log.info(
                            "%s again: cancelling running requests", signal.Signals(again).name
                        )
                        watch.cancel_scope.cancel()
                        return

                watch.start_soon(second_signal)
                while any(h.inflight for h in self.connections):
                    self._idle = trio.Event()
                    await self._idle.wait()
                watch.cancel_scope.cancel()
        if timer.cancelled_caught:
            log.info(
                "drain timeout (%.0f s): cancelling running requests", self.config.drain_timeout
            )
        for handler in list(self.connections):
            handler.cancel_all("cancelled")
        with trio.move_on_after(5):
            while any(h.inflight for h in self.connections):
                self._idle = trio.Event()
                await self._idle.wait()

    def request_finished(self) -> None:
        if not any(h.inflight for h in self.connections):
            self._idle.set()

    async def _accept_loop(
        self, lsock: trio.socket.SocketType, nursery: trio.Nursery, scope: trio.CancelScope
    ) -> None:
        """Accept until ``scope`` is cancelled, then close the listening
        socket (here, not while this task waits on it)."""
        try:
            with scope:
                while True:
                    try:
                        sock, _ = await lsock.accept()
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.warning("accept: %s; pausing", e.strerror)
                            await trio.sleep(0.1)
                            continue
                        raise
                    nursery.start_soon(self._connection, sock)
        finally:
            lsock.close()
            self._accept_stopped.set()

    async def _connection(self, sock: trio.socket.SocketType) -> None:
        with sock:
            self.counters["daemon.connections"] += 1
            try:
                peer = peer_of(sock)
            except OSError:
                return
            if not self.config.uid_allowed(peer.uid):
                self.counters["daemon.refused"] += 1
                log.warning("refused uid=%d pid=%d: not in allowed_uids", peer.uid, peer.pid)
                err = Error(kind="protocol", message=f"uid {peer.uid} may not use this wasmrund")
                await _send_all(sock, encode_message(err))
                return
            handler = _ConnectionHandler(self, sock, peer)
            self.connections.add(handler)
            try:
                await handler.run()
            finally:
                self.connections.discard(handler)
                self.request_finished()

    def stats(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = dict(self.runtime.stats())
        out.update(self.counters)
        out["daemon.concurrency"] = self.config.concurrency
        out["daemon.uptime"] = time.monotonic() - self.started
        out["daemon.server"] = SERVER_NAME
        return out


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


class _Inflight:
    """A running request: how to stop it."""

    def __init__(self, control: RunControl) -> None:
        self.control = control
        self.relay: StdioRelay | None = None
        self.scope = trio.CancelScope()  # covers waiting for a worker

    def cancel(self, reason: str) -> None:
        self.control.cancel(reason)
        if self.relay is not None:
            self.relay.abort()
        self.scope.cancel()


class _ConnectionHandler:
    """One client connection: requests may overlap; each is answered once."""

    def __init__(self, server: Server, sock: trio.socket.SocketType, peer: Peer) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.conn = Connection("server")
        self.pending_fds: list[int] = []
        self.inflight: dict[int, _Inflight] = {}
        self.send_lock = trio.Lock()
        self.gone = False  # the client closed its end: no more responses
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    await self._read_loop(nursery)
            finally:
                _close_all(self.pending_fds)
                self.pending_fds.clear()

    def close_if_idle(self) -> None:
        if not self.inflight:
            self.scope.cancel()

    def cancel_all(self, reason: str) -> None:
        for job in list(self.inflight.values()):
            job.cancel(reason)

    async def send(self, msg: Message) -> None:
        if self.gone:
            return
        async with self.send_lock:
            try:
                data = self.conn.send(msg)
            except ProtocolError as e:  # a response we cannot encode (too large...)
                log.error("cannot send %s: %s", msg.TYPE, e)
                data = encode_message(error_for(e, getattr(msg, "request_id", 0) or 0))
            if not await _send_all(self.sock, data):
                self.gone = True

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                data, ancdata, flags, _ = await self.sock.recvmsg(
                    65536, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except OSError:
                data, ancdata, flags = b"", [], 0
            self.pending_fds.extend(_received_fds(ancdata))
            try:
                if flags & socket.MSG_CTRUNC:
                    raise ProtocolError("too many file descriptors in one message")
                if len(self.pending_fds) > _MAX_PENDING_FDS:
                    raise ProtocolError("file descriptors sent without requests")
                self.conn.receive_data(data)
                while (msg := self.conn.next_message()) is not None:
                    await self._dispatch(msg, nursery)
            except ProtocolError as e:
                self.server.counters["daemon.protocol_errors"] += 1
                log.warning("uid=%d pid=%d protocol error: %s", self.peer.uid, self.peer.pid, e)
                self.cancel_all("cancelled")
                async with self.send_lock:
                    await _send_all(self.sock, encode_message(error_response(e)))
                self.gone = True
                return
            if not data:  # the client went away: its runs stop
                self.gone = True
                self.cancel_all("cancelled")
                return

    async def _dispatch(self, msg: Message, nursery: trio.Nursery) -> None:
        if isinstance(msg, Ping):
            await self.send(
                Pong(request_id=msg.request_id, version=PROTOCOL_VERSION, server=SERVER_NAME)
            )
        elif isinstance(msg, Stats):
            await self.send(StatsResult(request_id=msg.request_id, stats=self.server.stats()))
        elif isinstance(msg, Cancel):
            job = self.inflight.get(msg.request_id)
            if job is not None:
                job.cancel("cancelled")
        elif isinstance(msg, Run | Dlopen | Preload):
            roles = getattr(msg, "fd_roles", ())
            if len(self.pending_fds) < len(roles):
                raise ProtocolError(
                    f"request {msg.request_id} names {len(roles)} descriptors but "
                    f"{len(self.pending_fds)} arrived"
                )
            fds = self.pending_fds[: len(roles)]
            del self.pending_fds[: len(roles)]
            if msg.request_id in self.inflight:
                _close_all(fds)
                raise ProtocolError(f"request id {msg.request_id} is already in use")
            refusal = None
            if self.server.draining:
                refusal = Error(
                    request_id=msg.request_id,
                    kind="cancelled",
                    message="wasmrund is shutting down",
                )
            elif len(self.inflight) >= _MAX_INFLIGHT:
                refusal = Error(
                    request_id=msg.request_id,
                    kind="limit",
                    message=f"too many requests in flight on one connection ({_MAX_INFLIGHT})",
                )
            if refusal is not None:
                _close_all(fds)
                await self.send(refusal)
                return
            job = _Inflight(RunControl())
            self.inflight[msg.request_id] = job
            nursery.start_soon(self._request, msg, dict(zip(roles, fds, strict=True)), job)
        else:  # the Connection only lets requests through; be explicit anyway
            raise ProtocolError(f"unexpected {msg.TYPE}")

    async def _request(
        self, msg: Run | Dlopen | Preload, fds: dict[str, int], job: _Inflight
    ) -> None:
        server = self.server
        server.counters["daemon.requests"] += 1
        t0 = time.perf_counter()
        response = None
        try:
            response = await self._execute(msg, fds, job)
        finally:
            self.inflight.pop(msg.request_id, None)
            _close_all(list(fds.values()))
            server.request_finished()
        if response is None:
            outcome = "cancelled (client gone)" if self.gone else "cancelled"
        elif isinstance(response, Error):
            server.counters["daemon.errors"] += 1
            outcome = f"{response.kind} error (exit {response.exit_code})"
        else:
            outcome = f"exit {getattr(response, 'exit_code', 0)}"
        what = getattr(msg, "program", None) or getattr(msg, "library", None) or "preload"
        if isinstance(msg, Dlopen):
            what = f"{what} {msg.symbol}"
        log.info(
            "uid=%d pid=%d %s %s %.1f ms %s",
            self.peer.uid,
            self.peer.pid,
            msg.TYPE,
            what,
            (time.perf_counter() - t0) * 1e3,
            outcome,
        )
        if response is not None:
            await self.send(response)
        if self.server.draining and not self.inflight:
            self.scope.cancel()  # drained: this connection closes

    async def _execute(
        self, msg: Run | Dlopen | Preload, fds: dict[str, int], job: _Inflight
    ) -> Response | None:
        """The response, or None if the request was cancelled before it ran."""
        server = self.server
        done = trio.Event()
        token = server.token

        def notify_done() -> None:  # called in the relay thread
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        try:
            relay = StdioRelay(
                {k: v for k, v in fds.items() if k in ("stdin", "stdout", "stderr")},
                job.control,
                on_done=notify_done,
            )
        except OSError as e:
            return Error(request_id=msg.request_id, kind="internal", message=f"stdio: {e}")
        job.relay = relay
        work = Job(server.runtime, server.config, self.peer, msg, fds, job.control, relay.paths)
        started = False
        try:
            relay.start()
            started = True
            with job.scope:  # cancelled: stop waiting for a worker
                server.counters["daemon.active"] += 1
                try:
                    response = await trio.to_thread.run_sync(execute, work, limiter=server.limiter)
                finally:
                    server.counters["daemon.active"] -= 1
            if job.scope.cancelled_caught:
                return None
            relay.finish()  # the guest is done: deliver its output before the answer
            with trio.CancelScope(shield=True):
                await done.wait()
            if relay.cut and not isinstance(response, Error):
                # Stopped while delivering its output: say so, never a
                # success with output silently missing.
                response = stopped_error(job.control, msg.request_id) or response
            return response
        finally:
            if started and not done.is_set():
                relay.abort()
                with trio.CancelScope(shield=True):
                    await done.wait()
            relay.close()
