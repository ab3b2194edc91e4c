"""Where a warm request's CPU goes: user and system time and page faults
per request of each of the daemon's processes (front, zygote, worker), next
to the same program run in process by one Runtime.

    python bench/daemon_cpu.py [--requests 400]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_daemon", ROOT / "bench" / "daemon.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _stat(pid: int) -> tuple[int, int, int]:
    """(minor faults, user ticks, system ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[11]), int(fields[12])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    n = ap.parse_args().requests
    corpus = bench.build_corpus(ROOT / "tests" / "c" / "corpus.toml", ROOT / "build" / "corpus")
    scratch = Path(tempfile.mkdtemp(prefix="wrcpu-", dir="/tmp"))
    proc, _ = bench.start_daemon(scratch, corpus, 1)
    tick = os.sysconf("SC_CLK_TCK")
    try:
        client = bench.Client(scratch / "d.sock", corpus / "hello.wasm")
        for _ in range(100):
            client.run()
        # Front, zygote, worker; not the compiler process that made the
        # fresh cache's code (idle now).
        pids = [p for p in bench.descendants(proc.pid) if not bench._is_compiler(p)]
        before = {p: _stat(p) for p in pids}
        for _ in range(n):
            client.run()
        after = {p: _stat(p) for p in pids}
        client.close()
        print(f"load average {os.getloadavg()[0]:.2f}; {n} warm hello-world requests")
        for name, p in zip(("front", "zygote", "worker"), pids, strict=False):
            (f0, u0, s0), (f1, u1, s1) = before[p], after[p]
            print(
                f"   {name:<24} user {(u1 - u0) / tick / n * 1e3:.3f} ms  "
                f"system {(s1 - s0) / tick / n * 1e3:.3f} ms  minor faults {(f1 - f0) / n:.0f}"
            )
    finally:
        proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    from wasmrun.runtime import Runtime

    rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=False)
    program = str(corpus / "hello.wasm")
    for _ in range(100):
        rt.run(program, stdout=os.devnull, stderr=os.devnull)
    for label, pause in (("in process", 0.0), ("in process, 1 ms pauses", 0.001)):
        # The pauses let other processes run between two runs, as the front
        # and the client do between a worker's runs: the same work then
        # meets cold caches.
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            rt.run(program, stdout=os.devnull, stderr=os.devnull)
            if pause:
                time.sleep(pause)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"   {label:<24} user {(r1.ru_utime - r0.ru_utime) / n * 1e3:.3f} ms  "
            f"system {(r1.ru_stime - r0.ru_stime) / n * 1e3:.3f} ms  "
            f"minor faults {(r1.ru_minflt - r0.ru_minflt) / n:.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
