"""The front's own CPU per request, without workers: the real Server
(protocol, scheduling, logging, forwarding) with workers that answer at
once, driven by a client in another process, so that nothing but the
front's own work is counted.

    python bench/front_cpu.py [--requests 3000] [--profile]

``--profile`` prints where the time goes (cProfile, which inflates it).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import resource
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import trio
from wasmrun.daemon.config import DaemonConfig
from wasmrun.daemon.identity import Identity, own_identity
from wasmrun.daemon.scheduler import PoolLimits, Scheduler
from wasmrun.daemon.server import Server
from wasmrun.protocol import RunResult, encode_payload

ROOT = Path(__file__).resolve().parent.parent

# The client: bench/daemon.py's, sending hello-world runs on one connection.
CLIENT = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("bench_daemon", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
client = bench.Client(Path(sys.argv[2]), Path(sys.argv[3]))
for _ in range(int(sys.argv[4])):
    client.run()
"""


class InstantWorker:
    """A worker that answers every job at once with exit status 0."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.pid = 0
        self.alive = True
        self.runs = 0
        self.last_used = 0.0

    def kill(self) -> None:
        pass

    def close(self) -> None:
        self.alive = False

    async def run(self, request: bytes, *_args: Any) -> bytes:
        self.runs += 1
        rid = msgpack.unpackb(request)["request_id"]
        await trio.lowlevel.checkpoint()
        return encode_payload(RunResult(request_id=rid, exit_code=0))


async def measure(n: int, profile: bool) -> None:
    # The daemon's own log format, written nowhere: the access log's cost counts.
    logging.basicConfig(
        stream=open(os.devnull, "w"),  # noqa: SIM115 - for the whole process
        level=logging.INFO,
        format="wasmrund: %(message)s",
    )
    limits = PoolLimits(
        max_workers=2,
        max_workers_per_uid=2,
        max_queued_per_uid=64,
        idle_timeout=1000.0,
        max_requests=1 << 30,
    )

    async def spawn(identity: Identity) -> InstantWorker:
        return InstantWorker(identity)

    server = Server(
        DaemonConfig(concurrency=2),
        Scheduler(limits, spawn),  # type: ignore[arg-type]
        None,
        own=own_identity(),
        can_change_identity=False,
    )
    directory = tempfile.mkdtemp(prefix="wrfront-", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    program = ROOT / "build" / "corpus" / "hello.wasm"  # opened, never run
    client = [sys.executable, "-c", CLIENT, str(ROOT / "bench" / "daemon.py"), path, str(program)]
    try:
        async with trio.open_nursery() as nursery:

            async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await server.serve(listener, handle_signals=False, task_status=task_status)

            await nursery.start(serve)
            await trio.run_process([*client, "200"])  # warm-up
            prof = cProfile.Profile() if profile else None
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            if prof is not None:
                prof.enable()
            await trio.run_process([*client, str(n)])
            if prof is not None:
                prof.disable()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            print(
                f"load average {os.getloadavg()[0]:.2f}; {n} hello-world requests; front CPU "
                f"per request: user {(r1.ru_utime - r0.ru_utime) / n * 1e6:.0f} us, "
                f"system {(r1.ru_stime - r0.ru_stime) / n * 1e6:.0f} us"
            )
            if prof is not None:
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--profile", action="store_true")
    ns = ap.parse_args()
    if not (ROOT / "build" / "corpus" / "hello.wasm").exists():
        sys.path.insert(0, str(ROOT))
        from toolchain.corpus import build_corpus

        build_corpus(ROOT / "tests" / "c" / "corpus.toml", ROOT / "build" / "corpus")
    trio.run(measure, ns.requests, ns.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
