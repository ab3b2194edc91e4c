"""CPU per warm hello-world run in process, with a ``RunControl(30.0)`` and
without: what making every run interruptible costs (the daemon's workers
give each run a control). Alternating rounds, so that both see the same
machine.

    python bench/control_cpu.py [--runs 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from wasmrun.runtime import RunControl, Runtime

CORPUS = Path(__file__).resolve().parent.parent / "build" / "corpus"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rt = Runtime(library_path=[str(CORPUS)], environ={}, disk_cache=False)
    program = str(CORPUS / "hello.wasm")

    def loop(control: bool) -> tuple[float, float, float]:
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.runs):
            rt.run(
                program,
                stdout=os.devnull,
                stderr=os.devnull,
                control=RunControl(30.0) if control else None,
            )
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        n = args.runs / 1e6
        return (r1.ru_utime - r0.ru_utime) / n, (r1.ru_stime - r0.ru_stime) / n, (w1 - w0) / n

    for _ in range(200):  # warm: compiled code, plans, spares
        rt.run(program, stdout=os.devnull, stderr=os.devnull, control=RunControl(30.0))
    for rnd in range(args.rounds):
        for control in (False, True):
            user, system, wall = loop(control)
            name = "RunControl(30)" if control else "none"
            print(
                f"round {rnd} control={name:<14} user {user:6.1f} us  system {system:5.1f} us  "
                f"cpu {user + system:6.1f} us  wall {wall:6.1f} us per run"
            )


if __name__ == "__main__":
    main()
