"""Per-run limits and cancellation: memory, wall-clock timeout, fuel.

A guest in an infinite loop never returns to Python, so timeouts and
cancellation use wasmtime's epoch interruption: a ticker thread advances the
engine's epoch every ``TICK`` seconds while controlled runs exist, and each
controlled store has a deadline one tick ahead with a callback that either
extends it (the run may go on) or traps (timed out or cancelled). The check
costs one Python call per tick per running store; guest code pays only
wasmtime's epoch check at loop heads and function entries.
"""

from __future__ import annotations

import threading
import time
from typing import Final

import attrs
import wasmtime

from .wasmtime_seam import install_deadline_callback

TICK: Final = 0.01  # seconds between epoch increments


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
    """A thread-safe handle to stop a run from outside (client gone, Ctrl-C)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.timeout = timeout
        self._reason: str | None = None
        self._lock = threading.Lock()

    def limit_time(self, timeout: float) -> None:
        """Add a deadline (the earlier one wins) to a controller made without."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.deadline is None or deadline < self.deadline:
                self.deadline = deadline
                self.timeout = timeout

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason

    @property
    def reason(self) -> str | None:
        """Why the run must stop: "cancelled"/"timeout"/..., or None."""
        with self._lock:
            if self._reason is None and self.deadline is not None:
                if time.monotonic() >= self.deadline:
                    self._reason = "timeout"
            return self._reason


class EpochTicker:
    """Advances an engine's epoch while at least one controlled run is live."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._users = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EpochTicker:
        with self._cond:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="wasmrun-epoch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._users -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._users == 0:
                    self._cond.wait()
            time.sleep(TICK)
            self.engine.increment_epoch()


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
