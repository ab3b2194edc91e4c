"""Compiled code, kept by wasmrund's front and lent to workers read-only.

A worker reads a module's bytes with its tenant's credentials and sends them
here. The front hashes the bytes *it received* (never a digest a worker
claims), finds the compiled code in memory, in the HMAC-checked disk cache
or by compiling, and answers with a sealed memfd holding wasmtime's
serialized code. The seals (no write, no resize, no new seals) make the
descriptor immutable for everyone; the worker maps it with
``Module.deserialize_file("/proc/self/fd/N")``, so every worker of every
uid shares the same physical pages through the memfd, and none can alter
what the next one maps. The disk cache and its key stay in the front: a
tenant can neither write an entry nor forge one.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import threading
from typing import Any

import wasmtime
from wasmrun.runtime.cache import ModuleCache

_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class CompileFailed(Exception):
    """The bytes are not a module wasmtime accepts (wasmtime's own text)."""


def sealed_memfd(name: str, data: bytes | bytearray) -> int:
    """An immutable in-memory file holding ``data``."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class CodeStore:
    """digest -> sealed memfd of serialized code, least recently used first
    out once the memfds pass ``budget_bytes``. Thread-safe: compiles run in
    threads of the front."""

    def __init__(self, cache: ModuleCache, budget_bytes: int) -> None:
        self.cache = cache  # compiles, and reads/writes the disk cache
        self.budget_bytes = budget_bytes
        self._entries: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        self.served = 0
        self.compiled = 0

    def code_for(self, data: bytes) -> int:
        """A new descriptor (the caller closes it) of the sealed code for
        the module ``data``; CompileFailed if wasmtime rejects it."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            lock = self._digest_locks.setdefault(digest, threading.Lock())
        with lock:
            with self._lock:
                entry = self._entries.get(digest)
                if entry is not None:
                    self._entries.move_to_end(digest)
                    self.served += 1
                    return os.dup(entry[0])
            try:
                module = self.cache.compile(digest, data)
            except wasmtime.WasmtimeError as e:
                with self._lock:
                    self._digest_locks.pop(digest, None)
                raise CompileFailed(str(e)) from None  # the worker formats it, as in process
            payload = module.serialize()
            del module
            _trim_heap()  # compiling leaves tens of MB of freed heap behind
            fd = sealed_memfd(f"wasmrun-code-{digest[:16]}", payload)
            with self._lock:
                self.compiled += 1
                self.served += 1
                self._entries[digest] = (fd, len(payload))
                self._bytes += len(payload)
                self._evict()
                self._digest_locks.pop(digest, None)
                return os.dup(fd)

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes and len(self._entries) > 1:
            _, (fd, size) = self._entries.popitem(last=False)
            self._bytes -= size
            os.close(fd)  # workers that mapped it keep their pages

    def summary(self) -> dict[str, int]:
        with self._lock:
            return {
                "code.entries": len(self._entries),
                "code.bytes": self._bytes,
                "code.served": self.served,
                "code.compiled": self.compiled,
            }

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._entries.values():
                os.close(fd)
            self._entries.clear()
            self._bytes = 0


def _trim_heap() -> None:
    """Give the heap that compilation freed back to the system (glibc keeps
    it otherwise: ~50 MB after compiling libc.so, for the daemon's life)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None
