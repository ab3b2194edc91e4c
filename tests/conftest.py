"""Shared fixtures: the C test corpus (built once, cached on disk), a shared
in-process Runtime, and helpers to run programs through the API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = ROOT / "build" / "corpus"
# Compiled-code cache for the whole session (in-process runtimes and the CLI
# subprocesses alike), never the user's own ~/.cache.
TEST_CACHE_DIR = ROOT / "build" / "test-cache"
os.environ["WASMRUN_CACHE_DIR"] = str(TEST_CACHE_DIR)
# CLI tests run in-process unless a test points them at its own daemon.
os.environ["WASMRUN_SOCKET"] = str(ROOT / "build" / "no-daemon-here.sock")
os.environ.pop("WASMRUN_AUTOSTART", None)
sys.path.insert(0, str(ROOT / "toolchain"))

import corpus as corpus_builder  # noqa: E402
from wasmrun.runtime import LinkOptions, Runtime  # noqa: E402


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The test programs and libraries built from tests/c (cached)."""
    return corpus_builder.build_corpus(ROOT / "tests" / "c" / "corpus.toml", CORPUS_DIR)


@pytest.fixture(scope="session")
def runtime(corpus: Path) -> Runtime:
    """One runtime for the session: libc.so is compiled once."""
    return Runtime(library_path=[str(corpus)], environ={}, disk_cache=TEST_CACHE_DIR)


@attrs.frozen
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def run(runtime: Runtime, corpus: Path, tmp_path: Path):
    """Run a corpus program in-process; returns exit code and captured output."""

    def _run(
        program: str,
        *args: str,
        options: LinkOptions | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        dirs: Sequence[tuple[str, str]] = (),
        rt: Runtime | None = None,
    ) -> Outcome:
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        stdin_path = None
        if stdin is not None:
            stdin_path = tmp_path / "stdin"
            stdin_path.write_text(stdin)
        path = program if "/" in program else str(corpus / program)
        result = (rt or runtime).run(
            path,
            args=[program, *args],
            env=env,
            dirs=dirs,
            options=options,
            stdin=str(stdin_path) if stdin_path else None,
            stdout=str(out),
            stderr=str(err),
        )
        return Outcome(result.exit_code, out.read_text(), err.read_text())

    return _run


def wasmrun_cli(
    *args: str, stdin: str | None = None, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``wasmrun`` command line in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "WASMRUN_LIBRARY_PATH"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wasmrun.client.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


@pytest.fixture
def cli():
    return wasmrun_cli
