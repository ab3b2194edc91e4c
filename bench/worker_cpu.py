"""A daemon worker's own work per warm request, piece by piece, in one
process: the job code a worker runs (``worker.run_job``, then
``Runtime.prepare_spare`` as between two jobs) on hello world in a hot
loop, without the front, the channel or another process between two jobs.

    python bench/worker_cpu.py [--jobs 3000]

Prints the process CPU per job, then the wall time spent in each piece
(nested pieces are inside their parents: the figures do not add up).
Set against ``bench/daemon_cpu.py``'s worker figure, the difference is the
same work done between the front's and the client's, on cold caches.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmrun.daemon import stdio, worker
from wasmrun.daemon.config import DaemonConfig
from wasmrun.runtime import RunControl, Runtime, api, instance

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_daemon", ROOT / "bench" / "daemon.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)  # bench/daemon.py: run_frame
_spec.loader.exec_module(bench)
SPENT: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str) -> None:
    """Wrap ``owner.name`` so that its wall time adds to SPENT[label]."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter_ns() - t0

    setattr(owner, name, wrapper)


PIECES = (
    (worker, "run_job", "the request (run_job)"),
    (worker, "decode_message", "  decoding the request"),
    (worker, "StdioRelay", "  stdio relay set-up"),
    (stdio.ClientWasi, "config", "  WASI context"),
    (api.Runtime, "_plan", "  finding the cached plan"),
    (instance.InstanceSet, "attach", "  attaching the spare"),
    (instance.InstanceSet, "initialize", "  relocations and constructors"),
    (instance.InstanceSet, "run_start", "  _start"),
    (instance.InstanceSet, "close", "  freeing the Store"),
    (worker, "encode_payload", "  encoding the answer"),
    (api.Runtime, "prepare_spare", "the next spare (prepare_spare)"),
    (instance.InstanceSet, "_fill_array", "  filling import arrays"),
    (instance.InstanceSet, "_instantiate", "  instantiating the modules"),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=3000)
    n = ap.parse_args().jobs
    corpus = ROOT / "build" / "corpus"
    program = str(corpus / "hello.wasm")
    if not os.path.exists(program):
        sys.exit("build the corpus first (run the test suite once)")
    runtime = Runtime(default_library_path=[str(corpus)], environ={}, disk_cache=False)
    config = DaemonConfig()
    roles = ["stdout", "program"]
    jobs = []
    for i in range(1, 1001):
        frame = bench.run_frame(Path(program), [], roles, i)
        jobs.append({"op": "job", "request": frame[4:], "roles": roles, "number": i})

    def job(i: int) -> None:
        fds = [os.open(os.devnull, os.O_WRONLY), os.open(program, os.O_RDONLY)]
        answer = worker.run_job(runtime, config, jobs[i % len(jobs)], fds, RunControl())
        if b"run_result" not in answer:
            sys.exit(f"unexpected answer: {answer!r}")
        runtime.prepare_spare()

    for i in range(300):  # warm: plan, compiled modules, spare
        job(i)
    for owner, name, label in PIECES:
        timed(owner, name, label)
    t0 = time.process_time()
    for i in range(n):
        job(i)
    cpu = time.process_time() - t0
    print(f"load average {os.getloadavg()[0]:.2f}; {n} warm hello-world jobs")
    print(f"   process CPU per job (timing included)   {cpu / n * 1e6:6.0f} us")
    for _, _, label in PIECES:
        print(f"   {label:<40} {SPENT[label] / n / 1e3:6.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
