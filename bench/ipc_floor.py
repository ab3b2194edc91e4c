"""The floor of wasmrund's design: four hops (client -> trio front ->
worker process -> front -> client) with no work at all, as a median round
trip. What a warm request costs beyond this is Python and the runtime.

    python bench/ipc_floor.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import trio


def _echo(sock: socket.socket) -> None:
    while True:
        data = sock.recv(65536)
        if not data:
            os._exit(0)
        sock.sendall(data)


def _client(path: str, requests: int, ready: int) -> None:
    os.read(ready, 1)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        c.sendall(b"x" * 200)  # about a run request's size
        c.recv(65536)
        times.append(time.perf_counter() - t)
    warm = times[len(times) // 6 :]
    print(f"four hops, no work: median {statistics.median(warm) * 1e6:.0f} us")
    c.close()
    os._exit(0)


async def _front(listener: socket.socket, worker: socket.socket) -> None:
    w = trio.socket.from_stdlib_socket(worker)
    ls = trio.socket.from_stdlib_socket(listener)
    conn, _ = await ls.accept()
    while data := await conn.recv(65536):
        await w.send(data)
        await conn.send(await w.recv(65536))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ns = ap.parse_args()
    ours, theirs = socket.socketpair()
    if os.fork() == 0:
        ours.close()
        _echo(theirs)
    theirs.close()
    directory = tempfile.mkdtemp(prefix="wrfloor-", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    r, w = os.pipe()
    client = os.fork()
    if client == 0:
        listener.close()
        _client(path, ns.requests, r)
    os.write(w, b"x")
    trio.run(_front, listener, ours)
    os.waitpid(client, 0)
    os.unlink(path)
    os.rmdir(directory)


if __name__ == "__main__":
    main()
