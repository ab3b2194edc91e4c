"""Per-run limits and cancellation: memory, wall-clock timeout, fuel.

A guest in an infinite loop never returns to Python, so timeouts and
cancellation use wasmtime's epoch interruption: each controlled store has a
deadline one epoch ahead, with a callback that either extends it by one
epoch (the run may go on) or traps (timed out or cancelled). Guest code pays
only wasmtime's epoch check at loop heads and function entries; the callback
runs only when the engine's epoch moves, and it moves only when some run must
stop:

* a cancel increments the epoch at once, from the cancelling thread
  (``Engine.increment_epoch`` is thread-safe), so the run stops at its next
  epoch check, not at the next tick of a clock;
* a timeout is kept by one timer thread per :class:`EpochTicker`, which
  sleeps until the earliest deadline of the runs inside guest code and
  increments the epoch once that deadline has passed. A run entering guest
  code wakes it only if its deadline is earlier than the thread's own
  wake-up, and leaving never does: a run that ends in time costs no thread
  hand-off, and back-to-back runs with the same timeout wake the thread at
  most once per timeout period.

(Until this design, a ticker thread woke every 10 ms while any controlled
run was in guest code, which cost a wake-up, GIL hand-offs and futex calls
on every run, and delayed a cancel by up to a tick.)
"""

from __future__ import annotations

import threading
import time
from typing import Final

import attrs
import wasmtime

from .wasmtime_seam import install_deadline_callback

# Elements a table may hold when the run sets no limit of its own: tables
# are host memory too (8 bytes an element), and a guest's ``table.grow`` must
# not be able to allocate gigabytes even in an otherwise unlimited run.
DEFAULT_TABLE_ELEMENTS: Final = 10_000_000
# With a memory limit, each table may take an eighth of that budget.
TABLE_SHARE_OF_MEMORY: Final = 8
TABLE_ELEMENT_BYTES: Final = 8
MIN_TABLE_ELEMENTS: Final = 65536


@attrs.frozen
class RunLimits:
    """Limits of one run; ``None`` means unlimited (tables: see below).

    ``table_elements`` bounds every table of the run (the indirect function
    table, PLT tables, tables of dlopen'ed libraries): a ``table.grow`` past
    it returns -1, as ``memory.grow`` does past ``memory_bytes``. Left
    ``None``, it follows the memory limit (each table may take an eighth of
    ``memory_bytes``, at 8 bytes an element, and at least 65,536 elements)
    or, without one, ``DEFAULT_TABLE_ELEMENTS``.
    """

    memory_bytes: int | None = None  # linear memory (Store limits)
    timeout: float | None = None  # wall-clock seconds
    fuel: int | None = None  # wasmtime fuel units (needs a Runtime(fuel=True))
    table_elements: int | None = None  # per table; None: derived, see above

    def table_limit(self) -> int:
        """The element limit each table of the run gets."""
        if self.table_elements is not None:
            return self.table_elements
        if self.memory_bytes is not None:
            share = self.memory_bytes // TABLE_SHARE_OF_MEMORY // TABLE_ELEMENT_BYTES
            return max(MIN_TABLE_ELEMENTS, share)
        return DEFAULT_TABLE_ELEMENTS


class RunControl:
    """A thread-safe handle to stop a run from outside (client gone, Ctrl-C).

    The tickers whose sections ran the controlled store are remembered (see
    :meth:`EpochTicker.guest`), so that :meth:`cancel` can move their
    engines' epochs and :meth:`limit_time` can tell their timer threads of
    an earlier deadline. The control refers to the tickers, never the other
    way round once a section has ended: a ticker lives as long as its
    runtime, a control no longer than its run.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.timeout = timeout
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._tickers: list[EpochTicker] = []

    def limit_time(self, timeout: float) -> None:
        """Add a deadline (the earlier one wins) to a controller made without
        one, or shorten it, also while the run is in guest code."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.deadline is not None and deadline >= self.deadline:
                return
            self.deadline = deadline
            self.timeout = timeout
            tickers = list(self._tickers)
        for ticker in tickers:
            ticker._deadline_moved(self)

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the run: at its next epoch check if it is in guest code now
        (the epoch moves at once), else as it next enters guest code."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            tickers = list(self._tickers)
        for ticker in tickers:
            ticker.engine.increment_epoch()

    @property
    def reason(self) -> str | None:
        """Why the run must stop: "cancelled"/"timeout"/..., or None."""
        with self._lock:
            return self._stop_reason()

    def _stop_reason(self) -> str | None:
        if self._reason is None and self.deadline is not None:
            if time.monotonic() >= self.deadline:
                self._reason = "timeout"
        return self._reason

    def _watched_by(self, ticker: EpochTicker) -> str | None:
        """Remember ``ticker`` (a cancel from now on moves its epoch); the
        reason to stop, read under the same lock, so that a cancel either
        sees the ticker or is seen here."""
        with self._lock:
            if ticker not in self._tickers:
                self._tickers.append(ticker)
            return self._stop_reason()


class EpochTicker:
    """Moves an engine's epoch when a controlled run in guest code must stop.

    Cancellation moves it from the cancelling thread (:meth:`RunControl.cancel`);
    timeouts from a timer thread, started at the first deadline, which sleeps
    until the earliest deadline of the live sections (runs inside
    :meth:`guest`) and otherwise until notified. ``notifications``,
    ``wakeups`` and ``increments`` count what the timer thread did, for
    tests and measurements.
    """

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        # Live sections: a control inside guest code -> how many sections
        # (guest code can nest: a dlopen runs constructors). Entries go when
        # their count drops to 0, so no ended run stays referenced here.
        self._live: dict[RunControl, int] = {}
        self._wake_at: float | None = None  # when the timer thread wakes; None: notified
        self._last_increment = float("-inf")  # when a passed deadline last moved the epoch
        self.notifications = 0
        self.wakeups = 0
        self.increments = 0

    def guest(self, control: RunControl) -> _Section:
        """Context for guest code of a run controlled by ``control``."""
        return _Section(self, control)

    def _enter(self, control: RunControl) -> None:
        reason = control._watched_by(self)
        with self._cond:
            self._live[control] = self._live.get(control, 0) + 1
            if reason is None:
                self._schedule(control.deadline)
            else:
                # Stopped before this section: cancelled or timed out between
                # guest calls or before the store existed. Its store's
                # deadline was set before now, so this increment reaches it.
                self._move_epoch()

    def _exit(self, control: RunControl) -> None:
        # Never notifies: the timer thread, if it wakes for this run's
        # deadline, finds nothing due and sleeps on.
        with self._cond:
            count = self._live[control] - 1
            if count:
                self._live[control] = count
            else:
                del self._live[control]

    def _deadline_moved(self, control: RunControl) -> None:
        """``control.deadline`` became earlier (:meth:`RunControl.limit_time`)."""
        with self._cond:
            if control not in self._live:
                return  # the next section's entry schedules it
            deadline = control.deadline
            self._schedule(deadline)
            if deadline is not None and self._last_increment < deadline <= time.monotonic():
                # Already past, and the timer thread has not served it:
                # stop the run now (the timer then finds it served).
                self._move_epoch()

    def _move_epoch(self) -> None:
        """Move the epoch now, for a run that must stop; holds ``_cond``.
        Every deadline passed by now counts as served: the one increment
        reaches every store already waiting on it, so the timer thread does
        not move the epoch again for them (one increment per deadline,
        whichever thread sees it pass first)."""
        self._last_increment = time.monotonic()
        self.engine.increment_epoch()

    def _schedule(self, deadline: float | None) -> None:
        """Make the timer thread wake by ``deadline``; holds ``_cond``."""
        if deadline is None:
            return
        if self._wake_at is not None and self._wake_at <= deadline:
            return  # the thread wakes by then anyway
        self._wake_at = deadline
        if self._thread is None:
            self._thread = threading.Thread(target=self._timer, name="wasmrun-epoch", daemon=True)
            self._thread.start()
        else:
            self.notifications += 1
            self._cond.notify()

    def _scan(self, now: float) -> tuple[bool, float | None]:
        """Whether a live section's deadline passed since the last increment,
        and the earliest one still ahead. Holds ``_cond``. (A function of its
        own so that the sleeping timer thread keeps no control in a local.)"""
        due = False
        earliest: float | None = None
        for control in self._live:
            deadline = control.deadline
            if deadline is None:
                continue
            if deadline <= now:
                # Once per deadline: one increment at or after it reaches
                # the run (its store's deadline is one epoch ahead, and the
                # callback then sees the timeout). A deadline already past
                # as its section began was met by that entry's increment.
                due = due or deadline > self._last_increment
            elif earliest is None or deadline < earliest:
                earliest = deadline
        return due, earliest

    def _timer(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                due, earliest = self._scan(now)
                if due:
                    self.increments += 1
                    self._move_epoch()
                if self._wake_at is not None and self._wake_at <= now:
                    self._wake_at = None
                if earliest is not None and (self._wake_at is None or earliest < self._wake_at):
                    self._wake_at = earliest
                wait = None if self._wake_at is None else self._wake_at - now
                self._cond.wait(wait)
                self.wakeups += 1


class _Section:
    """One stretch of guest code of a controlled run (see :meth:`EpochTicker.guest`)."""

    __slots__ = ("_control", "_ticker")

    def __init__(self, ticker: EpochTicker, control: RunControl) -> None:
        self._ticker = ticker
        self._control = control

    def __enter__(self) -> None:
        self._ticker._enter(self._control)

    def __exit__(self, *exc: object) -> None:
        self._ticker._exit(self._control)


def install_epoch_check(store: wasmtime.Store, control: RunControl) -> object:
    """Trap the store's guest code once ``control`` says stop; returns the
    callback object, which the caller must keep alive while the store runs."""

    def verdict() -> str | None:
        reason = control.reason
        if reason is None:
            return None
        if reason == "timeout":
            return f"run timed out after {control.timeout:g} s"
        return f"run {reason}"

    return install_deadline_callback(store, verdict)
