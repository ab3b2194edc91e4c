"""The epoch ticker: cancels move the epoch at once, timeouts wake one timer
thread only when a deadline needs it, and no ended run stays referenced.

Nothing here sleeps to wait: the spinning guest says "spinning" on a FIFO
before its loop, and the timer thread's work is seen through its counters
and through an engine stand-in that records epoch increments."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime
from wasmrun.runtime import RunControl, RunInterrupted, RunLimits, Runtime, WasiOptions
from wasmrun.runtime.limits import EpochTicker


class CountingEngine:
    """An engine stand-in for the ticker: counts epoch increments (and
    passes them on to a real engine, if given), and sets ``moved``."""

    def __init__(self, engine: wasmtime.Engine | None = None) -> None:
        self.engine = engine
        self.increments = 0
        self.moved = threading.Event()

    def increment_epoch(self) -> None:
        self.increments += 1
        if self.engine is not None:
            self.engine.increment_epoch()
        self.moved.set()


@pytest.fixture
def fresh(corpus: Path) -> tuple[Runtime, CountingEngine]:
    """A runtime of its own (a ticker no other test has used), whose epoch
    increments are counted."""
    rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=os.environ["WASMRUN_CACHE_DIR"])
    counting = CountingEngine(rt.engine)
    rt.ticker.engine = counting  # type: ignore[assignment]
    return rt, counting


def spin_until(
    rt: Runtime, corpus: Path, tmp_path: Path, control: RunControl, act: Callable[[], None]
) -> RunInterrupted:
    """Run spin.wasm under ``control``; ``act`` runs in another thread once
    the guest has printed "spinning" (it is in guest code, about to loop).
    Returns the interruption."""
    fifo = tmp_path / "out"
    os.mkfifo(fifo)

    def watch() -> None:
        with open(fifo, "rb") as f:
            assert f.readline() == b"spinning\n"
            act()
            f.read()  # until the run closes its end

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(RunInterrupted) as exc:
            rt.run(str(corpus / "spin.wasm"), stdout=str(fifo), control=control)
    finally:
        watcher.join()
    return exc.value


def test_a_cancel_stops_a_loop_at_once(fresh, corpus: Path, tmp_path: Path):
    rt, engine = fresh
    control = RunControl()  # no deadline: the timer thread never starts
    err = spin_until(rt, corpus, tmp_path, control, control.cancel)
    assert err.reason == "cancelled"
    assert str(err) == "run cancelled"
    # The cancel's own increment stopped it: nothing else moved the epoch.
    assert engine.increments == 1
    assert rt.ticker._thread is None


def test_a_cancel_before_the_run_stops_it_as_it_starts(fresh, corpus: Path):
    rt, engine = fresh
    control = RunControl()
    control.cancel("client gone")  # before the store exists: nothing to poke yet
    with pytest.raises(RunInterrupted) as exc:
        rt.run(str(corpus / "spin.wasm"), stdout=os.devnull, control=control)
    assert exc.value.reason == "client gone"
    assert engine.increments == 1  # by the first guest section's entry
    assert rt.ticker._thread is None


def test_a_cancel_between_guest_calls_stops_the_next_one(fresh, corpus: Path):
    rt, engine = fresh
    control = RunControl()
    plan = rt.plan(str(corpus / "spin.wasm"))
    iset = rt.instantiate(plan, WasiOptions(stdout=os.devnull), control=control)
    try:
        control.cancel()  # constructors ran, _start not yet
        assert engine.increments == 1
        with pytest.raises(RunInterrupted) as exc:
            iset.run_start()
    finally:
        iset.close()
    assert exc.value.reason == "cancelled"


def test_a_timeout_stops_a_loop(fresh, corpus: Path):
    rt, engine = fresh
    with pytest.raises(RunInterrupted) as exc:
        rt.run(str(corpus / "spin.wasm"), stdout=os.devnull, limits=RunLimits(timeout=0.2))
    assert exc.value.reason == "timeout"
    assert str(exc.value) == "run timed out after 0.2 s"
    # One increment (by the timer thread at the deadline, or, on a machine
    # so slow that the deadline passed before the guest started, by the
    # entry into guest code) was enough.
    assert engine.increments == 1


def test_a_shortened_deadline_is_honoured(fresh, corpus: Path, tmp_path: Path):
    rt, engine = fresh
    control = RunControl(3600.0)  # the timer thread sleeps for an hour
    err = spin_until(rt, corpus, tmp_path, control, lambda: control.limit_time(0.05))
    assert err.reason == "timeout"
    assert control.timeout == 0.05
    # Told of the earlier deadline (it stopped the run after 0.05 s, not an
    # hour): by limit_time's notification, unless the timer thread, still
    # starting, read the new deadline itself first.
    assert rt.ticker.notifications <= 1
    assert engine.increments >= 1


def test_back_to_back_runs_do_not_wake_the_timer(fresh, corpus: Path):
    rt, engine = fresh
    for _ in range(20):
        control = RunControl(30.0)  # each deadline later than the one before
        assert rt.run(str(corpus / "hello.wasm"), stdout=os.devnull, control=control).exit_code == 0
    # Started by the first run, sleeping until its deadline: never notified
    # or woken since (at most once per timeout period).
    assert rt.ticker._thread is not None
    assert rt.ticker.notifications + rt.ticker.wakeups <= 1
    assert engine.increments == 0


def test_only_an_earlier_deadline_notifies():
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    late, later, earlier = RunControl(60.0), RunControl(120.0), RunControl(30.0)
    with ticker.guest(RunControl()):  # no deadline: no thread
        assert ticker._thread is None
    with ticker.guest(late):  # starts the thread, sleeping until late's deadline
        assert (ticker._thread is not None, ticker.notifications) == (True, 0)
        with ticker.guest(later):
            assert ticker.notifications == 0
        with ticker.guest(earlier):
            assert ticker.notifications == 1
        later.limit_time(3600.0)  # not earlier than its deadline: no change
        later.limit_time(10.0)  # earlier, but not in guest code: its next entry tells
        assert ticker.notifications == 1
        late.limit_time(5.0)  # earlier than the timer's wake-up: it learns of it
        with ticker._cond:
            # Told by limit_time, or the timer thread (still handling the
            # notification above) saw the new deadline itself first.
            assert ticker._wake_at is not None and ticker._wake_at <= late.deadline
            assert ticker.notifications in (1, 2)
        late.limit_time(0.01)  # live: the epoch moves by its deadline
        assert engine.moved.wait(timeout=10)
        assert late.reason == "timeout"
    # Once: by the timer thread at the deadline or, if this thread was held
    # up past the deadline inside limit_time, by limit_time itself; never
    # both (the second sees the deadline served).
    assert engine.increments == 1
    assert ticker.increments <= 1


def test_ended_runs_are_not_referenced(fresh, corpus: Path):
    rt, _engine = fresh
    controls = [RunControl(30.0), RunControl(), RunControl(0.05)]
    refs = [weakref.ref(c) for c in controls]
    rt.run(str(corpus / "hello.wasm"), stdout=os.devnull, control=controls[0])
    controls[1].cancel()
    with pytest.raises(RunInterrupted):
        rt.run(str(corpus / "spin.wasm"), stdout=os.devnull, control=controls[1])
    with pytest.raises(RunInterrupted):
        rt.run(str(corpus / "spin.wasm"), stdout=os.devnull, control=controls[2])
    assert rt.ticker._live == {}
    del controls
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_a_deadline_passed_before_its_section_moves_the_epoch_once():
    """The entry into guest code sees the deadline passed and moves the
    epoch itself; the timer thread's scan then finds that deadline served,
    so it would not move the epoch again for it."""
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    late = RunControl(60.0)
    late.deadline = time.monotonic() - 1.0  # passed, as after a stall between guest calls
    with ticker.guest(late):
        assert engine.increments == 1
        with ticker._cond:
            due, earliest = ticker._scan(time.monotonic())
        assert (due, earliest) == (False, None)
    assert ticker._thread is None  # nothing was left to wait for


def test_a_deadline_moved_into_the_past_moves_the_epoch_once():
    """limit_time to a deadline already past stops the run at once; a later
    deadline already served (the epoch moved after it) does not move the
    epoch again, nor does the timer thread for either."""
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    control = RunControl(60.0)
    with ticker.guest(control):  # starts the timer thread, sleeping for a minute
        control.limit_time(-1.0)
        assert engine.increments == 1
        control.limit_time(-2.0)  # earlier still, and served by that increment
        assert engine.increments == 1
        with ticker._cond:
            assert ticker._scan(time.monotonic())[0] is False
    assert (engine.increments, ticker.increments) == (1, 0)
