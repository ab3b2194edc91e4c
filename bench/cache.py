"""Benchmark: what the module cache saves, and how a warm run scales.

    python bench/cache.py [--repeat 20]

Part 1, hello-world against libc.so (tests/c/hello.c), per run:
  * cold       - a fresh process, empty disk cache: everything is compiled;
  * disk cache - a fresh process, disk cache filled by the cold run;
  * warm       - repeated runs in one process (memory cache and plan cache);
with the split into compile (or deserialize) / load (read, hash, decode) /
link (plan) / instantiate / run, and each fresh process's wall time.

Part 2, per-run cost of a warm run as the program grows: 1, 10 and 50
generated libraries, each exporting 10, 100 or 1000 functions (a chain of
libraries and a main that calls into each one).

A script that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES = ("compile", "load", "link", "instantiate", "run")


# The fresh process: as little as a real client does (no benchmark code).
CHILD = """
import time
t0 = time.perf_counter()
from wasmrun.runtime import Runtime
t1 = time.perf_counter()
import json, os, sys
rt = Runtime(library_path=[sys.argv[2]], environ={}, disk_cache=sys.argv[3])
result = rt.run(sys.argv[1], stdout=os.devnull)
t2 = time.perf_counter()
stats = rt.stats()
out = {k: result.timings.get(k, 0.0) for k in ("compile", "load", "link", "instantiate", "run")}
out.update(import_=t1 - t0, total_in_process=t2 - t0, compiles=stats["memory.compiles"],
           deserializes=stats["memory.deserializes"])
print(json.dumps(out))
"""


def child_env() -> dict[str, str]:
    """The environment of a normal installation: Python may use and write
    bytecode caches (some sandboxes set PYTHONDONTWRITEBYTECODE, which would
    make every fresh process recompile wasmrun's sources)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def fresh_process(program: Path, libdir: Path, cache_dir: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(program), str(libdir), str(cache_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
    )
    wall = time.perf_counter() - t0
    data = json.loads(p.stdout.strip().splitlines()[-1])
    data["wall"] = wall
    return data


def fmt_ms(x: float) -> str:
    return f"{x * 1e3:9.2f}"


def part1(corpus: Path, repeat: int) -> None:
    from wasmrun.runtime import Runtime

    program = corpus / "hello.wasm"
    # Byte-compile wasmrun as `pip install` does, so fresh processes measure
    # wasmrun rather than Python compiling its sources.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "runtime"), str(ROOT / "client")],
        check=True,
        env=child_env(),
    )
    colds, disks = [], []
    for _ in range(3):
        cache_dir = Path(tempfile.mkdtemp(prefix="wasmrun-bench-"))
        try:
            colds.append(fresh_process(program, corpus, cache_dir))
            disks.append(fresh_process(program, corpus, cache_dir))
        finally:
            shutil.rmtree(cache_dir)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    cache_dir = Path(tempfile.mkdtemp(prefix="wasmrun-bench-"))
    try:
        rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=cache_dir)
        rt.run(str(program), stdout=os.devnull)
        warm = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = rt.run(str(program), stdout=os.devnull)
            warm.append(
                {**{k: r.timings.get(k, 0.0) for k in PHASES}, "total": time.perf_counter() - t0}
            )
    finally:
        shutil.rmtree(cache_dir)

    print("hello world with libc.so: milliseconds per run (median)")
    print(
        f"{'':12} {'compile':>9} {'load':>9} {'link':>9} {'instant.':>9} {'run':>9} "
        f"{'in-proc':>9} {'process':>9}  compiled/deserialized"
    )
    for label, rows in (("cold", colds), ("disk cache", disks)):
        cells = " ".join(fmt_ms(med(rows, k)) for k in PHASES)
        print(
            f"{label:12} {cells} {fmt_ms(med(rows, 'total_in_process'))} "
            f"{fmt_ms(med(rows, 'wall'))}  {rows[0]['compiles']}/{rows[0]['deserializes']}"
        )
    cells = " ".join(fmt_ms(statistics.median(w[k] for w in warm)) for k in PHASES)
    warm_total = statistics.median(w["total"] for w in warm)
    print(f"{'warm':12} {cells} {fmt_ms(warm_total)} {'':>9}  0/0")
    cold_in = med(colds, "total_in_process")
    print(
        f"warm run vs cold run (in process): {cold_in / warm_total:.0f}x faster; "
        f"link+instantiate of a warm run: "
        f"{statistics.median(w['link'] + w['instantiate'] for w in warm) * 1e3:.2f} ms"
    )
    print(
        f"fresh process, disk cache vs cold: {med(disks, 'wall') / med(colds, 'wall'):.2f} "
        f"of the cold process time ({med(disks, 'total_in_process') / cold_in:.2f} in process)"
    )


def write_chain(dir_: Path, libs: int, symbols: int) -> Path:
    """libs libraries, each exporting `symbols` functions, each library
    calling into the previous one; a PIE main importing every function of
    every library and calling into each library."""
    import wasmtime

    for i in range(libs):
        needed = f'(needed "lib{i - 1}.so")' if i else ""
        imp = f'(import "env" "f{i - 1}_0" (func $prev (result i32)))' if i else ""
        call_prev = "(call $prev)" if i else "(i32.const 0)"
        funcs = "\n".join(
            f'(func (export "f{i}_{j}") (result i32) (i32.add {call_prev} (i32.const {j})))'
            if j == 0
            else f'(func (export "f{i}_{j}") (result i32) (i32.const {j}))'
            for j in range(symbols)
        )
        wat = f"""(module (@dylink.0 (mem-info (memory 16 2)) {needed})
          (import "env" "memory" (memory 0)) {imp} {funcs})"""
        (dir_ / f"lib{i}.so").write_bytes(wasmtime.wat2wasm(wat))
    needed = " ".join(f'"lib{i}.so"' for i in range(libs))
    # The main binds every symbol of every library (libs x symbols imports).
    imports = "\n".join(
        f'(import "env" "f{i}_{j}" (func $f{i}_{j} (result i32)))'
        for i in range(libs)
        for j in range(symbols)
    )
    calls = "\n".join(f"(drop (call $f{i}_1))" for i in range(libs))
    wat = f"""(module (@dylink.0 (mem-info) (needed {needed}))
      (import "env" "memory" (memory 0)) {imports}
      (func (export "_start") {calls}))"""
    main = dir_ / "main.wasm"
    main.write_bytes(wasmtime.wat2wasm(wat))
    return main


def part2(repeat: int) -> None:
    from wasmrun.runtime import Runtime

    print()
    print(
        "warm run of generated programs: milliseconds per run (median), "
        "link+instantiate / whole run"
    )
    sizes = (10, 100, 1000)
    print(f"{'libraries':>10} " + " ".join(f"{f'{s} symbols':>20}" for s in sizes))
    for libs in (1, 10, 50):
        cells = []
        for symbols in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                main = write_chain(Path(tmp), libs, symbols)
                rt = Runtime(library_path=[tmp], environ={}, disk_cache=False)
                rt.run(str(main))
                li, whole = [], []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = rt.run(str(main))
                    whole.append(time.perf_counter() - t0)
                    li.append(r.timings["link"] + r.timings["instantiate"])
                cells.append(
                    f"{statistics.median(li) * 1e3:8.2f} /{statistics.median(whole) * 1e3:8.2f}"
                )
        print(f"{libs:>10} " + " ".join(f"{c:>20}" for c in cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ns = ap.parse_args()
    from toolchain.corpus import build_corpus

    corpus = build_corpus(ROOT / "tests" / "c" / "corpus.toml", ROOT / "build" / "corpus")
    part1(corpus, ns.repeat)
    part2(ns.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
