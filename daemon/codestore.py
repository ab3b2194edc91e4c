"""Compiled code, kept by wasmrund's front and lent to workers read-only.

A worker reads a module's bytes with its tenant's credentials and sends them
here. The front hashes the bytes *it received* (never a digest a worker
claims), finds the compiled code in memory, in the HMAC-checked disk cache
or has a compiler process make it (:mod:`wasmrun.daemon.compilers`), and
answers with a sealed memfd holding wasmtime's serialized code. The seals
(no write, no resize, no new seals) make the descriptor immutable for
everyone; the worker maps it with
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
    """The bytes are not a module wasmtime accepts (wasmtime's own text),
    or, with ``limit``, the daemon could not compile them for a reason of
    its own: a bound passed (memory, time), no compiler process."""

    def __init__(self, message: str, limit: bool = False) -> None:
        super().__init__(message)
        self.limit = limit


def _name(digest: str) -> str:
    return f"wasmrun-code-{digest[:16]}"


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
    out once the memfds pass ``budget_bytes`` or their number passes
    ``max_entries``. Thread-safe: lookups and compiles run in threads of
    the front."""

    def __init__(self, cache: ModuleCache, budget_bytes: int, max_entries: int = 4096) -> None:
        self.cache = cache  # compiles, and reads/writes the disk cache
        self.budget_bytes = budget_bytes
        # Each entry holds a descriptor: bytes alone would let a tenant's
        # stream of small new modules exhaust the front's descriptors.
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        self.served = 0
        self.compiled = 0
        self.from_disk = 0

    def code_for(self, data: bytes) -> int:
        """A new descriptor (the caller closes it) of the sealed code for
        the module ``data``, compiled here if need be; CompileFailed if
        wasmtime rejects it. Only for modules the configuration names (the
        zygote's preloads): a tenant's bytes go to a compiler process
        (:mod:`wasmrun.daemon.compilers`), whose memory and time are
        bounded."""
        digest, fd = self.lookup(data)
        if fd is not None:
            return fd
        with self._lock:
            lock = self._digest_locks.setdefault(digest, threading.Lock())
        with lock:
            try:
                fd = self.cached(digest)
                if fd is not None:
                    return fd
                try:
                    module = wasmtime.Module(self.cache.engine, data)
                except wasmtime.WasmtimeError as e:
                    raise CompileFailed(str(e)) from None  # the worker formats it, as in process
                payload = module.serialize()
                del module
                trim_heap()  # compiling leaves tens of MB of freed heap behind
                return self._insert(digest, sealed_memfd(_name(digest), payload), payload, True)
            finally:
                with self._lock:
                    self._digest_locks.pop(digest, None)

    def lookup(self, data: bytes) -> tuple[str, int | None]:
        """The digest of ``data`` (hashed here, never taken from a worker),
        and a new descriptor of its sealed code if it is in memory or in
        the disk cache, else None."""
        digest = hashlib.sha256(data).hexdigest()
        fd = self.cached(digest)
        if fd is not None:
            return digest, fd
        disk = self.cache.disk
        found = disk.load_payload(digest) if disk is not None else None
        if found is None:
            return digest, None
        _, payload = found
        with self._lock:
            self.from_disk += 1
        return digest, self._insert(digest, sealed_memfd(_name(digest), payload), None, False)

    def cached(self, digest: str) -> int | None:
        """A new descriptor of the code for ``digest`` if it is in memory."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            self._entries.move_to_end(digest)
            self.served += 1
            return os.dup(entry[0])

    def add(self, digest: str, fd: int) -> int:
        """Take over ``fd``, a memfd of code a compiler process made for
        the module whose digest is ``digest``: sealed here (a compiler that
        kept a writable mapping makes this fail), kept, written to the disk
        cache. Returns a new descriptor of it."""
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
                raise OSError("seals missing")
            size = os.fstat(fd).st_size
            payload = os.pread(fd, size, 0) if self.cache.disk is not None else None
        except OSError as e:
            os.close(fd)
            raise CompileFailed(
                f"cannot compile: unusable code from the compiler process ({e})", limit=True
            ) from None
        return self._insert(digest, fd, payload, True)

    def _insert(self, digest: str, fd: int, payload: bytes | bytearray | None, new: bool) -> int:
        """Keep ``fd`` (sealed code) for ``digest``, and save ``payload``
        to the disk cache when given; a new descriptor of it."""
        size = os.fstat(fd).st_size
        with self._lock:
            if new:
                self.compiled += 1
            self.served += 1
            old = self._entries.pop(digest, None)
            if old is not None:  # two paths raced: keep the newer, close the other
                self._bytes -= old[1]
                os.close(old[0])
            self._entries[digest] = (fd, size)
            self._bytes += size
            self._evict()
            answer = os.dup(fd)
        if payload is not None and self.cache.disk is not None:
            self.cache.disk.store_payload(digest, payload)
        return answer

    def _evict(self) -> None:
        while len(self._entries) > 1 and (
            self._bytes > self.budget_bytes or len(self._entries) > self.max_entries
        ):
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
                "code.from_disk": self.from_disk,
            }

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._entries.values():
                os.close(fd)
            self._entries.clear()
            self._bytes = 0


def trim_heap() -> None:
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
