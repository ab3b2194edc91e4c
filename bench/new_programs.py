"""A worker's memory and descriptors while one tenant runs thousands of
programs that no cache holds yet (each compiled once, by a compiler
process): the caches fill, then nothing may grow.

    python bench/new_programs.py [--programs 3000] [--worker-max-fds 1024]

The programs are of one size (the same code, a different tag in a custom
section), so a cache full of later ones weighs what it weighed full of
earlier ones. Prints the worker's and the front's RSS and descriptors
every 500 programs. The front's descriptors grow with the code entries it
keeps (one memfd each), up to its bound (4096 at most).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> Any:
    """Another bench script, as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=3000)
    ap.add_argument("--worker-max-fds", type=int, default=1024)
    ns = ap.parse_args()
    bench, soak = _load("daemon"), _load("soak")
    from wasmrun.toolchain.synthetic import straight_line_program

    corpus = ROOT / "build" / "corpus"
    directory = Path(tempfile.mkdtemp(prefix="wrnew-", dir="/tmp"))
    config = f"worker_max_fds = {ns.worker_max_fds}\nworker_max_requests = 1000000\n"
    proc, _ = bench.start_daemon(directory, corpus, 1, config=config)
    path = str(directory / "d.sock")
    program = directory / "new.wasm"
    try:
        print(f"{ns.programs} new programs, one worker, worker_max_fds {ns.worker_max_fds}")
        for n in range(ns.programs):
            program.write_bytes(straight_line_program(1000, tag=n))
            reply, _ = soak.run(path, program)
            if reply is None or reply.fields.get("exit_code") != 0:
                print(f"program {n}: {reply and reply.fields}")
                return 1
            if n % 500 == 499:
                snap = soak.snapshot(proc.pid)
                rss, fds, _ = next(v for k, v in snap.items() if k.startswith("workers"))
                front = snap["front"]
                print(
                    f"   {n + 1:6d}  worker {rss / 1024:6.1f} MiB, {fds} fds;"
                    f"  front {front[0] / 1024:6.1f} MiB, {front[1]} fds"
                )
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
