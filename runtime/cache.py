"""The in-memory module cache: decoded, validated and compiled modules.

Entries are keyed by the SHA-256 of the module's bytes (one cache belongs to
one engine, so the engine configuration is part of the key by construction)
and bounded by a byte budget with least-recently-used eviction.

Looking a file up is cheap when nothing changed: its stat identity (device,
inode, size, mtime, ctime) maps straight to the digest. A file whose identity
changed is read and hashed again, so a library rebuilt on disk is never
served stale; identical bytes under another path share one entry.

Compilation goes through the disk cache when there is one: a fresh process
deserializes what an earlier one compiled. Thread-safe: worker threads of the
daemon share one cache.
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable

import attrs
import wasmtime

from .diskcache import DiskCache
from .errors import LimitError, LoadError
from .module import ModuleBytes, ModuleImage, decode, module_bytes

DEFAULT_BUDGET = 1 << 30  # bytes of modules kept in memory

CodeSource = Callable[[str, bytes], wasmtime.Module]
"""Where compiled code comes from instead of compiling here: ``(digest,
wasm bytes) -> Module``. wasmrund's workers run as a tenant and must never
compile into (or read) the daemon's disk cache: they ask the daemon, which
hashes and compiles the bytes itself and hands back sealed code."""


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@attrs.define
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    deserializes: int = 0
    deserialize_seconds: float = 0.0


class ModuleCache:
    """Thread-safe LRU of :class:`ModuleImage` by content digest."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        budget_bytes: int = DEFAULT_BUDGET,
        disk: DiskCache | None = None,
        code_source: CodeSource | None = None,
        max_modules: int | None = None,
    ) -> None:
        self.engine = engine
        self.budget_bytes = budget_bytes
        # Code from a code_source is mapped from a descriptor that wasmtime
        # keeps open as long as the module lives (its data is mapped from
        # it copy-on-write): a worker seeing many small modules would run
        # out of descriptors long before the byte budget.
        self.max_modules = max_modules
        self.disk = disk
        self.code_source = code_source
        self.stats = CacheStats()
        self._entries: collections.OrderedDict[str, ModuleImage] = collections.OrderedDict()
        self._costs: dict[str, int] = {}
        self._bytes = 0
        self._by_identity: dict[str, tuple[tuple[int, ...], str]] = {}
        self._lock = threading.RLock()
        self._compile_locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    # -- lookup ---------------------------------------------------------------

    def load(self, path: str, name: str | None = None, max_bytes: int | None = None) -> ModuleImage:
        """The decoded image of ``path`` (compiled lazily); LoadError if it
        cannot be opened or is not a valid module, LimitError if it is larger
        than ``max_bytes`` (checked on the opened file before reading it)."""
        display = name or os.path.basename(path)
        try:
            # O_NONBLOCK: a FIFO under a library's name must not hang the
            # loader in open(); only a regular file is read at all (a device
            # such as /dev/zero would be read forever).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(path)
                if not stat.S_ISREG(st.st_mode):
                    raise LoadError(f"{path}: not a regular file")
                if max_bytes is not None and st.st_size > max_bytes:
                    raise LimitError(
                        f"{path}: file of {st.st_size} bytes is over the limit of {max_bytes} "
                        "bytes for a module (max_file_size)"
                    )
                ident = _identity(st)
                with self._lock:
                    known = self._by_identity.get(path)
                    if known is not None and known[0] == ident:
                        image = self._entries.get(known[1])
                        if image is not None:
                            self._entries.move_to_end(known[1])
                            self.stats.hits += 1
                            return self._located(image, display, path, ident)
                data = f.read()
        except IsADirectoryError:
            raise LoadError(f"{path}: is a directory") from None
        except OSError as e:
            raise LoadError(f"{path}: cannot open file: {e.strerror}") from None
        except ValueError:  # a NUL in the name: no such file can exist
            raise LoadError(f"{path}: cannot open file: invalid file name") from None
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            image = self._entries.get(digest)
            if image is not None:
                self._entries.move_to_end(digest)
                self._by_identity[path] = (ident, digest)
                self.stats.hits += 1
                return self._located(image, display, path, ident)
            self.stats.misses += 1
        image = decode(data, display, path, self.engine, digest=digest, compiler=self.compile)
        with self._lock:
            existing = self._entries.get(digest)
            if existing is not None:  # another thread decoded it meanwhile
                image = existing
            else:
                self._insert(digest, image, len(data) * 3)
            self._by_identity[path] = (ident, digest)
        return self._located(image, display, path, ident)

    @staticmethod
    def _located(image: ModuleImage, name: str, path: str, ident: tuple[int, ...]) -> ModuleImage:
        """The image as found at ``path``, with the identity of the file it
        was just read (or recognised) from."""
        if image.path == path and image.name == name and image.file_identity == ident:
            return image
        return image.with_location(name, path, ident)

    def _insert(self, digest: str, image: ModuleImage, cost: int) -> None:
        self._entries[digest] = image
        self._costs[digest] = cost
        self._bytes += cost
        self._evict()

    def _evict(self) -> None:
        while len(self._entries) > 1 and (
            self._bytes > self.budget_bytes
            or (self.max_modules is not None and len(self._entries) > self.max_modules)
        ):
            digest, _ = self._entries.popitem(last=False)
            self._bytes -= self._costs.pop(digest)
            self.stats.evictions += 1
            for path, (_, d) in list(self._by_identity.items()):
                if d == digest:
                    del self._by_identity[path]

    # -- compilation ------------------------------------------------------------

    def compile(self, digest: str, data: ModuleBytes) -> wasmtime.Module:
        """Deserialize from disk or compile (and save); one at a time per
        digest when threads race for it. ``data`` may be a function making the
        bytes: called only when they are needed (not on a disk cache hit)."""
        # One lock per digest while anyone compiles it, then forgotten: a
        # long-lived process (a wasmrund worker) sees module after module.
        with self._lock:
            entry = self._compile_locks.get(digest)
            if entry is None:
                entry = self._compile_locks[digest] = (threading.Lock(), [0])
            entry[1][0] += 1
        try:
            with entry[0]:
                return self._compile(digest, data)
        finally:
            with self._lock:
                entry[1][0] -= 1
                if not entry[1][0]:
                    del self._compile_locks[digest]

    def _compile(self, digest: str, data: ModuleBytes) -> wasmtime.Module:
        """compile() under the digest's lock."""
        if self.code_source is not None:
            t0 = time.perf_counter()
            module = self.code_source(digest, module_bytes(data))
            with self._lock:
                self.stats.deserializes += 1
                self.stats.deserialize_seconds += time.perf_counter() - t0
            return module
        t0 = time.perf_counter()
        loaded = self.disk.load(digest) if self.disk is not None else None
        if loaded is not None:
            with self._lock:
                self.stats.deserializes += 1
                self.stats.deserialize_seconds += time.perf_counter() - t0
            return loaded
        t0 = time.perf_counter()
        data = module_bytes(data)
        module = wasmtime.Module(self.engine, data)
        with self._lock:
            self.stats.compiles += 1
            self.stats.compile_seconds += time.perf_counter() - t0
        if self.disk is not None:
            size = self.disk.store(digest, module)
            if size:
                with self._lock:
                    if digest in self._costs:
                        # Account what the compiled code costs, now known.
                        self._bytes += size + len(data) - self._costs[digest]
                        self._costs[digest] = size + len(data)
                        self._evict()
        return module

    # -- management -------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._costs.clear()
            self._by_identity.clear()
            self._bytes = 0

    def summary(self) -> dict[str, int | float | str]:
        with self._lock:
            out: dict[str, int | float | str] = {
                "memory.entries": len(self._entries),
                "memory.bytes": self._bytes,
                "memory.budget_bytes": self.budget_bytes,
                **{f"memory.{k}": v for k, v in attrs.asdict(self.stats).items()},
            }
        if self.disk is not None:
            out.update(self.disk.summary())
        return out
