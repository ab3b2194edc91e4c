"""Build the example programs into examples/bin (libc.so, libgreet.so, hello.wasm).

The binaries are committed so the examples run without a C toolchain; this
script regenerates them through toolchain/corpus.py, which skips anything
whose sources, flags and zig version are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from toolchain.corpus import build_corpus  # noqa: E402
from toolchain.wasmcc import ToolchainError  # noqa: E402


def main() -> int:
    """Build examples/corpus.toml into examples/bin, printing each step."""
    try:
        out = build_corpus(HERE / "corpus.toml", HERE / "bin", log=print)
    except ToolchainError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"examples are in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
