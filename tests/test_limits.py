"""Per-run limits: wall-clock timeout, cancellation, memory, fuel."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from wasmrun.runtime import LimitError, RunControl, RunInterrupted, RunLimits, Runtime


def test_timeout_stops_an_infinite_loop(runtime: Runtime, corpus: Path):
    t0 = time.monotonic()
    with pytest.raises(RunInterrupted) as exc:
        runtime.run(str(corpus / "spin.wasm"), stdout=os.devnull, limits=RunLimits(timeout=0.3))
    elapsed = time.monotonic() - t0
    assert exc.value.reason == "timeout"
    assert "timed out after 0.3 s" in str(exc.value)
    assert 0.3 <= elapsed < 3


def test_cancel_from_another_thread(runtime: Runtime, corpus: Path):
    control = RunControl()
    threading.Timer(0.2, control.cancel).start()
    with pytest.raises(RunInterrupted) as exc:
        runtime.run(str(corpus / "spin.wasm"), stdout=os.devnull, control=control)
    assert exc.value.reason == "cancelled"


def test_runtime_keeps_working_after_an_interrupted_run(runtime: Runtime, corpus: Path, run):
    with pytest.raises(RunInterrupted):
        runtime.run(str(corpus / "spin.wasm"), stdout=os.devnull, limits=RunLimits(timeout=0.1))
    assert run("hello.wasm").out == "hello, world\n"

    ok = run("grow.wasm", "8")
    assert (ok.code, ok.out) == (0, "allocated 8 MiB\n")


def test_memory_limit_is_enforced(runtime: Runtime, corpus: Path, tmp_path: Path, run):
    ok = run("grow.wasm", "8")
    assert (ok.code, ok.out) == (0, "allocated 8 MiB\n")  # unlimited: fine
    out = tmp_path / "out"
    r = runtime.run(
        str(corpus / "grow.wasm"),
        args=["grow", "64"],
        stdout=str(out),
        limits=RunLimits(memory_bytes=16 << 20),
    )
    assert r.exit_code == 1
    got = int(out.read_text().split()[1])
    assert 4 <= got < 16  # malloc returned NULL once memory hit 16 MiB


def test_memory_limit_below_the_start_size(runtime: Runtime, corpus: Path):
    with pytest.raises(LimitError, match="over the run's memory limit of 65536 bytes"):
        runtime.run(str(corpus / "hello.wasm"), limits=RunLimits(memory_bytes=65536))


def test_fuel_limit(corpus: Path, tmp_path: Path):
    rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=tmp_path, fuel=True)
    assert rt.run(str(corpus / "hello.wasm"), stdout=os.devnull).exit_code == 0
    with pytest.raises(RunInterrupted) as exc:
        rt.run(str(corpus / "spin.wasm"), stdout=os.devnull, limits=RunLimits(fuel=1_000_000))
    assert exc.value.reason == "fuel"


def test_fuel_needs_a_fuel_runtime(runtime: Runtime, corpus: Path):
    with pytest.raises(LimitError, match="fuel=True"):
        runtime.run(str(corpus / "hello.wasm"), limits=RunLimits(fuel=10))
