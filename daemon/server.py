"""wasmrund's I/O shell: a trio server on a Unix socket.

One task per connection reads frames (and the descriptors that come with
them) and answers through the sans-I/O :class:`wasmrun.protocol.Connection`.
Runs execute in worker threads bounded by a CapacityLimiter (wasmtime
releases the GIL while guest code runs); while a run is in flight the
connection keeps being read, so a ``cancel`` message or the client going
away stops the guest through its RunControl. SIGTERM stops accepting, lets
running requests finish, then returns.
"""

from __future__ import annotations

import array
import grp
import logging
import os
import socket
import struct
import time
from functools import partial
from pathlib import Path

import trio
from wasmrun.protocol import (
    MAX_FDS,
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    Dlopen,
    Error,
    Ping,
    Pong,
    Preload,
    ProtocolError,
    Run,
    Stats,
    StatsResult,
    encode_message,
    error_response,
)
from wasmrun.runtime import RunControl, Runtime

from .config import DaemonConfig, default_socket_path
from .execute import error_for, execute
from .systemd import listen_fds, notify

log = logging.getLogger("wasmrund")

SERVER_NAME = "wasmrund 0.1.0"
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)


def _peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _received_fds(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


def bind_socket(config: DaemonConfig) -> socket.socket:
    """The listening socket: from systemd if it handed one over, else a new
    one at the configured path (a stale socket file left by a dead daemon is
    replaced; a live one is an error)."""
    fds = listen_fds()
    if fds:
        sock = socket.socket(fileno=fds[0])
        os.environ.pop("LISTEN_FDS", None)
        os.environ.pop("LISTEN_PID", None)
        return sock
    path = Path(config.socket or default_socket_path())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale
        else:
            probe.close()
            raise OSError(f"{path}: another wasmrund is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if config.socket_group:
        os.chown(path, -1, grp.getgrnam(config.socket_group).gr_gid)
    os.chmod(path, config.socket_mode)
    sock.listen(128)
    return sock


class Server:
    def __init__(self, config: DaemonConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.limiter = trio.CapacityLimiter(config.concurrency)
        self.stats = {"requests": 0, "active": 0, "errors": 0, "connections": 0}
        self.draining = False

    async def serve(self, listener: socket.socket, *, task_status=trio.TASK_STATUS_IGNORED):
        """Accept until SIGTERM/SIGINT, then drain and return."""
        lsock = trio.socket.from_stdlib_socket(listener)
        async with trio.open_nursery() as connections:
            with trio.open_signal_receiver(15, 2) as signals:  # SIGTERM, SIGINT
                async with trio.open_nursery() as acceptor:
                    acceptor.start_soon(self._accept, lsock, connections)
                    task_status.started()
                    notify("READY=1")
                    async for signum in signals:
                        log.info(
                            "signal %d: draining %d running request(s)",
                            signum,
                            self.stats["active"],
                        )
                        notify("STOPPING=1")
                        self.draining = True
                        acceptor.cancel_scope.cancel()
                        break
            lsock.close()
        log.info("stopped")

    async def _accept(self, lsock, connections: trio.Nursery) -> None:
        while True:
            conn, _ = await lsock.accept()
            connections.start_soon(self._connection, conn)

    async def _connection(self, sock: trio.socket.SocketType) -> None:
        with sock:
            self.stats["connections"] += 1
            try:
                pid, uid, _gid = _peer_credentials(sock)
            except OSError:
                pid, uid = -1, -1
            if not self.config.uid_allowed(uid):
                log.warning("refused connection from uid %d pid %d", uid, pid)
                err = Error(kind="protocol", message=f"uid {uid} is not allowed to use wasmrund")
                await self._send_raw(sock, encode_message(err))
                return
            await _ConnectionHandler(self, sock, pid, uid).run()

    @staticmethod
    async def _send_raw(sock, data: bytes) -> None:
        try:
            while data:
                n = await sock.send(data)
                data = data[n:]
        except OSError:
            pass


class _ConnectionHandler:
    """One client connection: requests one at a time, cancel at any time."""

    def __init__(self, server: Server, sock, pid: int, uid: int) -> None:
        self.server = server
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.conn = Connection("server")
        self.pending_fds: list[int] = []
        self.inflight: dict[int, RunControl] = {}
        self.send_lock = trio.Lock()

    async def send(self, msg) -> None:
        async with self.send_lock:
            await Server._send_raw(self.sock, self.conn.send(msg))

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await self._read_loop(nursery)
        finally:
            for fd in self.pending_fds:
                os.close(fd)

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = await self.sock.recvmsg(65536, _FD_SPACE)
            except OSError:
                data, ancdata = b"", []
            self.pending_fds.extend(_received_fds(ancdata))
            try:
                self.conn.receive_data(data)
                while (msg := self.conn.next_message()) is not None:
                    await self._dispatch(msg, nursery)
            except ProtocolError as e:
                log.warning("protocol error from uid %d pid %d: %s", self.uid, self.pid, e)
                self.server.stats["errors"] += 1
                await Server._send_raw(self.sock, encode_message(error_response(e)))
                self._cancel_all("cancelled: protocol error")
                return
            if not data:  # the client went away (or closed its side)
                self._cancel_all("cancelled: the client went away")
                return

    def _cancel_all(self, reason: str) -> None:
        for control in self.inflight.values():
            control.cancel(reason.split(":")[0])

    async def _dispatch(self, msg, nursery: trio.Nursery) -> None:
        if isinstance(msg, Ping):
            await self.send(
                Pong(request_id=msg.request_id, version=PROTOCOL_VERSION, server=SERVER_NAME)
            )
        elif isinstance(msg, Stats):
            stats = {**self.server.runtime.stats(), **self.server.stats}
            await self.send(StatsResult(request_id=msg.request_id, stats=stats))
        elif isinstance(msg, Cancel):
            control = self.inflight.get(msg.request_id)
            if control is not None:
                control.cancel("cancelled")
        elif isinstance(msg, Run | Dlopen | Preload):
            roles = getattr(msg, "fd_roles", ())
            if len(self.pending_fds) < len(roles):
                raise ProtocolError(
                    f"request {msg.request_id} names {len(roles)} descriptors but "
                    f"{len(self.pending_fds)} arrived"
                )
            fds = self.pending_fds[: len(roles)]
            del self.pending_fds[: len(roles)]
            if self.server.draining:
                for fd in fds:
                    os.close(fd)
                await self.send(
                    Error(
                        request_id=msg.request_id,
                        kind="cancelled",
                        message="wasmrund is shutting down",
                    )
                )
                return
            control = RunControl()
            self.inflight[msg.request_id] = control
            nursery.start_soon(self._execute, msg, dict(zip(roles, fds, strict=True)), control)

    async def _execute(self, msg, fds: dict[str, int], control: RunControl) -> None:
        server = self.server
        server.stats["requests"] += 1
        server.stats["active"] += 1
        t0 = time.perf_counter()
        try:
            response = await trio.to_thread.run_sync(
                partial(execute, server.runtime, server.config, msg, fds, control),
                limiter=server.limiter,
            )
        except Exception as e:  # never let one request take the daemon down
            response = error_for(e, msg.request_id)
        finally:
            server.stats["active"] -= 1
            self.inflight.pop(msg.request_id, None)
            for fd in fds.values():
                os.close(fd)
        if isinstance(response, Error):
            server.stats["errors"] += 1
            outcome = f"{response.kind} error"
        else:
            outcome = f"exit {getattr(response, 'exit_code', 0)}"
        what = getattr(msg, "program", None) or getattr(msg, "library", None) or "preload"
        log.info(
            "uid=%d pid=%d %s %s %.1f ms %s",
            self.uid,
            self.pid,
            type(msg).__name__.lower(),
            what,
            (time.perf_counter() - t0) * 1e3,
            outcome,
        )
        try:
            await self.send(response)
        except ProtocolError:
            pass
