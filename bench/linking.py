"""Benchmark: a dynamically linked program against the same program linked
statically, in-process through the embedding API.

Prints, for hello-world, for a loop of N calls from main into a one-line
library function (tests/c/callloop.c + callee.c) and for a program whose
library has 4 MiB of initialised data (tests/c/bigmain.c + bigdata.c), the
median wall time of a whole run (plan + instantiate + run) and of the
guest's run phase alone.

    python bench/linking.py [--calls 10000000] [--repeat 5]

This is a script that prints figures, not a timed test: numbers depend on
the machine. The figures in docs/benchmarks.md were produced by it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmrun.runtime import Runtime  # noqa: E402

from toolchain.corpus import build_corpus  # noqa: E402


def measure(rt: Runtime, program: Path, args: list[str], repeat: int) -> tuple[float, float, float]:
    """(first run seconds, median whole run, median run phase)."""
    wholes, runs = [], []
    first = 0.0
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        result = rt.run(str(program), args=[program.name, *args], stdout=os.devnull)
        elapsed = time.perf_counter() - t0
        if result.exit_code != 0:
            raise SystemExit(f"{program.name} exited with {result.exit_code}")
        if i == 0:
            first = elapsed  # includes compiling every module
            continue
        wholes.append(elapsed)
        runs.append(result.timings["run"])
    return first, statistics.median(wholes), statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ns = ap.parse_args()
    corpus = build_corpus(ROOT / "tests" / "c" / "corpus.toml", ROOT / "build" / "corpus")
    rt = Runtime(library_path=[str(corpus)], environ={})

    rows = []
    for label, dyn, static, args in [
        ("hello world", "hello.wasm", "hello_static.wasm", []),
        (
            f"{ns.calls:,} calls into a library",
            "callloop.wasm",
            "callloop_static.wasm",
            [str(ns.calls)],
        ),
        ("a library with 4 MiB of data", "bigmain.wasm", "bigmain_static.wasm", []),
    ]:
        d = measure(rt, corpus / dyn, args, ns.repeat)
        s = measure(rt, corpus / static, args, ns.repeat)
        rows.append((label, d, s))

    print(f"{'program':34} {'build':8} {'first run':>10} {'whole run':>10} {'run phase':>10}")
    for label, d, s in rows:
        for kind, (first, whole, run) in (("dynamic", d), ("static", s)):
            print(
                f"{label:34} {kind:8} {first * 1e3:8.2f}ms {whole * 1e3:8.2f}ms {run * 1e3:8.2f}ms"
            )
        print(f"{'':34} {'ratio':8} {d[0] / s[0]:9.2f}x {d[1] / s[1]:9.2f}x {d[2] / s[2]:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
